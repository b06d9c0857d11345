"""The diff between remembered and observed runs, pushed through with plain values.

Each case of `core.transitions`' theory has a test here, named for the rule it checks."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runwatch.core.model import Condition, Event, Run, RunState
from runwatch.core.run_index import RunIndex, fingerprint, run_fingerprint
from runwatch.core.transitions import (
    Diff,
    Fold,
    detect_transitions,
    is_older,
    listing_looks_broken,
    state_of,
    terminal_conditions,
)

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
        "generation": len(conditions),
        "flow_name": "yolo",
        "etag": f"etag-{len(conditions)}",
    }
    values.update(fields)
    return Run(**values)


def known_from(*runs: Run) -> dict[str, RunState]:
    return {r.run_id: state_of(r, now_ms=NOW) for r in runs}


def remembered(run: Run, known: dict[str, RunState]) -> RunState:
    """What the diff should remember of `run`, seen again after `known`."""
    return state_of(run, known.get(run.run_id), now_ms=NOW)


def diff(known: dict[str, RunState], *observed: Run, baseline: bool = False) -> Diff:
    return detect_transitions(known, observed, workspace="prod", baseline=baseline, now_ms=NOW)


YEAR_MS = 365 * 86_400_000


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (RUNNING, FAILED),  # another condition
        (RUNNING, replace(RUNNING, status="FailedReach")),  # same condition, another status
        (FAILED, replace(FAILED, last_transition_time=9_000)),  # left and came back (below)
    ],
)
def test_it_emits_a_transition_when_the_latest_condition_changes(
    before: Condition, after: Condition
) -> None:
    """A new condition or status, or a condition entered again, is one transition event."""
    old = a_run(PENDING, before)
    new = a_run(PENDING, before, RUNNING, after) if after.same_value(before) else a_run(
        PENDING, before, after
    )
    known = known_from(old)

    result = diff(known, new)

    assert [(e.kind, e.previous, e.current) for e in result.events] == [
        ("transition", before, after)
    ]
    assert result.upserts == (remembered(new, known),)


@pytest.mark.parametrize(
    ("stored", "observed", "why"),
    [
        # two API servers' clocks: the Failed is dated 5 ms before the stored Running
        (
            (PENDING, RUNNING),
            (PENDING, replace(FAILED, last_transition_time=RUNNING.last_transition_time - 5)),
            "dated before the stored condition",
        ),
        ((PENDING, RUNNING), (PENDING, replace(FAILED, last_transition_time=-YEAR_MS)), "a year"),
        # the latest condition rewritten in place at the same instant
        (
            (PENDING, RUNNING),
            (PENDING, replace(FAILED, last_transition_time=RUNNING.last_transition_time)),
            "rewritten in place",
        ),
        # a status change at the same time
        (
            (PENDING, replace(FAILED, status="Waiting")),
            (PENDING, replace(FAILED, status="FailedReach")),
            "a status change at the same time",
        ),
    ],
)
def test_it_reports_any_change_of_the_latest_condition_whatever_its_time_says(
    stored: tuple[Condition, ...], observed: tuple[Condition, ...], why: str
) -> None:
    """Condition times from several servers never hide a change: a newer document decides."""
    old = a_run(*stored, generation=5)
    new = a_run(*observed, generation=6)

    [event] = diff(known_from(old), new).events

    assert (event.kind, event.previous, event.current) == ("transition", stored[-1], observed[-1])


def test_it_reports_a_failure_after_a_run_dated_a_day_ahead() -> None:
    """A Running dated a day in the future, then a Failed dated now: both are reported."""
    ahead = replace(RUNNING, last_transition_time=NOW + 86_400_000)
    failed = replace(FAILED, last_transition_time=NOW)
    known = known_from(a_run(PENDING, generation=1))

    first = diff(known, a_run(PENDING, ahead, generation=2))
    known.update({s.run_id: s for s in first.upserts})
    second = diff(known, a_run(PENDING, ahead, failed, generation=3))

    assert [e.current for e in (*first.events, *second.events)] == [ahead, failed]


@pytest.mark.parametrize(
    ("stored", "older"),
    [
        ({"generation": 7}, {"generation": 6, "last_updated": 10**15}),  # generation decides
        ({"generation": None, "last_updated": 200}, {"generation": None, "last_updated": 150}),
        ({"generation": 7, "last_updated": 200}, {"generation": None, "last_updated": 150}),
    ],
)
def test_it_ignores_a_view_older_than_the_document_it_remembers(
    stored: dict[str, Any], older: dict[str, Any]
) -> None:
    """A lagging replica's older document yields no event and no upsert, whatever it shows."""
    known = known_from(a_run(PENDING, RUNNING, FAILED, **stored))
    stale = a_run(PENDING, RUNNING, **older)

    assert is_older(stale, known["run_1"])
    assert diff(known, stale) == Diff(events=(), upserts=())


def test_it_records_a_rewritten_time_of_the_same_condition_silently() -> None:
    """The same condition and status at another time, not re-entered, is no transition."""
    known = known_from(a_run(PENDING, RUNNING))
    moved = a_run(PENDING, replace(RUNNING, last_transition_time=2_500), generation=9)

    result = diff(known, moved)

    assert result.events == ()
    assert result.upserts == (remembered(moved, known),)
    assert result.upserts[0].seen_at == known["run_1"].seen_at  # still the same entry


def test_it_ignores_a_view_that_lost_its_conditions() -> None:
    """Conditions are never removed: a view without them changes nothing."""
    known = known_from(a_run(PENDING))
    assert diff(known, a_run(generation=9)) == Diff(events=(), upserts=())


def test_it_emits_nothing_for_the_same_observation_twice() -> None:
    """Seeing a run exactly as remembered yields an empty diff."""
    run = a_run(PENDING, RUNNING)

    assert diff(known_from(run), run) == Diff(events=(), upserts=())


@pytest.mark.parametrize(
    "change",
    [
        {"etag": "etag-new"},
        {"last_updated": 999},
        {"generation": 40},
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
    known = known_from(old)

    result = diff(known, new)

    assert result.events == ()
    assert result.upserts == (remembered(new, known),)


def test_it_returns_an_empty_diff_for_a_listing_of_unchanged_runs() -> None:
    """Quiet runs produce nothing at all, whatever their number."""
    runs = [a_run(PENDING, RUNNING, run_id=f"run_{i}") for i in range(50)]

    assert diff(known_from(*runs), *runs) == Diff(events=(), upserts=())


def test_it_records_every_run_without_events_on_the_baseline() -> None:
    """A workspace's first poll records its runs and notifies nobody."""
    runs = [
        a_run(PENDING, FAILED, run_id="run_a"),
        a_run(run_id="run_b"),
        a_run(PENDING, RUNNING, SUCCEEDED, run_id="run_c"),
    ]

    result = diff({}, *runs, baseline=True)

    assert result.events == ()
    assert result.upserts == tuple(state_of(r, now_ms=NOW) for r in runs)


def test_it_emits_new_with_the_earlier_conditions_skipped_for_an_unknown_run() -> None:
    """A run first seen after the baseline is a "new" event with no previous condition."""
    run = a_run(PENDING, RUNNING, FAILED, run_id="run_new")

    result = diff(known_from(a_run(PENDING, run_id="run_old")), run)

    assert [(e.kind, e.run_id, e.previous, e.current, e.skipped) for e in result.events] == [
        ("new", "run_new", None, FAILED, (PENDING, RUNNING))
    ]
    assert result.upserts == (state_of(run, now_ms=NOW),)


def test_it_records_a_new_run_without_conditions_and_reports_its_first_one_later() -> None:
    """A new run with no condition is only recorded; its first condition is a transition."""
    empty = a_run(run_id="run_new")
    first = diff({}, empty)
    assert first.events == ()
    assert first.upserts == (state_of(empty, now_ms=NOW),)
    assert diff({s.run_id: s for s in first.upserts}, empty) == Diff(events=(), upserts=())

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
    ("first", "second", "winner"),
    [
        ({"generation": 3, "last_updated": 100}, {"generation": 2, "last_updated": 900}, 0),
        ({"generation": None, "last_updated": 300}, {"generation": None, "last_updated": 200}, 0),
        ({"generation": None, "last_updated": 200}, {"generation": None, "last_updated": 300}, 1),
        # equal versions: the longer history is the fresher view
        ({"last_updated": 300, "conditions": (PENDING,)}, {"last_updated": 300}, 1),
        ({"generation": None, "last_updated": None}, {"generation": None, "last_updated": None,
                                                      "conditions": (PENDING,)}, 0),
    ],
)  # fmt: skip
def test_it_considers_a_run_listed_twice_once_taking_the_newer_observation(
    first: dict[str, Any], second: dict[str, Any], winner: int
) -> None:
    """Pages shifting under the cursor must not make a run count twice."""
    base = a_run(PENDING, RUNNING, FAILED)
    observations = [replace(base, **first), replace(base, **second)]
    known = known_from(a_run(PENDING, generation=1, last_updated=50))

    result = diff(known, *observations)

    assert len(result.events) == 1
    assert result.events[0].current == observations[winner].latest
    assert result.upserts == (remembered(observations[winner], known),)


def test_it_fills_events_from_the_observed_run_and_the_poll() -> None:
    """Events carry the run's descriptive fields, its history, the workspace and the time."""
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
        history=(PENDING, FAILED),
        flow_name="yolo-detector",
        training_project="traffic-signs",
        attributes={"team": "vision"},
        time_created=700,
        killed_at=2_900,
        log="https://logs.example/run_1",
        generation=2,
        detected_at=NOW,
    )
    assert event.key == f"{ORG}/run_1/transition/Failed/Reached/3000/g2"


@given(
    change=st.sampled_from(
        ["etag", "last_updated", "generation", "log", "killed_at", "flow_name", "attributes"]
    ),
    value=st.text(max_size=5),
)
def test_it_fingerprints_an_observation_as_the_state_it_would_make(change: str, value: str) -> None:
    """A run's fingerprint equals that of the state it makes, and moves with any API field."""
    run = a_run(PENDING, FAILED, attributes={"team": "x"})
    assert run_fingerprint(run) == fingerprint(state_of(run, now_ms=NOW))
    moved_value: Any = {"team": value + "!"} if change == "attributes" else (
        hash(value) if change in ("last_updated", "generation", "killed_at") else value + "!"
    )
    moved = replace(run, **{change: moved_value})
    assert run_fingerprint(moved) != run_fingerprint(run)


def test_it_keeps_its_own_observations_of_a_run_across_polls() -> None:
    """seen_at follows the condition, changed_at the document, marks their own kind."""
    first = state_of(a_run(PENDING, RUNNING), now_ms=1_000)
    marked = replace(first, marks={"for:stuck": 2, "stall:quiet": 1})

    same = state_of(a_run(PENDING, RUNNING), marked, now_ms=5_000)
    touched = state_of(a_run(PENDING, RUNNING, etag="e2"), marked, now_ms=6_000)
    moved = state_of(a_run(PENDING, RUNNING, FAILED), marked, now_ms=7_000)

    assert (same.seen_at, same.changed_at, same.marks) == (1_000, 1_000, marked.marks)
    assert (touched.seen_at, touched.changed_at, touched.marks) == (1_000, 6_000, {"for:stuck": 2})
    assert (moved.seen_at, moved.changed_at, moved.marks) == (7_000, 7_000, {})


# --- folding a poll: runs go missing only from a complete listing, and are deleted by a GET ---


TERMINAL = terminal_conditions()


def folded(
    known: dict[str, RunState], tombstones: dict[str, RunState] | None = None, now_ms: int = NOW
) -> Fold:
    index = RunIndex(known.values(), terminal=TERMINAL, tombstones=tombstones)
    return Fold(index, workspace="prod", baseline=False, now_ms=now_ms)


def test_it_counts_runs_it_could_not_decode_as_still_there() -> None:
    """An undecodable item is never missing: its id was seen, just not read."""
    known = known_from(a_run(PENDING, run_id="a"), a_run(PENDING, run_id="b"))
    fold = folded(known)
    fold.add([a_run(PENDING, run_id="a")], skipped=["b"])

    assert fold.missing() == []


def test_it_deletes_only_what_a_get_confirmed_and_keeps_a_tombstone() -> None:
    """Missing runs are candidates; delete() makes each a tombstone and a "deleted" event."""
    kept = a_run(PENDING, run_id="run_kept")
    gone = a_run(PENDING, RUNNING, run_id="run_gone", training_project="p", log="l")
    known = known_from(kept, gone)
    fold = folded(known)
    fold.add([kept])

    assert fold.missing() == ["run_gone"]
    assert fold.result() == Diff(events=(), upserts=())  # missing is not deleted

    fold.delete([known[run_id] for run_id in fold.missing()])
    result = fold.result()

    [event] = result.events
    assert (event.kind, event.run_id, event.previous, event.current) == (
        "deleted", "run_gone", RUNNING, None,
    )  # fmt: skip
    assert (event.workspace, event.training_project, event.log) == ("prod", "p", "l")
    assert event.key == f"{ORG}/run_gone/deleted/500/{NOW}"
    assert result.upserts == (replace(known["run_gone"], deleted_at=NOW),)


def test_it_compares_a_reappearing_run_with_its_tombstone_never_calling_it_new() -> None:
    """Seen again with its creation time, a deleted run is the same run: changed or restored."""
    tomb = replace(state_of(a_run(PENDING, RUNNING), now_ms=1), deleted_at=NOW - 1)

    unchanged = folded({}, {"run_1": tomb})
    unchanged.add([a_run(PENDING, RUNNING)])
    changed = folded({}, {"run_1": tomb})
    changed.add([a_run(PENDING, RUNNING, FAILED)])

    assert unchanged.result().events == ()
    assert [s.deleted_at for s in unchanged.result().upserts] == [None]
    assert [(e.kind, e.previous, e.current) for e in changed.result().events] == [
        ("transition", RUNNING, FAILED)
    ]


def test_it_announces_a_recreated_id_as_new_and_each_of_its_deletions() -> None:
    """Another creation time under a deleted id is a new run; every deletion is its own event."""
    tomb = replace(state_of(a_run(PENDING), now_ms=1), deleted_at=NOW - 10)
    fold = folded({}, {"run_1": tomb})
    again = a_run(PENDING, time_created=9_000)
    fold.add([again])
    [new] = fold.result().events

    recreated = state_of(again, now_ms=NOW)
    second = folded({"run_1": recreated}, now_ms=NOW + 1)
    second.delete([recreated])
    [deleted] = second.result().events

    assert new.kind == "new"
    assert deleted.kind == "deleted" and deleted.key != f"{ORG}/run_1/deleted/500/{NOW - 10}"


def test_it_needs_the_stored_state_only_of_a_finished_run_that_changed() -> None:
    """Finished runs are known by fingerprint: a quiet one costs nothing, a changed one is
    asked for and, once supplied, diffed like any other."""
    done = a_run(PENDING, SUCCEEDED, run_id="done")
    retried = a_run(PENDING, FAILED, run_id="retried")
    known = known_from(done, retried)
    fold = folded(known)
    again = a_run(PENDING, FAILED, RUNNING, run_id="retried")

    assert fold.needs([done, again]) == ["retried"]
    with pytest.raises(LookupError):
        fold.add([again])
    fold.supply({"retried": known["retried"]})
    fold.add([done, again])

    assert [(e.run_id, e.previous, e.current) for e in fold.result().events] == [
        ("retried", FAILED, RUNNING)
    ]
    assert fold.seen == {"done", "retried"}


@pytest.mark.parametrize(
    ("missing", "known", "broken"),
    [(0, 300, False), (9, 10, False), (10, 40, False), (11, 40, True), (300, 300, True)],
)
def test_it_suspects_a_listing_that_misses_a_large_share_of_the_known_runs(
    missing: int, known: int, broken: bool
) -> None:
    """At least ten runs and more than a quarter of them missing at once: check first."""
    assert listing_looks_broken(missing, known) is broken


def test_it_diffs_100_000_unchanged_runs_to_an_empty_diff() -> None:
    """A full resync of a large, quiet organization yields nothing to write or send.

    (How fast: benchmarks/bench_polling.py, recorded in benchmarks/RESULTS.md.)"""
    runs = [
        a_run(PENDING, replace(SUCCEEDED, last_transition_time=3_000 + i), run_id=f"run_{i}")
        for i in range(100_000)
    ]
    known = known_from(*runs)

    result = diff(known, *runs)

    assert result == Diff(events=(), upserts=())


# --- property: feeding upserts back, events never repeat and forward moves are never lost ---

_conditions = st.builds(
    Condition,
    condition=st.sampled_from(["Pending", "Running", "Succeeded", "Failed", "Started"]),
    status=st.sampled_from(["Waiting", "Reached", "FailedReach"]),
    last_transition_time=st.integers(-2, 2),  # a step of a server's clock, which may go back
)


@st.composite
def _histories(draw: st.DrawFn) -> tuple[Condition, ...]:
    """One run's true condition history: each step a new condition or status."""
    history: list[Condition] = []
    now = 1_000
    for step in draw(st.lists(_conditions, max_size=6)):
        now += step.last_transition_time
        condition = replace(step, last_transition_time=now)
        fresh = not history or not condition.same_value(history[-1])
        if fresh and not any(condition.same_state(c) for c in history):
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
    """Arbitrary views of one history (out of order, repeated, with clocks going back) give one
    event per change; a view of an older version never counts."""
    known: dict[str, RunState] = {}
    keys: list[str] = []
    seen = -1  # the longest prefix of the history seen so far; -1 before the first poll
    for i, lengths in enumerate(polls):
        # Each poll sees the run as a prefix of its history, maybe twice (shifted pages);
        # the document's generation is the length of the prefix.
        views = [
            a_run(*history[: min(n, len(history))], generation=min(n, len(history)))
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
