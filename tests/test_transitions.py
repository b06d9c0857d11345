"""The diff between remembered and observed runs, pushed through with plain values."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runwatch.core.model import Condition, Event, Run, RunState
from runwatch.core.transitions import Diff, detect_deletions, detect_transitions, state_of

ORG = "org-1"
NOW = 1_700_000_999_000

PENDING = Condition(condition="Pending", status="Reached", last_transition_time=1_000)
RUNNING = Condition(condition="Running", status="Reached", last_transition_time=2_000)
FAILED = Condition(
    condition="Failed",
    status="Reached",
    last_transition_time=3_000,
    reason="OutOfMemory",
    message="killed",
)
SUCCEEDED = Condition(condition="Succeeded", status="Reached", last_transition_time=3_000)


def a_run(*conditions: Condition, run_id: str = "run_1", **fields: Any) -> Run:
    values: dict[str, Any] = {
        "organization_id": ORG,
        "run_id": run_id,
        "conditions": conditions,
        "time_created": 500,
        "last_updated": 100 + len(conditions),
        "flow_name": "yolo",
        "etag": f"etag-{len(conditions)}",
    }
    values.update(fields)
    return Run(**values)


def known_from(*runs: Run) -> dict[str, RunState]:
    return {r.run_id: state_of(r) for r in runs}


def diff(known: dict[str, RunState], *observed: Run, baseline: bool = False) -> Diff:
    return detect_transitions(known, observed, workspace="prod", baseline=baseline, now_ms=NOW)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (RUNNING, FAILED),  # another condition
        (RUNNING, replace(RUNNING, status="FailedReach")),  # same condition, another status
        (RUNNING, replace(RUNNING, last_transition_time=2_500)),  # same state, entered again
    ],
)
def test_it_emits_a_transition_when_the_latest_condition_changes(
    before: Condition, after: Condition
) -> None:
    """A change of condition, status or transition time is one transition event."""
    old = a_run(PENDING, before)
    new = a_run(PENDING, before, after)

    result = diff(known_from(old), new)

    assert [(e.kind, e.previous, e.current, e.skipped) for e in result.events] == [
        ("transition", before, after, ())
    ]
    assert result.upserts == (state_of(new),)
    assert result.deleted == ()


def test_it_emits_nothing_for_the_same_observation_twice() -> None:
    """Seeing a run exactly as remembered yields an empty diff."""
    run = a_run(PENDING, RUNNING)

    assert diff(known_from(run), run) == Diff(events=(), upserts=(), deleted=())


@pytest.mark.parametrize(
    "change",
    [
        {"etag": "etag-new"},
        {"last_updated": 999},
        {"log": "https://logs.example/run_1"},
        {"killed_at": 2_500},
        {"flow_name": "renamed"},
        {"training_project": "project-b"},
        {"attributes": {"team": "vision"}},
    ],
)
def test_it_upserts_without_an_event_when_only_metadata_moved(change: dict[str, Any]) -> None:
    """Metadata that moved without a condition change is written, and nobody is told."""
    old = a_run(PENDING, RUNNING)
    new = replace(old, **change)

    result = diff(known_from(old), new)

    assert result.events == ()
    assert result.upserts == (state_of(new),)


def test_it_ignores_metadata_older_than_what_it_remembers() -> None:
    """A replica's older last_updated with an unchanged condition does not undo a newer write."""
    stored = a_run(PENDING, RUNNING, last_updated=200, etag="new")
    stale = a_run(PENDING, RUNNING, last_updated=150, etag="old")

    assert diff(known_from(stored), stale) == Diff(events=(), upserts=(), deleted=())


def test_it_returns_an_empty_diff_for_a_listing_of_unchanged_runs() -> None:
    """Quiet runs produce nothing at all, whatever their number."""
    runs = [a_run(PENDING, RUNNING, run_id=f"run_{i}") for i in range(50)]

    assert diff(known_from(*runs), *runs) == Diff(events=(), upserts=(), deleted=())


def test_it_records_every_run_without_events_on_the_baseline() -> None:
    """A workspace's first poll records its runs and notifies nobody."""
    runs = [
        a_run(PENDING, FAILED, run_id="run_a"),
        a_run(run_id="run_b"),
        a_run(PENDING, RUNNING, SUCCEEDED, run_id="run_c"),
    ]

    result = diff({}, *runs, baseline=True)

    assert result.events == ()
    assert result.upserts == tuple(state_of(r) for r in runs)


def test_it_emits_new_with_the_earlier_conditions_skipped_for_an_unknown_run() -> None:
    """A run first seen after the baseline is a "new" event with no previous condition."""
    run = a_run(PENDING, RUNNING, FAILED, run_id="run_new")

    result = diff(known_from(a_run(PENDING, run_id="run_old")), run)

    assert [(e.kind, e.run_id, e.previous, e.current, e.skipped) for e in result.events] == [
        ("new", "run_new", None, FAILED, (PENDING, RUNNING))
    ]
    assert result.upserts == (state_of(run),)


def test_it_records_a_new_run_without_conditions_and_reports_its_first_one_later() -> None:
    """A new run with no condition is only recorded; its first condition is a transition."""
    empty = a_run(run_id="run_new")
    first = diff({}, empty)
    assert first.events == ()
    assert first.upserts == (state_of(empty),)

    started = a_run(PENDING, RUNNING, run_id="run_new")
    second = diff({s.run_id: s for s in first.upserts}, started)

    assert [(e.kind, e.previous, e.current, e.skipped) for e in second.events] == [
        ("transition", None, RUNNING, (PENDING,))
    ]


@pytest.mark.parametrize(
    ("stored", "history", "skipped"),
    [
        ((PENDING,), (PENDING, RUNNING), ()),
        ((PENDING,), (PENDING, RUNNING, FAILED), (RUNNING,)),
        ((PENDING, RUNNING), (PENDING, RUNNING, FAILED), ()),
        # the stored latest is not in the observed history: nothing can be said about the path
        (
            (replace(PENDING, last_transition_time=900),),
            (PENDING, RUNNING, FAILED),
            (),
        ),
    ],
)
def test_it_reports_the_conditions_passed_through_between_two_polls(
    stored: tuple[Condition, ...],
    history: tuple[Condition, ...],
    skipped: tuple[Condition, ...],
) -> None:
    """`skipped` holds what lies strictly between the stored and the observed latest."""
    result = diff(known_from(a_run(*stored)), a_run(*history))

    assert [e.skipped for e in result.events] == [skipped]


@pytest.mark.parametrize(
    ("stored", "observed"),
    [
        # an older transition time: a replica that has not seen the latest change yet
        ((PENDING, RUNNING, FAILED), (PENDING, RUNNING)),
        ((PENDING, RUNNING), (PENDING,)),
        # the same millisecond, but without the stored condition in its history
        (
            (PENDING, replace(RUNNING, last_transition_time=1_000)),
            (PENDING,),
        ),
        # conditions are never removed
        ((PENDING,), ()),
    ],
)
def test_it_ignores_a_stale_read(
    stored: tuple[Condition, ...], observed: tuple[Condition, ...]
) -> None:
    """An observation behind the remembered state yields no event and no upsert."""
    result = diff(known_from(a_run(*stored)), a_run(*observed))

    assert result == Diff(events=(), upserts=(), deleted=())


def test_it_accepts_a_change_within_the_same_millisecond_that_follows_the_stored_one() -> None:
    """Two conditions entered in one millisecond are a transition when the order is visible."""
    started = replace(RUNNING, last_transition_time=PENDING.last_transition_time)

    result = diff(known_from(a_run(PENDING)), a_run(PENDING, started))

    assert [(e.previous, e.current) for e in result.events] == [(PENDING, started)]


@pytest.mark.parametrize(
    ("first", "second", "winner"),
    [
        ({"last_updated": 300}, {"last_updated": 200}, 0),
        ({"last_updated": 200}, {"last_updated": 300}, 1),
        # equal last_updated: the longer history is the fresher view
        ({"last_updated": 300, "conditions": (PENDING,)}, {"last_updated": 300}, 1),
        ({"last_updated": None}, {"last_updated": None, "conditions": (PENDING,)}, 0),
    ],
)
def test_it_considers_a_run_listed_twice_once_taking_the_fresher_observation(
    first: dict[str, Any], second: dict[str, Any], winner: int
) -> None:
    """Pages shifting under the cursor must not make a run count twice."""
    base = a_run(PENDING, RUNNING, FAILED)
    observations = [replace(base, **first), replace(base, **second)]

    result = diff(known_from(a_run(PENDING)), *observations)

    assert len(result.events) == 1
    assert result.events[0].current == observations[winner].latest
    assert result.upserts == (state_of(observations[winner]),)


def test_it_fills_events_from_the_observed_run_and_the_poll() -> None:
    """Events carry the run's descriptive fields, the workspace name and the poll time."""
    run = a_run(
        PENDING,
        FAILED,
        flow_name="yolo-detector",
        training_project="traffic-signs",
        attributes={"team": "vision"},
        time_created=700,
        killed_at=2_900,
        log="https://logs.example/run_1",
    )

    [event] = diff(known_from(a_run(PENDING)), run).events

    assert event == Event(
        kind="transition",
        workspace="prod",
        organization_id=ORG,
        run_id="run_1",
        previous=PENDING,
        current=FAILED,
        skipped=(),
        flow_name="yolo-detector",
        training_project="traffic-signs",
        attributes={"team": "vision"},
        time_created=700,
        killed_at=2_900,
        log="https://logs.example/run_1",
        detected_at=NOW,
    )


def test_it_reports_known_runs_missing_from_a_full_listing_as_deleted() -> None:
    """Every known run not seen is dropped, with a "deleted" event holding its last state."""
    kept = a_run(PENDING, run_id="run_kept")
    gone = a_run(PENDING, RUNNING, run_id="run_gone", training_project="p", log="l")
    never_started = a_run(run_id="run_empty")

    result = detect_deletions(
        known_from(kept, gone, never_started), {"run_kept"}, workspace="prod", now_ms=NOW
    )

    assert result.deleted == ("run_gone", "run_empty")
    assert result.upserts == ()
    assert [(e.kind, e.run_id, e.previous, e.current) for e in result.events] == [
        ("deleted", "run_gone", RUNNING, None),
        ("deleted", "run_empty", None, None),
    ]
    event = result.events[0]
    assert (event.workspace, event.flow_name, event.training_project, event.log) == (
        "prod",
        "yolo",
        "p",
        "l",
    )
    assert (event.detected_at, event.key) == (NOW, f"{ORG}/run_gone/deleted/deleted")


def test_it_reports_no_deletion_when_every_known_run_was_seen() -> None:
    """A complete listing that still holds every run deletes nothing."""
    known = known_from(a_run(PENDING, run_id="a"), a_run(run_id="b"))

    result = detect_deletions(known, {"a", "b", "c"}, workspace="prod", now_ms=NOW)

    assert result == Diff(events=(), upserts=(), deleted=())


def test_it_diffs_100_000_unchanged_runs_to_an_empty_diff() -> None:
    """A full resync of a large, quiet organization yields nothing to write or send.

    (How fast: benchmarks/bench_polling.py, recorded in benchmarks/RESULTS.md.)"""
    runs = [
        a_run(PENDING, replace(SUCCEEDED, last_transition_time=3_000 + i), run_id=f"run_{i}")
        for i in range(100_000)
    ]
    known = known_from(*runs)

    result = diff(known, *runs)

    assert result == Diff(events=(), upserts=(), deleted=())


# --- property: feeding upserts back, events never repeat and forward moves are never lost ---

_conditions = st.builds(
    Condition,
    condition=st.sampled_from(["Pending", "Running", "Succeeded", "Failed", "Started"]),
    status=st.sampled_from(["Waiting", "Reached", "FailedReach"]),
    last_transition_time=st.integers(0, 2),  # a step of the time, 0 allowing ties
)


@st.composite
def _histories(draw: st.DrawFn) -> tuple[Condition, ...]:
    """One run's true condition history: distinct states with non-decreasing times."""
    history: list[Condition] = []
    now = 1_000
    for step in draw(st.lists(_conditions, max_size=6)):
        now += step.last_transition_time
        condition = replace(step, last_transition_time=now)
        if not any(condition.same_state(c) for c in history):
            history.append(condition)
    return tuple(history)


@given(
    history=_histories(),
    polls=st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=2), min_size=1, max_size=10),
    baseline=st.booleans(),
)
def test_it_emits_each_forward_change_once_and_ignores_stale_views(
    history: tuple[Condition, ...], polls: list[list[int]], baseline: bool
) -> None:
    """Arbitrary views of one history (out of order, repeated) give one event per change."""
    known: dict[str, RunState] = {}
    keys: list[str] = []
    seen = -1  # the longest prefix of the history seen so far; -1 before the first poll
    for i, lengths in enumerate(polls):
        # Each poll sees the run as a prefix of its history, maybe twice (shifted pages).
        views = [
            a_run(*history[: min(n, len(history))], last_updated=min(n, len(history)) or None)
            for n in lengths
        ]
        freshest = max(len(v.conditions) for v in views)

        result = detect_transitions(
            known, views, workspace="prod", baseline=baseline and i == 0, now_ms=NOW + i
        )

        if baseline and i == 0:
            expected = []
        elif freshest > max(seen, 0):
            before = history[seen - 1] if seen > 0 else None
            kind = "new" if seen < 0 else "transition"
            expected = [(kind, before, history[freshest - 1], history[max(seen, 0) : freshest - 1])]
        else:
            expected = []
        assert [(e.kind, e.previous, e.current, e.skipped) for e in result.events] == expected
        keys += [e.key for e in result.events]
        known.update({s.run_id: s for s in result.upserts})
        seen = max(seen, freshest)

    assert len(keys) == len(set(keys))
