"""One poll of one workspace, paying for what can change rather than for history.

Theory of operation. Runs are listed newest first, so everything created since the last
poll sits at the head of the listing. A steady-state ("incremental") poll therefore:

1. lists from page 1 until it reaches a run created at or before the newest run already
   known (the creation-time watermark): this finds every new run, however many appeared;
2. refreshes the runs known to be non-terminal that those pages did not show, the cheaper
   of two ways: a conditional GET per run (concurrent, bounded), or listing on down to the
   oldest of them when that takes fewer pages than there are runs to GET;
3. never re-fetches runs in a terminal condition.

A full listing (every page) runs on the first poll of a workspace (the baseline) and then
at least every `poll.full_resync`: it catches what the incremental path cannot see: deleted
runs, a terminal run that changes again, an API whose ordering is off. The time of the last
full listing lives in the state store, so a restart or a cron'd `runwatch once` stays
incremental while a full listing is recent.

Any failure (an exception from the client) fails the whole poll: the caller commits
nothing, so a half listing can never look like "the other runs were deleted".
"""

from __future__ import annotations

import asyncio
import math
from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from runwatch.decode import Page
from runwatch.errors import ViNotFoundError
from runwatch.model import TERMINAL_CONDITIONS, Event, Run, RunState
from runwatch.transitions import Diff, detect_deletions, detect_transitions
from runwatch.vi_client import ViClient

PollKind = Literal["baseline", "full", "incremental"]


@dataclass(frozen=True, kw_only=True, slots=True)
class PollPlan:
    kind: PollKind
    page_size: int
    max_pages: int = 10_000
    max_concurrency: int = 8
    terminal: frozenset[str] = TERMINAL_CONDITIONS


@dataclass(frozen=True, kw_only=True, slots=True)
class PollOutcome:
    kind: PollKind
    diff: Diff
    runs_seen: int  # distinct runs observed by this poll
    pages: int
    gets: int


def choose_kind(
    *, baselined_at: int | None, last_full_listing: int | None, now_ms: int, full_resync_s: float
) -> PollKind:
    if baselined_at is None:
        return "baseline"
    if last_full_listing is None or now_ms - last_full_listing >= full_resync_s * 1000:
        return "full"
    return "incremental"


def is_active(state: RunState, terminal: frozenset[str]) -> bool:
    return state.latest is None or state.latest.condition not in terminal


class _Accumulator:
    """Folds page after page into one Diff, each page diffed against the state so far."""

    def __init__(
        self, known: Mapping[str, RunState], *, workspace: str, baseline: bool, now_ms: int
    ):
        self.overlay: dict[str, RunState] = {}
        self.view: Mapping[str, RunState] = ChainMap(self.overlay, known)  # type: ignore[arg-type]
        self.workspace = workspace
        self.baseline = baseline
        self.now_ms = now_ms
        self.events: list[Event] = []
        self.seen: set[str] = set()

    def add(self, runs: tuple[Run, ...] | list[Run], skipped: tuple[str, ...] = ()) -> None:
        # A run that could not be decoded is still there: it must not look deleted.
        self.seen.update(skipped)
        self.seen.update(r.run_id for r in runs)
        diff = detect_transitions(
            self.view, runs, workspace=self.workspace, baseline=self.baseline, now_ms=self.now_ms
        )
        self.events.extend(diff.events)
        for state in diff.upserts:
            self.overlay[state.run_id] = state

    def result(self, deleted: Diff | None = None) -> Diff:
        events = list(self.events)
        gone: tuple[str, ...] = ()
        if deleted is not None:
            events.extend(deleted.events)
            gone = deleted.deleted
        return Diff(events=tuple(events), upserts=tuple(self.overlay.values()), deleted=gone)


async def poll_workspace(
    client: ViClient,
    known: Mapping[str, RunState],
    *,
    workspace: str,
    plan: PollPlan,
    now_ms: int,
) -> PollOutcome:
    """Poll one workspace; raises whatever the client raises (the poll then counts for nothing)."""
    acc = _Accumulator(known, workspace=workspace, baseline=plan.kind == "baseline", now_ms=now_ms)
    if plan.kind != "incremental":
        pages = 0
        async for page in client.list_runs(plan.page_size, max_pages=plan.max_pages):
            pages += 1
            acc.add(page.runs, page.skipped)
        deletions = None
        if plan.kind == "full":
            deletions = detect_deletions(known, acc.seen, workspace=workspace, now_ms=now_ms)
        return PollOutcome(
            kind=plan.kind, diff=acc.result(deletions), runs_seen=len(acc.seen), pages=pages, gets=0
        )
    return await _poll_incremental(client, known, acc, plan=plan)


async def _poll_incremental(
    client: ViClient, known: Mapping[str, RunState], acc: _Accumulator, *, plan: PollPlan
) -> PollOutcome:
    watermark = max((s.time_created for s in known.values()), default=None)
    pages = 0
    token: str | None = None
    tokens_seen: set[str] = set()
    page: Page | None = None
    # 1. the head of the listing, down to the watermark
    while True:
        page = await client.list_page(token, plan.page_size)
        pages += 1
        acc.add(page.runs, page.skipped)
        reached = watermark is None or any(r.time_created <= watermark for r in page.runs)
        if reached or page.next_page is None or pages >= plan.max_pages:
            break
        if page.next_page in tokens_seen:
            break  # a repeated token: the GETs below still cover the known active runs
        tokens_seen.add(page.next_page)
        token = page.next_page

    # 2. known active runs the head did not show
    stale = [s for s in known.values() if s.run_id not in acc.seen and is_active(s, plan.terminal)]
    gets = 0
    if stale and page is not None and page.next_page is not None:
        oldest = min(s.time_created for s in stale)
        # Newest-first position of the oldest stale run ~ how many known runs are newer.
        depth = sum(1 for s in known.values() if s.time_created > oldest) + 1
        pages_to_reach = math.ceil(depth / plan.page_size) - pages
        if 0 < pages_to_reach < len(stale):
            token = page.next_page
            while token is not None and pages < plan.max_pages:
                if token in tokens_seen:
                    break
                tokens_seen.add(token)
                page = await client.list_page(token, plan.page_size)
                pages += 1
                acc.add(page.runs, page.skipped)
                if any(r.time_created < oldest for r in page.runs):
                    break
                token = page.next_page
            stale = [s for s in stale if s.run_id not in acc.seen]
    if stale:
        gets = len(stale)
        runs = await _get_runs(client, stale, plan.max_concurrency)
        acc.add(runs)
    return PollOutcome(
        kind="incremental", diff=acc.result(), runs_seen=len(acc.seen), pages=pages, gets=gets
    )


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
