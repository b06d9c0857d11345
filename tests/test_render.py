"""Messages rendered from events: defaults, flavours, rule templates and the sandbox."""

from __future__ import annotations

from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from runwatch.core.model import Condition, Event
from runwatch.core.render import (
    DEFAULT_BODY,
    DEFAULT_TITLE,
    FLAVOURS,
    Flavour,
    Message,
    flavour_for,
    human_duration,
    notify_type_for,
    render,
    sample_events,
    validate_template,
)

TRANSITION, NEW, DELETED = sample_events()
CONSOLE = "https://vi.datature.com/org/0f9e8d7c-6b5a-4a3b-9c8d-7e6f5a4b3c2d"
SECRET = "dtvi_" + "s3cr3t" * 16


def with_condition(event: Event, condition: str, status: str = "Reached") -> Event:
    assert event.current is not None
    return replace(event, current=replace(event.current, condition=condition, status=status))


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("event", sample_events(), ids=lambda e: e.kind)
def test_it_renders_the_defaults_for_every_sample_event_in_every_flavour(
    event: Event, flavour: Flavour
) -> None:
    """The built-in templates work for every kind of event and every flavour of markup."""
    with capture_logs() as logs:
        message = render(event, flavour=flavour)

    assert logs == []
    assert "\n" not in message.title
    assert event.run_id in message.title
    assert "(prod)" in message.title
    assert message.body.splitlines()[:2] == [
        line.replace("**", {"markdown": "**", "text": ""}[flavour])
        for line in ("**Workspace:** prod", f"**Run:** {event.run_id}")
    ]


def test_it_accepts_its_own_default_templates() -> None:
    """The defaults pass the same validation as a rule's templates."""
    assert validate_template(DEFAULT_TITLE) is None
    assert validate_template(DEFAULT_BODY) is None


def test_it_writes_a_transition_as_a_headline_and_labelled_lines_in_markdown() -> None:
    """The default message reads well: what happened to which run, then the details."""
    assert render(TRANSITION) == Message(
        title="❌ yolo-detector failed — run_ab12 (prod)",
        body="\n".join(
            [
                "**Workspace:** prod",
                "**Run:** run_ab12",
                "**Flow:** yolo-detector",
                "**Project:** traffic-signs",
                "**State:** Pending → **Failed**",
                "**Path:** Pending → Running → Failed",
                "**Reason:** OutOfMemory",
                "**Message:** Container exceeded its memory limit",
                "**Duration:** 1h 13m",
                "**Killed at:** 2024-06-01T11:11:40Z",
                "**Log:** [view log](https://logs.vi.datature.com/run_ab12)",
                f"**Console:** [open in Datature Vi]({CONSOLE})",
            ]
        ),
        notify_type="failure",
    )


def test_it_reads_as_slack_mrkdwn_once_apprise_converts_it() -> None:
    """The Markdown default becomes Slack's dialect in Apprise's Slack plugin: single-star
    bold and <url|text> links, nothing left of Markdown's."""
    import apprise

    slack = apprise.Apprise.instantiate("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#ml")
    body = slack.dialect_convert(
        render(TRANSITION, flavour=flavour_for([slack.url()])).body, apprise.NotifyFormat.MARKDOWN
    )

    assert "*State:* Pending → *Failed*" in body
    assert "*Log:* <https://logs.vi.datature.com/run_ab12|view log>" in body
    assert f"<{CONSOLE}|open in Datature Vi>" in body
    assert "**" not in body
    assert "](" not in body


def test_it_uses_no_markup_in_the_text_flavour() -> None:
    """Plain text has labels and bare URLs only."""
    body = render(TRANSITION, flavour="text").body

    assert "State: Pending → Failed" in body
    assert "Log: https://logs.vi.datature.com/run_ab12" in body
    assert not any(mark in body for mark in ("*", "[", "<", "|"))


@pytest.mark.parametrize(
    ("event", "title", "lines"),
    [
        (
            NEW,
            "✅ yolo-detector succeeded — run_cd34 (prod)",
            ["**State:** new run, **Succeeded**", "**Path:** Pending → Running → Succeeded"],
        ),
        (
            DELETED,
            "🗑️ yolo-detector deleted — run_ef56 (prod)",
            ["**State:** deleted (last known: Running)"],
        ),
        (
            replace(TRANSITION, skipped=()),
            "❌ yolo-detector failed — run_ab12 (prod)",
            ["**State:** Pending → **Failed**", "**Reason:** OutOfMemory"],
        ),
        (
            with_condition(replace(TRANSITION, flow_name=None), "Running", "Waiting"),
            "🏃 run running — run_ab12 (prod)",
            ["**State:** Pending → **Running** (Waiting)"],
        ),
    ],
    ids=["new", "deleted", "no-skipped", "not-reached"],
)
def test_it_describes_each_kind_of_event_in_its_state_line(
    event: Event, title: str, lines: list[str]
) -> None:
    """New runs, deletions and plain transitions each say what happened."""
    message = render(event)
    body = message.body.splitlines()

    assert message.title == title
    start = body.index(lines[0])
    assert body[start : start + len(lines)] == lines


def test_it_leaves_out_the_lines_of_missing_fields() -> None:
    """No "Reason: None": a field without a value has no line."""
    bare = Event(
        kind="transition",
        workspace="prod",
        organization_id="org-1",
        run_id="run_1",
        previous=None,
        current=Condition(condition="Pending", status="Reached", last_transition_time=5_000),
    )

    assert render(bare).body.splitlines() == [
        "**Workspace:** prod",
        "**Run:** run_1",
        "**State:** **Pending**",
        "**Console:** [open in Datature Vi](https://vi.datature.com/org/org-1)",
    ]
    assert render(bare).title == "⏳ run pending — run_1 (prod)"


def test_it_shows_a_log_that_is_not_a_url_as_plain_text() -> None:
    """A log path is not made into a link."""
    body = render(replace(TRANSITION, log="/var/log/runs/run_ab12.log")).body

    assert "**Log:** /var/log/runs/run_ab12.log" in body.splitlines()


@pytest.mark.parametrize(
    ("condition", "emoji", "notify_type"),
    [
        ("Succeeded", "✅", "success"),
        ("Failed", "❌", "failure"),
        ("Error", "🔥", "failure"),
        ("Cancelled", "🚫", "warning"),
        ("Running", "🏃", "info"),
        ("Pending", "⏳", "info"),
        ("Started", "🔔", "info"),  # a condition value runwatch does not know yet
    ],
)
def test_it_picks_emoji_and_notify_type_by_condition(
    condition: str, emoji: str, notify_type: str
) -> None:
    """Each condition has its emoji in the title and its Apprise notify type."""
    event = with_condition(TRANSITION, condition)

    message = render(event)

    assert message.title.startswith(f"{emoji} yolo-detector {condition.lower()} — ")
    assert message.notify_type == notify_type == notify_type_for(event)


def test_it_gives_deletions_the_warning_type() -> None:
    """A deleted run is a warning whatever its last condition."""
    assert notify_type_for(DELETED) == "warning"
    assert notify_type_for(replace(DELETED, previous=TRANSITION.current)) == "warning"


@pytest.mark.parametrize(
    ("urls", "flavour"),
    [
        (["slack://TokenA/TokenB/TokenC/#ml-runs"], "markdown"),
        (["https://hooks.slack.com/services/T000/B000/XXXX"], "markdown"),
        (["mailtos://alerts:pw@smtp.example.com?to=oncall@example.com"], "markdown"),
        (["console://"], "text"),
        (["console://", "json://127.0.0.1:8080/hook"], "markdown"),
        (["https://[::1/broken"], "markdown"),
        ([], "markdown"),
    ],
)
def test_it_writes_markdown_except_for_the_terminal(urls: list[str], flavour: str) -> None:
    """Apprise converts Markdown per service; only console-only channels get plain text."""
    assert flavour_for(urls) == flavour


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59, "59s"),
        (60, "1m"),
        (185, "3m 5s"),
        (3_600, "1h"),
        (4_320, "1h 12m"),
        (86_399, "23h 59m"),
        (86_400, "1d"),
        (183_600, "2d 3h"),
    ],
)
def test_it_writes_durations_as_people_do(seconds: int, text: str) -> None:
    """Two units at most, zero units left out."""
    assert human_duration(seconds) == text


def test_it_gives_templates_the_event_as_plain_values() -> None:
    """Rule templates see every documented variable, with plain values."""
    template = (
        "{{ run_id }}|{{ workspace }}|{{ organization_id }}|{{ kind }}|{{ flow }}|"
        "{{ training_project }}|{{ attributes.team }}|{{ attributes['team'] }}|"
        "{{ condition }}|{{ status }}|{{ reason }}|{{ message }}|{{ previous }}|"
        "{{ previous_status }}|{{ skipped|join(',') }}|{{ emoji }}|{{ transition_time }}|"
        "{{ duration }}|{{ duration_seconds }}|{{ killed_at }}|{{ log }}|{{ console_url }}|"
        "{{ flavour }}|{{ 'x'|strong }}"
    )

    message = render(TRANSITION, title=template, body=template, flavour="markdown")

    assert message.body == (
        "run_ab12|prod|0f9e8d7c-6b5a-4a3b-9c8d-7e6f5a4b3c2d|transition|yolo-detector|"
        "traffic-signs|vision|vision|Failed|Reached|OutOfMemory|"
        "Container exceeded its memory limit|Pending|Reached|Running|❌|2024-06-01T11:13:00Z|"
        f"1h 13m|4380|2024-06-01T11:11:40Z|https://logs.vi.datature.com/run_ab12|{CONSOLE}|"
        "markdown|**x**"
    )
    assert message.title == message.body


def test_it_lets_templates_use_filters_tests_conditions_and_loops() -> None:
    """The template language stays useful inside the sandbox."""
    body = (
        "{% for c in skipped %}{{ loop.index }}.{{ c|lower }}"
        "{% if not loop.last %}, {% endif %}{% endfor %}"
        "{% if attributes.owner is defined %} owner{% else %} no owner{% endif %}"
        " {{ attributes.owner|default('-') }} {{ run_id|upper|replace('_', '-') }}"
    )

    message = render(NEW, body=body, flavour="text")

    assert message.body == "1.pending, 2.running no owner - RUN-CD34"


def test_it_collapses_a_rule_title_onto_one_line() -> None:
    """A title never carries a newline into an email Subject or a Slack header."""
    assert render(TRANSITION, title="{{ run_id }}\n\n  {{ condition }}  ").title == (
        "run_ab12 Failed"
    )


def test_it_falls_back_to_the_default_and_logs_when_a_template_uses_an_unknown_name() -> None:
    """StrictUndefined: `{{ nope }}` is an error, the default text is sent, the log says why."""
    with capture_logs() as logs:
        message = render(TRANSITION, title="{{ nope }}", body="fine {{ run_id }}")

    assert message.title == render(TRANSITION).title
    assert message.body == "fine run_ab12"
    assert logs == [
        {
            "event": "render.failed",
            "log_level": "error",
            "run_id": "run_ab12",
            "field": "title",
            "error": "line 1: UndefinedError: 'nope' is undefined",
        }
    ]


def test_it_falls_back_when_a_rule_template_has_a_syntax_error() -> None:
    """A template that does not compile costs only its own field."""
    with capture_logs() as logs:
        message = render(TRANSITION, body="{% if %}")

    assert message.body == render(TRANSITION).body
    assert [(entry["event"], entry["field"]) for entry in logs] == [("render.failed", "body")]


ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__ }}",
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ lipsum.__globals__['os'].environ }}",
    "{{ self.__dict__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ run_id.upper() }}",
    "{{ run_id.__len__() }}",
    "{{ attributes.items() }}",
    "{{ attributes.__class__ }}",
    "{{ attributes.get('team') }}",
    "{{ previous.condition }}",  # values are plain strings, not runwatch's objects
    "{{ '{0.__class__}'.format(run_id) }}",
    "{{ run_id.format }}",
    "{{ '%s'.__mod__ }}",
    "{{ run_id|attr('__class__') }}",
    "{{ (run_id|attr('upper'))() }}",
    "{{ range(10)|list }}",
    "{{ lipsum() }}",
    "{{ namespace(a=1) }}",
    "{{ joiner() }}",
    "{{ dict(a=1) }}",
    "{{ os.environ }}",
    "{{ environ }}",
    "{{ config }}",
    "{% macro m() %}x{% endmacro %}{{ m() }}",
    "{% for c in skipped %}{{ loop.cycle('a', 'b') }}{% endfor %}",
    "{% for c in skipped %}{{ loop.__class__ }}{% endfor %}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}{{ os }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_it_refuses_templates_that_reach_beyond_the_event(
    template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls, attributes, globals and imports fail; the default is sent; no secret leaks."""
    monkeypatch.setenv("DATATURE_VI_SECRET_KEY", SECRET)

    error = validate_template(template)
    with capture_logs() as logs:
        message = render(TRANSITION, title=template, body=template)

    assert error is not None
    assert "\n" not in error
    assert message == render(TRANSITION)
    assert [(entry["event"], entry["field"]) for entry in logs] == [
        ("render.failed", "title"),
        ("render.failed", "body"),
    ]
    assert SECRET not in f"{error}{message}{logs}"


def test_it_offers_templates_no_global_functions() -> None:
    """Jinja2's default globals (range, lipsum, cycler, ...) are gone, not merely uncallable."""
    names = ("range", "lipsum", "cycler", "joiner", "namespace", "dict")
    title = " ".join(f"{{{{ {name} is defined }}}}" for name in names)

    assert render(TRANSITION, title=title).title == " ".join(["False"] * len(names))


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("{{ run_id }}\n{% if %}", "line 2: Expected an expression, got 'end of statement block'"),
        ("ok\n\n{{ run_id }", "line 3: unexpected '}'"),
        ("{% for c in skipped %}\n{{ c }}", "line 2: Unexpected end of template."),
        ("{{ run_id|nope }}", "line 1: No filter named 'nope'."),
    ],
)
def test_it_reports_syntax_errors_with_their_line(template: str, error: str) -> None:
    """A template that does not compile is reported on one line that names where."""
    message = validate_template(template)

    assert message is not None
    assert message.startswith(error)


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("first\n\n{{ nope }}", "line 3: UndefinedError: 'nope' is undefined (sample transition"),
        (
            "{{ attributes.owner }}",
            "line 1: UndefinedError: 'dict object' has no attribute 'owner' (sample transition",
        ),
        (
            "{{ run_id.upper() }}",
            "line 1: SecurityError: access to attribute 'upper' of 'str' object is unsafe.",
        ),
        # only the deletion sample skipped nothing
        (
            "{{ skipped[0] }}",
            "line 1: UndefinedError: tuple object has no element 0 (sample deleted",
        ),
    ],
)
def test_it_reports_render_failures_on_the_sample_events(template: str, error: str) -> None:
    """A template that fails on any sample event is refused, with the line and the sample."""
    message = validate_template(template)

    assert message is not None
    assert message.startswith(error)


def test_it_accepts_a_template_that_renders_every_sample() -> None:
    """Guarded optional values are fine."""
    template = (
        "{{ emoji }} {{ flow or run_id }}: {{ previous or 'new' }} → {{ condition }}"
        "{% if reason %} ({{ reason }}){% endif %} {{ attributes.team|default('') }}"
    )

    assert validate_template(template) is None


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 10**9 }}",
        "{{ 9**9**9 }}",
        "{{ run_id * 100000 }}",
        "{{ run_id|center(100000000) }}",
        "{{ '%*s'|format(1000000000, 'a') }}",
        "{{ message|indent(10**6) }}",
        "{{ run_id" + "|replace('_', '__________')" * 6 + " }}",
    ],
)
def test_it_refuses_templates_that_would_build_huge_strings(source: str) -> None:
    """A template cannot take the daemon's memory or CPU by building an enormous string."""
    error = validate_template(source)
    assert error is not None and "SecurityError" in error
    with capture_logs() as logs:
        message = render(TRANSITION, body=source)
    assert message.body == render(TRANSITION).body  # fell back to the default
    assert [entry["event"] for entry in logs] == ["render.failed"]


def test_it_still_allows_modest_repetition_and_padding() -> None:
    """Bounds leave room for what real templates do: rules of dashes, aligned columns."""
    assert render(TRANSITION, body="{{ '-' * 20 }}|{{ run_id|center(12) }}").body == (
        "-" * 20 + "|" + "run_ab12".center(12).rstrip()
    )
