"""Messages: an Event rendered through Jinja2 templates into a title and a body.

Theory: a message leads with what happened. The title names the run and its new state
(`❌ yolo-detector failed — run_ab12 (prod)`); the body's first line says how it got there
and what it means (`Running → Failed · TrainingDiverged: Loss became NaN · ran 41m`, or the
metrics of a run that succeeded), without repeating the title; the second line holds the
links. Durations are exact or absent (`timing`).

Templates are untrusted and so are the values they show (`templates`, `escaping`): a rule's
template runs in a strict sandbox and every value from the API is escaped for the flavour
of the channel. A template that fails while rendering falls back to the default for that
field, so a mistake in a rule's template still delivers a message.

Three flavours of markup: "markdown" (`**bold**`, `[text](url)`) for every Apprise service,
Slack included (Apprise 2.x converts CommonMark into Slack's mrkdwn and into HTML for
email, so writing Slack's dialect here would be converted a second time); "slack", Slack's
own mrkdwn, for a channel that talks to Slack itself; and "text" (no markup) for the
terminal. Templates write `{{ x|strong }}` and `{{ url|link("text") }}` to stay
flavour-neutral.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from runwatch.core.context import DEFAULT_MAX_METRICS, template_context
from runwatch.core.escaping import FLAVOURS, Flavour, escape_slack
from runwatch.core.links import CONSOLE_URL
from runwatch.core.model import CANCELLED, ERROR, FAILED, SUCCEEDED, Event
from runwatch.core.samples import sample_events
from runwatch.core.templates import Field, describe, render_template, validate_template
from runwatch.core.timing import human_duration

__all__ = [
    "CONSOLE_URL",
    "DEFAULT_BODY",
    "DEFAULT_MAX_METRICS",
    "DEFAULT_TITLE",
    "FLAVOURS",
    "Flavour",
    "Message",
    "escape_slack",
    "flavour_for",
    "human_duration",
    "notify_type_for",
    "render",
    "sample_events",
    "validate_template",
]

log = structlog.get_logger("runwatch.core.render")


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    title: str
    body: str
    notify_type: str  # "info" | "success" | "warning" | "failure" (Apprise's NotifyType values)


_NOTIFY_TYPES = {FAILED: "failure", ERROR: "failure", SUCCEEDED: "success", CANCELLED: "warning"}

# The title is one line: `render` joins whatever lines these produce.
DEFAULT_TITLE = """\
{{ emoji }}
{% if kind == "overdue" %}
{{ run_id }} {{ "still" if reminder else "has been" }} {{ condition }}
{{ ("after " if reminder else "for ") ~ elapsed if elapsed else "too long" }}
{{- ", reminder " ~ reminder if reminder }}
{% else %}
{{ project_name or flow or "run" }}
{{ "deleted" if kind == "deleted" else (condition or "changed")|lower }} — {{ run_id }}
{% endif %}
({{ workspace }})"""

# trim_blocks/lstrip_blocks: a line holding only a block tag leaves nothing behind; `{%-`
# joins a line onto the one before, so the first line is built from several.
DEFAULT_BODY = """\
{% if kind == "deleted" %}
Deleted{% if condition %} · last known {{ condition|strong }}{% endif %}
{% elif kind == "overdue" %}
{{ condition|strong }}{% if elapsed %} for {{ elapsed }}{% endif %}
{%- if rule %} · rule {{ rule }}{% endif %}
{%- if reminder %} · reminder {{ reminder }}{% endif %}
{% else %}
{% if kind == "new" %}New run · {% endif %}
{%- for step in path[:-1] %}{{ step }} → {% endfor %}{{ condition|strong }}
{%- if status and status != "Reached" %} ({{ status }}){% endif %}
{%- if epoch is not none %} · epoch {{ epoch }}{% endif %}
{%- for name, value in shown_metrics %} · {{ name }} {{ value }}{% endfor %}
{%- if more_metrics %} · +{{ more_metrics }} more{% endif %}
{% endif %}
{%- if reason and message %} · {{ reason }}: {{ message }}
{%- elif reason or message %} · {{ reason or message }}{% endif %}
{%- if ran %} · ran {{ ran }}{% elif waited %} · waited {{ waited }}{% endif %}

{% if log %}{{ log|link("Log") }} · {% endif %}{{ console_url|link("Console") }}
"""


def flavour_for(urls: Sequence[str]) -> Flavour:
    """The markup a channel's URLs want: "text" if all print to the terminal (`console://`),
    else "markdown" (Apprise converts it per service, to mrkdwn for Slack, HTML for email)."""
    if urls and all(url.strip().lower().startswith("console://") for url in urls):
        return "text"
    return "markdown"


def notify_type_for(event: Event) -> str:
    """Apprise's notify type (colour and icon) for an event."""
    if event.kind in ("deleted", "overdue") or event.current is None:
        return "warning"
    return _NOTIFY_TYPES.get(event.current.condition, "info")


def render(
    event: Event,
    *,
    title: str | None = None,
    body: str | None = None,
    flavour: Flavour = "markdown",
    console_url: str | None = None,
    max_metrics: int = DEFAULT_MAX_METRICS,
) -> Message:
    """The message for `event`; `title`/`body` are template sources overriding the defaults.

    `console_url` is the workspace's console link template (`{organization_id}`,
    `{run_id}`), None for the default; `max_metrics` bounds the metrics the default shows.
    Never raises for a bad template: that field falls back to its default and an error is
    logged, because a message with the default text beats no message at all.
    """
    context = template_context(event, flavour, console_url=console_url, max_metrics=max_metrics)
    rendered_title = _render_field("title", title, DEFAULT_TITLE, context, flavour, event)
    rendered_body = _render_field("body", body, DEFAULT_BODY, context, flavour, event)
    return Message(
        # One line: a newline in an email Subject or a Slack header breaks the message.
        title=" ".join(rendered_title.split()),
        body=rendered_body.strip(),
        notify_type=notify_type_for(event),
    )


def _render_field(
    field: Field,
    source: str | None,
    default: str,
    context: dict[str, object],
    flavour: Flavour,
    event: Event,
) -> str:
    if source is not None:
        try:
            return render_template(source, context, flavour=flavour, field=field)
        except Exception as exc:  # a template is user input: any failure falls back
            log.error("render.failed", run_id=event.run_id, field=field, error=describe(exc))
    return render_template(default, context, flavour=flavour, field=field)
