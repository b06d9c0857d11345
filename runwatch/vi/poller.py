"""One poll of one workspace, paying for what can change rather than for history.

Theory of operation. Runs are listed newest first, so everything created since the last
poll sits at the head of the listing. A steady-state ("incremental") poll therefore:

1. walks the listing from page 1 until a page shows a run created before the newest run
   already known (the creation-time watermark): this finds every new run, however many
   appeared. (Strictly before: a new run created in the same millisecond as the watermark
   may sort after it.) Creation times more than `FUTURE_SLACK_MS` ahead of the poll's clock
   do not count for the watermark: one run dated in the future would otherwise stop every
   walk at page 1. With no run known yet there is no watermark and the walk goes to the end;
2. refreshes the runs known to be unfinished that the walk did not show, the cheapest way:
   walking on for as many more pages as pays off, where each page costs one request and
   saves the GETs of the runs it shows, then a conditional GET (If-None-Match, 304 when
   unchanged) for each run still unseen, concurrently and bounded. Where a run sits is
   estimated from the creation times of the known runs (`RunIndex`), so choosing costs no
   request. A poll thus never costs more than a full listing: at worst it walks to the end;
3. never re-fetches finished runs.

A full listing (every page) runs on the first poll of a workspace (the baseline) and then
at least every `poll.full_resync`: it catches what the incremental path cannot see: deleted
runs, a finished run that changes again, a run created with an old timeCreated, an API
whose ordering is off. So the worst-case delay for those is `poll.full_resync`. A walk that
reaches the end of the listing is a complete listing too. After any complete listing the
runs it did not show are settled by GETs, as `core.transitions` prescribes: 404 deletes,
anything else keeps them; when too many are missing at once, a few GETs first decide
whether the listing itself was broken (then the poll fails and nothing changes).

What counts as a transition, a deletion or a complete listing is decided in
`core.transitions`; this module only decides which requests to make. A failed page fails
the whole poll (the caller commits nothing, so a half listing never looks like "the other
runs were deleted"); a failed GET of one run skips that run for this poll (logged, counted,
tried again next poll), so one broken run never holds back the others.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from runwatch.core.model import Run, RunState
from runwatch.core.run_index import RunIndex
from runwatch.core.transitions import (
    BROKEN_LISTING_SAMPLE,
    CONFIRMATIONS_PER_POLL,
    Diff,
    Fold,
    PollKind,
    listing_looks_broken,
)
from runwatch.errors import ViBadResponseError, ViError, ViNotFoundError
from runwatch.vi.client import ViClient
from runwatch.vi.decode import Page
from runwatch.vi.wire import Quiet

log = structlog.get_logger("runwatch.vi.poller")

FUTURE_SLACK_MS = 10 * 60_000  # creation times this far ahead of our clock still count
BASELINE_PART = 5_000  # recorded states a baseline hands to `flush` at a time

Load = Callable[[Sequence[str]], Mapping[str, RunState]]
Flush = Callable[[Sequence[RunState]], None]


@dataclass(frozen=True, kw_only=True, slots=True)
class PollPlan:
    kind: PollKind
    page_size: int
    max_pages: int = 10_000
    max_concurrency: int = 8


@dataclass(frozen=True, kw_only=True, slots=True)
class PollOutcome:
    """What one poll found.

    `kind` is what the poll turned out to be: an incremental walk that reached the end of
    the listing is "full". `listed_whole` says the listing was complete and every run it
    left out was settled (so the next full listing can wait `poll.full_resync`).
    """

    kind: PollKind
    diff: Diff
    runs_seen: int  # distinct runs observed by this poll
    pages: int
    gets: int
    listed_whole: bool = False
    unfetched: tuple[str, ...] = ()  # runs whose GET failed this poll (tried again next poll)


class _Walk:
    """The listing from page 1, a page at a time, as far as the caller asks.

    It walks `ViClient.list_runs`, so a repeated page token or a listing past the page cap
    fails the poll, as it does a full listing: a walk cut short above the watermark would
    commit the newest runs, move the watermark past the ones it missed and lose them.
    """

    def __init__(
        self,
        client: ViClient,
        fold_in: Callable[[Page], None],
        plan: PollPlan,
        quiet: Quiet | None = None,
    ) -> None:
        self._pages = client.list_runs(plan.page_size, max_pages=plan.max_pages, quiet=quiet)
        self._fold_in = fold_in
        self.pages = 0
        self.ended = False  # reached the last page: the walk was a complete listing

    async def step(self) -> Page:
        page = await anext(self._pages)
        self.pages += 1
        self._fold_in(page)
        self.ended = page.next_page is None
        return page

    async def aclose(self) -> None:
        await self._pages.aclose()


class Fetched(enum.Enum):
    """What a single-run GET found, when it found no changed document."""

    UNCHANGED = "unchanged"  # 304: the run is there, as known
    GONE = "gone"  # 404
    FAILED = "failed"  # any other error: unknown for this poll


class _Fetches:
    """Single-run GETs, bounded and counted; a failure skips that run, never the poll."""

    def __init__(self, client: ViClient, concurrency: int) -> None:
        self._client = client
        self._gate = asyncio.Semaphore(max(1, concurrency))
        self.count = 0
        self.failed: list[str] = []

    async def get(self, states: Sequence[RunState]) -> list[tuple[RunState, Run | Fetched]]:
        """Each state with what its GET found, in order."""
        results = await asyncio.gather(*(self._one(s) for s in states))
        return list(zip(states, results, strict=True))

    async def _one(self, state: RunState) -> Run | Fetched:
        async with self._gate:
            self.count += 1
            try:
                run = await self._client.get_run(state.run_id, etag=state.etag)
            except ViNotFoundError:
                return Fetched.GONE
            except ViError as exc:
                self.failed.append(state.run_id)
                log.warning(
                    "run.fetch_failed",
                    organization_id=state.organization_id,
                    run_id=state.run_id,
                    error=str(exc),
                    hint="skipped for this poll; tried again next poll",
                )
                return Fetched.FAILED
            return Fetched.UNCHANGED if run is None else run


async def poll_workspace(
    client: ViClient,
    index: RunIndex,
    *,
    workspace: str,
    plan: PollPlan,
    now_ms: int,
    load: Load,
    flush: Flush | None = None,
) -> PollOutcome:
    """Poll one workspace; raises what a failed page raises (the poll then counts for nothing).

    `load` reads the stored states of finished runs the poll needs whole (one that changed
    again, one to confirm deleted); `flush` takes a baseline's recorded states in parts of
    `BASELINE_PART`, so that a baseline of 100,000 runs never holds them all.
    """
    fold = Fold(index, workspace=workspace, baseline=plan.kind == "baseline", now_ms=now_ms)
    fetches = _Fetches(client, plan.max_concurrency)

    def quiet(run_id: str) -> int | None:
        # Exactly the runs `Fold.add` would pass over when unchanged: finished, and neither
        # loaded nor changed this poll. Leaving them unbuilt is most of a full listing's CPU
        # (see `runwatch.vi.wire`).
        fp = index.finished_fingerprint(run_id)
        if fp is None or run_id in fold.loaded or run_id in fold.view.changes:
            return None
        return fp

    def fold_in(page: Page) -> None:
        # A quiet run counts as seen, as a 304 does: listed, known, unchanged.
        _add(fold, page.runs, load, page.skipped + page.quiet)
        if flush is not None and fold.baseline and len(fold.view.changes) >= BASELINE_PART:
            flush(fold.drain())

    if plan.kind != "incremental":
        pages = 0
        async for page in client.list_runs(
            plan.page_size, max_pages=plan.max_pages, quiet=quiet
        ):
            pages += 1
            fold_in(page)
        settled = await _settle_missing(fold, fetches, load, org=client.organization_id)
        return _outcome(plan.kind, fold, fetches, pages=pages, listed_whole=settled)

    watermark = index.newest_created(not_after=now_ms + FUTURE_SLACK_MS)
    walk = _Walk(client, fold_in, plan, quiet)
    try:
        # 1. the head of the listing, down past the watermark
        while not walk.ended:
            page = await walk.step()
            if watermark is not None and _reaches(page, watermark, index):
                break

        # 2. known unfinished runs the head did not show
        stale = [s for s in index.unfinished() if s.run_id not in fold.seen]
        if stale and not walk.ended:
            extra, sought = _pages_worth_walking(
                stale, index, fold.unknown, plan.page_size, walk.pages
            )
            stop_at = walk.pages + extra
            while not walk.ended and walk.pages < stop_at:
                await walk.step()
                if all(run_id in fold.seen for run_id in sought):
                    break  # shallower than estimated: every run walked for is seen
            stale = [s for s in stale if s.run_id not in fold.seen]
    finally:
        await walk.aclose()

    if walk.ended:
        # The walk was a complete listing: what it did not show is missing, not stale.
        settled = await _settle_missing(fold, fetches, load, org=client.organization_id)
        return _outcome("full", fold, fetches, pages=walk.pages, listed_whole=settled)
    fetched = [found for _, found in await fetches.get(stale) if isinstance(found, Run)]
    # Gone (404): deletions are only concluded after a complete listing.
    _add(fold, fetched, load)
    return _outcome("incremental", fold, fetches, pages=walk.pages, listed_whole=False)


def _reaches(page: Page, watermark: int, index: RunIndex) -> bool:
    """Whether the page shows a run created before `watermark` (a quiet run is a known one,
    its creation time the index's: the fingerprint it matched covers it)."""
    if any(r.time_created < watermark for r in page.runs):
        return True
    for run_id in page.quiet:
        created = index.time_created(run_id)
        if created is not None and created < watermark:
            return True
    return False


def _add(fold: Fold, runs: Sequence[Run], load: Load, skipped: Sequence[str] = ()) -> None:
    needed = fold.needs(runs)
    if needed:
        fold.supply(load(needed))
    fold.add(runs, skipped)


def _states(fold: Fold, run_ids: Sequence[str], load: Load) -> list[RunState]:
    """The whole states of known runs: unfinished ones from the index, the rest stored."""
    live = {run_id: s for run_id in run_ids if (s := fold.index.get(run_id)) is not None}
    stored = load([run_id for run_id in run_ids if run_id not in live])
    return [s for run_id in run_ids if (s := live.get(run_id) or stored.get(run_id))]


async def _settle_missing(fold: Fold, fetches: _Fetches, load: Load, *, org: str) -> bool:
    """GET the known runs a complete listing left out: delete the gone, keep the rest.

    Returns whether every missing run was settled (else the next poll lists whole again).
    Raises ViBadResponseError when the listing was broken (see `core.transitions`).
    """
    missing = fold.missing()
    if not missing:
        return True
    known = len(fold.index)
    if listing_looks_broken(len(missing), known):
        sample = await fetches.get(_states(fold, missing[:BROKEN_LISTING_SAMPLE], load))
        there = [s.run_id for s, found in sample if found is not Fetched.GONE]
        if there:
            unknown = all(found is Fetched.FAILED for _, found in sample)
            why = (
                "and none of them could be checked"
                if unknown
                else f"yet run {there[0]} is still there: a broken listing"
            )
            raise ViBadResponseError(
                f"the run listing of organization {org} left out {len(missing)} of {known} "
                f"known runs, {why}; nothing was changed, and runwatch lists again next poll"
            )
    batch = _states(fold, missing[:CONFIRMATIONS_PER_POLL], load)
    gone: list[RunState] = []
    settled = len(batch) == len(missing)
    for state, found in await fetches.get(batch):
        if found is Fetched.GONE:
            gone.append(state)
        elif found is Fetched.UNCHANGED:
            fold.add([], skipped=[state.run_id])  # still there, as known
        elif found is Fetched.FAILED:
            settled = False
        else:
            _add(fold, [found], load)
    fold.delete(gone)
    if gone:
        log.info("runs.deleted", organization_id=org, runs=len(gone))
    return settled


def _outcome(
    kind: PollKind, fold: Fold, fetches: _Fetches, *, pages: int, listed_whole: bool
) -> PollOutcome:
    return PollOutcome(
        kind=kind,
        diff=fold.result(),
        runs_seen=len(fold.seen),
        pages=pages,
        gets=fetches.count,
        listed_whole=listed_whole,
        unfetched=tuple(fetches.failed),
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
