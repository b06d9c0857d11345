"""Messages rendered from events: the compact defaults, durations, metrics, links, flavours."""

from __future__ import annotations

from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from runwatch.core.model import Condition, Enrichment, Event
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

TRANSITION, NEW, DELETED, OVERDUE = sample_events()
ORG = "0f9e8d7c-6b5a-4a3b-9c8d-7e6f5a4b3c2d"
CONSOLE = f"https://vi.datature.com/org/{ORG}"
T0 = 1_717_236_000_000  # the samples' creation time
DAY_S = 86_400


def with_condition(event: Event, condition: str, status: str = "Reached") -> Event:
    assert event.current is not None
    return replace(event, current=replace(event.current, condition=condition, status=status))


def cond(condition: str, at_s: float, **kwargs: str) -> Condition:
    """A Reached condition `at_s` seconds after T0."""
    return Condition(
        condition=condition, status="Reached", last_transition_time=T0 + int(at_s * 1000), **kwargs
    )


def first_line(event: Event, **kwargs: object) -> str:
    return render(event, **kwargs).body.splitlines()[0]  # type: ignore[arg-type]


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
    assert message.title.endswith("(prod)")
    assert len(message.body.splitlines()) == 2


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: e.kind)
def test_it_does_not_repeat_the_title_in_the_body(event: Event) -> None:
    """The workspace and the run id are in the title only; the body says what happened."""
    what_happened = render(event).body.splitlines()[0]

    assert event.run_id not in what_happened
    assert "prod" not in what_happened


def test_it_accepts_its_own_default_templates() -> None:
    """The defaults pass the same validation as a rule's templates."""
    assert validate_template(DEFAULT_TITLE) is None
    assert validate_template(DEFAULT_BODY) is None


def test_it_leads_a_transition_with_what_happened_then_the_links() -> None:
    """One line with the path, the reason and how long it ran; one line of links."""
    assert render(TRANSITION) == Message(
        title="❌ yolo-detector failed — run_ab12 (prod)",
        body=(
            "Pending → Running → **Failed** · OutOfMemory: Container exceeded its memory limit"
            " · ran 1h 12m\n"
            f"[Log](https://logs.vi.datature.com/run_ab12) · [Console]({CONSOLE})"
        ),
        notify_type="failure",
    )


def test_it_reads_as_slack_mrkdwn_once_apprise_converts_it() -> None:
    """The Markdown default becomes Slack's dialect in Apprise's Slack plugin: single-star
    bold and <url|text> links, nothing left of Markdown's."""
    import apprise

    from runwatch.config.apprise_urls import load_service

    # Through runwatch's own loader: it loads the plugin (Apprise may have started empty).
    slack = load_service("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#ml")
    body = slack.dialect_convert(
        render(TRANSITION, flavour=flavour_for([slack.url()])).body, apprise.NotifyFormat.MARKDOWN
    )

    assert "Pending → Running → *Failed* · OutOfMemory" in body
    assert "<https://logs.vi.datature.com/run_ab12|Log>" in body
    assert f"<{CONSOLE}|Console>" in body
    assert "**" not in body
    assert "](" not in body


def test_it_uses_no_markup_in_the_text_flavour() -> None:
    """Plain text has labels and bare URLs only."""
    body = render(TRANSITION, flavour="text").body

    assert body.splitlines()[0].startswith("Pending → Running → Failed · OutOfMemory")
    assert "Log: https://logs.vi.datature.com/run_ab12 · Console: " in body
    assert not any(mark in body for mark in ("*", "[", "<", "|"))


def test_it_writes_slack_mrkdwn_in_the_slack_flavour() -> None:
    """The native Slack flavour bolds with one star and links with <url|text>."""
    assert render(TRANSITION, flavour="slack").body == (
        "Pending → Running → *Failed* · OutOfMemory: Container exceeded its memory limit"
        " · ran 1h 12m\n"
        f"<https://logs.vi.datature.com/run_ab12|Log> · <{CONSOLE}|Console>"
    )


@pytest.mark.parametrize(
    ("event", "title", "line"),
    [
        (
            replace(NEW, enrichment=None),
            "✅ yolo-detector succeeded — run_cd34 (prod)",
            "New run · Pending → Running → **Succeeded** · ran 2h 14m",
        ),
        (
            DELETED,
            "🗑️ yolo-detector deleted — run_ef56 (prod)",
            "Deleted · last known **Running**",
        ),
        (
            replace(TRANSITION, skipped=(), previous=cond("Running", 60)),
            "❌ yolo-detector failed — run_ab12 (prod)",
            "Running → **Failed** · OutOfMemory: Container exceeded its memory limit · ran 1h 12m",
        ),
        (
            replace(
                TRANSITION,
                flow_name=None,
                skipped=(),
                current=replace(cond("Running", 60), status="Waiting"),
            ),
            "🏃 run running — run_ab12 (prod)",
            "Pending → **Running** (Waiting) · waited 58s",
        ),
        (
            replace(OVERDUE, reminder=0, elapsed_s=1_860),
            "⏳ run_gh78 has been Pending for 31m (prod)",
            "**Pending** for 31m · rule stuck-pending",
        ),
        (
            OVERDUE,
            "⏳ run_gh78 still Pending after 2h 31m, reminder 2 (prod)",
            "**Pending** for 2h 31m · rule stuck-pending · reminder 2",
        ),
    ],
    ids=["new", "deleted", "one-step", "not-reached", "overdue", "reminder"],
)
def test_it_describes_each_kind_of_event_in_its_first_line(
    event: Event, title: str, line: str
) -> None:
    """New runs, deletions, transitions and overdue runs each say what happened."""
    message = render(event)

    assert message.title == title
    assert message.body.splitlines()[0] == line


def test_it_leaves_out_what_is_not_known() -> None:
    """No "Reason: None", no "0s" for a new Pending run, no log link without a log."""
    bare = Event(
        kind="new",
        workspace="prod",
        organization_id="org-1",
        run_id="run_1",
        previous=None,
        current=Condition(condition="Pending", status="Reached", last_transition_time=5_000),
        time_created=5_000,
    )

    assert render(bare) == Message(
        title="⏳ run pending — run_1 (prod)",
        body="New run · **Pending**\n[Console](https://vi.datature.com/org/org-1)",
        notify_type="info",
    )


def test_it_shows_a_log_that_is_not_a_url_as_plain_text() -> None:
    """A log path is not made into a link."""
    body = render(replace(TRANSITION, log="/var/log/runs/run_ab12.log")).body

    assert body.splitlines()[1] == f"Log: /var/log/runs/run_ab12.log · [Console]({CONSOLE})"


@pytest.mark.parametrize(
    ("event", "ran"),
    [
        (TRANSITION, "ran 1h 12m"),  # from Running in the history
        (replace(TRANSITION, history=()), "ran 1h 12m"),  # from the skipped Running
        (replace(TRANSITION, history=(), skipped=(), previous=cond("Running", 60)), "ran 1h 12m"),
        (replace(TRANSITION, history=(cond("Pending", 2), TRANSITION.current), skipped=()), None),
        (replace(TRANSITION, history=(), skipped=()), None),  # never seen running
        (with_condition(TRANSITION, "Succeeded"), "ran 1h 12m"),
        (with_condition(TRANSITION, "Cancelled"), "ran 1h 12m"),
        (with_condition(TRANSITION, "Started"), None),  # not known to be terminal
    ],
    ids=[
        "history",
        "skipped",
        "previous",
        "no-running",
        "unknown",
        "succeeded",
        "cancelled",
        "unknown-condition",
    ],
)
def test_it_says_how_long_an_ended_run_ran_from_its_first_running_condition(
    event: Event, ran: str | None
) -> None:
    """A run that ends ran from Running to its end; without a Running time, nothing is said."""
    line = first_line(event)

    if ran is None:
        assert " · ran " not in line and "waited" not in line
    else:
        assert line.endswith(f" · {ran}")


def test_it_says_how_long_a_run_that_starts_waited() -> None:
    """A run that starts running waited from Pending, or from its creation without one."""
    running = replace(TRANSITION, skipped=(), current=cond("Running", 300))
    without_pending = replace(running, previous=None, history=(cond("Running", 300),))

    assert first_line(running).endswith(" · waited 4m 58s")
    assert first_line(without_pending).endswith(" · waited 5m")
    assert first_line(replace(without_pending, time_created=0)).endswith("**Running**")


@pytest.mark.parametrize(
    "history",
    [
        (cond("Running", -334 * DAY_S), cond("Failed", 0)),  # a simulation's old history
        (cond("Running", 100), cond("Failed", 0)),  # clocks disagreeing
    ],
    ids=["implausible", "negative"],
)
def test_it_leaves_out_durations_that_cannot_be_true(history: tuple[Condition, ...]) -> None:
    """Never "334d" for a run whose history starts long ago, never a negative duration."""
    event = replace(TRANSITION, history=history, previous=None, skipped=(), current=history[-1])

    message = render(event, body="{{ duration }}|{{ duration_seconds }}|{{ ran }}")

    assert message.body == "||"  # None renders as nothing
    assert " · ran " not in render(event).body


def test_it_gives_templates_durations_with_their_meaning() -> None:
    """`duration` is what ran for an ended run, what waited for a starting one."""
    template = "{{ duration }}/{{ duration_seconds }}/{{ ran }}/{{ waited }}/{{ elapsed }}"
    running = replace(TRANSITION, skipped=(), current=cond("Running", 300))

    assert render(TRANSITION, body=template).body == "1h 12m/4320/1h 12m//"
    assert render(running, body=template).body == "4m 58s/298//4m 58s/"
    assert render(
        OVERDUE, body=template + "/{{ elapsed_seconds }}/{{ reminder }}/{{ rule }}"
    ).body == ("2h 31m/9060///2h 31m/9060/2/stuck-pending")


def test_it_lists_the_metrics_of_a_run_that_succeeded() -> None:
    """Numbers to 4 significant digits, ints as ints, others as sent, at most max_metrics."""
    assert first_line(NEW) == (
        "New run · Pending → Running → **Succeeded** · epoch 40 · mAP 0.7132"
        " · precision 0.8011 · recall 0.6620 · images 1200 · converged true · best epoch_38"
        " · +2 more · ran 2h 14m"
    )
    assert first_line(NEW, max_metrics=2) == (
        "New run · Pending → Running → **Succeeded** · epoch 40 · mAP 0.7132"
        " · precision 0.8011 · +6 more · ran 2h 14m"
    )
    assert first_line(NEW, max_metrics=8, flavour="text").endswith(
        " · best epoch_38 · lr null · loss 0.01235 · ran 2h 14m"
    )


def test_it_names_the_project_by_its_display_name() -> None:
    """The project's display name replaces its id in the title when it is known."""
    assert render(NEW).title == "✅ Traffic Signs succeeded — run_cd34 (prod)"
    assert render(replace(NEW, enrichment=Enrichment(epoch=3))).title == (
        "✅ yolo-detector succeeded — run_cd34 (prod)"
    )


def test_it_gives_templates_the_enrichment() -> None:
    """Templates get the full metrics map, the epoch, the model and the project's name."""
    template = (
        "{{ metrics|length }} {{ metrics.mAP }} {{ metrics['lr'] }} {{ epoch }} {{ model_id }}"
        " {{ project_name }} {{ project }} {{ training_project }}"
        "{% for name, value in shown_metrics %} {{ name }}={{ value }}{% endfor %}"
        " +{{ more_metrics }}"
    )

    assert render(NEW, body=template, flavour="text", max_metrics=2).body == (
        "8 0.71318  40 out_7f3a Traffic Signs Traffic Signs traffic-signs"
        " mAP=0.7132 precision=0.8011 +6"
    )


@pytest.mark.parametrize(
    ("template", "url"),
    [
        (None, CONSOLE),
        (
            "https://vi.example.com/{organization_id}/runs/{run_id}",
            f"https://vi.example.com/{ORG}/runs/run_ab12",
        ),
        (
            "https://vi.example.com/r?id={run_id}&x={{y}}",
            "https://vi.example.com/r?id=run_ab12&x={y}",
        ),
        ("https://vi.example.com/fixed", "https://vi.example.com/fixed"),
        ("https://vi.example.com/{run_id.__class__}", CONSOLE),  # refused by the config too
        ("https://vi.example.com/{secret}", CONSOLE),
        ("https://vi.example.com/{run_id!r}", CONSOLE),
        ("https://vi.example.com/{", CONSOLE),
    ],
)
def test_it_formats_the_workspace_console_url_safely(template: str | None, url: str) -> None:
    """`{organization_id}` and `{run_id}` are filled in; any other field falls back to the
    default template."""
    assert (
        render(TRANSITION, body="{{ console_url }}", console_url=template, flavour="text").body
        == url
    )


def test_it_percent_encodes_the_run_id_into_the_console_url() -> None:
    """A value can never add a path segment, a query or markup to the link."""
    event = replace(TRANSITION, run_id="a/b?c=<d>")

    body = render(
        event, body="{{ console_url }}", console_url="https://x/{run_id}", flavour="text"
    ).body

    assert body == "https://x/a%2Fb%3Fc%3D%3Cd%3E"


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


def test_it_gives_deletions_and_overdue_runs_the_warning_type() -> None:
    """A deleted run, or one that held its condition too long, is a warning."""
    assert notify_type_for(DELETED) == "warning"
    assert notify_type_for(replace(DELETED, previous=TRANSITION.current)) == "warning"
    assert notify_type_for(OVERDUE) == "warning"


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
        "{{ previous_status }}|{{ skipped|join(',') }}|{{ path|join(',') }}|{{ emoji }}|"
        "{{ transition_time }}|{{ duration }}|{{ duration_seconds }}|{{ killed_at }}|{{ log }}|"
        "{{ console_url }}|{{ flavour }}|{{ 'x'|strong }}"
    )

    message = render(TRANSITION, title=template, body=template, flavour="markdown")

    assert message.body == (
        "run_ab12|prod|0f9e8d7c-6b5a-4a3b-9c8d-7e6f5a4b3c2d|transition|yolo-detector|"
        "traffic-signs|vision|vision|Failed|Reached|OutOfMemory|"
        "Container exceeded its memory limit|Pending|Reached|Running|Pending,Running,Failed|❌|"
        "2024-06-01T11:13:00Z|1h 12m|4320|2024-06-01T11:11:40Z|"
        f"https://logs.vi.datature.com/run_ab12|{CONSOLE}|markdown|**x**"
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
