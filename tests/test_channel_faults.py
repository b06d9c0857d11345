"""Channels that fail, through the whole daemon: one channel's trouble is only its own.

Each test runs an in-process daemon on a FakeClock against the simulator, with real SQLite and
real Apprise, and two channels that receive every event: "good", a loopback receiver that
accepts, and a failing one. Runs appear in the simulator one after another; after each the
daemon polls (`poll_cycle`) and makes one delivery pass (`deliver_once`).

| failing channel                               | asserted                                    |
| --------------------------------------------- | ------------------------------------------- |
| refuses (HTTP 500) for an hour                | "good" has each message in the pass of its  |
|                                               | poll; the failing channel gets nothing (each|
|                                               | row tried once a pass when due, no busy     |
|                                               | loop), is reported failing, and receives its|
|                                               | whole backlog in order after recovery       |
| hangs past delivery.timeout                   | "good" is served while the hang is still in |
|                                               | progress; a send left unanswered may have   |
|                                               | arrived, so it is retried only after a long |
|                                               | wait; the backlog then arrives in order     |
| unreachable: json://127.0.0.1:<closed port>/  | as above, once a service listens again      |
| unreachable for longer than delivery.max_age  | rows past max_age are dead: logged          |
|                                               | (delivery.dead), counted (notifications     |
|                                               | {result="dead"}) and kept in the database   |
|                                               | with their text; the younger rows are still |
|                                               | delivered, in order                         |
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import structlog
from harness import FakeClock, daemon_on, next_pending, write_config
from receiver import Receiver

from runwatch.core.model import FAILED, SUCCEEDED
from runwatch.delivery.worker import UNCERTAIN_BACKOFF
from runwatch.service.daemon import Daemon
from runwatch.simulator.server import Simulator

TITLE = "{{ kind }} {{ run_id }} {{ condition }}"
STEP_S = 300.0  # fake time between two new runs (and two polls)
MAX_BACKOFF_S = 120.0  # so a failing channel's head row is due again at every step


class Stream:
    """New runs in the simulator, one at a time, alternately failed and succeeded at creation."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.titles: list[str] = []  # the title each new run's message has, in order

    def next(self) -> str:
        condition = FAILED if len(self.titles) % 2 == 0 else SUCCEEDED
        run_id = self.sim.create_run(condition=condition)
        self.titles.append(f"new {run_id} {condition}")
        return self.titles[-1]


def titles(receiver: Receiver, path: str) -> list[str]:
    """Titles of the messages `receiver` accepted on `path`, in arrival order."""
    return [str(m["title"]) for m in receiver.received if m["path"] == "/" + path]


def attempts(receiver: Receiver, path: str) -> int:
    return sum(1 for m in receiver.requests if m["path"] == "/" + path)


def notifications(daemon: Daemon, channel: str, result: str) -> float:
    labels = {"channel": channel, "result": result}
    return daemon.metrics.registry.get_sample_value("runwatch_notifications_total", labels) or 0.0


def closed_port() -> int:
    """A loopback port nothing listens on (bound once by the system, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def watching(
    tmp_path: Path,
    sim: Simulator,
    clock: FakeClock,
    channels: Mapping[str, str],
    **delivery: Any,
) -> AsyncIterator[Daemon]:
    """A daemon on `sim` that sends every event to every channel, its baseline recorded."""
    cfg = write_config(
        tmp_path,
        sim,
        channels=dict(channels),
        rules=[{"name": "all", "match": {}, "notify": sorted(channels), "title": TITLE}],
        delivery={
            "initial_backoff": "30s",
            "max_backoff": f"{MAX_BACKOFF_S:g}s",
            "timeout": "5s",
            "max_age": "24h",
            **delivery,
        },
    )
    with daemon_on(cfg, clock) as daemon:
        try:
            [report] = await daemon.poll_cycle()
            assert (report.ok, report.kind) == (True, "baseline")
            yield daemon
        finally:
            await daemon.aclose()


async def poll_and_deliver(daemon: Daemon) -> int:
    [report] = await daemon.poll_cycle()
    assert report.ok, report.error
    return await daemon.deliver_once()


async def test_it_serves_the_others_on_time_while_a_channel_refuses_for_an_hour(
    tmp_path: Path, receiver: Receiver
) -> None:
    """An hour of HTTP 500s delays only that channel, which then gets its backlog in order."""
    receiver.set_mode("fail", "flaky")
    channels = {"good": receiver.apprise_url("good"), "flaky": receiver.apprise_url("flaky")}
    with Simulator(runs=10, active=0, seed=5) as sim:
        clock = FakeClock()
        async with watching(tmp_path, sim, clock, channels) as daemon:
            stream = Stream(sim)
            for _ in range(12):  # one new run every 5 minutes for an hour
                clock.advance(STEP_S)
                stream.next()
                assert await poll_and_deliver(daemon) == 1
                assert titles(receiver, "good") == stream.titles  # in the pass of its poll
            assert titles(receiver, "flaky") == []
            refused = attempts(receiver, "flaky")
            assert refused == sum(range(1, 13))  # each row once a pass, never a busy loop
            assert "flaky" in daemon.deliverer.failing_channels()
            assert daemon.health()[1]["failing_channels"] == ["flaky"]

            receiver.set_mode("ok", "flaky")
            clock.advance(MAX_BACKOFF_S * 1.2)
            assert await poll_and_deliver(daemon) == 12

            assert titles(receiver, "flaky") == stream.titles
            assert daemon.deliverer.failing_channels() == {}
            assert notifications(daemon, "flaky", "failed") == refused
            assert notifications(daemon, "flaky", "sent") == 12
            assert notifications(daemon, "good", "sent") == 12
            stats = daemon.store.outbox_stats(int(clock() * 1000))
            assert (stats.pending, stats.dead) == (0, 0)


async def test_it_serves_the_others_while_a_channel_hangs_past_its_timeout(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A channel that never answers costs the others nothing and gets its backlog in order."""
    receiver.set_mode("hang", "stuck")
    channels = {"good": receiver.apprise_url("good"), "stuck": receiver.apprise_url("stuck")}
    with Simulator(runs=10, active=0, seed=6) as sim:
        clock = FakeClock()
        async with watching(tmp_path, sim, clock, channels, timeout="1s") as daemon:
            stream = Stream(sim)
            for n in range(1, 4):
                clock.advance(STEP_S)
                stream.next()
                [report] = await daemon.poll_cycle()
                assert report.ok
                delivering = asyncio.ensure_future(daemon.deliver_once())
                arrived = await asyncio.to_thread(receiver.wait_for, n, 10.0, "good")
                assert [m["title"] for m in arrived] == stream.titles
                # "good" was served while the stuck channel's send was still hanging.
                assert not delivering.done()
                assert await asyncio.wait_for(delivering, 10.0) == 1
                row = next_pending(daemon.store, "stuck")
                # Unanswered: it may have arrived; not tried again for UNCERTAIN_BACKOFF.
                assert row is not None and (row.attempts, row.uncertain_attempts) == (1, 1)
                assert row.last_error is not None and row.last_error.startswith("no answer")
            assert attempts(receiver, "stuck") == 3
            assert titles(receiver, "stuck") == []

            receiver.set_mode("ok", "stuck")
            clock.advance(UNCERTAIN_BACKOFF * 1.2)
            assert await poll_and_deliver(daemon) == 3

            assert titles(receiver, "stuck") == stream.titles
            assert notifications(daemon, "stuck", "failed") == 3
            stats = daemon.store.outbox_stats(int(clock() * 1000))
            assert (stats.pending, stats.dead) == (0, 0)


async def test_it_serves_the_others_while_a_channel_is_unreachable(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A valid URL whose service is down fails fast; when it listens again it gets the backlog."""
    port = closed_port()
    channels = {"good": receiver.apprise_url("good"), "gone": f"json://127.0.0.1:{port}/gone"}
    with Simulator(runs=10, active=0, seed=7) as sim:
        clock = FakeClock()
        async with watching(tmp_path, sim, clock, channels) as daemon:
            stream = Stream(sim)
            for n in range(1, 6):
                clock.advance(STEP_S)
                stream.next()
                assert await poll_and_deliver(daemon) == 1
                assert titles(receiver, "good") == stream.titles
                row = next_pending(daemon.store, "gone")
                assert row is not None and row.attempts == n
                assert row.last_error == f"json://127.0.0.1:{port}/gone: FAILURE"

            with Receiver(port=port) as revived:
                clock.advance(MAX_BACKOFF_S * 1.2)
                assert await poll_and_deliver(daemon) == 5
                assert titles(revived, "gone") == stream.titles
            assert notifications(daemon, "gone", "failed") == sum(range(1, 6))
            assert notifications(daemon, "gone", "sent") == 5


async def test_it_marks_dead_logs_counts_and_keeps_the_rows_past_max_age(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Rows older than max_age become dead (logged, counted, kept); younger ones still arrive."""
    max_age_s = 7_200.0
    step_s = 1_200.0  # a new run every 20 minutes...
    down_s = 11_400.0  # ...while the channel is unreachable for 3 h 10 min
    port = closed_port()
    channels = {"good": receiver.apprise_url("good"), "gone": f"json://127.0.0.1:{port}/gone"}
    with Simulator(runs=10, active=0, seed=8) as sim:
        clock = FakeClock()
        start = clock()
        created: list[float] = []
        with structlog.testing.capture_logs() as logs:
            async with watching(tmp_path, sim, clock, channels, max_age="2h") as daemon:
                stream = Stream(sim)
                while clock() + step_s < start + down_s:
                    clock.advance(step_s)
                    stream.next()
                    created.append(clock())
                    assert await poll_and_deliver(daemon) == 1
                    assert titles(receiver, "good") == stream.titles

                clock.advance(start + down_s - clock())
                with Receiver(port=port) as revived:
                    await poll_and_deliver(daemon)
                now = clock()
                dead = [
                    t for t, c in zip(stream.titles, created, strict=True) if now - c > max_age_s
                ]
                alive = stream.titles[len(dead) :]
                assert (len(dead), len(alive)) == (3, 6)
                assert titles(revived, "gone") == alive
                assert notifications(daemon, "gone", "dead") == len(dead)
                assert notifications(daemon, "good", "dead") == 0
                stats = daemon.store.outbox_stats(int(now * 1000))
                assert (stats.pending, stats.dead_by_channel) == (0, {"gone": len(dead)})
                db_path = daemon.store.path

    logged = [e for e in logs if e["event"] == "delivery.dead"]
    assert [e["channel"] for e in logged] == ["gone"] * len(dead)
    assert all(e["log_level"] == "error" and e["age_s"] > max_age_s for e in logged)
    assert all(e["error"] for e in logged)
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        kept = db.execute(
            "SELECT title, body, dead_at, last_error FROM outbox "
            "WHERE channel = 'gone' AND state = 'dead' ORDER BY id"
        ).fetchall()
        events = db.execute(
            "SELECT count(*) FROM events e JOIN outbox o ON o.event_key = e.event_key "
            "WHERE o.channel = 'gone' AND o.state = 'dead'"
        ).fetchone()[0]
    assert [row[0] for row in kept] == dead
    assert all(row[1] and row[2] and row[3] for row in kept)
    assert [e["row"] for e in logged] == sorted(e["row"] for e in logged)
    assert events == len(dead)
