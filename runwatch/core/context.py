"""What a template sees of an event: plain values only, each API text bounded in length.

Theory: the context holds strings, numbers, booleans, None, and tuples and dicts of those,
never runwatch's objects, so a template has nothing to walk from to a module or a secret
(see `templates`). Values are raw text here; escaping happens where they are written into
a message (`escaping`), so `{{ run_id|length }}` counts the run id, not its escapes. Every
text that comes from the API is cut at `MAX_VALUE_CHARS`, so one huge reason cannot make
a huge message.
"""

from __future__ import annotations

import json
import math

from runwatch.core.escaping import Flavour
from runwatch.core.links import console_link
from runwatch.core.model import (
    CANCELLED,
    ERROR,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Condition,
    Event,
)
from runwatch.core.timing import human_duration, iso, timing

MAX_VALUE_CHARS = 2_000
DEFAULT_MAX_METRICS = 6

EMOJI = {
    SUCCEEDED: "✅",
    FAILED: "❌",
    ERROR: "🔥",
    CANCELLED: "🚫",
    RUNNING: "🏃",
    PENDING: "⏳",
}
DELETED_EMOJI = "🗑️"
OTHER_EMOJI = "🔔"

MetricValue = float | int | str | bool | None


def cap(text: str | None, limit: int = MAX_VALUE_CHARS) -> str | None:
    """`text` cut to `limit` characters, the cut marked with an ellipsis."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def format_metric(value: MetricValue) -> str:
    """A metric value as people read it: floats to 4 significant digits, ints as ints,
    booleans, None and strings as the API sent them."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return format(value, "#.4g").rstrip(".")
    return cap(str(value), 200) or ""


def emoji_for(event: Event) -> str:
    """The emoji that leads a title: by condition, or the wastebasket for a deleted run."""
    if event.kind == "deleted":
        return DELETED_EMOJI
    last = last_condition(event)
    return OTHER_EMOJI if last is None else EMOJI.get(last.condition, OTHER_EMOJI)


def last_condition(event: Event) -> Condition | None:
    """The current condition; for a deleted run, the last one known."""
    return event.current if event.current is not None else event.previous


def path_of(event: Event) -> tuple[str, ...]:
    """The conditions the run went through in this event, oldest first (previous included)."""
    if event.current is None:
        return ()
    before = () if event.previous is None else (event.previous.condition,)
    return (*before, *(c.condition for c in event.skipped), event.current.condition)


def template_context(
    event: Event,
    flavour: Flavour,
    *,
    console_url: str | None = None,
    max_metrics: int = DEFAULT_MAX_METRICS,
) -> dict[str, object]:
    """The template context of `event`; `console_url` is the workspace's console template."""
    last = last_condition(event)
    previous = event.previous
    times = timing(event)
    enrichment = event.enrichment
    metrics = () if enrichment is None else enrichment.metrics
    listed = metrics[: max(0, max_metrics)]
    shown = tuple((cap(name, 200), format_metric(value)) for name, value in listed)
    project_name = None if enrichment is None else cap(enrichment.project_name)
    training_project = cap(event.training_project)
    return {
        "run_id": cap(event.run_id),
        "workspace": event.workspace,
        "organization_id": event.organization_id,
        "kind": event.kind,
        "flow": cap(event.flow_name),
        "training_project": training_project,
        "project_name": project_name,
        "project": project_name or training_project,
        "attributes": {cap(k, 200): cap(v) for k, v in event.attributes.items()},
        "condition": None if last is None else cap(last.condition),
        "status": None if last is None else cap(last.status),
        "reason": None if last is None else cap(last.reason),
        "message": None if last is None else cap(last.message),
        "previous": None if previous is None else cap(previous.condition),
        "previous_status": None if previous is None else cap(previous.status),
        "skipped": tuple(cap(c.condition) for c in event.skipped),
        "path": tuple(cap(c) for c in path_of(event)),
        "emoji": emoji_for(event),
        "transition_time": None if last is None else iso(last.last_transition_time),
        "duration": _human(times.duration_s),
        "duration_seconds": times.duration_s,
        "ran": _human(times.ran_s),
        "ran_seconds": times.ran_s,
        "waited": _human(times.waited_s),
        "waited_seconds": times.waited_s,
        "elapsed": _human(times.elapsed_s),
        "elapsed_seconds": times.elapsed_s,
        "rule": event.rule,
        "reminder": event.reminder,
        "killed_at": iso(event.killed_at),
        "log": cap(event.log),
        "console_url": console_link(
            console_url, organization_id=event.organization_id, run_id=event.run_id
        ),
        "metrics": {cap(name, 200): value for name, value in metrics},
        "shown_metrics": shown,
        "more_metrics": max(0, len(metrics) - len(shown)),
        "epoch": None if enrichment is None else enrichment.epoch,
        "model_id": None if enrichment is None else cap(enrichment.model_id),
        "flavour": flavour,
    }


def _human(seconds: int | None) -> str | None:
    return None if seconds is None else human_duration(seconds)
