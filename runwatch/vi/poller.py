"""One poll of one workspace, paying for what can change rather than for history.

Theory of operation. Runs are listed newest first, so everything created since the last
poll sits at the head of the listing. A steady-state ("incremental") poll therefore:

1. walks the listing from page 1 until a page shows a run created before the newest run
   already known (the creation-time watermark): this finds every new run, however many
   appeared. (Strictly before: a new run created in the same millisecond as the watermark
   may sort after it.) With no run known yet there is no watermark and the walk goes on to
   the end;
2. refreshes the runs known to be non-terminal that the walk did not show, the cheapest
   way: walking on for as many more pages as pays off, where each page costs one request
   and saves the GETs of the runs it shows, then a conditional GET (If-None-Match, 304
   when unchanged) for each run still unseen, concurrently and bounded. Where a run sits
   is estimated from the creation times of the known runs (`RunIndex`), so choosing costs
   no request. A poll thus never costs more than a full listing: at worst it walks on to
   the end;
3. never re-fetches runs in a terminal condition.

A walk that reaches the end of the listing (a small workspace, or one with no run known)
was a complete listing: it concludes deletions and counts as a full listing. Otherwise a
full listing (every page) runs on the first poll of a workspace (the baseline) and then at
least every `poll.full_resync`: it catches what the incremental path cannot see: deleted
runs, a terminal run that changes again, an API whose ordering is off. The time of the last
full listing lives in the state store, so a restart or a cron'd `runwatch once` stays
incremental while a full listing is recent.

The cost of a steady-state poll in CPU is also that of what can change: `RunIndex` keeps
the unfinished runs and the sorted creation times of a workspace up to date as the daemon
records each poll, so a poll of 100,000 known runs does not scan all of them.

Any failure (an exception from the client) fails the whole poll: the caller commits
nothing, so a half listing can never look like "the other runs were deleted".
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass

from runwatch.core.model import Run, RunState
from runwatch.core.run_index import RunIndex
from runwatch.core.transitions import Diff, Fold, PollKind, terminal_conditions
from runwatch.errors import ViNotFoundError
from runwatch.vi.client import ViClient
from runwatch.vi.decode import Page


@dataclass(frozen=True, kw_only=True, slots=True)
class PollPlan:
    kind: PollKind
    page_size: int
    max_pages: int = 10_000
    max_concurrency: int = 8


@dataclass(frozen=True, kw_only=True, slots=True)
class PollOutcome:
    """What one poll found. `kind` is what the poll turned out to be: an incremental walk
    that reached the end of the listing is "full" (it concluded deletions)."""

    kind: PollKind
    diff: Diff
    runs_seen: int  # distinct runs observed by this poll
    pages: int
    gets: int


class _Walk:
    """The listing from page 1, a page at a time, as far as the caller asks.

    It walks `ViClient.list_runs`, so a repeated page token or a listing past the page cap
    fails the poll, as it does a full listing: a walk cut short above the watermark would
    commit the newest runs, move the watermark past the ones it missed and lose them.
    """

    def __init__(self, client: ViClient, acc: Fold, plan: PollPlan) -> None:
        self._pages = client.list_runs(plan.page_size, max_pages=plan.max_pages)
        self._acc = acc
        self.pages = 0
        self.ended = False  # reached the last page: the walk was a complete listing

    async def step(self) -> Page:
        page = await anext(self._pages)
        self.pages += 1
        self._acc.add(page.runs, page.skipped)
        self.ended = page.next_page is None
        return page

    async def aclose(self) -> None:
        await self._pages.aclose()


async def poll_workspace(
    client: ViClient,
    known: Mapping[str, RunState],
    *,
    workspace: str,
    plan: PollPlan,
    now_ms: int,
) -> PollOutcome:
    """Poll one workspace; raises whatever the client raises (the poll then counts for nothing).

    `known` is best a `RunIndex` kept across polls; any other mapping is indexed here first
    (with the built-in terminal conditions).
    """
    if isinstance(known, RunIndex):
        index = known
    else:
        index = RunIndex(known, terminal=terminal_conditions())
    acc = Fold(
        index.as_dict(), workspace=workspace, baseline=plan.kind == "baseline", now_ms=now_ms
    )
    if plan.kind != "incremental":
        pages = 0
        async for page in client.list_runs(plan.page_size, max_pages=plan.max_pages):
            pages += 1
            acc.add(page.runs, page.skipped)
        return PollOutcome(
            kind=plan.kind,
            diff=acc.result(complete=True),
            runs_seen=len(acc.seen),
            pages=pages,
            gets=0,
        )
    return await _poll_incremental(client, index, acc, plan=plan)


async def _poll_incremental(
    client: ViClient, index: RunIndex, acc: Fold, *, plan: PollPlan
) -> PollOutcome:
    watermark = index.newest_created()
    walk = _Walk(client, acc, plan)
    try:
        # 1. the head of the listing, down past the watermark
        while not walk.ended:
            page = await walk.step()
            if watermark is not None and any(r.time_created < watermark for r in page.runs):
                break

        # 2. known unfinished runs the head did not show
        stale = [s for s in index.unfinished() if s.run_id not in acc.seen]
        if stale and not walk.ended:
            extra, sought = _pages_worth_walking(
                stale, index, acc.unknown, plan.page_size, walk.pages
            )
            stop_at = walk.pages + extra
            while not walk.ended and walk.pages < stop_at:
                await walk.step()
                if all(run_id in acc.seen for run_id in sought):
                    break  # shallower than estimated: every run walked for is seen
            stale = [s for s in stale if s.run_id not in acc.seen]
    finally:
        await walk.aclose()

    if walk.ended:
        # The walk was a complete listing: what it did not show was deleted, not stale.
        return PollOutcome(
            kind="full",
            diff=acc.result(complete=True),
            runs_seen=len(acc.seen),
            pages=walk.pages,
            gets=0,
        )
    if stale:
        acc.add(await _get_runs(client, stale, plan.max_concurrency))
    return PollOutcome(
        kind="incremental",
        diff=acc.result(complete=False),
        runs_seen=len(acc.seen),
        pages=walk.pages,
        gets=len(stale),
    )


def _pages_worth_walking(
    stale: list[RunState], index: RunIndex, unknown: int, page_size: int, walked: int
) -> tuple[int, list[str]]:
    """How many more pages to walk so that pages + remaining GETs are fewest (0: GET all),
    and the runs that walk should reach.

    A known run's position in the listing is estimated as the known runs created after it
    plus the new runs the walk has seen. Deletions since the last full listing make that an
    overestimate: the walk then stops early, once it has seen every run it went for.
    """
    needed = sorted(
        (
            max(1, _page_of(index.created_after(s.time_created) + unknown + 1, page_size) - walked),
            s.run_id,
        )
        for s in stale
    )
    best_cost, best_extra = len(stale), 0  # GET them all
    for covered, (extra, _) in enumerate(needed, start=1):
        cost = extra + len(stale) - covered
        if cost < best_cost:
            best_cost, best_extra = cost, extra
    return best_extra, [run_id for extra, run_id in needed if extra <= best_extra]


def _page_of(position: int, page_size: int) -> int:
    return math.ceil(position / page_size)


async def _get_runs(client: ViClient, stale: list[RunState], concurrency: int) -> list[Run]:
    gate = asyncio.Semaphore(max(1, concurrency))

    async def fetch(state: RunState) -> Run | None:
        async with gate:
            try:
                return await client.get_run(state.run_id, etag=state.etag)
            except ViNotFoundError:
                # Deleted, most likely; deletions are only concluded from a complete listing,
                # so leave it to the next full resync.
                return None

    results = await asyncio.gather(*(fetch(s) for s in stale), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result  # one failed GET fails the poll: nothing is committed
    # None is "304 Not Modified" or "gone": either way, nothing to diff.
    return [r for r in results if isinstance(r, Run)]
