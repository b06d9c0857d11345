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
import bisect
import math
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar, overload

from runwatch.core.model import TERMINAL_CONDITIONS, Event, Run, RunState
from runwatch.core.transitions import Diff, detect_deletions, detect_transitions
from runwatch.errors import ViNotFoundError
from runwatch.vi.client import ViClient
from runwatch.vi.decode import Page

PollKind = Literal["baseline", "full", "incremental"]

_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True, slots=True)
class PollPlan:
    kind: PollKind
    page_size: int
    max_pages: int = 10_000
    max_concurrency: int = 8
    terminal: frozenset[str] = TERMINAL_CONDITIONS


@dataclass(frozen=True, kw_only=True, slots=True)
class PollOutcome:
    """What one poll found. `kind` is what the poll turned out to be: an incremental walk
    that reached the end of the listing is "full" (it concluded deletions)."""

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


class RunIndex(MutableMapping[str, RunState]):
    """The known runs of one workspace by run id, indexed for incremental polls.

    Besides the runs it keeps, updated on every write, the runs not in a built-in terminal
    condition (a configured terminal list only adds to those, so it filters this set) and
    the sorted creation times (the watermark, and how deep in the listing a run sits). New
    creation times are sorted in when next read, in one merge however many came: a
    baseline records 100,000 runs, newest first, and inserting each at the front of a
    sorted list would cost a quadratic memmove. Deletions cost one bisect and a memmove.
    """

    __slots__ = ("_added", "_created", "_runs", "_unfinished")

    def __init__(self, runs: Mapping[str, RunState] | None = None) -> None:
        self._runs: dict[str, RunState] = dict(runs or {})
        self._unfinished: dict[str, RunState] = {
            run_id: s for run_id, s in self._runs.items() if is_active(s, TERMINAL_CONDITIONS)
        }
        self._created: list[int] = sorted(s.time_created for s in self._runs.values())
        self._added: list[int] = []  # creation times not yet merged into _created

    def __getitem__(self, run_id: str) -> RunState:
        return self._runs[run_id]

    @overload
    def get(self, run_id: str, /) -> RunState | None: ...
    @overload
    def get(self, run_id: str, /, default: RunState | _T) -> RunState | _T: ...
    def get(self, run_id: str, /, default: object = None) -> object:
        return self._runs.get(run_id, default)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def __iter__(self) -> Iterator[str]:
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)

    def __setitem__(self, run_id: str, state: RunState) -> None:
        old = self._runs.get(run_id)
        self._runs[run_id] = state
        if old is None:
            self._added.append(state.time_created)
        elif old.time_created != state.time_created:
            self._forget_created(old.time_created)
            self._added.append(state.time_created)
        if is_active(state, TERMINAL_CONDITIONS):
            self._unfinished[run_id] = state
        else:
            self._unfinished.pop(run_id, None)

    def __delitem__(self, run_id: str) -> None:
        old = self._runs.pop(run_id)
        self._unfinished.pop(run_id, None)
        self._forget_created(old.time_created)

    def _sorted_created(self) -> list[int]:
        if self._added:
            # Timsort merges the sorted list and the appended run in linear time.
            self._created.extend(self._added)
            self._added.clear()
            self._created.sort()
        return self._created

    def _forget_created(self, created: int) -> None:
        times = self._sorted_created()
        i = bisect.bisect_left(times, created)
        if i < len(times) and times[i] == created:
            del times[i]

    def as_dict(self) -> Mapping[str, RunState]:
        """The runs, read-only by type, for lookups at dict speed."""
        return self._runs

    def unfinished(self, terminal: frozenset[str]) -> list[RunState]:
        """The runs whose latest condition is not in `terminal` (or that have none)."""
        return [s for s in self._unfinished.values() if is_active(s, terminal)]

    def newest_created(self) -> int | None:
        times = self._sorted_created()
        return times[-1] if times else None

    def created_after(self, time_created: int) -> int:
        """How many known runs were created after `time_created`."""
        times = self._sorted_created()
        return len(times) - bisect.bisect_right(times, time_created)


class _View(Mapping[str, RunState]):
    """The known runs as this poll has updated them so far (its upserts over the index)."""

    __slots__ = ("_base", "_overlay")

    def __init__(self, overlay: dict[str, RunState], base: Mapping[str, RunState]) -> None:
        self._overlay = overlay
        self._base = base

    @overload
    def get(self, run_id: str, /) -> RunState | None: ...
    @overload
    def get(self, run_id: str, /, default: RunState | _T) -> RunState | _T: ...
    def get(self, run_id: str, /, default: object = None) -> object:
        # The hot path of every diff: two C-level lookups, no exception for a miss.
        state = self._overlay.get(run_id)
        return state if state is not None else self._base.get(run_id, default)

    def __getitem__(self, run_id: str) -> RunState:
        state = self.get(run_id)
        if state is None:
            raise KeyError(run_id)
        return state

    def __iter__(self) -> Iterator[str]:
        yield from self._overlay
        yield from (run_id for run_id in self._base if run_id not in self._overlay)

    def __len__(self) -> int:
        return len(self._base) + sum(1 for run_id in self._overlay if run_id not in self._base)


class _Accumulator:
    """Folds page after page into one Diff, each page diffed against the state so far."""

    def __init__(
        self, known: Mapping[str, RunState], *, workspace: str, baseline: bool, now_ms: int
    ):
        self.known = known
        self.overlay: dict[str, RunState] = {}
        self.view = _View(self.overlay, known)
        self.workspace = workspace
        self.baseline = baseline
        self.now_ms = now_ms
        self.events: list[Event] = []
        self.seen: set[str] = set()
        self.unknown = 0  # distinct runs seen that were not known before this poll

    def add(self, runs: Sequence[Run], skipped: tuple[str, ...] = ()) -> None:
        # A run that could not be decoded is still there: it must not look deleted.
        for run_id in (*skipped, *(r.run_id for r in runs)):
            if run_id in self.seen:
                continue
            stored = self.known.get(run_id)
            if stored is None:
                self.unknown += 1
                self.seen.add(run_id)
            else:
                # The known id, not the equal one just decoded: a full listing of 100,000
                # quiet runs then keeps no second copy of every id until it ends.
                self.seen.add(stored.run_id)
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


class _Walk:
    """The listing from page 1, a page at a time, as far as the caller asks.

    It walks `ViClient.list_runs`, so a repeated page token or a listing past the page cap
    fails the poll, as it does a full listing: a walk cut short above the watermark would
    commit the newest runs, move the watermark past the ones it missed and lose them.
    """

    def __init__(self, client: ViClient, acc: _Accumulator, plan: PollPlan) -> None:
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

    `known` is best a `RunIndex` kept across polls; any other mapping is indexed here first.
    """
    index = known if isinstance(known, RunIndex) else RunIndex(known)
    runs = index.as_dict()
    acc = _Accumulator(runs, workspace=workspace, baseline=plan.kind == "baseline", now_ms=now_ms)
    if plan.kind != "incremental":
        pages = 0
        async for page in client.list_runs(plan.page_size, max_pages=plan.max_pages):
            pages += 1
            acc.add(page.runs, page.skipped)
        deletions = None
        if plan.kind == "full":
            deletions = detect_deletions(runs, acc.seen, workspace=workspace, now_ms=now_ms)
        return PollOutcome(
            kind=plan.kind, diff=acc.result(deletions), runs_seen=len(acc.seen), pages=pages, gets=0
        )
    return await _poll_incremental(client, index, acc, plan=plan, now_ms=now_ms)


async def _poll_incremental(
    client: ViClient, index: RunIndex, acc: _Accumulator, *, plan: PollPlan, now_ms: int
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
        stale = [s for s in index.unfinished(plan.terminal) if s.run_id not in acc.seen]
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
        deletions = detect_deletions(
            index.as_dict(), acc.seen, workspace=acc.workspace, now_ms=now_ms
        )
        return PollOutcome(
            kind="full",
            diff=acc.result(deletions),
            runs_seen=len(acc.seen),
            pages=walk.pages,
            gets=0,
        )
    if stale:
        acc.add(await _get_runs(client, stale, plan.max_concurrency))
    return PollOutcome(
        kind="incremental",
        diff=acc.result(),
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
