"""Digests: one message for a burst of events, with exact counts and a bounded body."""

from __future__ import annotations

import re

import pytest
from apprise.conversion import markdown_to_html
from markup import HOSTILE, Html

from runwatch.core.digest import compose_digest
from runwatch.core.escaping import FLAVOURS, Flavour
from runwatch.core.model import Condition, Enrichment, Event, EventKind

T0 = 1_760_000_000_000


def event(
    run_id: str,
    condition: str | None,
    previous: str | None = None,
    *,
    kind: EventKind = "transition",
    workspace: str = "prod",
    project: str | None = "traffic-signs",
    reason: str | None = None,
    flow: str | None = "yolo",
    **fields: object,
) -> Event:
    def at(name: str | None, seconds: int) -> Condition | None:
        if name is None:
            return None
        return Condition(
            condition=name,
            status="Reached",
            last_transition_time=T0 + seconds * 1000,
            reason=reason,
        )

    return Event(
        kind=kind,
        workspace=workspace,
        organization_id="org-1",
        run_id=run_id,
        previous=at(previous, 0),
        current=at(condition, 60),
        flow_name=flow,
        training_project=project,
        **fields,  # type: ignore[arg-type]
    )


def run_lines(body: str) -> list[str]:
    return [line for line in body.splitlines() if line.startswith("• ")]


def headings(body: str) -> list[str]:
    return [line for line in body.splitlines() if not line.startswith(("• ", "and "))]


def test_it_counts_every_run_of_200_events_exactly_in_one_message() -> None:
    """200 events of 150 runs: the title counts each run once, under its last state."""
    events = [event(f"r{i}", "Running", "Pending") for i in range(50)]  # will end below
    events += [event(f"r{i}", "Failed", "Running", reason="OOM") for i in range(20)]
    events += [event(f"r{i}", "Succeeded", "Running") for i in range(20, 50)]
    events += [event(f"n{i}", "Succeeded", "Running") for i in range(90)]
    events += [event(f"e{i}", "Error", "Running") for i in range(10)]
    assert len(events) == 200

    message = compose_digest(events, flavour="markdown")

    assert message.title == "150 runs changed in prod: 120 Succeeded, 20 Failed, 10 Error"
    assert message.notify_type == "failure"
    assert len(message.body.splitlines()) == 51
    assert message.body.splitlines()[-1] == f"and {150 - len(run_lines(message.body))} more"


def test_it_stays_bounded_for_10000_events() -> None:
    """Ten thousand events make a digest of a few kilobytes, with its counts exact."""
    states = ["Failed", "Succeeded", "Error", "Cancelled"]
    events = [
        event(f"run_{i}", states[i % 4], "Running", project=f"p{i % 7}", reason="x" * 5_000)
        for i in range(10_000)
    ]

    message = compose_digest(events, flavour="markdown")

    size = len(message.title.encode()) + len(message.body.encode())
    assert size < 20_000
    assert message.title == (
        "10000 runs changed in prod: 2500 Failed, 2500 Error, 2500 Succeeded, 2500 Cancelled"
    )
    assert message.body.endswith(f"and {10_000 - len(run_lines(message.body))} more")


def test_it_names_a_few_states_in_the_title_and_counts_the_rest() -> None:
    """Conditions are open strings: ten thousand new values cannot make a huge title."""
    events = [event(f"run_{i}", f"Weird{i}", "Running") for i in range(1_000)]
    events.append(event("f", "Failed", "Running"))

    title = compose_digest(events, flavour="text").title

    assert title == "1001 runs changed in prod: 1 Failed, 1 Weird0, 1 Weird1, 1 Weird10, 997 other"


def test_it_shows_the_path_of_a_run_that_moved_more_than_once() -> None:
    """A run seen three times is one line with the path it took."""
    events = [
        event("r1", "Running", "Pending"),
        event("r2", "Succeeded", "Running"),
        event("r1", "Failed", "Running", reason="OutOfMemory"),
    ]

    body = compose_digest(events, flavour="text").body

    assert run_lines(body) == [
        "• r1 · yolo · Pending → Running → Failed · OutOfMemory",
        "• r2 · yolo · Running → Succeeded",
    ]


def test_it_puts_failures_first_grouped_by_state_then_by_project() -> None:
    """Failed, Error, overdue, unknown states, deleted, then Succeeded, Cancelled, Running."""
    events = [
        event("p1", "Pending", None, kind="new"),
        event("r1", "Running", "Pending"),
        event("c1", "Cancelled", "Running"),
        event("s1", "Succeeded", "Running", project="b-project"),
        event("s2", "Succeeded", "Running", project="a-project"),
        event("d1", None, "Running", kind="deleted"),
        event("w1", "Started", "Pending"),
        event("o1", "Pending", None, kind="overdue", elapsed_s=1_860, rule="stuck"),
        event("e1", "Error", "Running"),
        event("f1", "Failed", "Running", project=None),
        event("f2", "Failed", "Running"),
        event(
            "f3",
            "Failed",
            "Running",
            enrichment=Enrichment(project_name="Traffic Signs"),
        ),
    ]

    body = compose_digest(events, flavour="text").body

    assert headings(body) == [
        "❌ Failed · Traffic Signs (1)",
        "❌ Failed · traffic-signs (1)",
        "❌ Failed (1)",
        "🔥 Error · traffic-signs (1)",
        "⏰ overdue · traffic-signs (1)",
        "🔔 Started · traffic-signs (1)",
        "🗑️ deleted · traffic-signs (1)",
        "✅ Succeeded · a-project (1)",
        "✅ Succeeded · b-project (1)",
        "🚫 Cancelled · traffic-signs (1)",
        "🏃 Running · traffic-signs (1)",
        "⏳ Pending · traffic-signs (1)",
    ]
    assert "• o1 · yolo · Pending for 31m" in run_lines(body)
    assert "• d1 · yolo · Running → deleted" in run_lines(body)
    assert "• p1 · yolo · new → Pending" in run_lines(body)


@pytest.mark.parametrize("max_lines", [1, 2, 3, 5, 8])
def test_it_cuts_the_body_at_max_lines_and_says_how_many_more(max_lines: int) -> None:
    """At most max_lines lines, then "and N more"; the headings' counts stay exact."""
    events = [event(f"f{i}", "Failed", "Running") for i in range(4)]
    events += [event(f"s{i}", "Succeeded", "Running") for i in range(4)]

    lines = compose_digest(events, flavour="text", max_lines=max_lines).body.splitlines()

    listed = [line for line in lines if line.startswith("• ")]
    assert len(lines) == (min(max_lines, 10) if max_lines > 1 else 0) + 1  # a heading needs a run
    assert lines[-1] == f"and {8 - len(listed)} more"
    assert all(line.endswith("(4)") for line in headings("\n".join(lines)))


def test_it_says_nothing_more_when_everything_fits() -> None:
    """No "and 0 more"."""
    body = compose_digest([event("f1", "Failed", "Running")], flavour="text").body

    assert body == "❌ Failed · traffic-signs (1)\n• f1 · yolo · Running → Failed"


@pytest.mark.parametrize(
    ("workspaces", "label", "where"),
    [
        (["prod"], None, "in prod"),
        (["prod", "staging", "prod"], None, "in prod and staging"),
        (["a", "b", "c"], None, "in 3 workspaces"),
        (["a", "b", "c"], "the EU region", "in the EU region"),
    ],
)
def test_it_says_where_the_runs_are(workspaces: list[str], label: str | None, where: str) -> None:
    """One workspace is named, two are named, more are counted; a label overrides."""
    events = [event(f"r{i}", "Succeeded", "Running", workspace=w) for i, w in enumerate(workspaces)]

    title = compose_digest(events, flavour="text", workspace_label=label).title

    n = len(workspaces)
    assert title == f"{n} run{'s' if n > 1 else ''} changed {where}: {n} Succeeded"


def test_it_lists_runwatchs_own_alerts_first_and_counts_them() -> None:
    """Self-alerts in the same digest come first; they make it a warning at least."""
    message = compose_digest(
        [event("s1", "Succeeded", "Running")],
        others=["runwatch cannot poll prod", "channel ops is failing"],
        flavour="text",
    )

    assert message.title == "1 run changed in prod: 1 Succeeded; 2 runwatch alerts"
    assert message.body.splitlines()[:2] == [
        "⚠️ runwatch cannot poll prod",
        "⚠️ channel ops is failing",
    ]
    assert message.notify_type == "warning"
    assert compose_digest([], others=["x"], flavour="text").title == "1 runwatch alert"


@pytest.mark.parametrize(
    ("states", "notify_type"),
    [
        (["Succeeded", "Failed", "Running"], "failure"),
        (["Succeeded", "Error"], "failure"),
        (["Succeeded", "Cancelled", "Running"], "warning"),
        (["Succeeded", "Running"], "success"),
        (["Running", "Pending"], "info"),
    ],
)
def test_it_takes_the_most_serious_notify_type(states: list[str], notify_type: str) -> None:
    """A failure if anything failed, else the most serious of its events."""
    events = [event(f"r{i}", state, "Pending") for i, state in enumerate(states)]

    assert compose_digest(events, flavour="markdown").notify_type == notify_type


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_it_escapes_api_text_in_a_digest(flavour: Flavour) -> None:
    """Run ids, flows, projects, states and reasons are text, like in any message."""
    events = [
        event(HOSTILE, "Failed", "Running", flow=HOSTILE, project=HOSTILE, reason=HOSTILE),
        event("r2", HOSTILE, "Running", workspace=HOSTILE),
    ]

    message = compose_digest(events, others=[HOSTILE], flavour=flavour)

    for part in (message.title, message.body):
        if flavour == "markdown":
            assert {tag for tag, _ in Html(markdown_to_html(part)).tags} <= {"p", "br", "strong"}
        elif flavour == "slack":
            assert re.findall("<[^>]*>", part) == []
        else:
            assert "\n" not in message.title and "<!channel>" in part
