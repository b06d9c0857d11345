"""What counts as a transition: the diff between what runwatch remembers and what it sees.

Theory of operation
-------------------
A run's state is its *latest condition*: the last element of `status.conditions`. runwatch
remembers one `RunState` per run and, on every poll, compares each observed run with it.
Everything else in the pipeline (rules, outbox, delivery) only acts on what this module
decides, so these are the semantics, in full:

- **Order is the document's own version.** Two API servers' clocks disagree, so condition
  times never decide which of two views is newer. A view is *older* than the one known when
  its `metadata.generation` is lower; when either lacks a generation, when its
  `metadata.lastUpdated` is earlier; when both lack both, it is not older. An older view
  (a lagging replica) is ignored whole: no event, nothing written.
- **Transition.** In a view that is not older, any change of the latest condition's value
  (`condition`) or `status` is a transition, whatever its time says: a Failed dated 5 ms
  before the stored Running, dated a year back, or rewritten in place over Running at the
  same instant; Failed/Waiting becoming Failed/FailedReach. The same condition and status
  at another time is a transition only when the stored latest sits earlier in the observed
  history (the run left and came back: Failed, Running, Failed); otherwise the API rewrote
  a time, which is recorded silently. One Event of kind "transition" with `previous` = the
  stored latest and `current` = the observed latest. A run that had no condition and now has
  one makes a transition with `previous=None`. A view that lost its conditions altogether
  is ignored: conditions are never removed.
- **Nothing new.** The same observation again yields no event. Metadata that moved without
  a condition change (etag, last_updated, log, ...) is an upsert of the RunState and no
  event. A run whose RunState is unchanged yields nothing at all, so a full listing of
  100,000 quiet runs is an empty Diff.
- **Baseline.** A workspace's first poll records every observed run and emits nothing:
  installing runwatch on an organization with 5,000 finished runs sends no message.
- **New run.** A run absent from what is known after the baseline is an Event of kind "new"
  with `previous=None` (a run created and failed between two polls still gets its Failed
  message). A new run with no condition yet is only recorded; its first condition later is
  a "transition" with `previous=None`.
- **Skipped.** When a run moved several steps between two polls, `skipped` holds the
  conditions strictly between the stored latest and the observed latest, oldest first,
  found by locating the stored latest in the observed history. Not found: (). When there
  was no stored latest ("new", or a first condition), everything before the latest.
- **Duplicates in one listing.** Pages shift under the cursor while runs are created, so a
  run may be listed twice; the newer view (by version, as above; then the one with more
  conditions) counts, the other is dropped.
- **Deletion, confirmed.** A listing alone never deletes: a run known but absent from a
  complete listing is only *missing* (`Fold.missing`). It is deleted when a GET of it
  answers 404 (`Fold.delete`, called by the poller), which costs one request per missing
  run and is bounded per poll (`CONFIRMATIONS_PER_POLL`); the rest wait for the next
  complete listing. A listing from which a large share of the known runs is missing at once
  (`listing_looks_broken`) is first checked against a few GETs: if any of those runs is
  still there, the listing was broken (an empty page, a page 1 claiming to be the last,
  items under the wrong key) and the poll fails, changing nothing. A deleted run leaves a
  tombstone (its last state, `deleted_at`) and an Event of kind "deleted" carrying its last
  known condition as `previous` and `current=None`; whether anyone hears of it is up to the
  rules.
- **Reappearing.** A run seen again while a tombstone of it is kept is compared with the
  tombstone: with the same creation time it is the same run (a transition if its condition
  changed meanwhile, else silently restored), never announced as new; with another creation
  time the id was re-created, and it is a new run. Each deletion is its own event.
- **Finished.** A run is finished when its latest condition is terminal: the built-in
  Succeeded, Failed, Error, Cancelled, plus `poll.terminal_conditions` (`terminal_conditions`).
  Finished runs are not re-fetched between full listings; they still count in every diff.
- **runwatch's own observations.** `seen_at` is when runwatch first saw the current latest
  condition, `changed_at` when it last saw the document change; time-rule `marks` of kind
  "for:" live as long as the condition, those of kind "stall:" as long as the document.

Folding a poll (`Fold`): a poll sees its runs page by page, each page diffed against the
known runs as the pages before it changed them, so a run listed twice is one change. A run
that could not be decoded is still there: its id counts as seen, so it is never missing.
Runs go missing only from a complete listing (every page to the last), whatever kind of poll
walked it: a steady-state walk that reached the end of a small listing is as complete as a
full resync, and is recorded as one.

Events take their descriptive fields (flow, project, attributes, log, ...) from the
observation, the workspace name from the configuration, and `detected_at` from the poll's
clock, passed in as `now_ms`: this module reads no clock and does no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeVar

from runwatch.core.model import TERMINAL_CONDITIONS, Condition, Event, EventKind, Run, RunState
from runwatch.core.run_index import Overlay, RunIndex, run_fingerprint

PollKind = Literal["baseline", "full", "incremental"]
_T = TypeVar("_T")

CONFIRMATIONS_PER_POLL = 50  # GETs a poll may spend confirming missing runs deleted
BROKEN_LISTING_SHARE = 0.25  # missing more than this share of the known runs at once ...
BROKEN_LISTING_MIN = 10  # ... and at least this many, and the listing is checked first
BROKEN_LISTING_SAMPLE = 3  # GETs that check such a listing
FOR_MARK, STALL_MARK = "for:", "stall:"
_NO_MARKS: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, kw_only=True, slots=True)
class Diff:
    """What one poll found: events to record and the state changes that go with them.

    `upserts` holds the RunStates to write: new runs, runs whose RunState changed, tombstones
    of deleted runs (`deleted_at` set) and restored runs (a tombstone's run seen again).
    """

    events: tuple[Event, ...]
    upserts: tuple[RunState, ...]


def terminal_conditions(extra: Iterable[str] = ()) -> frozenset[str]:
    """The conditions after which a run is finished: the built-in ones and `extra`."""
    return TERMINAL_CONDITIONS | frozenset(extra)


def choose_kind(
    *, baselined_at: int | None, last_full_listing: int | None, now_ms: int, full_resync_s: float
) -> PollKind:
    """A workspace never polled is due a baseline; one not listed whole for `full_resync_s`
    a full listing; any other an incremental poll."""
    if baselined_at is None:
        return "baseline"
    if last_full_listing is None or now_ms - last_full_listing >= full_resync_s * 1000:
        return "full"
    return "incremental"


def listing_looks_broken(missing: int, known: int) -> bool:
    """True when a complete listing misses so many known runs at once that it is suspect."""
    return missing >= BROKEN_LISTING_MIN and missing > BROKEN_LISTING_SHARE * known


def is_older(run: Run, stored: RunState) -> bool:
    """True when `run` is an older view of the document than the one `stored` records."""
    if run.generation is not None and stored.generation is not None:
        return run.generation < stored.generation
    if run.last_updated is not None and stored.last_updated is not None:
        return run.last_updated < stored.last_updated
    return False


def state_of(run: Run, stored: RunState | None = None, *, now_ms: int = 0) -> RunState:
    """What runwatch remembers of an observed run, carrying over its own observations."""
    latest = run.latest
    seen_at = changed_at = now_ms
    marks: Mapping[str, int] = _NO_MARKS
    if stored is not None and _same_entry(run, stored):
        seen_at = stored.seen_at if stored.seen_at is not None else now_ms
        marks = stored.marks
        if (
            run.etag == stored.etag
            and run.generation == stored.generation
            and run.last_updated == stored.last_updated
        ):
            changed_at = stored.changed_at if stored.changed_at is not None else now_ms
        elif any(k.startswith(STALL_MARK) for k in marks):
            marks = {k: v for k, v in marks.items() if not k.startswith(STALL_MARK)}
    return RunState(
        organization_id=run.organization_id,
        run_id=run.run_id,
        latest=latest,
        time_created=run.time_created,
        last_updated=run.last_updated,
        generation=run.generation,
        flow_name=run.flow_name,
        training_project=run.training_project,
        etag=run.etag,
        log=run.log,
        killed_at=run.killed_at,
        attributes=run.attributes,
        seen_at=seen_at,
        changed_at=changed_at,
        marks=marks,
    )


def _same_entry(run: Run, stored: RunState) -> bool:
    """Whether the run still holds the condition it held (it did not leave and come back)."""
    latest, before = run.latest, stored.latest
    if latest is None or before is None:
        return latest is None and before is None
    if latest.same_state(before):
        return True
    return latest.same_value(before) and _position(run.conditions, before) is None


def detect_transitions(
    known: Mapping[str, RunState],
    observed: Iterable[Run],
    *,
    workspace: str,
    baseline: bool,
    now_ms: int,
    tombstones: Mapping[str, RunState] | None = None,
) -> Diff:
    """Compare observed runs with the remembered ones; see the module docstring."""
    runs = _one_per_run(observed)
    if baseline:
        recorded = (state_of(r, known.get(r.run_id), now_ms=now_ms) for r in runs.values())
        return Diff(events=(), upserts=tuple(recorded))

    events: list[Event] = []
    upserts: list[RunState] = []
    for run in runs.values():
        stored = known.get(run.run_id)
        if stored is None and tombstones:
            tomb = tombstones.get(run.run_id)
            if tomb is not None and tomb.time_created == run.time_created:
                stored = dataclasses.replace(tomb, deleted_at=None)  # the same run, back
        if stored is None:
            latest = run.latest
            if latest is not None:
                events.append(_event("new", run, workspace, None, latest, now_ms))
            upserts.append(state_of(run, None, now_ms=now_ms))
            continue
        if is_older(run, stored):
            continue  # a lagging replica: it would only undo what is known
        state = state_of(run, stored, now_ms=now_ms)
        if state == stored and known.get(run.run_id) is not None:
            continue  # the common case: a quiet run, nothing to do
        previous, latest = stored.latest, run.latest
        if latest is None:
            if previous is None:
                upserts.append(state)
            continue  # a view without conditions: they are never removed
        if _changed(latest, previous, run.conditions):
            events.append(_event("transition", run, workspace, previous, latest, now_ms))
        upserts.append(state)
    return Diff(events=tuple(events), upserts=tuple(upserts))


def deletion_event(state: RunState, *, workspace: str, now_ms: int) -> Event:
    """The event of a run confirmed deleted: its last known condition as `previous`."""
    return event_of_state(state, "deleted", workspace=workspace, now_ms=now_ms)


def event_of_state(state: RunState, kind: EventKind, *, workspace: str, now_ms: int) -> Event:
    """An event about a remembered run, not an observation: a deletion (the last condition
    known as `previous`) or an overdue notice (the condition it holds as `current`)."""
    deleted = kind == "deleted"
    return Event(
        kind=kind,
        workspace=workspace,
        organization_id=state.organization_id,
        run_id=state.run_id,
        previous=state.latest if deleted else None,
        current=None if deleted else state.latest,
        flow_name=state.flow_name,
        training_project=state.training_project,
        attributes=state.attributes,
        time_created=state.time_created,
        killed_at=state.killed_at,
        log=state.log,
        generation=state.generation,
        detected_at=now_ms,
    )


class Fold:
    """Folds the pages (and single GETs) of one poll into one Diff; see the module docstring.

    The index keeps finished runs as fingerprints only: before a batch of runs is added, the
    shell asks `needs(runs)` which finished runs changed since they were recorded, and
    `supply`s their stored states, so that every diff sees a whole state.
    """

    def __init__(
        self, index: RunIndex, *, workspace: str, baseline: bool, now_ms: int
    ) -> None:
        self.index = index
        self.view = Overlay(index)
        self.loaded = self.view.supplied  # finished runs' stored states, as supplied
        self.tombstones = index.tombstones
        self.workspace = workspace
        self.baseline = baseline
        self.now_ms = now_ms
        self.events: list[Event] = []
        self.seen: set[str] = set()
        self.unknown = 0  # distinct runs seen that were not known before this poll

    def needs(self, runs: Sequence[Run]) -> list[str]:
        """The finished runs among `runs` that changed since recorded (whose states to supply)."""
        return [run.run_id for run in runs if self._changed_finished(run)]

    def supply(self, states: Mapping[str, RunState]) -> None:
        self.loaded.update(states)

    def add(self, runs: Sequence[Run], skipped: Sequence[str] = ()) -> None:
        """Fold in what one response showed: decoded runs, and ids it could not decode."""
        index = self.index
        for run_id in skipped:
            if run_id not in self.seen:
                self.seen.add(run_id)
                self.unknown += run_id not in index
        fresh: list[Run] = []
        for run in runs:
            run_id = run.run_id
            if run_id not in self.seen:
                self.seen.add(run_id)
                self.unknown += run_id not in index
            fp = index.finished_fingerprint(run_id)
            if fp is not None and run_id not in self.loaded and run_id not in self.view.changes:
                if run_fingerprint(run) == fp:
                    continue  # a finished run, quiet: the common case of a full listing
                raise LookupError(f"run {run_id} changed, and its stored state was not supplied")
            fresh.append(run)
        diff = detect_transitions(
            self.view,
            fresh,
            workspace=self.workspace,
            baseline=self.baseline,
            now_ms=self.now_ms,
            tombstones=self.tombstones,
        )
        self.events.extend(diff.events)
        for state in diff.upserts:
            self.view.changes[state.run_id] = state

    def missing(self) -> list[str]:
        """Known runs this poll has not seen, newest first: after a complete listing, the
        candidates for deletion (never on the baseline, which has nothing known)."""
        if self.baseline:
            return []
        index = self.index
        gone = [run_id for run_id in index if run_id not in self.seen]
        gone.sort(key=lambda run_id: index.time_created(run_id) or 0, reverse=True)
        return gone

    def delete(self, states: Iterable[RunState]) -> None:
        """Runs confirmed deleted (a GET answered 404): tombstones and "deleted" events."""
        for state in states:
            current = self.view.get(state.run_id) or state
            self.events.append(
                deletion_event(current, workspace=self.workspace, now_ms=self.now_ms)
            )
            self.view.changes[state.run_id] = dataclasses.replace(current, deleted_at=self.now_ms)
            self.seen.add(state.run_id)

    def drain(self) -> list[RunState]:
        """The states recorded so far, handed over and forgotten (a baseline commits them in
        parts, so 100,000 runs are never all in memory at once)."""
        states = list(self.view.changes.values())
        self.view.changes.clear()
        return states

    def result(self) -> Diff:
        return Diff(events=tuple(self.events), upserts=tuple(self.view.changes.values()))

    def _changed_finished(self, run: Run) -> bool:
        fp = self.index.finished_fingerprint(run.run_id)
        return (
            fp is not None
            and run.run_id not in self.loaded
            and run.run_id not in self.view.changes
            and run_fingerprint(run) != fp
        )


def _changed(latest: Condition, previous: Condition | None, history: tuple[Condition, ...]) -> bool:
    """Whether the observed latest condition is a transition from the stored one."""
    if previous is None:
        return True
    if not latest.same_value(previous):
        return True  # a new condition or status, whatever its time says
    if latest.last_transition_time == previous.last_transition_time:
        return False
    return _position(history, previous) is not None  # left and came back; else a new time


def _one_per_run(observed: Iterable[Run]) -> dict[str, Run]:
    """Each run once: of two observations of one run, the newer one."""
    runs: dict[str, Run] = {}
    for run in observed:
        other = runs.get(run.run_id)
        if other is None or _newer(run, other):
            runs[run.run_id] = run
    return runs


def _newer(a: Run, b: Run) -> bool:
    if a.generation is not None and b.generation is not None and a.generation != b.generation:
        return a.generation > b.generation
    return (a.last_updated or 0, len(a.conditions)) > (b.last_updated or 0, len(b.conditions))


def _position(history: tuple[Condition, ...], wanted: Condition) -> int | None:
    """Index of `wanted` in `history` before its last element, searching newest first."""
    for i in range(len(history) - 2, -1, -1):
        if history[i].same_state(wanted):
            return i
    return None


def _skipped(history: tuple[Condition, ...], previous: Condition | None) -> tuple[Condition, ...]:
    if previous is None:
        return history[:-1]
    i = _position(history, previous)
    return () if i is None else history[i + 1 : -1]


def _event(
    kind: EventKind,
    run: Run,
    workspace: str,
    previous: Condition | None,
    current: Condition,
    now_ms: int,
) -> Event:
    return Event(
        kind=kind,
        workspace=workspace,
        organization_id=run.organization_id,
        run_id=run.run_id,
        previous=previous,
        current=current,
        skipped=_skipped(run.conditions, previous),
        history=run.conditions,
        flow_name=run.flow_name,
        training_project=run.training_project,
        attributes=run.attributes,
        time_created=run.time_created,
        killed_at=run.killed_at,
        log=run.log,
        generation=run.generation,
        detected_at=now_ms,
    )
