"""runwatch as a service: sd_notify, signals, reload, health and metrics, against real things.

The subprocess tests start `python -m runwatch run` with a real unix datagram socket as
NOTIFY_SOCKET (as systemd would), the simulator as the Vi API and the loopback receiver as
the channel, and read the daemon's JSON log lines from its stderr. The in-process tests drive
`Daemon` with a FakeClock and query its HealthServer over loopback HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from harness import DaemonProcess, FakeClock, daemon_on, next_pending, wait_until, write_config
from prometheus_client.parser import text_string_to_metric_families
from receiver import Receiver
from structlog.testing import capture_logs

from runwatch.config.loading import load_config
from runwatch.service.daemon import SHUTDOWN_GRACE_S, Daemon
from runwatch.service.http import HealthServer
from runwatch.service.sdnotify import Notifier
from runwatch.simulator.server import Fault, Simulator
from runwatch.state.sqlite import SqliteStore

Datagram = dict[str, str]
WAIT = 15.0  # seconds a test waits for a condition before it fails


async def async_wait_until(
    predicate: Callable[[], bool], timeout: float = WAIT, what: str = ""
) -> None:
    """`wait_until` for a test running inside the event loop that must keep running."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


class NotifySocket:
    """systemd's side of sd_notify: an abstract unix datagram socket recording each datagram."""

    def __init__(self) -> None:
        name = f"runwatch-test-{uuid.uuid4().hex}"
        self.address = "@" + name  # the NOTIFY_SOCKET value
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + name)
        self._sock.settimeout(0.05)
        self._lock = threading.Lock()
        self._datagrams: list[Datagram] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                raw = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            lines = raw.decode("utf-8").split("\n")
            with self._lock:
                self._datagrams.append(dict(line.split("=", 1) for line in lines))

    @property
    def datagrams(self) -> list[Datagram]:
        with self._lock:
            return list(self._datagrams)

    def wait_for(self, predicate: Callable[[Datagram], bool], what: str, after: int = 0) -> int:
        """The index of the first datagram from index `after` on that satisfies `predicate`."""
        found: list[int] = []

        def check() -> bool:
            found[:] = [i for i, d in enumerate(self.datagrams) if i >= after and predicate(d)]
            return bool(found)

        wait_until(check, what=f"datagram {what}; got {self.datagrams[-5:]!r}")
        return found[0]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


@pytest.fixture
def start() -> Iterator[Callable[[Path, NotifySocket | None], DaemonProcess]]:
    """Starts `runwatch run` subprocesses; kills whichever is still running at the end."""
    with contextlib.ExitStack() as started:

        def run(config: Path, notify: NotifySocket | None = None) -> DaemonProcess:
            env = {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "200000"} if notify else {}
            return started.enter_context(DaemonProcess(config, env=env))

        yield run


def fail_a_run(sim: Simulator) -> str:
    run_id = sim.active_run_ids()[0]
    sim.append_condition(run_id, "Failed", status="FailedReach", reason="OOM", message="oom")
    return run_id


# --- sd_notify ------------------------------------------------------------------------------


def test_it_tells_systemd_ready_status_watchdog_and_stopping_in_order(
    tmp_path: Path,
    receiver: Receiver,
    notify_socket: NotifySocket,
    start: Callable[[Path, NotifySocket | None], DaemonProcess],
) -> None:
    """READY comes first, a STATUS after each poll says what matters, pings flow, STOPPING last."""
    with Simulator(runs=20, active=3, seed=5) as sim:
        cfg = write_config(tmp_path, sim, channels={"hook": receiver.apprise_url("/hook")})
        daemon = start(cfg, notify_socket)
        first_status = notify_socket.wait_for(
            lambda d: d.get("STATUS", "").startswith("watching 20 runs"), "STATUS after a poll"
        )
        status = notify_socket.datagrams[first_status]["STATUS"]
        assert "in 1/1 workspaces ok; last poll 20" in status
        assert status.endswith("outbox 0 pending; failing channels: none")

        # A channel that refuses: the next STATUS names it and counts the message it holds.
        receiver.set_mode("fail")
        fail_a_run(sim)
        notify_socket.wait_for(
            lambda d: "failing channels: hook" in d.get("STATUS", ""),
            "STATUS naming the failing channel",
            after=first_status,
        )
        failing = [d["STATUS"] for d in notify_socket.datagrams if "hook" in d.get("STATUS", "")]
        assert "outbox 1 pending" in failing[0]
        wait_until(
            lambda: sum("WATCHDOG" in d for d in notify_socket.datagrams) >= 3, what="3 pings"
        )

        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=SHUTDOWN_GRACE_S + 5) == 0
    notify_socket.wait_for(lambda d: "STOPPING" in d, "STOPPING=1")
    datagrams = notify_socket.datagrams
    assert datagrams[0] == {"READY": "1", "STATUS": "starting first poll"}
    assert datagrams[-1] == {"STOPPING": "1"}
    assert all(d == {"WATCHDOG": "1"} for d in datagrams if "WATCHDOG" in d)
    assert not any("READY" in d for d in datagrams[1:])


# --- SIGHUP ---------------------------------------------------------------------------------


def test_it_reloads_a_valid_config_on_sighup_and_routes_to_the_new_channel(
    tmp_path: Path,
    receiver: Receiver,
    notify_socket: NotifySocket,
    start: Callable[[Path, NotifySocket | None], DaemonProcess],
) -> None:
    """After SIGHUP with a new channel and rule, the next transition goes to the new channel."""
    with Simulator(runs=20, active=3, seed=5) as sim:
        cfg = write_config(tmp_path, sim, channels={"old": receiver.apprise_url("/old")})
        daemon = start(cfg, notify_socket)
        daemon.wait_for_event("poll.done", kind="baseline")

        write_config(
            tmp_path,
            sim,
            channels={"old": receiver.apprise_url("/old"), "new": receiver.apprise_url("/new")},
            rules=[{"name": "to-new", "match": {"condition": ["Failed"]}, "notify": ["new"]}],
        )
        before_us = time.monotonic_ns() // 1000
        daemon.signal(signal.SIGHUP)
        reloaded = daemon.wait_for_event("config.reloaded")
        assert reloaded["rules"] == 1
        reloading = notify_socket.wait_for(lambda d: "RELOADING" in d, "RELOADING=1")
        ready = notify_socket.wait_for(lambda d: "READY" in d, "READY=1 again", after=reloading)
        assert reloading < ready
        monotonic_us = int(notify_socket.datagrams[reloading]["MONOTONIC_USEC"])
        assert before_us <= monotonic_us <= time.monotonic_ns() // 1000

        run_id = fail_a_run(sim)
        [message] = receiver.wait_for(1, path="/new", timeout=WAIT)
        assert run_id in message["message"]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=SHUTDOWN_GRACE_S + 5) == 0
    assert [m for m in receiver.received if m["path"] == "/old"] == []
    assert daemon.events("baseline.recorded")[0]["runs"] == 20
    assert len(daemon.events("baseline.recorded")) == 1  # state carried over the reload


def test_it_keeps_the_old_config_and_logs_every_error_when_a_reload_is_invalid(
    tmp_path: Path,
    receiver: Receiver,
    notify_socket: NotifySocket,
    start: Callable[[Path, NotifySocket | None], DaemonProcess],
) -> None:
    """A SIGHUP with a broken file logs each problem, stays up, and keeps routing as before."""
    with Simulator(runs=20, active=3, seed=5) as sim:
        cfg = write_config(tmp_path, sim, channels={"old": receiver.apprise_url("/old")})
        daemon = start(cfg, notify_socket)
        daemon.wait_for_event("poll.done", kind="baseline")

        write_config(
            tmp_path,
            sim,
            channels={"old": receiver.apprise_url("/old")},
            rules=[{"name": "broken", "match": {}, "notify": ["nowhere"]}],
            poll={"interval": "soon"},
        )
        daemon.signal(signal.SIGHUP)
        rejected = daemon.wait_for_event("config.reload_rejected")
        problems = rejected["problems"]
        assert len(problems) == 2, problems
        assert any("poll.interval" in p for p in problems), problems
        assert any("rules[0].notify" in p and "nowhere" in p for p in problems), problems
        reloading = notify_socket.wait_for(lambda d: "RELOADING" in d, "RELOADING=1")
        notify_socket.wait_for(lambda d: "READY" in d, "READY=1 after the rejection", reloading)

        run_id = fail_a_run(sim)
        [message] = receiver.wait_for(1, path="/old", timeout=WAIT)
        assert run_id in message["message"]
        assert daemon.proc.poll() is None
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=SHUTDOWN_GRACE_S + 5) == 0
    assert daemon.events("config.reloaded") == []


def test_it_shows_a_rejected_reload_in_status_until_a_good_one(
    tmp_path: Path,
    receiver: Receiver,
    notify_socket: NotifySocket,
    start: Callable[[Path, NotifySocket | None], DaemonProcess],
) -> None:
    """After a rejected SIGHUP every STATUS= says the previous configuration is running; the
    next accepted reload clears it."""
    rejected = "reload rejected at "
    with Simulator(runs=20, active=3, seed=5) as sim:
        cfg = write_config(tmp_path, sim, channels={"old": receiver.apprise_url("/old")})
        good = cfg.read_text()
        daemon = start(cfg, notify_socket)
        daemon.wait_for_event("poll.done", kind="baseline")
        cfg.write_text(good.replace("interval: 1s", "interval: soon"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_event("config.reload_rejected")
        reloading = notify_socket.wait_for(lambda d: "RELOADING" in d, "RELOADING=1")
        ready = notify_socket.wait_for(lambda d: "READY" in d, "READY=1 after it", reloading)
        status = notify_socket.datagrams[ready]["STATUS"]
        assert rejected in status and "1 problem(s)" in status, status
        assert status.endswith("the previous configuration is running")
        later = notify_socket.wait_for(
            lambda d: "READY" not in d and rejected in d.get("STATUS", ""),
            "a poll's STATUS still naming the rejection",
            after=ready + 1,
        )

        cfg.write_text(good)
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_event("config.reloaded")
        again = notify_socket.wait_for(lambda d: "READY" in d, "READY=1 again", after=later + 1)
        assert rejected not in notify_socket.datagrams[again]["STATUS"]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=SHUTDOWN_GRACE_S + 5) == 0


# --- SIGTERM --------------------------------------------------------------------------------


def start_delivery_to_a_hanging_channel(
    tmp_path: Path,
    sim: Simulator,
    receiver: Receiver,
    start: Callable[[Path, NotifySocket | None], DaemonProcess],
) -> tuple[Path, DaemonProcess, str]:
    """A daemon whose only channel has accepted a connection and will never answer it."""
    receiver.set_mode("hang", "/slow")
    cfg = write_config(
        tmp_path,
        sim,
        # rto: Apprise's own read timeout (4 s by default) must not end the send first.
        channels={"slow": receiver.apprise_url("/slow") + "?rto=60"},
        delivery={"timeout": "60s"},
    )
    daemon = start(cfg, None)
    daemon.wait_for_event("poll.done", kind="baseline")
    run_id = fail_a_run(sim)
    wait_until(lambda: len(receiver.requests) == 1, what="the delivery to hang")
    return cfg, daemon, run_id


def pending_rows(cfg: Path) -> tuple[int, str | None, int | None]:
    """(pending count, the slow channel's head row title, its attempts) from the state file."""
    with SqliteStore.open(load_config(cfg).state.path) as store:
        stats = store.outbox_stats(int(time.time() * 1000))
        row = next_pending(store, "slow")
    return stats.pending, None if row is None else row.title, None if row is None else row.attempts


def test_it_exits_0_within_the_grace_period_when_stopped_mid_delivery(
    tmp_path: Path,
    receiver: Receiver,
    start: Callable[[Path, NotifySocket | None], DaemonProcess],
) -> None:
    """SIGTERM while a channel hangs exits 0 within the bound; the message waits for the restart."""
    with Simulator(runs=20, active=3, seed=5) as sim:
        cfg, daemon, run_id = start_delivery_to_a_hanging_channel(tmp_path, sim, receiver, start)
        signalled = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=SHUTDOWN_GRACE_S + 10) == 0
        took = time.monotonic() - signalled
        assert took < SHUTDOWN_GRACE_S + 3, took
        assert daemon.events("delivery.interrupted"), daemon.stderr
        pending, title, attempts = pending_rows(cfg)
        assert pending == 1 and title is not None and attempts == 0

        # The restarted daemon delivers the message it had not finished.
        receiver.set_mode("ok", "/slow")
        again = subprocess.run(
            [sys.executable, "-m", "runwatch", "once", "-c", str(cfg), "--log-format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 0, again.stderr
    [message] = receiver.wait_for(1, path="/slow")
    assert run_id in message["message"]
    assert pending_rows(cfg)[0] == 0


def test_it_exits_at_once_on_a_second_sigterm(
    tmp_path: Path,
    receiver: Receiver,
    start: Callable[[Path, NotifySocket | None], DaemonProcess],
) -> None:
    """A second SIGTERM during the grace period ends the process at once; nothing is lost."""
    with Simulator(runs=20, active=3, seed=5) as sim:
        cfg, daemon, _ = start_delivery_to_a_hanging_channel(tmp_path, sim, receiver, start)
        daemon.signal(signal.SIGTERM)
        daemon.wait_for_event("daemon.stopping")
        signalled = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=SHUTDOWN_GRACE_S + 10) != 0
        assert time.monotonic() - signalled < 2.0
    assert pending_rows(cfg)[0] == 1


# --- /healthz and /metrics ------------------------------------------------------------------


@contextlib.contextmanager
def serving(daemon: Daemon) -> Iterator[httpx.Client]:
    server = HealthServer("127.0.0.1", 0, health=daemon.health, metrics=daemon.metrics)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=5) as client:
            yield client
    finally:
        server.stop()


async def test_it_reports_unhealthy_while_the_api_is_down_and_healthy_after(
    tmp_path: Path, receiver: Receiver
) -> None:
    """/healthz turns 503 once the last good poll is older than the window, and 200 again."""
    with Simulator(runs=10, active=2, seed=5) as sim:
        cfg = write_config(tmp_path, sim, channels={"hook": receiver.apprise_url("/hook")})
        clock = FakeClock()
        with daemon_on(cfg, clock) as daemon, serving(daemon) as http:
            before = http.get("/healthz")
            assert before.status_code == 503  # never polled yet
            await daemon.poll_cycle()
            assert http.get("/healthz").status_code == 200

            sim.set_outage(True)
            clock.advance(30)
            await daemon.poll_cycle()
            assert http.get("/healthz").status_code == 200  # one failure, within the window
            clock.advance(60)
            await daemon.poll_cycle()
            down = http.get("/healthz")
            assert down.status_code == 503
            prod = down.json()["workspaces"]["prod"]
            assert prod["ok"] is False and "503" in prod["error"]

            sim.set_outage(False)
            clock.advance(30)
            recovered_at = datetime.fromtimestamp(clock.now, tz=timezone.utc)
            await daemon.poll_cycle()
            up = http.get("/healthz")
            assert up.status_code == 200
            assert up.json()["status"] == "ok"
            assert up.json()["workspaces"]["prod"] == {
                "ok": True,
                "last_success": recovered_at.isoformat(timespec="seconds"),
                "error": None,
            }
            await daemon.aclose()


def samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


async def test_it_counts_what_happened_in_the_metrics(tmp_path: Path, receiver: Receiver) -> None:
    """/metrics parses and its counters match the polls, requests, events and sends made."""
    with Simulator(runs=12, active=3, seed=5) as sim:
        cfg = write_config(
            tmp_path,
            sim,
            channels={"hook": receiver.apprise_url("/hook"), "broken": receiver.apprise_url("/b")},
        )
        receiver.set_mode("fail", "/b")
        clock = FakeClock()
        with daemon_on(cfg, clock) as daemon, serving(daemon) as http:
            await daemon.poll_cycle()  # baseline
            run_id = fail_a_run(sim)
            sim.append_condition(sim.active_run_ids()[0], "Running")
            clock.advance(30)
            await daemon.poll_cycle()  # two transitions
            assert await daemon.deliver_once() == 2  # hook takes both; broken refuses both
            good_poll_at = clock.now  # the last successful poll's time
            clock.advance(30)
            sim.set_outage(True)
            await daemon.poll_cycle()  # fails: 503 after the retries
            failed_poll_done_at = clock.now
            response = http.get("/metrics")
            await daemon.aclose()
    assert response.status_code == 200
    got = samples(response.text)

    def value(name: str, **labels: str) -> float:
        return got.get((name, frozenset(labels.items())), 0.0)

    assert value("runwatch_polls_total", workspace="prod", kind="baseline") == 1
    assert value("runwatch_polls_total", workspace="prod", kind="incremental") == 1
    assert value("runwatch_poll_failures_total", workspace="prod", reason="server") == 1
    by_status: dict[str, int] = {}
    for record in sim.requests_log():
        by_status[str(record.status)] = by_status.get(str(record.status), 0) + 1
    counted: dict[str, float] = {}
    for (name, labels), v in got.items():
        if name == "runwatch_api_requests_total":
            outcome = dict(labels)["outcome"]
            counted[outcome] = counted.get(outcome, 0) + v
    assert set(counted) == {"200", "503"}
    assert counted == by_status
    latency_counts = sum(
        v for (name, _), v in got.items() if name == "runwatch_api_request_seconds_count"
    )
    assert latency_counts == sum(by_status.values())
    assert value("runwatch_transitions_total", workspace="prod", condition="Failed") == 1
    assert value("runwatch_transitions_total", workspace="prod", condition="Running") == 1
    assert value("runwatch_notifications_total", channel="hook", result="sent") == 2
    assert value("runwatch_notifications_total", channel="broken", result="failed") == 2
    assert value("runwatch_notifications_total", channel="broken", result="sent") == 0
    assert value("runwatch_outbox_pending") == 2  # broken holds both of its rows
    oldest = value("runwatch_outbox_oldest_pending_seconds")
    assert oldest == pytest.approx(failed_poll_done_at - good_poll_at, abs=0.001)
    assert value("runwatch_runs_watched", workspace="prod") == 12
    last_success = value("runwatch_last_successful_poll_timestamp_seconds", workspace="prod")
    assert last_success == pytest.approx(good_poll_at, abs=0.001)
    assert any(run_id in m["message"] for m in receiver.received if m["path"] == "/hook")


# --- the watchdog ---------------------------------------------------------------------------


async def test_it_stops_pinging_the_watchdog_while_a_poll_hangs(
    tmp_path: Path, receiver: Receiver, notify_socket: NotifySocket
) -> None:
    """A poll stuck on a request that never returns stops the WATCHDOG=1 pings."""
    with Simulator(runs=10, active=2, seed=5) as sim:
        cfg = write_config(
            tmp_path,
            sim,
            channels={"hook": receiver.apprise_url("/hook")},
            poll={"request_timeout": "5m", "max_retry_after": "0s"},
        )
        notifier = Notifier({"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "100000"})
        with SqliteStore.open(load_config(cfg).state.path) as store:
            daemon = Daemon(load_config(cfg), store, notifier=notifier)
            daemon.heartbeat.stall_after_s = 0.5
            stop = asyncio.Event()
            with capture_logs() as logs:
                task = asyncio.create_task(daemon.run(stop))
                await daemon.wait_cycles(1)

                def pings() -> int:
                    return sum("WATCHDOG" in d for d in notify_socket.datagrams)

                await async_wait_until(lambda: pings() >= 3, what="pings while healthy")
                sim.inject(Fault(kind="slow", delay=600))

                def stalls() -> int:
                    return sum(e["event"] == "watchdog.stalled" for e in logs)

                await async_wait_until(lambda: stalls() >= 1, what="the watchdog to see a stall")
                pinged = pings()
                await async_wait_until(lambda: stalls() >= 4, what="three more watchdog ticks")
                assert pings() == pinged
                assert daemon.cycles == 1 and daemon.heartbeat.polling
                stop.set()
                await asyncio.wait_for(task, timeout=SHUTDOWN_GRACE_S + 5)
    assert notify_socket.datagrams[-1] == {"STOPPING": "1"}
