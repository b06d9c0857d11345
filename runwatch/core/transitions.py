"""What counts as a transition: the diff between what runwatch remembers and what it sees.

Theory of operation
-------------------
A run's state is its *latest condition*: the last element of `status.conditions`. runwatch
remembers one `RunState` per run (`state_of`) and, on every poll, compares each observed run
with it. Everything else in the pipeline (rules, outbox, delivery) only acts on what this
module decides, so these are the semantics, in full:

- **Transition.** The latest condition changed: a different `condition`, `status` or
  `last_transition_time` (`Condition.same_state`). One Event of kind "transition" with
  `previous` = the stored latest and `current` = the observed latest. A run that had no
  condition and now has one makes a transition with `previous=None`.
- **Nothing new.** The same observation again yields no event. Metadata that moved without
  a condition change (etag, last_updated, log, ...) is an upsert of the RunState and no
  event. A run whose RunState is unchanged yields nothing at all, so a full listing of
  100,000 quiet runs is an empty Diff.
- **Baseline.** A workspace's first poll records every observed run and emits nothing:
  installing runwatch on an organization with 5,000 finished runs sends no message.
- **New run.** A run absent from `known` after the baseline is an Event of kind "new" with
  `previous=None` (a run created and failed between two polls still gets its Failed
  message). A new run with no condition yet is only recorded; its first condition later is
  a "transition" with `previous=None`.
- **Skipped.** When a run moved several steps between two polls, `skipped` holds the
  conditions strictly between the stored latest and the observed latest, oldest first,
  found by locating the stored latest in the observed history. Not found: (). When there
  was no stored latest ("new", or a first condition), everything before the latest.
- **Stale read.** The API is eventually consistent: a replica may answer with an older
  view of a run than one already seen. Such an observation is ignored (no event, no upsert)
  so runwatch never flip-flops back and notifies the same change twice. An observation is
  stale when its latest condition is older than the stored one, or equally old but a
  different state that does not have the stored one in its history (two views of the same
  millisecond: only one that has seen the stored state can be newer than it), or when it
  has lost its conditions altogether. Metadata is stale when the condition is unchanged and
  `last_updated` went backwards: nothing is written.
- **Duplicates in one listing.** Pages shift under the cursor while runs are created, so a
  run may be listed twice; the observation with the greater `(last_updated or 0,
  len(conditions))` counts, the other is dropped.
- **Deletion.** A run known but absent from a complete listing was deleted
  (`detect_deletions`): it is dropped from state and an Event of kind "deleted" carries
  its last known condition as `previous` and `current=None`. Whether anyone hears of it is
  up to the rules.
- **Finished.** A run is finished when its latest condition is terminal: the built-in
  Succeeded, Failed, Error, Cancelled, plus `poll.terminal_conditions` (`terminal_conditions`).
  Finished runs are not re-fetched between full listings; they still count in every diff.

Folding a poll (`Fold`): a poll sees its runs page by page, each page diffed against the
known runs as the pages before it changed them, so a run listed twice is one change. A run
that could not be decoded is still there: its id counts as seen, so it never looks deleted.
Deletions are concluded only from a complete listing (every page to the last), whatever kind
of poll walked it: a steady-state walk that reached the end of a small listing is as
complete as a full resync, and is recorded as one (`Fold.result(complete=True)`).

Events take their descriptive fields (flow, project, attributes, log, ...) from the
observation, the workspace name from the configuration, and `detected_at` from the poll's
clock, passed in as `now_ms`: this module reads no clock and does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Literal

from runwatch.core.model import TERMINAL_CONDITIONS, Condition, Event, EventKind, Run, RunState
from runwatch.core.run_index import Overlay

PollKind = Literal["baseline", "full", "incremental"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Diff:
    """What one poll found: events to record and the state changes that go with them."""

    events: tuple[Event, ...]
    upserts: tuple[RunState, ...]  # RunStates to write: new runs and runs whose RunState changed
    deleted: tuple[str, ...]  # run ids to drop from state


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


def state_of(run: Run) -> RunState:
    """What runwatch remembers of an observed run."""
    return RunState(
        organization_id=run.organization_id,
        run_id=run.run_id,
        latest=run.latest,
        time_created=run.time_created,
        last_updated=run.last_updated,
        flow_name=run.flow_name,
        training_project=run.training_project,
        etag=run.etag,
        log=run.log,
        killed_at=run.killed_at,
        attributes=run.attributes,
    )


def detect_transitions(
    known: Mapping[str, RunState],
    observed: Iterable[Run],
    *,
    workspace: str,
    baseline: bool,
    now_ms: int,
) -> Diff:
    """Compare observed runs with the remembered ones; see the module docstring."""
    runs = _one_per_run(observed)
    if baseline:
        return Diff(events=(), upserts=tuple(state_of(r) for r in runs.values()), deleted=())

    events: list[Event] = []
    upserts: list[RunState] = []
    for run in runs.values():
        stored = known.get(run.run_id)
        if stored is None:
            latest = run.latest
            if latest is not None:
                events.append(_event("new", run, workspace, None, latest, now_ms))
            upserts.append(state_of(run))
            continue
        state = state_of(run)
        if state == stored:  # the common case: a quiet run, nothing to do
            continue
        previous, latest = stored.latest, run.latest
        if _same(latest, previous):
            # Metadata moved without a condition change; a stale replica's metadata (older
            # last_updated) would only undo a newer write, so it is dropped.
            if not _older(run.last_updated, stored.last_updated):
                upserts.append(state)
            continue
        if latest is None or _is_stale(latest, run.conditions, previous):
            continue  # a stale read; a view without conditions too: they are never removed
        events.append(_event("transition", run, workspace, previous, latest, now_ms))
        upserts.append(state)
    return Diff(events=tuple(events), upserts=tuple(upserts), deleted=())


def detect_deletions(
    known: Mapping[str, RunState],
    seen: Set[str],
    *,
    workspace: str,
    now_ms: int,
) -> Diff:
    """Every known run missing from a complete listing (`seen` holds its run ids) was deleted."""
    gone = [state for run_id, state in known.items() if run_id not in seen]
    events = tuple(
        Event(
            kind="deleted",
            workspace=workspace,
            organization_id=state.organization_id,
            run_id=state.run_id,
            previous=state.latest,
            current=None,
            flow_name=state.flow_name,
            training_project=state.training_project,
            attributes=state.attributes,
            time_created=state.time_created,
            killed_at=state.killed_at,
            log=state.log,
            detected_at=now_ms,
        )
        for state in gone
    )
    return Diff(events=events, upserts=(), deleted=tuple(s.run_id for s in gone))


def _one_per_run(observed: Iterable[Run]) -> dict[str, Run]:
    """Each run once: of two observations of one run, the fresher one."""
    runs: dict[str, Run] = {}
    for run in observed:
        other = runs.get(run.run_id)
        if other is None or _freshness(run) > _freshness(other):
            runs[run.run_id] = run
    return runs


def _freshness(run: Run) -> tuple[int, int]:
    return (run.last_updated or 0, len(run.conditions))


def _older(observed: int | None, stored: int | None) -> bool:
    return observed is not None and stored is not None and observed < stored


def _same(a: Condition | None, b: Condition | None) -> bool:
    return b is None if a is None else a.same_state(b)


def _is_stale(latest: Condition, history: tuple[Condition, ...], stored: Condition | None) -> bool:
    """True when an observation whose latest condition changed is behind the stored one."""
    if stored is None:
        return False
    if latest.last_transition_time != stored.last_transition_time:
        return latest.last_transition_time < stored.last_transition_time
    return _position(history, stored) is None


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
        flow_name=run.flow_name,
        training_project=run.training_project,
        attributes=run.attributes,
        time_created=run.time_created,
        killed_at=run.killed_at,
        log=run.log,
        detected_at=now_ms,
    )


class Fold:
    """Folds the pages (and single GETs) of one poll into one Diff; see the module docstring."""

    def __init__(
        self, known: Mapping[str, RunState], *, workspace: str, baseline: bool, now_ms: int
    ) -> None:
        self.known = known
        self.view = Overlay(known)
        self.workspace = workspace
        self.baseline = baseline
        self.now_ms = now_ms
        self.events: list[Event] = []
        self.seen: set[str] = set()
        self.unknown = 0  # distinct runs seen that were not known before this poll

    def add(self, runs: Sequence[Run], skipped: Sequence[str] = ()) -> None:
        """Fold in what one response showed: decoded runs, and ids it could not decode."""
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
            self.view.changes[state.run_id] = state

    def result(self, *, complete: bool) -> Diff:
        """The poll's Diff; `complete`: the listing was walked to its end (deletions count)."""
        events = list(self.events)
        gone: tuple[str, ...] = ()
        if complete and not self.baseline:
            deleted = detect_deletions(
                self.known, self.seen, workspace=self.workspace, now_ms=self.now_ms
            )
            events.extend(deleted.events)
            gone = deleted.deleted
        return Diff(events=tuple(events), upserts=tuple(self.view.changes.values()), deleted=gone)
