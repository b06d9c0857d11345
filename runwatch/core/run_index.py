"""The runs known of one workspace, indexed for what a poll asks of them.

Pure data structures, no I/O. `RunIndex` keeps every known run by id and, updated on every
write, the unfinished ones and the sorted creation times (the watermark, and how deep in the
listing a run sits), so a steady-state poll of 100,000 known runs never scans them all.
`Overlay` is that index as one poll has changed it so far, before anything is committed.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TypeVar, overload

from runwatch.core.model import RunState

_T = TypeVar("_T")


def is_unfinished(state: RunState, terminal: frozenset[str]) -> bool:
    """A run whose latest condition is not in `terminal` (or that has none) may still change."""
    return state.latest is None or state.latest.condition not in terminal


class RunIndex(MutableMapping[str, RunState]):
    """The known runs of one workspace by run id; `terminal` says which ones are finished.

    New creation times are sorted in when next read, in one merge however many came: a
    baseline records 100,000 runs, newest first, and inserting each at the front of a
    sorted list would cost a quadratic memmove. Deletions cost one bisect and a memmove.
    """

    __slots__ = ("_added", "_created", "_runs", "_unfinished", "terminal", "tombstones")

    def __init__(
        self,
        runs: Mapping[str, RunState],
        *,
        terminal: frozenset[str],
        tombstones: Mapping[str, RunState] | None = None,
    ) -> None:
        self.terminal = terminal
        # Runs confirmed deleted, kept so that one seen again is compared, not announced.
        self.tombstones: dict[str, RunState] = dict(tombstones or {})
        self._runs: dict[str, RunState] = dict(runs)
        self._unfinished: dict[str, RunState] = {
            run_id: s for run_id, s in self._runs.items() if is_unfinished(s, terminal)
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
        if is_unfinished(state, self.terminal):
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

    def record(self, state: RunState) -> None:
        """Take in one committed RunState: a live run, or a tombstone (`deleted_at` set)."""
        if state.deleted_at is None:
            self.tombstones.pop(state.run_id, None)
            self[state.run_id] = state
        else:
            self.pop(state.run_id, None)
            self.tombstones[state.run_id] = state

    def as_dict(self) -> Mapping[str, RunState]:
        """The runs, read-only by type, for lookups at dict speed."""
        return self._runs

    def unfinished(self) -> list[RunState]:
        """The runs that may still change (see `is_unfinished`)."""
        return list(self._unfinished.values())

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
    """The known runs as this poll has updated them so far (its upserts over the index)."""

    __slots__ = ("_base", "changes")

    def __init__(self, base: Mapping[str, RunState]) -> None:
        self.changes: dict[str, RunState] = {}
        self._base = base

    @overload
    def get(self, run_id: str, /) -> RunState | None: ...
    @overload
    def get(self, run_id: str, /, default: RunState | _T) -> RunState | _T: ...
    def get(self, run_id: str, /, default: object = None) -> object:
        # The hot path of every diff: two C-level lookups, no exception for a miss.
        state = self.changes.get(run_id)
        return state if state is not None else self._base.get(run_id, default)

    def __getitem__(self, run_id: str) -> RunState:
        state = self.get(run_id)
        if state is None:
            raise KeyError(run_id)
        return state

    def __iter__(self) -> Iterator[str]:
        yield from self.changes
        yield from (run_id for run_id in self._base if run_id not in self.changes)

    def __len__(self) -> int:
        return len(self._base) + sum(1 for run_id in self.changes if run_id not in self._base)
