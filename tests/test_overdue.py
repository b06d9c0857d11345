"""Time-in-state rules decided from what the polls know: plain values in, notices out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from runwatch.core.model import Condition, Event, Run, RunState
from runwatch.core.overdue import overdue, with_overdue
from runwatch.core.rules import Match, Rule, route
from runwatch.core.transitions import Diff, state_of, terminal_conditions

MIN = 60_000
HOUR = 60 * MIN
T0 = 1_800_000_000_000  # when the run entered Pending
PENDING = Condition(condition="Pending", status="Reached", last_transition_time=T0)
RUNNING = Condition(condition="Running", status="Reached", last_transition_time=T0 + HOUR)
STUCK = Rule(
    name="stuck-pending",
    match=Match(condition=("Pending",), for_=1800.0),
    notify=("ml-slack",),
    repeat=7200.0,
)
ONCE = Rule(name="stuck-once", match=Match(condition=("Pending",), for_=1800.0), notify=("a",))
STALLED = Rule(
    name="no-progress", match=Match(condition=("Running",), stalled_for=3600.0), notify=("oncall",)
)
TERMINAL = terminal_conditions()


def pending_run(**fields: object) -> RunState:
    values: dict[str, object] = {
        "organization_id": "org-1",
        "run_id": "run_1",
        "latest": PENDING,
        "time_created": T0 - 1_000,
        "last_updated": T0,
        "flow_name": "yolo-detector",
        "seen_at": T0 + 5_000,
        "changed_at": T0 + 5_000,
    }
    values.update(fields)
    return RunState(**values)  # type: ignore[arg-type]


def notices(state: RunState, at: int, rules: tuple[Rule, ...] = (STUCK,)) -> list[Event]:
    return list(overdue([state], rules, workspace="prod", now_ms=at).events)


def told(state: RunState, at: int, rules: tuple[Rule, ...] = (STUCK,)) -> RunState:
    """The state as the poll at `at` leaves it (with the marks of what it told)."""
    marked = overdue([state], rules, workspace="prod", now_ms=at).marked
    return marked[0] if marked else state


def test_it_tells_once_at_the_threshold_then_at_each_repeat_and_never_in_between() -> None:
    """Polls every 10 minutes for 7 hours: notices at 30m, 2h30m, 4h30m and 6h30m only."""
    state = pending_run()
    given: list[tuple[int, int, int | None]] = []
    for at in range(T0, T0 + 7 * HOUR + 1, 10 * MIN):
        for event in notices(state, at):
            given.append(((at - T0) // MIN, event.reminder, event.elapsed_s))
        state = told(state, at)
    assert given == [(30, 0, 1800), (150, 1, 9000), (270, 2, 16200), (390, 3, 23400)]
    assert state.marks == {"for:stuck-pending": 4}


def test_it_describes_the_notice_as_an_overdue_event_of_its_rule() -> None:
    """The event names its rule, the condition held, for how long, and which notice it is."""
    [event] = notices(pending_run(attributes={"team": "vision"}), T0 + 31 * MIN)
    assert event == Event(
        kind="overdue",
        workspace="prod",
        organization_id="org-1",
        run_id="run_1",
        previous=None,
        current=PENDING,
        flow_name="yolo-detector",
        attributes={"team": "vision"},
        time_created=T0 - 1_000,
        detected_at=T0 + 31 * MIN,
        rule="stuck-pending",
        elapsed_s=31 * 60,
        reminder=0,
    )
    assert event.key == (
        f"org-1/run_1/overdue/stuck-pending/Pending/Reached/{T0}/0/{T0 + 31 * MIN}"
    )


def test_it_gives_only_the_latest_notice_due_after_a_gap() -> None:
    """A run first looked at 9 hours into Pending (a restart, an outage) gets one notice, #4."""
    [event] = notices(pending_run(), T0 + 9 * HOUR)
    assert event.reminder == 4
    assert told(pending_run(), T0 + 9 * HOUR).marks == {"for:stuck-pending": 5}
    assert notices(told(pending_run(), T0 + 9 * HOUR), T0 + 10 * HOUR) == []


def test_it_neither_repeats_nor_skips_a_notice_when_the_marks_come_back_from_the_store() -> None:
    """Marks are the memory: the same state read back after a restart tells what is next."""
    after_first = told(pending_run(), T0 + 31 * MIN)
    reloaded = replace(after_first, marks=dict(after_first.marks))
    assert notices(reloaded, T0 + 40 * MIN) == []
    [second] = notices(reloaded, T0 + 151 * MIN)
    assert second.reminder == 1


def test_it_tells_a_rule_without_repeat_once() -> None:
    """No repeat: one notice per entry into the condition, however long it holds."""
    state = told(pending_run(), T0 + 31 * MIN, (ONCE,))
    assert state.marks == {"for:stuck-once": 1}
    assert notices(state, T0 + 30 * HOUR, (ONCE,)) == []


def test_it_stops_once_the_run_moves_on_and_starts_over_on_a_new_entry() -> None:
    """Running does not match a Pending rule; Pending again is a new entry, with a new clock."""
    state = told(pending_run(), T0 + 31 * MIN)
    run = Run(
        organization_id="org-1",
        run_id="run_1",
        conditions=(PENDING, RUNNING),
        time_created=T0 - 1_000,
        last_updated=T0 + HOUR,
    )
    moved = state_of(run, state, now_ms=T0 + HOUR + 5_000)
    assert moved.marks == {}
    assert notices(moved, T0 + 5 * HOUR) == []

    again = Condition(condition="Pending", status="Reached", last_transition_time=T0 + 6 * HOUR)
    back = state_of(
        replace(run, conditions=(PENDING, RUNNING, again), last_updated=T0 + 6 * HOUR),
        moved,
        now_ms=T0 + 6 * HOUR,
    )
    assert notices(back, T0 + 6 * HOUR + 29 * MIN) == []
    [event] = notices(back, T0 + 6 * HOUR + 30 * MIN)
    assert (event.reminder, event.elapsed_s) == (0, 1800)


@pytest.mark.parametrize(
    ("entered", "seen_at", "first_due"),
    [
        (T0, T0 + 5 * MIN, T0 + 30 * MIN),  # the API's time, when plausible
        (T0 + 10 * HOUR, T0 + 5 * MIN, T0 + 35 * MIN),  # ahead of our clock: when we saw it
        (0, T0 + 5 * MIN, T0 + 35 * MIN),  # missing: when we saw it
    ],
    ids=["api-time", "api-time-ahead", "api-time-missing"],
)
def test_it_measures_for_from_the_condition_time_unless_it_is_ahead_or_missing(
    entered: int, seen_at: int, first_due: int
) -> None:
    """for counts from lastTransitionTime, or from seen_at when that time cannot be right."""
    state = pending_run(latest=replace(PENDING, last_transition_time=entered), seen_at=seen_at)
    assert notices(state, first_due - 1) == []
    assert [e.reminder for e in notices(state, first_due)] == [0]


@pytest.mark.parametrize(
    ("last_updated", "changed_at", "first_due"),
    [
        (T0 + HOUR, T0 + 2 * HOUR, T0 + 2 * HOUR),  # the document's own lastUpdated
        (None, T0 + 2 * HOUR, T0 + 3 * HOUR),  # none: when runwatch saw it change
        (T0 + 50 * HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR),  # ahead of our clock: the same
    ],
    ids=["last-updated", "no-last-updated", "last-updated-ahead"],
)
def test_it_measures_stalled_for_from_the_last_change_of_the_document(
    last_updated: int | None, changed_at: int, first_due: int
) -> None:
    """stalled_for counts from lastUpdated when plausible, else from changed_at."""
    state = pending_run(latest=RUNNING, last_updated=last_updated, changed_at=changed_at)
    assert notices(state, first_due - 1, (STALLED,)) == []
    [event] = notices(state, first_due, (STALLED,))
    assert (event.rule, event.reminder) == ("no-progress", 0)
    assert told(state, first_due, (STALLED,)).marks == {"stall:no-progress": 1}


def test_it_tells_a_stalled_run_again_after_its_document_moved_and_stood_still_again() -> None:
    """A change of the document (a new log line) restarts the stall; a second stall is news."""
    stalled = pending_run(latest=RUNNING, last_updated=T0)
    [first] = notices(stalled, T0 + 2 * HOUR, (STALLED,))
    state = told(stalled, T0 + 2 * HOUR, (STALLED,))
    run = Run(
        organization_id="org-1",
        run_id="run_1",
        conditions=(PENDING, RUNNING),
        time_created=T0 - 1_000,
        last_updated=T0 + 3 * HOUR,
        etag="e2",
    )
    touched = state_of(run, state, now_ms=T0 + 3 * HOUR)
    assert touched.marks == {}
    assert notices(state, T0 + 4 * HOUR, (STALLED,)) == []  # without the change: told
    [second] = notices(touched, T0 + 4 * HOUR, (STALLED,))
    assert first.key != second.key


def test_it_checks_the_other_criteria_of_the_rule() -> None:
    """Only runs the rule's criteria accept are told; previous never matches an overdue event."""
    rules = (
        replace(STUCK, name="yolo", match=replace(STUCK.match, flow=("yolo-*",))),
        replace(STUCK, name="resnet", match=replace(STUCK.match, flow=("resnet-*",))),
        replace(STUCK, name="after", match=replace(STUCK.match, previous=("*",))),
        replace(STUCK, name="lab", match=replace(STUCK.match, workspace=("lab",))),
    )
    assert [e.rule for e in notices(pending_run(), T0 + HOUR, rules)] == ["yolo"]


def test_it_routes_an_overdue_event_only_through_the_rule_that_fired_it() -> None:
    """Two time rules on Pending, 30 minutes to Slack and 2 hours to the pager, page apart."""
    pager = Rule(name="pager", match=Match(condition=("Pending",), for_=7200.0), notify=("pager",))
    everything = Rule(name="all", match=Match(), notify=("audit",))
    rules = (STUCK, pager, everything)
    [early] = notices(pending_run(), T0 + HOUR, rules)
    assert [r.channel for r in route(early, rules)] == ["ml-slack"]
    late = notices(told(pending_run(), T0 + HOUR, rules), T0 + 130 * MIN, rules)
    assert [(e.rule, [r.channel for r in route(e, rules)]) for e in late] == [("pager", ["pager"])]


def test_it_adds_the_notices_to_the_poll_and_decides_them_on_the_runs_as_it_left_them() -> None:
    """with_overdue checks the polled versions, skips finished runs and tombstones, and
    carries the marks in the same upserts as the poll's own changes."""
    quiet = pending_run(run_id="quiet")
    moved = pending_run(run_id="moved")
    finished = pending_run(run_id="done", latest=replace(PENDING, condition="Succeeded"))
    gone = pending_run(run_id="gone", deleted_at=T0 + HOUR)
    polled = replace(moved, latest=RUNNING, seen_at=T0 + HOUR)
    diff = Diff(events=(), upserts=(polled, gone))

    result = with_overdue(
        diff,
        [quiet, moved],
        (STUCK,),
        workspace="prod",
        now_ms=T0 + HOUR,
        terminal=TERMINAL,
    )
    assert [e.run_id for e in result.events] == ["quiet"]
    assert [(s.run_id, dict(s.marks)) for s in result.upserts] == [
        ("moved", {}),
        ("gone", {}),
        ("quiet", {"for:stuck-pending": 1}),
    ]
    anything = Rule(name="any", match=Match(for_=1800.0), notify=("a",))
    assert overdue([finished], (anything,), workspace="prod", now_ms=T0 + HOUR).events
    assert with_overdue(
        Diff(events=(), upserts=()),
        [],
        (STUCK,),
        workspace="prod",
        now_ms=T0,
        terminal=TERMINAL,
    ) == Diff(events=(), upserts=())
    assert (
        with_overdue(
            Diff(events=(), upserts=(finished,)),
            [],
            (anything,),
            workspace="prod",
            now_ms=T0 + HOUR,
            terminal=TERMINAL,
        ).events
        == ()
    )


def test_it_leaves_a_poll_alone_without_time_rules() -> None:
    """Without for/stalled_for rules nothing is checked at all."""
    diff = Diff(events=(), upserts=(pending_run(),))
    plain = Rule(name="all", match=Match(), notify=("a",))
    assert (
        with_overdue(
            diff, [pending_run()], (plain,), workspace="prod", now_ms=T0 + HOUR, terminal=TERMINAL
        )
        is diff
    )
