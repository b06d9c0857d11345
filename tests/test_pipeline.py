"""End to end in-process: simulator -> daemon -> SQLite -> real Apprise -> loopback receiver."""

from __future__ import annotations

from pathlib import Path

from harness import FakeClock, daemon_on, write_config
from receiver import Receiver

from runwatch.simulator.server import Simulator


async def test_it_sends_nothing_on_the_baseline_then_each_transition_once(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A populated workspace's first poll is silent; a later failure reaches the channel once."""
    with Simulator(runs=60, active=5, seed=3) as sim:
        cfg = write_config(tmp_path, sim, channels={"hook": receiver.apprise_url("/hook")})
        clock = FakeClock()
        with daemon_on(cfg, clock) as daemon:
            await daemon.poll_cycle()
            assert await daemon.deliver_once() == 0
            assert len(daemon.known[sim.organization_id]) == 60

            run_id = sim.active_run_ids()[0]
            sim.append_condition(
                run_id, "Failed", status="FailedReach", reason="OOM", message="out of memory"
            )
            clock.advance(30)
            await daemon.poll_cycle()
            assert await daemon.deliver_once() == 1
            clock.advance(30)
            await daemon.poll_cycle()
            assert await daemon.deliver_once() == 0
            await daemon.aclose()
    [msg] = receiver.received
    assert run_id in msg["message"] and "OOM" in msg["message"]
    assert msg["type"] == "failure"
