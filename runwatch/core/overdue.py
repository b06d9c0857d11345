"""Time in state: which runs have held their condition, or stood still, for too long. Pure.

Theory of operation
-------------------
A time-in-state rule (`match.for` or `match.stalled_for`, see `core.rules`) is decided from
what the polls already know, with the poll's `now_ms` passed in: it costs no request. On
every poll but a baseline, each unfinished run is checked against each time rule:

- **Since when.** `for` counts from the latest condition's `lastTransitionTime`; when that
  time is missing (0) or ahead of runwatch's clock (another server's clock), from `seen_at`,
  when runwatch first saw the condition. `stalled_for` counts from `metadata.lastUpdated`
  when it is plausible (set, not ahead of runwatch's clock), else from `changed_at`, when
  runwatch last saw the document change.
- **Which runs.** The rule's other criteria must accept the run as last known (condition,
  status, workspace, flow, project, attributes; `previous` never does: an overdue event has
  none). Finished runs are never checked, and a run without a condition has no time in one.
- **Due.** The first notice (`reminder` 0) is due once the run has held for the threshold,
  and with `repeat` notice k at threshold + k × repeat, for as long as it holds.
- **Once.** The run's `marks` count the notices given for the current entry, one key per
  rule: `for:NAME` (kept by `transitions.state_of` while the condition holds) or
  `stall:NAME` (kept while the document does not change). When more than one notice is due
  that was not given (a restart, an outage, a run found already overdue at the first poll
  after its baseline) only the latest is given: one message, not a flood.
- **Stops.** A run that moved on no longer matches its rule (and its marks are dropped with
  the old entry); a finished run is not checked again.
- **Committed with the poll.** `with_overdue` adds the events, and the RunStates carrying
  the new marks, to the poll's Diff: one transaction records both, so a crash before it
  loses nothing (the notice is decided again) and a restart after it repeats nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runwatch.core.model import Event, RunState
from runwatch.core.rules import Rule, matches
from runwatch.core.run_index import is_unfinished
from runwatch.core.transitions import FOR_MARK, STALL_MARK, Diff, event_of_state


@dataclass(frozen=True, kw_only=True, slots=True)
class Timing:
    """What the time rules found due: the overdue events, and the runs with their new marks."""

    events: tuple[Event, ...]
    marked: tuple[RunState, ...]


def timed_rules(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """The rules with `for` or `stalled_for`, in order."""
    return tuple(rule for rule in rules if rule.match.timed)


def mark_of(rule: Rule) -> str:
    """The key in `RunState.marks` that counts the notices `rule` gave for a run."""
    return (FOR_MARK if rule.match.for_ is not None else STALL_MARK) + rule.name


def since(state: RunState, rule: Rule, now_ms: int) -> int | None:
    """When the time `rule` measures began for `state` (epoch ms), or None if it has none."""
    latest = state.latest
    if latest is None:
        return None
    if rule.match.for_ is not None:
        entered = latest.last_transition_time
        if 0 < entered <= now_ms:
            return entered
        return state.seen_at
    updated = state.last_updated
    if updated is not None and 0 < updated <= now_ms:
        return updated
    return state.changed_at


def overdue(
    states: Iterable[RunState], rules: Sequence[Rule], *, workspace: str, now_ms: int
) -> Timing:
    """The notices due now for `states` (unfinished runs) under the time rules of `rules`."""
    timed = timed_rules(rules)
    events: list[Event] = []
    marked: list[RunState] = []
    if not timed:
        return Timing(events=(), marked=())
    for state in states:
        probe: Event | None = None  # built once a rule's time is up: most runs never need it
        marks: dict[str, int] | None = None
        for rule in timed:
            start = since(state, rule, now_ms)
            threshold = rule.match.for_ if rule.match.for_ is not None else rule.match.stalled_for
            if start is None or threshold is None:
                continue
            elapsed = now_ms - start
            threshold_ms = int(threshold * 1000)
            if elapsed < threshold_ms:
                continue
            due = 1
            if rule.repeat:
                due += (elapsed - threshold_ms) // int(rule.repeat * 1000)
            key = mark_of(rule)
            if due <= (marks if marks is not None else state.marks).get(key, 0):
                continue  # told already
            if probe is None:
                probe = _event(state, workspace, now_ms)
            if not matches(rule.match, probe):
                continue
            events.append(
                dataclasses.replace(
                    probe, rule=rule.name, elapsed_s=elapsed // 1000, reminder=due - 1
                )
            )
            if marks is None:
                marks = dict(state.marks)
            marks[key] = due
        if marks is not None:
            marked.append(dataclasses.replace(state, marks=marks))
    return Timing(events=tuple(events), marked=tuple(marked))


def with_overdue(
    diff: Diff,
    unfinished: Iterable[RunState],
    rules: Sequence[Rule],
    *,
    workspace: str,
    now_ms: int,
    terminal: frozenset[str],
) -> Diff:
    """`diff` (one poll's changes) with the overdue notices due now added, decided on the
    runs as that poll left them: `unfinished` (known before it) updated by its upserts."""
    if not timed_rules(rules):
        return diff
    changed = {state.run_id: state for state in diff.upserts}
    runs = {state.run_id: changed.get(state.run_id, state) for state in unfinished}
    for state in diff.upserts:
        runs.setdefault(state.run_id, state)
    timing = overdue(
        (s for s in runs.values() if s.deleted_at is None and is_unfinished(s, terminal)),
        rules,
        workspace=workspace,
        now_ms=now_ms,
    )
    if not timing.events:
        return diff
    changed.update((state.run_id, state) for state in timing.marked)
    return Diff(events=diff.events + timing.events, upserts=tuple(changed.values()))


def _event(state: RunState, workspace: str, now_ms: int) -> Event:
    return event_of_state(state, "overdue", workspace=workspace, now_ms=now_ms)
