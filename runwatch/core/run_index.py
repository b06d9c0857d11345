"""The runs known of one workspace, kept at the cost of what can still change.

Pure data structures, no I/O. Most of a workspace's runs are finished and never change
again, so `RunIndex` keeps a full `RunState` only for the unfinished ones; of a finished run
it keeps its creation time and a fingerprint of what the API said of it (`fingerprint`), in
one integer. A full listing compares each finished run it sees with its fingerprint: equal,
and the run is quiet (the common case, costing no object at all); different, and the shell
loads that run's stored state to diff it (rare: a finished run that changed again).
Besides, the index keeps the sorted creation times (the watermark, and how deep in the
listing a run sits) in a compact array, and tombstones of runs confirmed deleted.

100,000 known runs then cost about 250 bytes each instead of a RunState's ~700: the daemon's
memory grows with what can change, not with history.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeVar, overload

from runwatch.core.model import Condition, Run, RunState

_T = TypeVar("_T")
_FP_BITS = 64
_FP_MASK = (1 << _FP_BITS) - 1


def is_unfinished(state: RunState, terminal: frozenset[str]) -> bool:
    """A run whose latest condition is not in `terminal` (or that has none) may still change."""
    return state.latest is None or state.latest.condition not in terminal


def fingerprint(state: RunState) -> int:
    """A 64-bit digest of everything the API said of a run (not runwatch's own observations).

    Two states with the same fingerprint are, but for a 2^-64 chance, the same to a diff:
    `fingerprint(state_of(run, stored)) == fingerprint(stored)` exactly when the
    observation changes nothing but runwatch's own fields. Python's hash is salted per
    process, so fingerprints are computed at load, never stored.
    """
    return _digest(
        state.latest,
        (state.time_created, state.last_updated, state.generation, state.flow_name),
        (state.training_project, state.etag, state.log, state.killed_at),
        state.attributes,
    )


def run_fingerprint(run: Run) -> int:
    """`fingerprint` of what runwatch would remember of an observed run."""
    return _digest(
        run.latest,
        (run.time_created, run.last_updated, run.generation, run.flow_name),
        (run.training_project, run.etag, run.log, run.killed_at),
        run.attributes,
    )


def _digest(
    c: Condition | None,
    times: tuple[object, ...],
    names: tuple[object, ...],
    attributes: Mapping[str, str],
) -> int:
    latest = (
        None if c is None else (c.condition, c.status, c.last_transition_time, c.reason, c.message)
    )
    return observed_fingerprint(latest, times, names, attributes)


def observed_fingerprint(
    latest: tuple[object, ...] | None,
    times: tuple[object, ...],
    names: tuple[object, ...],
    attributes: Mapping[str, str],
) -> int:
    """`run_fingerprint` from plain values, for a decoder that has not built a Run:
    `latest` is (condition, status, last_transition_time, reason, message) or None,
    `times` (time_created, last_updated, generation, flow_name), `names`
    (training_project, etag, log, killed_at)."""
    labels = tuple(sorted(attributes.items())) if attributes else ()
    return hash((latest, times, names, labels)) & _FP_MASK


class RunIndex:
    """The known runs of one workspace by run id; `terminal` says which ones are finished.

    New creation times are sorted in when next read, in one merge however many came: a
    baseline records 100,000 runs, newest first, and inserting each at the front of a
    sorted array would cost a quadratic memmove. Deletions cost one bisect and a memmove.
    """

    __slots__ = ("_added", "_created", "_finished", "_live", "terminal", "tombstones")

    def __init__(
        self,
        runs: Iterable[RunState] = (),
        *,
        terminal: frozenset[str],
        tombstones: Mapping[str, RunState] | None = None,
    ) -> None:
        self.terminal = terminal
        self._live: dict[str, RunState] = {}  # unfinished runs, whole
        self._finished: dict[str, int] = {}  # finished runs: time_created << 64 | fingerprint
        self._created = array("q")
        self._added: list[int] = []  # creation times not yet merged into _created
        # Runs confirmed deleted, kept so that one seen again is compared, not announced.
        self.tombstones: dict[str, RunState] = dict(tombstones or {})
        for state in runs:
            self.record(state)

    # -- what a diff asks -----------------------------------------------------------------

    @overload
    def get(self, run_id: str, /) -> RunState | None: ...
    @overload
    def get(self, run_id: str, /, default: RunState | _T) -> RunState | _T: ...
    def get(self, run_id: str, /, default: object = None) -> object:
        """The whole state of an unfinished run (finished runs are kept as fingerprints)."""
        return self._live.get(run_id, default)

    def finished_fingerprint(self, run_id: str) -> int | None:
        """The fingerprint of a finished run, or None when the run is not a finished one."""
        packed = self._finished.get(run_id)
        return None if packed is None else packed & _FP_MASK

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._live or run_id in self._finished

    def __iter__(self) -> Iterator[str]:
        yield from self._live
        yield from self._finished

    def __len__(self) -> int:
        return len(self._live) + len(self._finished)

    def time_created(self, run_id: str) -> int | None:
        state = self._live.get(run_id)
        if state is not None:
            return state.time_created
        packed = self._finished.get(run_id)
        return None if packed is None else packed >> _FP_BITS

    def fingerprints(self) -> dict[str, int]:
        """Every known run's fingerprint (to compare two moments of the index)."""
        out = {run_id: fingerprint(s) for run_id, s in self._live.items()}
        out.update((run_id, p & _FP_MASK) for run_id, p in self._finished.items())
        return out

    # -- keeping it up to date --------------------------------------------------------------

    def record(self, state: RunState) -> None:
        """Take in one committed RunState: a live run, a finished one, or a tombstone."""
        run_id = state.run_id
        if state.deleted_at is not None:
            self.forget(run_id)
            self.tombstones[run_id] = state
            return
        self.tombstones.pop(run_id, None)
        old = self.time_created(run_id)
        if old is None:
            self._added.append(state.time_created)
        elif old != state.time_created:
            self._forget_created(old)
            self._added.append(state.time_created)
        if is_unfinished(state, self.terminal):
            self._finished.pop(run_id, None)
            self._live[run_id] = state
        else:
            self._live.pop(run_id, None)
            self._finished[run_id] = (state.time_created << _FP_BITS) | fingerprint(state)

    def forget(self, run_id: str) -> None:
        created = self.time_created(run_id)
        if created is None:
            return
        self._live.pop(run_id, None)
        self._finished.pop(run_id, None)
        self._forget_created(created)

    def _sorted_created(self) -> array[int]:
        if self._added:
            merged = self._created.tolist()
            merged.extend(self._added)
            merged.sort()  # one merge: Timsort finds the sorted runs in it
            self._created = array("q", merged)
            self._added.clear()
        return self._created

    def _forget_created(self, created: int) -> None:
        times = self._sorted_created()
        i = bisect.bisect_left(times, created)
        if i < len(times) and times[i] == created:
            del times[i]

    # -- what the poller asks --------------------------------------------------------------

    def unfinished(self) -> list[RunState]:
        """The runs that may still change (see `is_unfinished`)."""
        return list(self._live.values())

    def newest_created(self, *, not_after: int | None = None) -> int | None:
        """The newest creation time known, ignoring any later than `not_after`."""
        times = self._sorted_created()
        if not_after is None:
            return times[-1] if times else None
        i = bisect.bisect_right(times, not_after)
        return times[i - 1] if i else None

    def created_after(self, time_created: int) -> int:
        """How many known runs were created after `time_created`."""
        times = self._sorted_created()
        return len(times) - bisect.bisect_right(times, time_created)


class Overlay(Mapping[str, RunState]):
    """The known runs as one poll sees them: what it changed so far, then the whole states it
    was supplied (finished runs it needs), then the index's unfinished runs."""

    __slots__ = ("_index", "changes", "supplied")

    def __init__(self, index: RunIndex) -> None:
        self.changes: dict[str, RunState] = {}
        self.supplied: dict[str, RunState] = {}
        self._index = index

    @overload
    def get(self, run_id: str, /) -> RunState | None: ...
    @overload
    def get(self, run_id: str, /, default: RunState | _T) -> RunState | _T: ...
    def get(self, run_id: str, /, default: object = None) -> object:
        # The hot path of every diff: C-level lookups, no exception for a miss.
        state = self.changes.get(run_id) or self.supplied.get(run_id)
        return state if state is not None else self._index.get(run_id, default)

    def __getitem__(self, run_id: str) -> RunState:
        state = self.get(run_id)
        if state is None:
            raise KeyError(run_id)
        return state

    def __iter__(self) -> Iterator[str]:
        yield from self.changes
        yield from (run_id for run_id in self._index if run_id not in self.changes)

    def __len__(self) -> int:
        return len(self._index) + sum(1 for run_id in self.changes if run_id not in self._index)
