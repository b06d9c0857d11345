"""Incremental polling: what each poll finds, and what it costs in requests to the Vi API.

Every test runs an in-process daemon on a FakeClock against the real simulator over loopback
and a real SQLite state file, and counts the requests the simulator received (never time).
The baseline poll is a full listing; the polls after it, until `poll.full_resync` has passed,
walk the listing from page 1 down to the newest known run and then refresh the known
unfinished runs they did not see, by GET or by walking on, whichever costs fewer requests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from harness import FakeClock, daemon_on, write_config
from receiver import Receiver

from runwatch.core.model import FAILED, PENDING, RUNNING, SUCCEEDED, Condition, RunState
from runwatch.core.run_index import RunIndex
from runwatch.service.daemon import Daemon, PollReport
from runwatch.simulator.server import Simulator

INTERVAL_S = 30.0
FULL_RESYNC_S = 900.0  # the default, 15 minutes
TITLE = "{{ kind }} {{ run_id }} {{ condition }}"  # identifies a message at the receiver
ALL_EVENTS = {"event": ["transition", "new", "deleted"]}


@contextlib.asynccontextmanager
async def watching(
    tmp_path: Path,
    sim: Simulator,
    receiver: Receiver | None = None,
    *,
    clock: FakeClock | None = None,
    page_size: int = 10,
    **poll: Any,
) -> AsyncIterator[tuple[Daemon, FakeClock]]:
    """A daemon on `sim` that has recorded its baseline; the clock is one interval later."""
    url = receiver.apprise_url("/hook") if receiver else "json://127.0.0.1:9/unused"
    cfg = write_config(
        tmp_path,
        sim,
        channels={"hook": url},
        rules=[{"name": "all", "match": ALL_EVENTS, "notify": ["hook"], "title": TITLE}],
        poll={"interval": f"{INTERVAL_S:g}s", "page_size": page_size, **poll},
    )
    clock = clock or FakeClock()
    with daemon_on(cfg, clock) as daemon:
        try:
            [report] = await daemon.poll_cycle()
            assert (report.ok, report.kind, report.events) == (True, "baseline", 0)
            clock.advance(INTERVAL_S)
            yield daemon, clock
        finally:
            await daemon.aclose()


async def poll(daemon: Daemon, sim: Simulator, clock: FakeClock) -> tuple[PollReport, int, int]:
    """One poll cycle from fresh counters: (its report, list requests, get requests)."""
    sim.reset_counters()
    [report] = await daemon.poll_cycle()
    assert report.ok, report.error
    clock.advance(INTERVAL_S)
    return report, sim.request_count("list"), sim.request_count("get")


def tracked(daemon: Daemon, sim: Simulator) -> RunIndex:
    return daemon.known[sim.organization_id]


def full_listing_pages(sim: Simulator, page_size: int) -> int:
    return max(1, math.ceil(len(sim.run_ids()) / page_size))


# --- finding what changed -----------------------------------------------------------------


async def test_it_finds_every_new_run_when_more_than_a_page_appeared_between_polls(
    tmp_path: Path, receiver: Receiver
) -> None:
    """25 runs created between two polls, page size 10: all 25 are new, for 3 list requests."""
    with Simulator(runs=100, active=0, seed=5) as sim:
        async with watching(tmp_path, sim, receiver) as (daemon, clock):
            created = [sim.create_run(condition=PENDING) for _ in range(25)]
            sim.append_condition(created[0], FAILED)  # created and failed between two polls

            report, lists, gets = await poll(daemon, sim, clock)
            assert (report.kind, report.events, lists, gets) == ("incremental", 25, 3, 0)
            assert set(created) <= set(tracked(daemon, sim))
            assert await daemon.deliver_once() == 25

            # The 24 new Pending runs fill the first three pages: walking them is cheaper
            # than the 14 GETs of those past the first.
            report, lists, gets = await poll(daemon, sim, clock)
            assert (report.events, lists, gets) == (0, 3, 0)
    titles = sorted(m["title"] for m in receiver.received)
    assert titles == sorted(
        f"new {run_id} {FAILED if run_id == created[0] else PENDING}" for run_id in created
    )


async def test_it_finds_new_runs_past_a_page_when_none_were_known(tmp_path: Path) -> None:
    """With no run known there is no watermark: the walk lists on to the end and misses none."""
    with Simulator(runs=0, active=0) as sim:
        async with watching(tmp_path, sim) as (daemon, clock):
            created = {sim.create_run(condition=PENDING) for _ in range(25)}
            report, lists, gets = await poll(daemon, sim, clock)
            assert (report.events, lists, gets) == (25, 3, 0)
            assert set(tracked(daemon, sim)) == created


async def test_it_finds_a_change_on_a_deep_old_active_run_without_a_full_listing(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A run 970 deep in 1,000 fails: found with a page and a GET per active run, not 100 pages."""
    with Simulator(runs=1000, active=3, seed=7) as sim:
        deepest = sim.active_run_ids()[-1]
        assert sim.run_ids().index(deepest) == 970  # the premise: old, deep in the listing
        async with watching(tmp_path, sim, receiver) as (daemon, clock):
            sim.append_condition(deepest, FAILED, reason="OutOfMemory", message="OOM")
            report, lists, gets = await poll(daemon, sim, clock)
            assert (report.kind, report.events) == ("incremental", 1)
            assert (lists, gets) == (1, 3)
            assert await daemon.deliver_once() == 1
            assert deepest not in {s.run_id for s in tracked(daemon, sim).unfinished()}
            state = daemon.store.load_runs(sim.organization_id)[deepest]
            assert state.latest is not None and state.latest.condition == FAILED

            # Failed is terminal: that run is never fetched again, the other two still are.
            report, lists, gets = await poll(daemon, sim, clock)
            assert (report.events, lists, gets) == (0, 1, 2)
    [message] = receiver.received
    assert message["title"] == f"transition {deepest} {FAILED}"


async def test_it_finds_a_deleted_run_at_the_next_full_resync_and_not_before(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Until poll.full_resync has passed a deleted run stays tracked; the full listing drops it."""
    with Simulator(runs=200, active=2, seed=8) as sim:
        async with watching(tmp_path, sim, receiver) as (daemon, clock):
            baselined = daemon.store.workspace(sim.organization_id).last_full_listing
            gone = sim.run_ids()[150]  # old and finished: no incremental poll looks at it
            sim.delete_run(gone)
            polls = 0
            while clock() * 1000 - (baselined or 0) < FULL_RESYNC_S * 1000:
                report, lists, gets = await poll(daemon, sim, clock)
                assert (report.kind, report.events) == ("incremental", 0)
                assert lists + gets <= 3  # a page and the two active runs
                assert gone in tracked(daemon, sim)
                polls += 1
            assert polls == FULL_RESYNC_S / INTERVAL_S - 1

            report, lists, gets = await poll(daemon, sim, clock)
            # The listing leaves it out; one GET (404) confirms it was deleted.
            assert (report.kind, report.events, lists, gets) == ("full", 1, 20, 1)
            assert gone not in tracked(daemon, sim)
            assert daemon.store.load_runs(sim.organization_id).keys() == set(sim.run_ids())
            assert await daemon.deliver_once() == 1
    [message] = receiver.received
    assert message["title"].startswith(f"deleted {gone} ")


async def test_it_counts_a_walk_to_the_end_of_the_listing_as_a_full_listing(
    tmp_path: Path, receiver: Receiver
) -> None:
    """In a one-page workspace each poll sees every run: a deletion is found at once, and kept."""
    with Simulator(runs=8, active=2, seed=8) as sim:
        async with watching(tmp_path, sim, receiver) as (daemon, clock):
            gone = sim.run_ids()[-1]
            sim.delete_run(gone)
            now_ms = int(clock() * 1000)
            report, lists, gets = await poll(daemon, sim, clock)
            assert (report.kind, report.events, lists, gets) == ("incremental", 1, 1, 1)
            assert gone not in tracked(daemon, sim)
            assert daemon.store.workspace(sim.organization_id).last_full_listing == now_ms


async def test_it_reports_each_change_once_across_incremental_and_full_polls(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Changes seen by an incremental poll and again by a full one, or the other way round,
    are each delivered exactly once, and none is missed."""
    with Simulator(runs=60, active=4, seed=13) as sim:
        a, b, c, d = sim.active_run_ids()
        async with watching(tmp_path, sim, receiver) as (daemon, clock):
            expected: list[str] = []
            kinds: list[str] = []

            async def step(changes: list[tuple[str, str]], new: int = 0) -> None:
                for run_id, condition in changes:
                    sim.append_condition(run_id, condition)
                    expected.append(f"transition {run_id} {condition}")
                for _ in range(new):
                    expected.append(f"new {sim.create_run(condition=PENDING)} {PENDING}")
                report, _, _ = await poll(daemon, sim, clock)
                kinds.append(report.kind)
                assert report.events == len(changes) + new
                await daemon.deliver_once()

            await step([(a, RUNNING), (b, RUNNING)], new=1)  # incremental: GETs and page 1
            clock.advance(FULL_RESYNC_S)
            await step([(c, RUNNING)])  # full: sees a and b again, unchanged
            await step([(a, SUCCEEDED)], new=12)  # incremental: walks past a page of new runs
            await step([(c, FAILED)])
            clock.advance(FULL_RESYNC_S)
            await step([(b, FAILED), (d, RUNNING)], new=2)  # full, right after changes
            await step([])  # incremental: b is terminal, d unchanged (304)
            await step([(d, SUCCEEDED)])

            assert (
                kinds
                == ["incremental", "full", "incremental", "incremental", "full"]
                + ["incremental"] * 2
            )
            assert sorted(m["title"] for m in receiver.received) == sorted(expected)
            stored = daemon.store.load_runs(sim.organization_id)
            assert set(tracked(daemon, sim)) == set(stored) == set(sim.run_ids())
            for run_id in sim.run_ids():
                state = stored[run_id]
                assert state.latest is not None
                assert state.latest.condition == sim.latest_condition(run_id)


# --- what it costs --------------------------------------------------------------------------


async def test_it_costs_a_page_and_a_get_per_active_run_at_10000_runs_with_20_active(
    tmp_path: Path,
) -> None:
    """10,000 runs, 20 active spread through history: at most 1 + 20 requests a poll, not 200."""
    with Simulator(runs=10_000, active=20, seed=3) as sim:
        active = sim.active_run_ids()
        assert full_listing_pages(sim, 50) == 200
        async with watching(tmp_path, sim, page_size=50) as (daemon, clock):
            for _ in range(3):
                report, lists, gets = await poll(daemon, sim, clock)
                assert (report.kind, report.events) == ("incremental", 0)
                assert lists >= 1 and lists + gets <= 1 + 20

            # Every active run is refreshed: a change on each of them is found, at that cost.
            for run_id in active:
                sim.append_condition(run_id, SUCCEEDED)
            report, lists, gets = await poll(daemon, sim, clock)
            assert (report.events, lists + gets <= 21) == (20, True)

            # Now all finished: nothing to refresh, the first page is the whole poll.
            report, lists, gets = await poll(daemon, sim, clock)
            assert (report.events, lists, gets) == (0, 1, 0)


async def test_it_costs_exactly_one_request_when_the_active_runs_are_all_recent(
    tmp_path: Path,
) -> None:
    """10,000 runs whose 20 active ones are the newest: a poll is the first page, nothing else."""
    with Simulator(runs=10_000, active=20, seed=3, active_recent=True) as sim:
        async with watching(tmp_path, sim, page_size=50) as (daemon, clock):
            for _ in range(3):
                report, lists, gets = await poll(daemon, sim, clock)
                assert (report.kind, report.events, lists, gets) == ("incremental", 0, 1, 0)
            sim.append_condition(sim.active_run_ids()[7], FAILED)
            report, lists, gets = await poll(daemon, sim, clock)
            assert (report.events, lists, gets) == (1, 1, 0)


async def test_it_keeps_listing_instead_of_getting_when_active_runs_crowd_few_pages(
    tmp_path: Path,
) -> None:
    """40 active runs on the first 4 pages: 3 more pages beat 30 GETs, so the poll costs 4."""
    with Simulator(runs=300, active=40, seed=4, active_recent=True) as sim:
        async with watching(tmp_path, sim, page_size=10) as (daemon, clock):
            report, lists, gets = await poll(daemon, sim, clock)
            assert (report.kind, lists, gets) == ("incremental", 4, 0)
            for run_id in sim.active_run_ids()[10:]:
                sim.append_condition(run_id, RUNNING if run_id.endswith(("0", "1")) else FAILED)
            report, lists, gets = await poll(daemon, sim, clock)
            assert (report.events, lists, gets) == (30, 4, 0)


async def test_it_stops_walking_once_it_has_seen_the_runs_it_went_for(tmp_path: Path) -> None:
    """Deleted runs make known runs sit higher than estimated: the walk ends when all are seen."""
    with Simulator(runs=300, active=0, seed=4) as sim:
        async with watching(tmp_path, sim) as (daemon, clock):
            pending = [sim.create_run(condition=PENDING) for _ in range(30)]
            await poll(daemon, sim, clock)
            finished = [sim.create_run(condition=SUCCEEDED) for _ in range(30)]
            await poll(daemon, sim, clock)
            for run_id in finished[:20]:
                sim.delete_run(run_id)  # unnoticed until a full listing

            # Estimated on pages 4-6 (behind 30 newer runs), the 30 pending runs are on 2-4.
            report, lists, gets = await poll(daemon, sim, clock)
            assert (report.kind, report.events, lists, gets) == ("incremental", 0, 4, 0)
            assert set(pending) <= set(tracked(daemon, sim))


@pytest.mark.parametrize(
    ("runs", "active", "recent", "page_size"),
    [
        (50, 50, False, 10),  # every run active
        (100, 30, False, 10),
        (1000, 100, False, 10),  # an active run on most pages
        (1000, 15, False, 100),
        (500, 60, True, 25),
        (2000, 40, False, 50),
        (10, 10, True, 50),  # one page
    ],
)
async def test_it_never_costs_more_than_a_full_listing(
    tmp_path: Path, runs: int, active: int, recent: bool, page_size: int
) -> None:
    """Whatever the population, a poll costs at most the pages of a full listing, and finds all."""
    with Simulator(runs=runs, active=active, seed=17, active_recent=recent) as sim:
        async with watching(tmp_path, sim, page_size=page_size) as (daemon, clock):
            pages = full_listing_pages(sim, page_size)
            report, lists, gets = await poll(daemon, sim, clock)
            assert report.events == 0 and lists + gets <= pages

            moved = sim.active_run_ids()[::2]
            for run_id in moved:
                sim.append_condition(run_id, RUNNING)
            report, lists, gets = await poll(daemon, sim, clock)
            assert report.events == len(moved) and lists + gets <= pages


# --- state across restarts, conditional GETs, pacing ------------------------------------------


async def test_it_stays_incremental_after_a_restart_while_the_last_full_listing_is_recent(
    tmp_path: Path,
) -> None:
    """A new daemon on the same state file polls incrementally until poll.full_resync has passed."""
    with Simulator(runs=500, active=3, seed=6) as sim:
        clock = FakeClock()
        async with watching(tmp_path, sim, clock=clock, page_size=50) as (daemon, _):
            listed_at = daemon.store.workspace(sim.organization_id).last_full_listing
        assert listed_at == int((clock() - INTERVAL_S) * 1000)

        clock.advance(FULL_RESYNC_S / 2)
        cfg = tmp_path / "config.yaml"
        with daemon_on(cfg, clock) as restarted:
            try:
                report, lists, gets = await poll(restarted, sim, clock)
                assert (report.kind, lists, gets) == ("incremental", 1, 3)
                assert len(tracked(restarted, sim)) == 500

                clock.advance(FULL_RESYNC_S / 2)
                report, lists, gets = await poll(restarted, sim, clock)
                assert (report.kind, lists, gets) == ("full", 10, 0)
            finally:
                await restarted.aclose()


async def test_it_sends_if_none_match_and_takes_a_304_as_unchanged(tmp_path: Path) -> None:
    """GETs of unchanged runs are answered 304 without a body; a changed run's GET is a 200."""
    with Simulator(runs=300, active=4, seed=9) as sim:
        async with watching(tmp_path, sim) as (daemon, clock):
            report, _, gets = await poll(daemon, sim, clock)
            assert (report.events, gets) == (0, 4)
            answers = [r.status for r in sim.requests_log() if r.endpoint == "get"]
            assert answers == [304] * 4

            changed = sim.active_run_ids()[-1]
            sim.append_condition(changed, FAILED)
            report, _, gets = await poll(daemon, sim, clock)
            assert (report.events, gets) == (1, 4)
            answers_by_run = {
                r.path.rsplit("/", 1)[1]: r.status
                for r in sim.requests_log()
                if r.endpoint == "get"
            }
            assert answers_by_run.pop(changed) == 200
            assert set(answers_by_run.values()) == {304}


async def test_it_paces_requests_to_max_requests_per_second(tmp_path: Path) -> None:
    """At 1 request a second, the 6 requests of a poll wait 1, 2, ... 5 s for their slots."""
    with Simulator(runs=300, active=5, seed=9) as sim:
        clock = FakeClock()
        async with watching(tmp_path, sim, clock=clock):
            pass  # the baseline, unpaced
        # Restarted with a cap: a fresh token bucket, and a poll of one page and 5 GETs.
        cfg = write_config(
            tmp_path,
            sim,
            channels={"hook": "json://127.0.0.1:9/unused"},
            poll={"page_size": 10, "max_requests_per_second": 1, "max_concurrency": 8},
        )
        with daemon_on(cfg, clock) as daemon:
            try:
                clock.sleeps.clear()
                report, lists, gets = await poll(daemon, sim, clock)
            finally:
                await daemon.aclose()
    assert (report.kind, lists, gets) == ("incremental", 1, 5)
    # The injected sleep returns at once, so each slot is measured from (nearly) one instant:
    # the first request goes at once, the next five at +1 s ... +5 s.
    assert sorted(clock.sleeps) == pytest.approx([1, 2, 3, 4, 5], abs=0.5)


# --- the index ------------------------------------------------------------------------------


def state(run_id: str, created: int, condition: str | None) -> RunState:
    latest = (
        None
        if condition is None
        else Condition(condition=condition, status="Reached", last_transition_time=created)
    )
    return RunState(organization_id="org", run_id=run_id, latest=latest, time_created=created)


def test_it_keeps_the_index_in_step_with_every_write() -> None:
    """Unfinished runs, the watermark and listing depths follow records and deletions; a
    finished run is kept as a fingerprint, a tombstone apart."""
    finished = frozenset({SUCCEEDED, FAILED})
    index = RunIndex([state("a", 10, SUCCEEDED), state("b", 20, RUNNING)], terminal=finished)
    assert (index.newest_created(), index.created_after(10), len(index)) == (20, 1, 2)

    index.record(state("c", 30, PENDING))
    index.record(state("d", 40, None))  # no condition yet: unfinished
    index.record(state("e", 5, FAILED))
    assert index.newest_created() == 40
    assert [index.created_after(t) for t in (0, 5, 10, 25, 40)] == [5, 4, 3, 2, 0]
    assert {s.run_id for s in index.unfinished()} == {"b", "c", "d"}
    assert index.get("e") is None and index.finished_fingerprint("e") is not None
    assert index.finished_fingerprint("b") is None and index.get("b") is not None
    pending_final = RunIndex(
        [state("c", 30, PENDING), state("d", 40, None)], terminal=finished | {PENDING}
    )  # a configured terminal set
    assert {s.run_id for s in pending_final.unfinished()} == {"d"}

    index.record(state("b", 20, SUCCEEDED))  # finished: no longer refreshed
    index.record(state("a", 50, SUCCEEDED))  # a creation time that moved
    index.forget("d")
    index.record(dataclasses.replace(state("c", 30, PENDING), deleted_at=99))  # a tombstone
    assert (index.newest_created(), sorted(index), index.unfinished()) == (50, ["a", "b", "e"], [])
    assert [index.created_after(t) for t in (0, 5, 20, 50)] == [3, 2, 1, 0]
    assert "d" not in index and "c" not in index and set(index.tombstones) == {"c"}
