"""Messages: an Event rendered through Jinja2 templates into a title and a body.

Templates come from the configuration, so they are treated as untrusted: they run in a
sandbox stricter than Jinja2's own (see `_TemplateSandbox`) over a context of plain values
(strings, numbers, None, tuples and dicts of strings; never runwatch's objects), so a
template can neither call code nor walk from a value to a module, the environment or a
secret. A template that fails while rendering falls back to the default for that field,
so a mistake in a rule's template still delivers a message.

Two flavours of markup: "markdown" (`**bold**`, `[text](url)`) for every service, Slack
included: Apprise 2.x converts CommonMark into Slack's mrkdwn (`*bold*`, `<url|text>`) and
into HTML for email, so writing Slack's dialect here would be converted a second time; and
"text" (no markup) for the terminal. Templates write `{{ x|strong }}` and
`{{ url|link("text") }}` to stay flavour-neutral.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Literal, get_args

import structlog
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, pass_context
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runwatch.core.model import (
    CANCELLED,
    ERROR,
    FAILED,
    PENDING,
    REACHED,
    RUNNING,
    SUCCEEDED,
    Condition,
    Event,
)

log = structlog.get_logger("runwatch.core.render")

Flavour = Literal["markdown", "text"]
FLAVOURS: tuple[Flavour, ...] = get_args(Flavour)


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    title: str
    body: str
    notify_type: str  # "info" | "success" | "warning" | "failure" (Apprise's NotifyType values)


_EMOJI = {
    SUCCEEDED: "✅",
    FAILED: "❌",
    ERROR: "🔥",
    CANCELLED: "🚫",
    RUNNING: "🏃",
    PENDING: "⏳",
}
_DELETED_EMOJI = "🗑️"
_OTHER_EMOJI = "🔔"

_NOTIFY_TYPES = {FAILED: "failure", ERROR: "failure", SUCCEEDED: "success", CANCELLED: "warning"}

CONSOLE_URL = "https://vi.datature.com/org/{organization_id}"

DEFAULT_TITLE = (
    '{{ emoji }} {{ flow or "run" }} '
    '{{ "deleted" if kind == "deleted" else (condition or "changed")|lower }}'
    " — {{ run_id }} ({{ workspace }})"
)

# trim_blocks/lstrip_blocks: a line holding only a block tag leaves nothing behind, so each
# `{% if %}` ... `{% endif %}` pair below adds exactly its one line or nothing.
DEFAULT_BODY = """\
{{ "Workspace:"|strong }} {{ workspace }}
{{ "Run:"|strong }} {{ run_id }}
{% if flow %}
{{ "Flow:"|strong }} {{ flow }}
{% endif %}
{% if training_project %}
{{ "Project:"|strong }} {{ training_project }}
{% endif %}
{% if kind == "deleted" %}
{{ "State:"|strong }} deleted{{ " (last known: " ~ condition ~ ")" if condition else "" }}
{% else %}
{% set before = previous ~ " → " if previous else "new run, " if kind == "new" else "" %}
{% set note = " (" ~ status ~ ")" if status and status != "Reached" else "" %}
{{ "State:"|strong }} {{ before }}{{ condition|strong }}{{ note }}
{% endif %}
{% if skipped and kind != "deleted" %}
{% set path = ((previous,) if previous else ()) + skipped + (condition,) %}
{{ "Path:"|strong }} {{ path|join(" → ") }}
{% endif %}
{% if reason %}
{{ "Reason:"|strong }} {{ reason }}
{% endif %}
{% if message %}
{{ "Message:"|strong }} {{ message }}
{% endif %}
{% if duration and kind != "deleted" %}
{{ "Duration:"|strong }} {{ duration }}
{% endif %}
{% if killed_at %}
{{ "Killed at:"|strong }} {{ killed_at }}
{% endif %}
{% if log %}
{{ "Log:"|strong }} {{ log|link("view log") }}
{% endif %}
{{ "Console:"|strong }} {{ console_url|link("open in Datature Vi") }}
"""

# The loop counters are plain numbers and booleans; every other attribute stays refused.
_LOOP_ATTRIBUTES = frozenset(
    {"index", "index0", "revindex", "revindex0", "first", "last", "length", "depth", "depth0"}
)


MAX_RENDERED_CHARS = 20_000  # far above any real message, far below harm
_MAX_FILTER_WIDTH = 1_000
_SIZED_FILTERS = frozenset({"center", "indent", "wordwrap", "format", "truncate", "batch", "slice"})


def _small_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and abs(value) <= 1_000


class _TemplateSandbox(ImmutableSandboxedEnvironment):
    """Templates may read context values, index dicts, and use filters, tests, `if`, `for`.

    Jinja2's sandbox blocks underscore attributes and mutation but still lets a template call
    methods and reach objects' attributes, which is where sandbox escapes have come from.
    Here every call is refused and so is every attribute, save a loop's counters. Keys of
    the context's dicts (`attributes.team`, `attributes["team"]`) are looked up as items,
    which never asks `is_safe_attribute`.
    """

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return isinstance(obj, LoopContext) and attr in _LOOP_ATTRIBUTES

    def is_safe_callable(self, obj: Any) -> bool:
        return False

    def wrap_str_format(self, value: Any) -> None:
        return None  # no sandboxed `str.format` either: `.format` is an attribute, refused

    # Bounds on what one template may build: a message is a few hundred characters, and a
    # template like `{{ 'x' * 10**9 }}` must fail rather than take the daemon's memory.
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and not (_small_number(left) and _small_number(right)):
            raise SecurityError("'**' is limited to small numbers in templates")
        if operator == "*":
            sizes = [len(v) for v in (left, right) if isinstance(v, (str, list, tuple))]
            counts = [v for v in (left, right) if isinstance(v, int)]
            if sizes and counts and sizes[0] * max(counts[0], 0) > MAX_RENDERED_CHARS:
                raise SecurityError(
                    f"a template may not build more than {MAX_RENDERED_CHARS} characters"
                )
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(__obj, Undefined):
            # `run_id.upper()`: say that the attribute was refused, or that the name is
            # unknown, rather than the puzzling "Undefined is not safely callable".
            str(__obj)
        return super().call(__context, __obj, *args, **kwargs)


@pass_context
def _strong(context: Context, value: object) -> str:
    flavour = context.get("flavour")
    if flavour == "markdown":
        return f"**{value}**"
    return str(value)


@pass_context
def _link(context: Context, url: object, text: object = None) -> str:
    url = str(url)
    if not url.startswith(("https://", "http://")):
        return url  # `log` may be a path, not a URL: no link to a place that is not one
    label = url if text is None else str(text)
    flavour = context.get("flavour")
    if flavour == "markdown":
        return f"[{label}]({url})"
    return url  # plain text: the bare URL is what mail clients and terminals make clickable


def _bounded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that refuses huge widths and huge results (`'%*s'|format(10**9, x)`)."""
    sized = name in _SIZED_FILTERS

    @functools.wraps(fn)  # keeps jinja's pass_context marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        if sized:
            numbers = [a for a in (*args, *kwargs.values()) if type(a) is int]
            if any(abs(n) > _MAX_FILTER_WIDTH for n in numbers):
                raise SecurityError(
                    f"filter {name!r} is limited to widths up to {_MAX_FILTER_WIDTH}"
                )
        result = fn(*args, **kwargs)
        if isinstance(result, str) and len(result) > MAX_RENDERED_CHARS:
            raise SecurityError(
                f"a template may not build more than {MAX_RENDERED_CHARS} characters"
            )
        return result

    return bounded


def _make_environment() -> _TemplateSandbox:
    env = _TemplateSandbox(
        undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True
    )
    # range, dict, lipsum, cycler, joiner, namespace: callables, and handles to Python.
    env.globals.clear()
    env.filters["strong"] = _strong
    env.filters["link"] = _link
    for name, fn in list(env.filters.items()):
        env.filters[name] = _bounded_filter(name, fn)
    return env


_ENV = _make_environment()


@functools.lru_cache(maxsize=256)
def _compile(source: str) -> Template:
    return _ENV.from_string(source)


def flavour_for(urls: Sequence[str]) -> Flavour:
    """The markup a channel's URLs want: "text" if all print to the terminal (`console://`),
    else "markdown" (Apprise converts it per service, to mrkdwn for Slack, HTML for email)."""
    if urls and all(url.strip().lower().startswith("console://") for url in urls):
        return "text"
    return "markdown"


def notify_type_for(event: Event) -> str:
    """Apprise's notify type (colour and icon) for an event."""
    if event.kind == "deleted" or event.current is None:
        return "warning"
    return _NOTIFY_TYPES.get(event.current.condition, "info")


def render(
    event: Event,
    *,
    title: str | None = None,
    body: str | None = None,
    flavour: Flavour = "markdown",
) -> Message:
    """The message for `event`; `title`/`body` are template sources overriding the defaults.

    Never raises for a bad template: that field falls back to its default and an error is
    logged, because a message with the default text beats no message at all.
    """
    context = _context(event, flavour)
    rendered_title = _render_field("title", title, DEFAULT_TITLE, context, event.run_id)
    rendered_body = _render_field("body", body, DEFAULT_BODY, context, event.run_id)
    return Message(
        # One line: a newline in an email Subject or a Slack header breaks the message.
        title=" ".join(rendered_title.split()),
        body=rendered_body.strip(),
        notify_type=notify_type_for(event),
    )


def validate_template(source: str) -> str | None:
    """None if `source` compiles and renders every sample event in every flavour, else why not."""
    try:
        template = _compile(source)
    except TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {_one_line(exc.message or str(exc))}"
    for event in sample_events():
        for flavour in FLAVOURS:
            try:
                template.render(_context(event, flavour))
            except Exception as exc:  # any failure of a user's template is a finding
                return f"{_describe(exc)} (sample {event.kind} event, {flavour} flavour)"
    return None


def sample_events() -> tuple[Event, ...]:
    """Events covering every kind and optional field, for checking templates before use."""
    org = "0f9e8d7c-6b5a-4a3b-9c8d-7e6f5a4b3c2d"
    created = 1_717_236_000_000  # 2024-06-01T10:00:00Z
    pending = Condition(condition=PENDING, status=REACHED, last_transition_time=created + 2_000)
    running = Condition(condition=RUNNING, status=REACHED, last_transition_time=created + 60_000)
    failed = Condition(
        condition=FAILED,
        status=REACHED,
        last_transition_time=created + 4_380_000,  # 1h 13m after creation
        reason="OutOfMemory",
        message="Container exceeded its memory limit",
    )
    succeeded = Condition(
        condition=SUCCEEDED, status=REACHED, last_transition_time=created + 7_200_000
    )
    common: dict[str, Any] = {
        "workspace": "prod",
        "organization_id": org,
        "flow_name": "yolo-detector",
        "training_project": "traffic-signs",
        "attributes": {"team": "vision"},
        "time_created": created,
    }
    return (
        Event(
            kind="transition",
            run_id="run_ab12",
            previous=pending,
            current=failed,
            skipped=(running,),
            killed_at=created + 4_300_000,
            log="https://logs.vi.datature.com/run_ab12",
            detected_at=created + 4_400_000,
            **common,
        ),
        Event(
            kind="new",
            run_id="run_cd34",
            previous=None,
            current=succeeded,
            skipped=(pending, running),
            detected_at=created + 7_230_000,
            **common,
        ),
        Event(
            kind="deleted",
            run_id="run_ef56",
            previous=running,
            current=None,
            detected_at=created + 90_000,
            **common,
        ),
    )


def _context(event: Event, flavour: Flavour) -> dict[str, object]:
    """The template context: plain values only, so there is nothing to walk from."""
    # A deleted run has no current condition; templates see the last one known.
    last = event.current if event.current is not None else event.previous
    previous = event.previous
    seconds = _seconds_between(event.time_created, last)
    return {
        "run_id": event.run_id,
        "workspace": event.workspace,
        "organization_id": event.organization_id,
        "kind": event.kind,
        "flow": event.flow_name,
        "training_project": event.training_project,
        "attributes": dict(event.attributes),
        "condition": None if last is None else last.condition,
        "status": None if last is None else last.status,
        "reason": None if last is None else last.reason,
        "message": None if last is None else last.message,
        "previous": None if previous is None else previous.condition,
        "previous_status": None if previous is None else previous.status,
        "skipped": tuple(c.condition for c in event.skipped),
        "emoji": _emoji(event, last),
        "transition_time": None if last is None else _iso(last.last_transition_time),
        "duration": None if seconds is None else human_duration(seconds),
        "duration_seconds": seconds,
        "killed_at": None if event.killed_at is None else _iso(event.killed_at),
        "log": event.log,
        "console_url": CONSOLE_URL.format(organization_id=event.organization_id),
        "flavour": flavour,
        # overdue events: the time rule, how long the condition has held, which notice
        "rule": event.rule,
        "elapsed": None if event.elapsed_s is None else human_duration(event.elapsed_s),
        "elapsed_seconds": event.elapsed_s,
        "reminder": event.reminder,
    }


def _emoji(event: Event, last: Condition | None) -> str:
    if event.kind == "deleted":
        return _DELETED_EMOJI
    return _OTHER_EMOJI if last is None else _EMOJI.get(last.condition, _OTHER_EMOJI)


def _seconds_between(time_created: int, last: Condition | None) -> int | None:
    if last is None or time_created <= 0:
        return None  # an unknown creation time would make a 50-year duration
    # Clocks of different API servers may disagree by a little: never a negative duration.
    return max(0, (last.last_transition_time - time_created) // 1000)


def human_duration(seconds: int) -> str:
    """A duration as people write it: "45s", "3m 5s", "1h 12m", "2d 3h" (two units at most)."""
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return _two_units(minutes, "m", secs, "s")
    hours, mins = divmod(minutes, 60)
    if hours < 24:
        return _two_units(hours, "h", mins, "m")
    days, hrs = divmod(hours, 24)
    return _two_units(days, "d", hrs, "h")


def _two_units(big: int, big_unit: str, small: int, small_unit: str) -> str:
    return f"{big}{big_unit} {small}{small_unit}" if small else f"{big}{big_unit}"


def _iso(epoch_ms: int) -> str | None:
    try:
        moment = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None  # a nonsense timestamp from the API must not cost the message
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _render_field(
    field: str, source: str | None, default: str, context: dict[str, object], run_id: str
) -> str:
    if source is not None:
        try:
            return _compile(source).render(context)
        except Exception as exc:  # a template is user input: any failure falls back
            log.error("render.failed", run_id=run_id, field=field, error=_describe(exc))
    return _compile(default).render(context)


def _describe(exc: BaseException) -> str:
    """One line naming the error and, when the traceback shows it, the template line."""
    line = _template_line(exc.__traceback__)
    where = "" if line is None else f"line {line}: "
    return f"{where}{type(exc).__name__}: {_one_line(str(exc))}"


def _template_line(tb: TracebackType | None) -> int | None:
    # Jinja2 rewrites tracebacks so that template frames carry the template's line numbers.
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _one_line(text: str) -> str:
    return " ".join(text.split())
