"""Time-in-state rules in the daemon: an injected clock, the real simulator, SQLite, Apprise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import FakeClock, daemon_on, write_config
from receiver import Receiver

from runwatch.service.daemon import Daemon
from runwatch.simulator.server import Simulator
from runwatch.state.sqlite import SqliteStore

MIN = 60.0
HOUR = 60 * MIN
STEP = 10 * MIN  # the injected poll interval
TITLE = "{{ run_id }} {{ condition }} for {{ elapsed }} (notice {{ reminder }}, {{ rule }})"
STUCK = {
    "name": "stuck-pending",
    "match": {"condition": "Pending", "for": "30m"},
    "repeat": "2h",
    "notify": ["slack"],
    "title": TITLE,
}
STALLED = {
    "name": "no-progress",
    "match": {"condition": "Running", "stalled_for": "1h"},
    "notify": ["oncall"],
    "title": TITLE,
}
CHANGES = {"name": "changes", "match": {}, "notify": ["changes"]}


def config(tmp_path: Path, sim: Simulator, receiver: Receiver) -> Path:
    return write_config(
        tmp_path,
        sim,
        channels={
            name: receiver.apprise_url(f"/{name}") for name in ("slack", "oncall", "changes")
        },
        rules=[STUCK, STALLED, CHANGES],
    )


async def poll_for(daemon: Daemon, clock: FakeClock, seconds: float) -> None:
    """Poll and deliver every STEP for `seconds` of injected time, starting now."""
    end = clock.now + seconds
    while clock.now <= end:
        await daemon.poll_cycle()
        await daemon.deliver_once()
        clock.advance(STEP)


def titles(receiver: Receiver, path: str) -> list[str]:
    return [str(m["title"]) for m in receiver.received if m["path"] == path]


async def baseline(daemon: Daemon, clock: FakeClock) -> None:
    await daemon.poll_cycle()
    clock.advance(STEP)


async def test_it_tells_a_run_held_in_pending_at_for_then_at_each_repeat_and_stops_when_it_moves(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Pending for 7 hours: notices at 30m, 2h30m, 4h30m, 6h30m; then Running: no more."""
    clock = FakeClock()
    with Simulator(runs=5, active=0, seed=4, clock=clock) as sim:
        cfg = config(tmp_path, sim, receiver)
        with daemon_on(cfg, clock) as daemon:
            await baseline(daemon, clock)
            run_id = sim.create_run(condition="Pending")
            await poll_for(daemon, clock, 7 * HOUR)
            sim.append_condition(run_id, "Running")
            await poll_for(daemon, clock, 2 * HOUR)
            await daemon.aclose()
    assert titles(receiver, "/slack") == [
        f"{run_id} Pending for 30m (notice 0, stuck-pending)",
        f"{run_id} Pending for 2h 30m (notice 1, stuck-pending)",
        f"{run_id} Pending for 4h 30m (notice 2, stuck-pending)",
        f"{run_id} Pending for 6h 30m (notice 3, stuck-pending)",
    ]
    assert len(titles(receiver, "/changes")) == 2  # new, then Running: changes, not time
    # Running now, and its document stands still: the other time rule's business, once.
    assert titles(receiver, "/oncall") == [f"{run_id} Running for 1h (notice 0, no-progress)"]


async def test_it_neither_repeats_nor_skips_a_notice_across_a_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Stopped after the first notice, restarted before the second: each is told once."""
    clock = FakeClock()
    with Simulator(runs=5, active=0, seed=4, clock=clock) as sim:
        cfg = config(tmp_path, sim, receiver)
        with daemon_on(cfg, clock) as daemon:
            await baseline(daemon, clock)
            run_id = sim.create_run(condition="Pending")
            await poll_for(daemon, clock, 1 * HOUR)
            await daemon.aclose()
        clock.advance(20 * MIN)
        with daemon_on(cfg, clock) as daemon:
            await poll_for(daemon, clock, 2 * HOUR)
            await daemon.aclose()
    assert titles(receiver, "/slack") == [
        f"{run_id} Pending for 30m (notice 0, stuck-pending)",
        f"{run_id} Pending for 2h 30m (notice 1, stuck-pending)",
    ]


async def test_it_tells_only_the_latest_notice_due_after_a_long_stop(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Down from 1h to 5h, while notices 1 (2h30m) and 2 (4h30m) came due: one notice, #2."""
    clock = FakeClock()
    with Simulator(runs=5, active=0, seed=4, clock=clock) as sim:
        cfg = config(tmp_path, sim, receiver)
        with daemon_on(cfg, clock) as daemon:
            await baseline(daemon, clock)
            run_id = sim.create_run(condition="Pending")
            await poll_for(daemon, clock, 1 * HOUR)
            await daemon.aclose()
        clock.advance(4 * HOUR)
        with daemon_on(cfg, clock) as daemon:
            await poll_for(daemon, clock, 1 * HOUR)
            await daemon.aclose()
        store = SqliteStore.open_read_only(tmp_path / "state.db")
        assert store is not None
        with store:
            [state] = [s for s in store.tracked_runs() if s.run_id == run_id]
    told = titles(receiver, "/slack")
    assert len(told) == 2
    assert told[1].startswith(f"{run_id} Pending for 5h") and "(notice 2," in told[1]
    assert state.marks == {"for:stuck-pending": 3}  # committed with the poll


async def test_it_reports_a_stalled_running_run_once(tmp_path: Path, receiver: Receiver) -> None:
    """A Running run whose document stands still for an hour is told once (no repeat)."""
    clock = FakeClock()
    with Simulator(runs=5, active=0, seed=4, clock=clock) as sim:
        cfg = config(tmp_path, sim, receiver)
        with daemon_on(cfg, clock) as daemon:
            await baseline(daemon, clock)
            run_id = sim.create_run(condition="Running")
            await poll_for(daemon, clock, 6 * HOUR)
            await daemon.aclose()
    assert titles(receiver, "/oncall") == [f"{run_id} Running for 1h (notice 0, no-progress)"]
    assert titles(receiver, "/slack") == []


async def test_it_reports_a_run_already_overdue_at_the_baseline_once_after_it(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Pending for 3 hours before runwatch first looks: the baseline is silent, the next poll
    tells once (as the notice due now), and nothing follows until the next repeat."""
    clock = FakeClock()
    with Simulator(runs=5, active=0, seed=4, clock=clock) as sim:
        run_id = sim.create_run(condition="Pending")
        clock.advance(3 * HOUR)
        cfg = config(tmp_path, sim, receiver)
        with daemon_on(cfg, clock) as daemon:
            await daemon.poll_cycle()
            assert await daemon.deliver_once() == 0  # the baseline tells nothing
            clock.advance(STEP)
            await poll_for(daemon, clock, 1 * HOUR)
            await daemon.aclose()
    assert titles(receiver, "/slack") == [f"{run_id} Pending for 3h 10m (notice 1, stuck-pending)"]


async def test_it_makes_no_request_for_the_time_rules(tmp_path: Path, receiver: Receiver) -> None:
    """Polls cost the same with time rules as without: they are decided from what is known."""
    counts: dict[str, Any] = {}
    for rules in ([CHANGES], [STUCK, STALLED, CHANGES]):
        clock = FakeClock()
        with Simulator(runs=30, active=0, seed=4, clock=clock) as sim:
            cfg = write_config(
                tmp_path,
                sim,
                channels={
                    name: receiver.apprise_url(f"/{name}")
                    for name in ("slack", "oncall", "changes")
                },
                rules=rules,
                state={"path": str(tmp_path / f"state-{len(rules)}.db")},
            )
            sim.create_run(condition="Pending")
            with daemon_on(cfg, clock) as daemon:
                await baseline(daemon, clock)
                sim.reset_counters()
                await poll_for(daemon, clock, 2 * HOUR)
                await daemon.aclose()
            counts[str(len(rules))] = sim.request_count()
    assert counts["3"] == counts["1"]
