"""End to end: the real daemon against the simulator, real Apprise delivering to a receiver.

The in-process tests drive `Daemon.poll_cycle` and `Daemon.deliver_once` with a FakeClock, so
backoffs and resyncs pass without waiting; the subprocess tests run `runwatch run` itself and
stop it with a signal.
"""

from __future__ import annotations

import collections
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from harness import DaemonProcess, FakeClock, daemon_on, write_config
from receiver import Receiver

from runwatch.service.daemon import Daemon
from runwatch.simulator.server import Simulator

RUN_ID = re.compile(r"run_[0-9a-f]{12}")


def run_named(message: dict[str, Any]) -> str:
    """The run id a delivered message's title names (every title here names its run)."""
    found = RUN_ID.search(message["title"])
    assert found is not None, f"no run id in the title of {message!r}"
    return found.group(0)


def tally(receiver: Receiver, path: str) -> collections.Counter[str]:
    """How many messages about each run `path` accepted."""
    return collections.Counter(run_named(m) for m in receiver.received if m["path"] == path)


async def cycle(daemon: Daemon, clock: FakeClock, seconds: float = 30.0) -> int:
    """Let `seconds` pass, poll once, run one delivery pass; the number of messages sent."""
    clock.advance(seconds)
    await daemon.poll_cycle()
    return await daemon.deliver_once()


ROUTING_RULES: list[dict[str, Any]] = [
    {
        "name": "failures",
        "match": {"condition": ["Fail*", "Error"]},
        "notify": ["slack", "ops"],
        "title": "FAILED {{ run_id }}: {{ previous or 'new' }} -> {{ condition }}",
        "body": "{{ flow }} failed: {{ reason }}: {{ message }}",
    },
    {
        "name": "finished",
        "match": {"condition": "Succeeded", "previous": "Running"},
        "notify": ["slack"],
    },
    {"name": "arrivals", "match": {"event": "new"}, "notify": ["ops"]},
    {"name": "deletions", "match": {"event": "deleted"}, "notify": ["ops"]},
]


async def test_it_delivers_each_event_once_to_exactly_the_channels_its_rules_select(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Globs, `previous`, new and deleted events and custom templates route each event once."""
    with Simulator(runs=40, active=4, seed=5) as sim:
        failing = sim.create_run(condition="Running", flow="segformer-b2")
        finishing = sim.create_run(condition="Running")
        skipping = sim.create_run(condition="Pending")  # Pending -> Succeeded: not `finished`
        cancelled = sim.create_run(condition="Running")  # no rule matches Cancelled
        doomed = sim.run_ids()[-1]  # the oldest run of the population, deleted later
        cfg = write_config(
            tmp_path,
            sim,
            channels={"slack": receiver.apprise_url("/slack"), "ops": receiver.apprise_url("/ops")},
            rules=ROUTING_RULES,
            poll={"full_resync": "10m"},
        )
        clock = FakeClock()
        with daemon_on(cfg, clock) as daemon:
            [baseline] = await daemon.poll_cycle()
            assert baseline.kind == "baseline" and baseline.events == 0
            assert await daemon.deliver_once() == 0
            assert len(daemon.known[sim.organization_id]) == 44

            sim.append_condition(
                failing,
                "Failed",
                status="FailedReach",
                reason="OutOfMemory",
                message="CUDA out of memory",
            )
            sim.append_condition(finishing, "Succeeded")
            sim.append_condition(skipping, "Succeeded")
            sim.append_condition(cancelled, "Cancelled")
            born_failed = sim.create_run(
                condition="Failed",
                status="FailedReach",
                reason="DatasetEmpty",
                message="No annotated assets",
            )
            born_pending = sim.create_run(condition="Pending")
            assert await cycle(daemon, clock) == 6
            assert await cycle(daemon, clock) == 0

            sim.delete_run(doomed)
            assert await cycle(daemon, clock) == 0  # incremental polls cannot see deletions
            assert await cycle(daemon, clock, seconds=11 * 60) == 1  # the full resync does
            assert await cycle(daemon, clock, seconds=11 * 60) == 0
            await daemon.aclose()

    assert receiver.requests == receiver.received  # nothing was refused, so nothing retried
    assert tally(receiver, "/slack") == {failing: 1, finishing: 1, born_failed: 1}
    assert tally(receiver, "/ops") == {failing: 1, born_failed: 1, born_pending: 1, doomed: 1}
    by = {(m["path"], run_named(m)): m for m in receiver.received}
    for path in ("/slack", "/ops"):
        assert by[path, failing]["title"] == f"FAILED {failing}: Running -> Failed"
        assert (
            by[path, failing]["message"] == "segformer-b2 failed: OutOfMemory: CUDA out of memory"
        )
        assert by[path, born_failed]["title"] == f"FAILED {born_failed}: new -> Failed"
        assert by[path, born_failed]["type"] == "failure"
    assert "succeeded" in by["/slack", finishing]["title"]
    assert "New run" in by["/ops", born_pending]["message"]
    assert "deleted" in by["/ops", doomed]["title"]


async def test_it_notifies_a_run_that_first_appears_already_failed(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A run created and failed between two polls is a new event carrying its failure."""
    with Simulator(runs=20, active=2, seed=8) as sim:
        cfg = write_config(tmp_path, sim, channels={"hook": receiver.apprise_url("/hook")})
        clock = FakeClock()
        with daemon_on(cfg, clock) as daemon:
            await daemon.poll_cycle()
            assert await daemon.deliver_once() == 0
            run_id = sim.create_run(
                condition="Failed",
                status="FailedReach",
                reason="QuotaExceeded",
                message="GPU quota exhausted",
                flow="rtdetr-large",
                training_project="proj_retail-shelves",
            )
            assert await cycle(daemon, clock) == 1
            assert await cycle(daemon, clock) == 0
            await daemon.aclose()
    [msg] = receiver.received
    # The title names the run by its training project's display name (enrichment).
    assert run_named(msg) == run_id and "Retail shelves failed" in msg["title"]
    assert msg["type"] == "failure"
    for text in ("New run · **Failed**", "QuotaExceeded", "GPU quota exhausted"):
        assert text in msg["message"]


async def test_it_neither_repeats_nor_loses_a_notification_across_a_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A new daemon on the same state file sends what was pending or missed, and nothing twice."""
    with Simulator(runs=30, active=3, seed=11) as sim:
        delivered = sim.create_run(condition="Running")
        pending = sim.create_run(condition="Running")
        while_down = sim.create_run(condition="Pending")
        cfg = write_config(tmp_path, sim, channels={"hook": receiver.apprise_url("/hook")})
        clock = FakeClock()
        with daemon_on(cfg, clock) as daemon:
            await daemon.poll_cycle()
            sim.append_condition(delivered, "Succeeded")
            assert await cycle(daemon, clock) == 1
            sim.append_condition(pending, "Failed", reason="WorkerLost", message="node lost")
            clock.advance(30)
            await daemon.poll_cycle()  # committed to the outbox; stopped before delivering
            await daemon.aclose()

        sim.append_condition(while_down, "Running")
        clock.advance(120)
        with daemon_on(cfg, clock) as daemon:
            [report] = await daemon.poll_cycle()
            assert report.kind == "incremental"  # not a second baseline
            assert report.events == 1  # the one that happened while it was down
            assert await daemon.deliver_once() == 2
            assert await cycle(daemon, clock) == 0
            assert await cycle(daemon, clock, seconds=20 * 60) == 0  # a full resync too
            await daemon.aclose()

    assert tally(receiver, "/hook") == {delivered: 1, pending: 1, while_down: 1}
    assert [run_named(m) for m in receiver.received] == [delivered, pending, while_down]


async def test_it_delivers_to_a_failing_channel_after_it_recovers_in_order(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A channel answering 500 gets its messages, in order, after backoff; the other on time."""
    with Simulator(runs=20, active=2, seed=13) as sim:
        run_id = sim.create_run(condition="Pending", flow="yolo-detector")
        cfg = write_config(
            tmp_path,
            sim,
            channels={"down": receiver.apprise_url("/down"), "up": receiver.apprise_url("/up")},
        )
        receiver.set_mode("fail", "/down")
        clock = FakeClock()
        with daemon_on(cfg, clock) as daemon:
            await daemon.poll_cycle()
            for condition in ("Running", "Succeeded"):
                sim.append_condition(run_id, condition)
                assert await cycle(daemon, clock) == 1  # "up", in the same pass as the poll
            assert [m["path"] for m in receiver.requests].count("/down") == 2
            assert "down" in daemon.deliverer.failing_channels()

            receiver.set_mode("ok", "/down")
            assert await daemon.deliver_once() == 0  # the backoff has not passed yet
            clock.advance(5 * 60)
            assert await daemon.deliver_once() == 2
            assert await cycle(daemon, clock) == 0
            assert daemon.deliverer.failing_channels() == {}
            await daemon.aclose()

    for path in ("/up", "/down"):
        titles = [m["title"] for m in receiver.received if m["path"] == path]
        assert len(titles) == 2 and all(run_id in t for t in titles)
        assert "running" in titles[0] and "succeeded" in titles[1]
    # "up" had both before "down" had either: the outage delayed only "down".
    paths = [m["path"] for m in receiver.received]
    assert paths == ["/up", "/up", "/down", "/down"]


# --- `runwatch run` as a subprocess --------------------------------------------------------


def stop_daemon(daemon: DaemonProcess, sig: signal.Signals) -> tuple[int, float]:
    """Send `sig`; the exit status and the seconds it took to exit (killed after 20 s)."""
    started = time.monotonic()
    daemon.signal(sig)
    try:
        status = daemon.wait(timeout=20)
    except subprocess.TimeoutExpired:
        daemon.kill()
        raise AssertionError(f"runwatch run ignored {sig.name} for 20 s") from None
    return status, time.monotonic() - started


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_it_runs_as_a_process_delivers_and_stops_promptly_on_a_signal(
    tmp_path: Path, receiver: Receiver, sig: signal.Signals
) -> None:
    """`runwatch run` delivers a transition, then exits 0 within seconds of SIGTERM or SIGINT."""
    with Simulator(runs=30, active=3, seed=17) as sim:
        run_id = sim.create_run(condition="Running")
        cfg = write_config(
            tmp_path,
            sim,
            channels={"hook": receiver.apprise_url("/hook")},
            poll={"interval": "200ms"},
        )
        with DaemonProcess(cfg, "--log-level", "debug") as daemon:
            assert daemon.wait_for_event("baseline.recorded")["runs"] == 31
            sim.append_condition(run_id, "Failed", reason="TrainingDiverged", message="NaN loss")
            [msg] = receiver.wait_for(1, timeout=20)
            status, seconds = stop_daemon(daemon, sig)

    assert status == 0
    assert seconds < 5.0, f"took {seconds:.2f}s to stop"
    assert run_named(msg) == run_id and "TrainingDiverged" in msg["message"]
    assert len(receiver.received) == 1
    assert daemon.junk == []
    assert daemon.wait_for_event("signal.received", timeout=0)["signal"] == sig.name
    names = [e["event"] for e in daemon.logs]
    assert names[-1] == "daemon.stopped" and "delivery.sent" in names
    assert any(e["level"] == "debug" for e in daemon.logs)  # --log-level debug took effect
