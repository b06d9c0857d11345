"""Digests: a burst of messages for one channel, sent as one message that says what happened.

Theory: a digest is about runs, not events. Its events come in send order, a run possibly
several times (oldest first); each run is one line, with the path it took when it moved
more than once (`Pending → Running → Failed`), and it is counted once, under the state its
last event left it in (a condition, "overdue" or "deleted"). The title counts the runs and
what happened to them; the body lists failures first (Failed, Error, then what else is
not a success, then Succeeded, Cancelled, Running, Pending), grouped by state, then by
training project (by its display name when known). The body is cut at `max_lines`; the
counts, in the title and in each group's heading, are always exact, whatever is cut. Every
text shown is bounded and escaped for the flavour like any other message, so a digest of
10,000 events is a few kilobytes, composed in one pass over them.

`others` are the titles of messages in the same digest that are not about a run
(runwatch's own alerts); they come first, as they are what an operator must act on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runwatch.core.context import EMOJI, OTHER_EMOJI, cap, path_of
from runwatch.core.escaping import Flavour, escape, strong
from runwatch.core.model import (
    CANCELLED,
    ERROR,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Event,
)
from runwatch.core.render import Message, notify_type_for
from runwatch.core.timing import human_duration

OVERDUE = "overdue"
DELETED = "deleted"
DEFAULT_MAX_LINES = 50
_TITLE_STATES = 4  # states named in the title; the rest are counted together

# Lower sorts first. A state not named here is a condition runwatch does not know: not a
# success, so it comes before the successes.
_ORDER = {FAILED: 0, ERROR: 1, OVERDUE: 2, DELETED: 4, SUCCEEDED: 5, CANCELLED: 6, RUNNING: 7}
_UNKNOWN_RANK = 3
_LAST_RANK = {PENDING: 8}
_STATE_EMOJI = {**EMOJI, OVERDUE: "⏰", DELETED: "🗑️"}
_SERIOUSNESS = {"failure": 3, "warning": 2, "success": 1, "info": 0}


@dataclass(kw_only=True, slots=True)
class _Run:
    state: str  # the condition its last event left it in, "overdue" or "deleted"
    project: str | None  # display name when known, else the project id
    events: list[Event]  # oldest first


def compose_digest(
    events: Sequence[Event],
    *,
    others: Sequence[str] = (),
    flavour: Flavour,
    max_lines: int = DEFAULT_MAX_LINES,
    workspace_label: str | None = None,
) -> Message:
    """One message for `events` (send order) and the titles `others` of non-run messages.

    `others` are plain text, as the alerts hold them (they are escaped here, like every
    value). `workspace_label` names where the runs are in the title; default the name of
    the one workspace, of the two, or "in 3 workspaces".
    """
    runs = _runs(events)
    counts = Counter(run.state for run in runs)
    title = _title(len(runs), counts, _where(events, workspace_label), len(others))
    lines, shown = _body(runs, others, flavour, max(1, max_lines))
    hidden = len(runs) + len(others) - shown
    if hidden:
        lines.append(f"and {hidden} more")
    return Message(
        title=escape(title, flavour, line_start=False),
        body="\n".join(lines),
        notify_type=_notify_type(events, others),
    )


def _runs(events: Iterable[Event]) -> list[_Run]:
    by_run: dict[tuple[str, str], list[Event]] = {}
    for event in events:
        by_run.setdefault((event.organization_id, event.run_id), []).append(event)
    runs = []
    for run_events in by_run.values():
        last = run_events[-1]
        project = last.training_project
        for event in reversed(run_events):
            if event.enrichment is not None and event.enrichment.project_name:
                project = event.enrichment.project_name
                break
        runs.append(_Run(state=_state(last), project=project, events=run_events))
    return runs


def _state(event: Event) -> str:
    if event.kind in (OVERDUE, DELETED):
        return event.kind
    return "changed" if event.current is None else event.current.condition


def _rank(state: str) -> int:
    return _ORDER.get(state, _LAST_RANK.get(state, _UNKNOWN_RANK))


def _where(events: Sequence[Event], label: str | None) -> str:
    if label is not None:
        return f" in {label}"
    workspaces = list(dict.fromkeys(e.workspace for e in events))
    if len(workspaces) == 1:
        return f" in {workspaces[0]}"
    if len(workspaces) == 2:
        return f" in {workspaces[0]} and {workspaces[1]}"
    return f" in {len(workspaces)} workspaces" if workspaces else ""


def _title(n_runs: int, counts: Counter[str], where: str, n_others: int) -> str:
    alerts = f"{n_others} runwatch alert{'s' if n_others != 1 else ''}"
    if not n_runs:
        return alerts if n_others else "Nothing changed"
    states = sorted(counts.items(), key=lambda item: (-item[1], _rank(item[0]), item[0]))
    parts = [f"{n} {cap(state, 40)}" for state, n in states[:_TITLE_STATES]]
    rest = sum(n for _, n in states[_TITLE_STATES:])
    if rest:
        parts.append(f"{rest} other")
    runs = f"{n_runs} run{'s' if n_runs != 1 else ''} changed{where}: {', '.join(parts)}"
    return f"{runs}; {alerts}" if n_others else runs


def _body(
    runs: list[_Run], others: Sequence[str], flavour: Flavour, max_lines: int
) -> tuple[list[str], int]:
    """The body's lines, at most `max_lines`, and how many runs and alerts they show."""
    lines = [f"⚠️ {escape(cap(title, 200), flavour)}" for title in others[:max_lines]]
    shown = len(lines)
    groups: dict[tuple[str, str | None], list[_Run]] = {}
    for run in runs:
        groups.setdefault((run.state, run.project), []).append(run)
    order = sorted(groups, key=lambda g: (_rank(g[0]), g[0], g[1] is None, g[1] or ""))
    for state, project in order:
        members = groups[state, project]
        if len(lines) + 2 > max_lines:
            break  # a heading only with at least one of its runs under it
        emoji = _STATE_EMOJI.get(state, OTHER_EMOJI)
        heading = f"{emoji} {strong(cap(state, 40), flavour)}"
        if project:
            heading += f" · {escape(cap(project, 80), flavour, line_start=False)}"
        lines.append(f"{heading} ({len(members)})")
        for run in members[: max_lines - len(lines)]:
            lines.append(_line(run, flavour))
            shown += 1
    return lines, shown


def _line(run: _Run, flavour: Flavour) -> str:
    """`run_ab12 · yolo-detector · Pending → Running → Failed · OutOfMemory`"""
    first, last = run.events[0], run.events[-1]
    parts = [cap(first.run_id, 64), cap(last.flow_name, 80), _path(run.events)]
    if last.kind == OVERDUE and last.current is not None:
        held = f"{last.current.condition} for " + (
            "too long" if last.elapsed_s is None else human_duration(last.elapsed_s)
        )
        parts.append(held + (f", reminder {last.reminder}" if last.reminder else ""))
    condition = last.current or last.previous
    if condition is not None and condition.reason:
        parts.append(cap(condition.reason, 120))
    shown = [escape(p, flavour, line_start=False) for p in parts if p]
    return "• " + " · ".join(shown)


def _path(events: Sequence[Event]) -> str | None:
    """The states the run went through, each once in a row: `new → Pending → Failed`."""
    steps: list[str] = ["new"] if events[0].kind == "new" else []
    for event in events:
        if event.kind == OVERDUE:
            continue  # time passing, not a move
        if event.kind == DELETED or event.current is None:
            taken = (*(() if event.previous is None else (event.previous.condition,)), DELETED)
        else:
            taken = path_of(event)
        for step in taken:
            if not steps or steps[-1] != step:
                steps.append(step)
    return " → ".join(cap(step, 40) or "" for step in steps) or None


def _notify_type(events: Sequence[Event], others: Sequence[str]) -> str:
    types = {notify_type_for(e) for e in events} | ({"warning"} if others else set())
    return max(types, key=_SERIOUSNESS.__getitem__, default="info")
