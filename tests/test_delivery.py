"""The delivery worker with real Apprise, a real SQLite outbox and a loopback receiver."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from harness import FakeClock, apprise_channels
from receiver import Receiver

from runwatch.config.settings import DeliveryConfig
from runwatch.core.model import Condition, Event, OutboxItem
from runwatch.delivery.apprise_channel import Channel, route_apprise_logging
from runwatch.delivery.worker import Deliverer
from runwatch.errors import ConfigError
from runwatch.state.sqlite import SqliteStore
from runwatch.state.store import PollCommit

ORG = "org-1"
T0 = 1_760_000_000.0  # epoch seconds of the fake clock's start
CONFIG = DeliveryConfig(
    max_age=3_600.0, initial_backoff=30.0, max_backoff=240.0, timeout=5.0, min_interval=0.0
)


class Results:
    """Collects on_result callbacks, as the metrics do."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, channel: str, outcome: str) -> None:
        self.calls.append((channel, outcome))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[SqliteStore]:
    with SqliteStore.open(tmp_path / "state.db", clock=clock) as s:
        yield s


def enqueue(store: SqliteStore, clock: FakeClock, channels: list[str], runs: list[str]) -> None:
    """Commit one poll whose events (one per run, in order) go to every channel."""
    now_ms = int(clock() * 1000)
    events = [
        Event(
            kind="transition",
            workspace="prod",
            organization_id=ORG,
            run_id=run_id,
            previous=None,
            current=Condition(condition="Failed", status="Reached", last_transition_time=now_ms),
        )
        for run_id in runs
    ]
    items = [
        OutboxItem(
            event_key=ev.key,
            channel=channel,
            title=f"{ev.run_id} failed",
            body=f"Run **{ev.run_id}** failed",
            notify_type="failure",
            run_key=f"{ORG}/{ev.run_id}",
        )
        for ev in events
        for channel in channels
    ]
    store.commit_poll(
        PollCommit(organization_id=ORG, polled_at=now_ms, events=events, outbox=items)
    )


def titles(messages: list[dict[str, object]]) -> list[object]:
    return [m["title"] for m in messages]


def attempts_to(receiver: Receiver, path: str) -> int:
    return sum(1 for r in receiver.requests if r["path"] == path)


async def test_it_sends_a_pending_row_and_marks_it_sent(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """A due row reaches the channel's URL through Apprise and is not sent again."""
    results = Results()
    channels = apprise_channels({"ops": [receiver.apprise_url("ops")]})
    deliverer = Deliverer(store, channels, CONFIG, clock=clock, on_result=results)
    enqueue(store, clock, ["ops"], ["r1"])

    assert await deliverer.deliver_due() == 1

    [message] = receiver.wait_for(1)
    assert (message["title"], message["message"], message["type"]) == (
        "r1 failed",
        "Run **r1** failed",
        "failure",
    )
    assert store.next_pending("ops") is None
    assert results.calls == [("ops", "sent")]
    assert await deliverer.deliver_due() == 0
    assert len(receiver.requests) == 1
    assert deliverer.next_due_in() is None


async def test_it_backs_off_a_refusing_channel_while_serving_another(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """A channel answering 500 is retried with doubling backoff; the other is served meanwhile."""
    receiver.set_mode("fail", "bad")
    results = Results()
    channels = apprise_channels(
        {"bad": [receiver.apprise_url("bad")], "good": [receiver.apprise_url("good")]}
    )
    deliverer = Deliverer(store, channels, CONFIG, clock=clock, on_result=results)
    enqueue(store, clock, ["bad", "good"], ["r0", "r1", "r2"])

    with structlog.testing.capture_logs() as logs:
        assert await deliverer.deliver_due() == 3
        assert titles(receiver.wait_for(3, path="good")) == ["r0 failed", "r1 failed", "r2 failed"]
        assert attempts_to(receiver, "/bad") == 1  # the head failed; the rows behind it wait
        assert deliverer.failing_channels() == {"bad": T0}

        # The retry waits for its backoff: nothing is sent before it comes due.
        retry_in = deliverer.next_due_in()
        assert retry_in is not None and 30.0 <= retry_in <= 33.0
        clock.advance(retry_in - 1)
        assert await deliverer.deliver_due() == 0
        assert attempts_to(receiver, "/bad") == 1

        # Each further failure doubles the wait, up to max_backoff.
        waits = []
        for _ in range(4):
            due = deliverer.next_due_in()
            assert due is not None
            clock.advance(due)
            await deliverer.deliver_due()
            waits.append(deliverer.next_due_in())
        assert attempts_to(receiver, "/bad") == 5
        for wait, base in zip(waits, [60.0, 120.0, 240.0, 240.0], strict=True):
            assert wait is not None and base <= wait <= base * 1.1

    failed = [e for e in logs if e["event"] == "delivery.failed"]
    assert [e["attempt"] for e in failed] == [1, 2, 3, 4, 5]
    assert {e["channel"] for e in failed} == {"bad"}
    assert all(e["log_level"] == "warning" and "FAILURE" in e["error"] for e in failed)
    assert results.calls.count(("bad", "failed")) == 5

    # Once the channel recovers, the backlog arrives in order and it is no longer failing.
    receiver.set_mode("ok", "bad")
    due = deliverer.next_due_in()
    assert due is not None
    clock.advance(due)
    assert await deliverer.deliver_due() == 3
    assert titles(receiver.wait_for(3, path="bad")) == ["r0 failed", "r1 failed", "r2 failed"]
    assert deliverer.failing_channels() == {}
    assert store.outbox_stats(int(clock() * 1000)).pending == 0


async def test_it_marks_rows_dead_past_max_age_and_logs_them(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """Rows that come due older than max_age are dead, logged and counted, and not sent."""
    receiver.set_mode("fail")
    results = Results()
    channels = apprise_channels({"bad": [receiver.apprise_url("bad")]})
    deliverer = Deliverer(store, channels, CONFIG, clock=clock, on_result=results)
    enqueue(store, clock, ["bad"], ["r0", "r1"])
    await deliverer.deliver_due()
    assert attempts_to(receiver, "/bad") == 1

    clock.advance(CONFIG.max_age + 1)  # a refusing channel for over an hour, without waiting
    with structlog.testing.capture_logs() as logs:
        assert await deliverer.deliver_due() == 0

    assert attempts_to(receiver, "/bad") == 1
    dead = [e for e in logs if e["event"] == "delivery.dead"]
    assert [(e["run"], e["attempts"], e["log_level"]) for e in dead] == [
        (f"{ORG}/r0", 1, "error"),
        (f"{ORG}/r1", 0, "error"),
    ]
    assert dead[0]["error"].endswith("/bad: FAILURE")  # the last failure is kept as the reason
    assert all(e["age_s"] > CONFIG.max_age for e in dead)
    assert results.calls == [("bad", "failed"), ("bad", "dead"), ("bad", "dead")]
    stats = store.outbox_stats(int(clock() * 1000))
    assert (stats.pending, stats.dead_by_channel) == (0, {"bad": 2})
    assert deliverer.next_due_in() is None


async def test_it_marks_a_row_dead_when_it_fails_past_max_age(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A send that fails after the row passed max_age makes the row dead, not retried."""
    receiver.set_mode("hang")
    config = DeliveryConfig(max_age=0.3, timeout=1.0, min_interval=0.0)
    results = Results()
    with SqliteStore.open(tmp_path / "state.db") as store:
        deliverer = Deliverer(
            store, apprise_channels({"slow": [receiver.apprise_url()]}), config, on_result=results
        )
        # The real clock: the row ages while the send hangs for its timeout.
        enqueue(store, FakeClock(time.time()), ["slow"], ["r0"])
        with structlog.testing.capture_logs() as logs:
            assert await deliverer.deliver_due() == 0
        stats = store.outbox_stats(int(time.time() * 1000))
    assert (stats.pending, stats.dead) == (0, 1)
    assert results.calls == [("slow", "dead")]
    [dead] = [e for e in logs if e["event"] == "delivery.dead"]
    assert dead["attempts"] == 1 and dead["error"].startswith("timed out after 1s")


async def test_it_times_out_a_hanging_channel_without_delaying_another(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """A channel that never answers times out, while the other channel's messages go through."""
    # "a-stuck" sorts first: served one after the other, "z-good" would wait for its timeout.
    receiver.set_mode("hang", "stuck")
    config = DeliveryConfig(
        max_age=3_600.0, initial_backoff=30.0, max_backoff=240.0, timeout=1.0, min_interval=0.0
    )
    channels = apprise_channels(
        {"a-stuck": [receiver.apprise_url("stuck")], "z-good": [receiver.apprise_url("good")]}
    )
    deliverer = Deliverer(store, channels, config, clock=clock)
    enqueue(store, clock, ["a-stuck", "z-good"], ["r0", "r1", "r2"])

    delivering = asyncio.ensure_future(deliverer.deliver_due())
    arrived = await asyncio.to_thread(receiver.wait_for, 3, 10.0, "good")
    assert titles(arrived) == ["r0 failed", "r1 failed", "r2 failed"]
    # Meanwhile the stuck channel's first send was still hanging, not yet timed out.
    stuck = store.next_pending("a-stuck")
    assert stuck is not None and stuck.attempts == 0
    assert not delivering.done()
    assert await asyncio.wait_for(delivering, 10.0) == 3

    row = store.next_pending("a-stuck")
    assert row is not None and row.attempts == 1
    assert row.last_error is not None and row.last_error.startswith("timed out after 1s")
    assert deliverer.failing_channels() == {"a-stuck": T0}


async def test_it_fails_cleanly_on_an_unreachable_url(store: SqliteStore, clock: FakeClock) -> None:
    """A URL nobody listens on is a failed attempt with a retry, not an exception."""
    channels = apprise_channels({"void": ["json://127.0.0.1:1/"]})
    deliverer = Deliverer(store, channels, CONFIG, clock=clock)
    enqueue(store, clock, ["void"], ["r0"])

    with structlog.testing.capture_logs() as logs:
        assert await deliverer.deliver_due() == 0

    row = store.next_pending("void")
    assert row is not None and row.attempts == 1
    assert row.last_error == "json://127.0.0.1:1/: FAILURE"
    assert [e["event"] for e in logs] == ["delivery.failed"]


async def test_it_requires_every_url_of_a_channel_to_succeed(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """A channel with one refusing URL out of two is a failure, retried later (at-least-once)."""
    receiver.set_mode("fail", "b")
    channels = apprise_channels({"pair": [receiver.apprise_url("a"), receiver.apprise_url("b")]})
    deliverer = Deliverer(store, channels, CONFIG, clock=clock)
    enqueue(store, clock, ["pair"], ["r0"])

    assert await deliverer.deliver_due() == 0

    receiver.wait_for(1, path="a")
    row = store.next_pending("pair")
    assert row is not None
    assert row.last_error == (
        f"json://127.0.0.1:{receiver.port}/a: SUCCESS; json://127.0.0.1:{receiver.port}/b: FAILURE"
    )


async def test_it_paces_sends_on_one_channel(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """Two sends on a channel are at least min_interval apart; other channels are not paced."""
    config = DeliveryConfig(min_interval=2.0, timeout=5.0)
    channels = apprise_channels({"ops": [receiver.apprise_url("ops")]})
    deliverer = Deliverer(store, channels, config, clock=clock)
    enqueue(store, clock, ["ops"], ["r0", "r1", "r2"])

    assert await deliverer.deliver_due() == 3

    assert clock.sleeps == [2.0, 2.0]
    assert titles(receiver.wait_for(3)) == ["r0 failed", "r1 failed", "r2 failed"]


async def test_it_keeps_rows_of_an_unconfigured_channel_pending(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """Rows for a channel no longer configured wait (logged once) until a reload brings it back."""
    deliverer = Deliverer(store, {}, CONFIG, clock=clock)
    enqueue(store, clock, ["gone"], ["r0"])

    with structlog.testing.capture_logs() as logs:
        assert await deliverer.deliver_due() == 0
        assert await deliverer.deliver_due() == 0
    assert [(e["event"], e["channel"]) for e in logs] == [("delivery.channel_missing", "gone")]
    assert store.outbox_stats(int(clock() * 1000)).pending_by_channel == {"gone": 1}
    assert deliverer.next_due_in() is None  # nothing it could send: no busy loop

    deliverer.replace_channels(apprise_channels({"gone": [receiver.apprise_url("back")]}), CONFIG)
    assert deliverer.next_due_in() == 0.0
    assert await deliverer.deliver_due() == 1
    assert titles(receiver.wait_for(1, path="back")) == ["r0 failed"]


async def test_it_runs_until_stopped_and_wakes_on_demand(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """The loop delivers what is committed when woken, and returns once stop is set."""
    channels = apprise_channels({"ops": [receiver.apprise_url("ops")]})
    deliverer = Deliverer(store, channels, CONFIG, clock=clock)
    stop, wake = asyncio.Event(), asyncio.Event()
    running = asyncio.ensure_future(deliverer.run(stop, wake))

    enqueue(store, clock, ["ops"], ["r0"])
    wake.set()
    await asyncio.to_thread(receiver.wait_for, 1)
    enqueue(store, clock, ["ops"], ["r1"])
    wake.set()
    assert titles(await asyncio.to_thread(receiver.wait_for, 2)) == ["r0 failed", "r1 failed"]

    stop.set()
    await asyncio.wait_for(running, 5.0)
    assert running.result() is None


def test_it_masks_secrets_in_privacy_urls(receiver: Receiver) -> None:
    """Passwords, tokens and custom header values never appear in a channel's printable URLs."""
    channel = apprise_channels(
        {
            "mixed": [
                f"json://user:pa55word@127.0.0.1:{receiver.port}/hook?+X-Token=s3cr3t-header",
                "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#ml-runs",
                "mailtos://alerts:smtp-secret@smtp.example.com?to=oncall@example.com",
            ]
        }
    )["mixed"]
    shown = " ".join(channel.privacy_urls()) + repr(channel)
    for secret in ("pa55word", "s3cr3t-header", "TIiajkdnlazkcOXrIdevi7FQ", "smtp-secret"):
        assert secret not in shown
    assert "X-Token=****" in shown


async def test_it_keeps_header_secrets_out_of_send_results(receiver: Receiver) -> None:
    """A send's detail (which is logged and stored) names the URL without its header value."""
    channel = apprise_channels(
        {"hook": [f"json://127.0.0.1:{receiver.port}/hook?+X-Token=s3cr3t-header"]}
    )["hook"]
    receiver.set_mode("fail")
    result = await channel.send("t", "b", "info", timeout=5.0)
    assert not result.ok
    assert "s3cr3t-header" not in result.detail
    assert result.detail == f"json://127.0.0.1:{receiver.port}/hook: FAILURE"


def test_it_reports_every_unusable_url_as_a_config_error() -> None:
    """Unknown schemas and malformed URLs are named by key path, without quoting the URL."""
    with pytest.raises(ConfigError) as raised:
        apprise_channels(
            {
                "ok": ["json://127.0.0.1:9/"],
                "typo": ["slakc://TokenA/TokenB/TokenC"],
                "broken": ["slack://T1JJ3T3L2/A1BRTD4JD/sec$ret!!/#x"],
                "empty": [],
            }
        )
    problems = raised.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "channels.typo[0]",
        "channels.broken[0]",
        "channels.empty",
    ]
    assert "slakc://" in problems[0]
    assert not any("sec$ret" in p for p in problems)  # Apprise's own message quotes it


def test_it_builds_one_apprise_object_per_channel_without_apprise_pacing() -> None:
    """Each channel gets its own Apprise object, and no service sleeps between its sends."""
    channels = apprise_channels(
        {
            "mail": ["mailto://127.0.0.1:9?from=runwatch@example.com&to=ops@example.com"],
            "slack": ["slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#ml-runs"],
        }
    )
    assert set(channels) == {"mail", "slack"}
    assert all(isinstance(c, Channel) for c in channels.values())
    services = [s for c in channels.values() for s in c._apprise]
    assert len(services) == 2
    assert all(s.request_rate_per_sec == 0 for s in services)
    assert type(services[0]).request_rate_per_sec > 0  # Apprise's default pacing, overridden


@pytest.fixture
def apprise_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("apprise")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    yield logger
    logger.setLevel(saved[0])
    logger.propagate = saved[1]
    logger.handlers[:] = saved[2]


def test_it_routes_apprise_logging_at_warning(apprise_logger: logging.Logger) -> None:
    """Apprise's logger is raised to WARNING and propagates to the root; calling twice is safe."""
    apprise_logger.setLevel(logging.DEBUG)
    apprise_logger.propagate = False
    apprise_logger.handlers[:] = [logging.NullHandler()]
    route_apprise_logging()
    route_apprise_logging()
    assert apprise_logger.level == logging.WARNING
    assert apprise_logger.propagate is True


def test_it_leaves_apprise_logging_alone_when_it_has_a_handler(
    apprise_logger: logging.Logger,
) -> None:
    """When the logging set-up gave Apprise its own handler, propagating too would print twice."""
    apprise_logger.setLevel(logging.ERROR)
    apprise_logger.propagate = False
    apprise_logger.handlers[:] = [logging.StreamHandler()]
    route_apprise_logging()
    assert (apprise_logger.level, apprise_logger.propagate) == (logging.ERROR, False)
