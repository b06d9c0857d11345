"""Which rules match an event, and which channels hear of it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from runwatch.core.model import Condition, Event
from runwatch.core.rules import Match, Route, Rule, matches, route

RUNNING = Condition(condition="Running", status="Reached", last_transition_time=2_000)
FAILED = Condition(condition="Failed", status="FailedReach", last_transition_time=3_000)

FAILURE = Event(
    kind="transition",
    workspace="prod",
    organization_id="org-1",
    run_id="run_1",
    previous=RUNNING,
    current=FAILED,
    flow_name="yolo-detector",
    training_project="traffic-signs",
    attributes={"team": "vision", "tier": "gpu-a100"},
)
NEW = replace(FAILURE, kind="new", previous=None)
DELETED = replace(FAILURE, kind="deleted", current=None)
ANONYMOUS = replace(FAILURE, flow_name=None, training_project=None, attributes={})


@pytest.mark.parametrize(
    ("match", "event", "expected"),
    [
        (Match(), FAILURE, True),
        (Match(), NEW, True),
        # condition and status: globs on the current condition, the values ORed
        (Match(condition=("Failed", "Error")), FAILURE, True),
        (Match(condition=("Succeeded",)), FAILURE, False),
        (Match(condition=("Fail*",)), FAILURE, True),
        (Match(condition=("?ailed",)), FAILURE, True),
        (Match(condition=("[EF]*",)), FAILURE, True),
        (Match(condition=("failed",)), FAILURE, False),  # globs are case-sensitive
        (Match(condition=("Fail",)), FAILURE, False),  # and match the whole value
        (Match(status=("FailedReach",)), FAILURE, True),
        (Match(status=("Reached",)), FAILURE, False),
        # previous: the condition before; a new run has none, and "*" does not make one up
        (Match(previous=("Running",)), FAILURE, True),
        (Match(previous=("Pending",)), FAILURE, False),
        (Match(previous=("*",)), NEW, False),
        # workspace, flow, project
        (Match(workspace=("prod",)), FAILURE, True),
        (Match(workspace=("staging", "dev*")), FAILURE, False),
        (Match(flow=("yolo-*",)), FAILURE, True),
        (Match(flow=("resnet-*",)), FAILURE, False),
        (Match(training_project=("traffic-*",)), FAILURE, True),
        (Match(training_project=("other",)), FAILURE, False),
        # a missing flow or project matches only "*"
        (Match(flow=("yolo-*",)), ANONYMOUS, False),
        (Match(flow=("*",)), ANONYMOUS, True),
        (Match(training_project=("*",)), ANONYMOUS, True),
        (Match(training_project=("?*",)), ANONYMOUS, False),
        # attributes: every key named must exist and match one of its globs
        (Match(attributes={"team": ("vision",)}), FAILURE, True),
        (Match(attributes={"team": ("nlp", "vis*")}), FAILURE, True),
        (Match(attributes={"team": ("vision",), "tier": ("gpu-*",)}), FAILURE, True),
        (Match(attributes={"team": ("vision",), "tier": ("cpu",)}), FAILURE, False),
        (Match(attributes={"owner": ("*",)}), FAILURE, False),
        (Match(attributes={"team": ("*",)}), ANONYMOUS, False),
        # criteria are ANDed
        (Match(condition=("Failed",), flow=("yolo-*",), workspace=("prod",)), FAILURE, True),
        (Match(condition=("Failed",), flow=("resnet",)), FAILURE, False),
        # event kinds: deletions only for rules that ask for them
        (Match(), DELETED, False),
        (Match(event=("deleted",)), DELETED, True),
        (Match(event=("deleted",)), FAILURE, False),
        (Match(event=("new",)), NEW, True),
        (Match(event=("new",)), FAILURE, False),
        (Match(event=("transition", "deleted")), FAILURE, True),
        # a deleted run is matched on its last known condition
        (Match(event=("deleted",), condition=("Running",)), DELETED, True),
        (Match(event=("deleted",), condition=("Failed",)), DELETED, False),
        (Match(event=("deleted",), status=("Reached",)), DELETED, True),
        (Match(event=("deleted",), condition=("*",)), replace(DELETED, previous=None), True),
        (Match(event=("deleted",), condition=("R*",)), replace(DELETED, previous=None), False),
    ],
)
def test_it_matches_an_event_when_every_named_criterion_accepts_it(
    match: Match, event: Event, expected: bool
) -> None:
    """A rule's criteria are ANDed, their values ORed, strings matched as globs."""
    assert matches(match, event) is expected


def rule(name: str, notify: tuple[str, ...], match: Match) -> Rule:
    return Rule(name=name, match=match, notify=notify, title=f"{name} title")


def test_it_sends_an_event_to_each_channel_of_the_matching_rules_once() -> None:
    """Channels are the union over matching rules, each once, in rule order."""
    rules = [
        rule("failures", ("slack", "oncall"), Match(condition=("Failed", "Error"))),
        rule("successes", ("email",), Match(condition=("Succeeded",))),
        rule("yolo", ("oncall", "email", "team"), Match(flow=("yolo-*",))),
    ]

    routes = route(FAILURE, rules)

    assert [(r.channel, r.rule.name) for r in routes] == [
        ("slack", "failures"),
        ("oncall", "failures"),  # the first rule naming a channel gives its templates
        ("email", "yolo"),
        ("team", "yolo"),
    ]
    assert routes[0] == Route(channel="slack", rule=rules[0])


@pytest.mark.parametrize(
    ("event", "channels"),
    [
        (FAILURE, ["slack"]),
        (NEW, ["slack"]),
        (DELETED, ["audit"]),
        (replace(FAILURE, current=replace(FAILED, condition="Succeeded")), []),
    ],
)
def test_it_routes_by_event_kind_and_condition(event: Event, channels: list[str]) -> None:
    """Deletions reach only rules that ask for them; an event no rule matches goes nowhere."""
    rules = (
        rule("failures", ("slack",), Match(condition=("Failed",))),
        rule("deletions", ("audit",), Match(event=("deleted",))),
    )

    assert [r.channel for r in route(event, rules)] == channels


def test_it_routes_nowhere_without_rules() -> None:
    """No rules, no deliveries."""
    assert route(FAILURE, ()) == []


@pytest.mark.parametrize("event", [FAILURE, NEW, DELETED], ids=["transition", "new", "deleted"])
def test_it_never_routes_a_change_through_a_time_in_state_rule(event: Event) -> None:
    """A rule with for or stalled_for hears only of overdue events, whatever else it names."""
    rules = (
        Rule(name="stuck", match=Match(for_=7200.0), notify=("pager",)),
        Rule(
            name="stalled",
            match=Match(stalled_for=3600.0, event=("transition", "new", "deleted")),
            notify=("pager", "email"),
        ),
        Rule(name="all", match=Match(event=("transition", "new", "deleted")), notify=("ops",)),
    )
    assert [r.channel for r in route(event, rules)] == ["ops"]
