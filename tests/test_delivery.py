"""The delivery worker with real Apprise, a real SQLite outbox and a loopback receiver."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import structlog
from harness import FakeClock, apprise_channels
from receiver import Receiver

from runwatch.config.settings import DeliveryConfig, DigestConfig
from runwatch.core.model import Condition, Event, OutboxItem
from runwatch.delivery.apprise_channel import (
    ALL_URLS,
    AppriseTarget,
    route_apprise_logging,
    url_target,
)
from runwatch.delivery.lanes import ChannelPolicy
from runwatch.delivery.senders import Outgoing, SendOutcome
from runwatch.delivery.worker import MAX_UNCERTAIN, UNCERTAIN_BACKOFF, Deliverer
from runwatch.errors import ConfigError
from runwatch.state.sqlite import SqliteStore
from runwatch.state.store import Lane, OutboxRow, PollCommit

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


def enqueue(
    store: SqliteStore,
    clock: FakeClock,
    lanes: Sequence[tuple[str, str]],
    runs: Sequence[str],
    *,
    condition: str = "Failed",
) -> None:
    """Commit one poll whose events (one per run, in order) go to every lane (channel, URL)."""
    now_ms = int(clock() * 1000)
    events = [
        Event(
            kind="transition",
            workspace="prod",
            organization_id=ORG,
            run_id=run_id,
            previous=None,
            current=Condition(condition=condition, status="Reached", last_transition_time=now_ms),
            detected_at=now_ms,
        )
        for run_id in runs
    ]
    items = [
        OutboxItem(
            event_key=ev.key,
            channel=channel,
            target=url_target(URLS[url]) if url else ALL_URLS,
            title=f"{ev.run_id} {condition.lower()}",
            body=f"Run **{ev.run_id}** {condition.lower()}",
            notify_type="failure",
            run_key=f"{ORG}/{ev.run_id.split('.')[0]}",  # "r0.2": the second event of r0
            condition=condition,
        )
        for ev in events
        for channel, url in lanes
    ]
    store.commit_poll(
        PollCommit(organization_id=ORG, polled_at=now_ms, events=events, outbox=items)
    )


URLS: dict[str, int] = {}  # url -> its position in its channel, as deliverer_for set it up


def deliverer_for(
    store: SqliteStore,
    clock: FakeClock,
    urls: dict[str, list[str]],
    config: DeliveryConfig = CONFIG,
    results: Results | None = None,
    **policy: object,
) -> Deliverer:
    for channel_urls in urls.values():
        URLS.update({url: i for i, url in enumerate(channel_urls)})
    senders, policies = apprise_channels(urls, **policy)
    return Deliverer(store, senders, policies, config, clock=clock, on_result=results)


def titles(messages: list[dict[str, object]]) -> list[object]:
    return [m["title"] for m in messages]


def attempts_to(receiver: Receiver, path: str) -> int:
    return sum(1 for r in receiver.requests if r["path"] == path)


def pending(store: SqliteStore, channel: str, url: str) -> list[OutboxRow]:
    return store.outbox.pending((channel, url_target(URLS[url])))


async def advance_to_next(deliverer: Deliverer, clock: FakeClock) -> None:
    due = deliverer.next_due_in()
    assert due is not None
    clock.advance(due)


async def test_it_sends_a_pending_row_and_marks_it_sent(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """A due row reaches its URL through Apprise and is not sent again."""
    results = Results()
    url = receiver.apprise_url("ops")
    deliverer = deliverer_for(store, clock, {"ops": [url]}, results=results)
    enqueue(store, clock, [("ops", url)], ["r1"])

    assert await deliverer.deliver_due() == 1

    [message] = receiver.wait_for(1)
    assert (message["title"], message["message"], message["type"]) == (
        "r1 failed",
        "Run **r1** failed",
        "failure",
    )
    assert pending(store, "ops", url) == []
    assert results.calls == [("ops", "sent")]
    assert await deliverer.deliver_due() == 0
    assert len(receiver.requests) == 1
    assert deliverer.next_due_in() is None


async def test_it_backs_off_a_refusing_target_while_serving_another(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """A URL answering 500 is retried with doubling backoff; the other is served meanwhile,
    and once it recovers its backlog arrives, each run in order."""
    receiver.set_mode("fail", "bad")
    results = Results()
    bad, good = receiver.apprise_url("bad"), receiver.apprise_url("good")
    deliverer = deliverer_for(store, clock, {"bad": [bad], "good": [good]}, results=results)
    enqueue(store, clock, [("bad", bad), ("good", good)], ["r0", "r1", "r2"])

    with structlog.testing.capture_logs() as logs:
        assert await deliverer.deliver_due() == 3
        assert titles(receiver.wait_for(3, path="good")) == ["r0 failed", "r1 failed", "r2 failed"]
        assert attempts_to(receiver, "/bad") == 3  # one try per run: no run waits for another
        assert deliverer.failing_channels() == {"bad": T0}

        # The retry waits for its backoff: nothing is sent before it comes due.
        retry_in = deliverer.next_due_in()
        assert retry_in is not None and 30.0 <= retry_in <= 33.0
        clock.advance(retry_in - 1)
        assert await deliverer.deliver_due() == 0
        assert attempts_to(receiver, "/bad") == 3

        # Each further failure doubles the wait, up to max_backoff.
        waits = []
        for _ in range(4):
            clock.advance(240 * 1.1)  # past every run's backoff
            await deliverer.deliver_due()
            waits.append(max(r.next_attempt_at for r in pending(store, "bad", bad)))
        assert attempts_to(receiver, "/bad") == 15

    failed = [e for e in logs if e["event"] == "delivery.failed"]
    assert {e["attempt"] for e in failed} == {1, 2, 3, 4, 5}
    assert {e["channel"] for e in failed} == {"bad"}
    assert all(e["log_level"] == "warning" and "FAILURE" in e["error"] for e in failed)
    assert results.calls.count(("bad", "failed")) == 15

    receiver.set_mode("ok", "bad")
    clock.advance(240 * 1.1)
    assert await deliverer.deliver_due() == 3
    assert sorted(titles(receiver.wait_for(3, path="bad"))) == [
        "r0 failed", "r1 failed", "r2 failed",
    ]  # fmt: skip
    assert deliverer.failing_channels() == {}
    assert store.outbox_stats(int(clock() * 1000)).pending == 0


async def test_it_holds_back_only_the_later_messages_of_the_same_run(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """A message waiting for its retry keeps its run's later messages back, not other runs'."""
    url = receiver.apprise_url("ops")
    deliverer = deliverer_for(store, clock, {"ops": [url]})
    receiver.set_mode("fail")
    enqueue(store, clock, [("ops", url)], ["r0"])
    assert await deliverer.deliver_due() == 0  # r0's first message fails

    receiver.set_mode("ok")
    enqueue(store, clock, [("ops", url)], ["r0.2", "r1"], condition="Succeeded")
    assert await deliverer.deliver_due() == 1  # r1 goes; r0's second waits behind its first

    assert titles(receiver.received) == ["r1 succeeded"]
    await advance_to_next(deliverer, clock)
    assert await deliverer.deliver_due() == 2
    assert titles(receiver.received) == ["r1 succeeded", "r0 failed", "r0.2 succeeded"]


async def test_it_marks_a_refused_message_dead_at_once_and_goes_on(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """A 400 (a message the service will never take) is dead at once, logged with the status,
    and holds back nothing: the run's next message and the other runs' go out."""
    url = receiver.apprise_url("ops")
    results = Results()
    deliverer = deliverer_for(store, clock, {"ops": [url]}, results=results)
    receiver.set_mode("reject")
    enqueue(store, clock, [("ops", url)], ["r0"])
    with structlog.testing.capture_logs() as logs:
        assert await deliverer.deliver_due() == 0

    [dead] = [e for e in logs if e["event"] == "delivery.dead"]
    assert dead["attempts"] == 1 and "FAILURE" in dead["error"]
    assert results.calls == [("ops", "dead")]
    receiver.set_mode("ok")
    enqueue(store, clock, [("ops", url)], ["r0.2", "r1"], condition="Succeeded")
    assert await deliverer.deliver_due() == 2
    assert titles(receiver.received) == ["r0.2 succeeded", "r1 succeeded"]
    stats = store.outbox_stats(int(clock() * 1000))
    assert (stats.pending, stats.dead) == (0, 1)


@pytest.mark.parametrize("mode", ["hang", "drop"])
async def test_it_retries_a_send_of_unknown_outcome_rarely_and_calls_it_uncertain(
    store: SqliteStore, clock: FakeClock, receiver: Receiver, mode: str
) -> None:
    """A service that read the message and never answered (or hung up) may have it: retried
    only after a long wait, at most MAX_UNCERTAIN times, then "uncertain", never dead."""
    url = receiver.apprise_url("ops") + "?rto=1"
    config = DeliveryConfig(
        max_age=86_400.0, initial_backoff=30.0, max_backoff=240.0, timeout=3.0, min_interval=0.0
    )
    deliverer = deliverer_for(store, clock, {"ops": [url]}, config)
    receiver.set_mode(mode)  # type: ignore[arg-type]
    enqueue(store, clock, [("ops", url)], ["r0"])

    with structlog.testing.capture_logs() as logs:
        for attempt in range(1, MAX_UNCERTAIN + 1):
            assert await deliverer.deliver_due() == 0
            if attempt < MAX_UNCERTAIN:
                wait = deliverer.next_due_in()
                assert wait is not None and wait >= UNCERTAIN_BACKOFF - 1
                clock.advance(wait)

    assert len(receiver.requests) == MAX_UNCERTAIN
    stats = store.outbox_stats(int(clock() * 1000))
    assert (stats.pending, stats.dead, stats.uncertain) == (0, 0, 1)
    assert [e["event"] for e in logs if e["event"].startswith("delivery.")] == [
        "delivery.outcome_unknown"
    ] * (MAX_UNCERTAIN - 1) + ["delivery.uncertain"]


async def test_it_marks_rows_dead_past_max_age_and_logs_them(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """Rows that come due older than max_age are dead, logged and counted, and not sent."""
    receiver.set_mode("fail")
    results = Results()
    url = receiver.apprise_url("bad")
    deliverer = deliverer_for(store, clock, {"bad": [url]}, results=results)
    enqueue(store, clock, [("bad", url)], ["r0"])
    await deliverer.deliver_due()
    enqueue(store, clock, [("bad", url)], ["r0.2"])  # behind r0: never tried
    assert attempts_to(receiver, "/bad") == 1

    clock.advance(CONFIG.max_age + 1)  # a refusing channel for over an hour, without waiting
    with structlog.testing.capture_logs() as logs:
        assert await deliverer.deliver_due() == 0

    assert attempts_to(receiver, "/bad") == 1
    dead = [e for e in logs if e["event"] == "delivery.dead"]
    assert [(e["run"], e["attempts"], e["log_level"]) for e in dead] == [
        (f"{ORG}/r0", 1, "error"),
        (f"{ORG}/r0", 0, "error"),
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
    receiver.set_mode("fail")
    clock = FakeClock(T0)
    config = DeliveryConfig(max_age=60.0, timeout=1.0, min_interval=0.0)
    results = Results()
    url = receiver.apprise_url()

    class Slow(AppriseTarget):
        async def send(self, message: Outgoing, *, timeout: float) -> SendOutcome:
            clock.advance(61)  # the row ages while the send is under way
            return await super().send(message, timeout=timeout)

    with SqliteStore.open(tmp_path / "state.db") as store:
        URLS[url] = 0
        senders: dict[Lane, Slow] = {("slow", "1"): Slow("slow", [url], asset=None)}  # type: ignore[arg-type]
        policy = {"slow": ChannelPolicy(flavour="markdown", min_interval=0.0)}
        deliverer = Deliverer(store, senders, policy, config, clock=clock, on_result=results)
        enqueue(store, clock, [("slow", url)], ["r0"])
        with structlog.testing.capture_logs() as logs:
            assert await deliverer.deliver_due() == 0
        stats = store.outbox_stats(int(clock() * 1000))
    assert (stats.pending, stats.dead) == (0, 1)
    assert results.calls == [("slow", "dead")]
    [dead] = [e for e in logs if e["event"] == "delivery.dead"]
    assert dead["attempts"] == 1 and dead["error"].endswith("FAILURE")


async def test_it_times_out_a_hanging_target_without_delaying_another(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """A URL that never answers times out, while the other channel's messages go through."""
    receiver.set_mode("hang", "stuck")
    config = DeliveryConfig(
        max_age=3_600.0, initial_backoff=30.0, max_backoff=240.0, timeout=1.0, min_interval=0.0
    )
    stuck, good = receiver.apprise_url("stuck"), receiver.apprise_url("good")
    deliverer = deliverer_for(store, clock, {"a-stuck": [stuck], "z-good": [good]}, config)
    enqueue(store, clock, [("a-stuck", stuck), ("z-good", good)], ["r0", "r1", "r2"])

    delivering = asyncio.ensure_future(deliverer.deliver_due())
    arrived = await asyncio.to_thread(receiver.wait_for, 3, 10.0, "good")
    assert titles(arrived) == ["r0 failed", "r1 failed", "r2 failed"]
    assert not delivering.done()  # the stuck URL's sends are still under way
    assert await asyncio.wait_for(delivering, 20.0) == 3

    rows = pending(store, "a-stuck", stuck)
    assert [r.attempts for r in rows] == [1, 1, 1]
    assert all(r.last_error and "1s" in r.last_error for r in rows)
    assert deliverer.failing_channels() == {"a-stuck": T0}


async def test_it_fails_cleanly_on_an_unreachable_url(store: SqliteStore, clock: FakeClock) -> None:
    """A URL nobody listens on is a failed attempt with a retry, not an exception."""
    url = "json://127.0.0.1:1/"
    deliverer = deliverer_for(store, clock, {"void": [url]})
    enqueue(store, clock, [("void", url)], ["r0"])

    with structlog.testing.capture_logs() as logs:
        assert await deliverer.deliver_due() == 0

    [row] = pending(store, "void", url)
    assert row.attempts == 1 and row.uncertain_attempts == 0
    assert row.last_error == "json://127.0.0.1:1/: FAILURE"
    assert [e["event"] for e in logs] == ["delivery.failed"]


async def test_it_delivers_once_to_each_url_and_retries_only_the_failing_one(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """A two-URL channel whose second URL fails delivers once to the first, then catches up
    on the second: the retry goes only where the message has not been accepted."""
    receiver.set_mode("fail", "b")
    a, b = receiver.apprise_url("a"), receiver.apprise_url("b")
    deliverer = deliverer_for(store, clock, {"pair": [a, b]})
    enqueue(store, clock, [("pair", a), ("pair", b)], ["r0"])

    assert await deliverer.deliver_due() == 1
    receiver.set_mode("ok", "b")
    await advance_to_next(deliverer, clock)
    assert await deliverer.deliver_due() == 1

    assert attempts_to(receiver, "/a") == 1
    assert attempts_to(receiver, "/b") == 2
    assert titles(receiver.wait_for(1, path="b")) == ["r0 failed"]


async def test_it_sends_rows_from_before_per_target_delivery_to_every_url(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """A row written for the whole channel (an older schema) goes to each of its URLs."""
    a, b = receiver.apprise_url("a"), receiver.apprise_url("b")
    deliverer = deliverer_for(store, clock, {"pair": [a, b]})
    enqueue(store, clock, [("pair", "")], ["r0"])

    assert await deliverer.deliver_due() == 1
    assert sorted(m["path"] for m in receiver.wait_for(2)) == ["/a", "/b"]


async def test_it_paces_sends_on_one_target(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """Two sends on a target are at least min_interval apart; other targets are not paced."""
    url = receiver.apprise_url("ops")
    deliverer = deliverer_for(store, clock, {"ops": [url]}, min_interval=2.0)
    enqueue(store, clock, [("ops", url)], ["r0", "r1", "r2"])

    assert await deliverer.deliver_due() == 3

    assert clock.sleeps == [2.0, 2.0]
    assert titles(receiver.wait_for(3)) == ["r0 failed", "r1 failed", "r2 failed"]


async def test_it_keeps_rows_of_an_unconfigured_channel_pending(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """Rows for a target no longer configured wait (logged once) until a reload brings it."""
    url = receiver.apprise_url("back")
    URLS[url] = 0
    deliverer = Deliverer(store, {}, {}, CONFIG, clock=clock)
    enqueue(store, clock, [("gone", url)], ["r0"])

    with structlog.testing.capture_logs() as logs:
        assert await deliverer.deliver_due() == 0
        assert await deliverer.deliver_due() == 0
    assert [(e["event"], e["channel"]) for e in logs] == [("delivery.channel_missing", "gone")]
    assert store.outbox_stats(int(clock() * 1000)).pending_by_channel == {"gone": 1}
    assert deliverer.next_due_in() is None  # nothing it could send: no busy loop

    deliverer.replace(*apprise_channels({"gone": [url]}), CONFIG)
    assert deliverer.next_due_in() == 0.0
    assert await deliverer.deliver_due() == 1
    assert titles(receiver.wait_for(1, path="back")) == ["r0 failed"]


async def test_it_counts_a_sender_that_raises_as_a_failed_send(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """A bug inside one target's send is a failed attempt, logged; the worker goes on."""
    url = receiver.apprise_url("ops")

    class Broken(AppriseTarget):
        async def send(self, message: Outgoing, *, timeout: float) -> SendOutcome:
            raise RuntimeError("boom")

    URLS[url] = 0
    senders, policies = apprise_channels({"ops": [url]})
    senders[("ops", "1")] = Broken("ops", [url], asset=None)  # type: ignore[arg-type]
    deliverer = Deliverer(store, senders, policies, CONFIG, clock=clock)
    enqueue(store, clock, [("ops", url)], ["r0"])

    with structlog.testing.capture_logs() as logs:
        assert await deliverer.deliver_due() == 0
    [row] = pending(store, "ops", url)
    assert row.attempts == 1 and row.last_error == "internal error (RuntimeError)"
    assert [e["event"] for e in logs] == ["delivery.send_crashed", "delivery.failed"]


async def test_it_runs_until_stopped_and_wakes_on_demand(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """The loop delivers what is committed when woken, and returns once stop is set."""
    url = receiver.apprise_url("ops")
    deliverer = deliverer_for(store, clock, {"ops": [url]})
    stop, wake = asyncio.Event(), asyncio.Event()
    running = asyncio.ensure_future(deliverer.run(stop, wake))

    enqueue(store, clock, [("ops", url)], ["r0"])
    wake.set()
    await asyncio.to_thread(receiver.wait_for, 1)
    enqueue(store, clock, [("ops", url)], ["r1"])
    wake.set()
    assert titles(await asyncio.to_thread(receiver.wait_for, 2)) == ["r0 failed", "r1 failed"]

    stop.set()
    await asyncio.wait_for(running, 5.0)
    assert running.result() is None


# --- digests ---------------------------------------------------------------------------------

DIGEST = DigestConfig(max_single=3, window=60.0, max_lines=50)


async def test_it_sends_a_burst_as_one_digest_and_a_lone_message_after_it_at_once(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """200 rows due at once are one message; a message after the window goes out alone."""
    url = receiver.apprise_url("ops")
    deliverer = deliverer_for(store, clock, {"ops": [url]}, digest=DIGEST)
    enqueue(store, clock, [("ops", url)], [f"r{i}" for i in range(200)])

    assert await deliverer.deliver_due() == 200
    [digest] = receiver.wait_for(1)
    assert str(digest["title"]).startswith("200 runs changed")
    assert store.outbox_stats(int(clock() * 1000)).pending == 0

    clock.advance(61)
    enqueue(store, clock, [("ops", url)], ["late"])
    assert await deliverer.deliver_due() == 1
    assert titles(receiver.wait_for(2))[1] == "late failed"


async def test_it_sends_singles_up_to_the_window_then_one_digest_when_it_opens(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """Three singles go at once; more in the same window wait and go as one digest."""
    url = receiver.apprise_url("ops")
    deliverer = deliverer_for(store, clock, {"ops": [url]}, digest=DIGEST)
    for name in ("a", "b", "c"):
        enqueue(store, clock, [("ops", url)], [name])
        assert await deliverer.deliver_due() == 1
        clock.advance(1)
    enqueue(store, clock, [("ops", url)], ["d", "e"])
    assert await deliverer.deliver_due() == 0
    wait = deliverer.next_due_in()
    assert wait is not None and 55 <= wait <= 60

    clock.advance(wait)
    assert await deliverer.deliver_due() == 2
    messages = receiver.wait_for(4)
    assert titles(messages[:3]) == ["a failed", "b failed", "c failed"]
    assert str(messages[3]["title"]).startswith("2 runs changed")


async def test_it_retries_a_failed_digest_whole_without_losing_or_counting_twice(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """Every row of a refused digest is retried; the next digest carries each once."""
    url = receiver.apprise_url("ops")
    results = Results()
    deliverer = deliverer_for(store, clock, {"ops": [url]}, results=results, digest=DIGEST)
    receiver.set_mode("fail")
    enqueue(store, clock, [("ops", url)], [f"r{i}" for i in range(10)])
    assert await deliverer.deliver_due() == 0
    assert [r.attempts for r in pending(store, "ops", url)] == [1] * 10

    receiver.set_mode("ok")
    await advance_to_next(deliverer, clock)
    assert await deliverer.deliver_due() == 10
    [digest] = receiver.wait_for(1)
    assert str(digest["title"]).startswith("10 runs changed")
    assert results.calls.count(("ops", "failed")) == 10
    assert results.calls.count(("ops", "sent")) == 10


# --- Apprise targets ---------------------------------------------------------------------------


def test_it_masks_secrets_in_privacy_urls(receiver: Receiver) -> None:
    """Passwords, tokens and custom header values never appear in a target's printable URLs."""
    urls = [
        f"json://user:pa55word@127.0.0.1:{receiver.port}/hook?+X-Token=s3cr3t-header",
        "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#ml-runs",
        "mailtos://alerts:smtp-secret@smtp.example.com?to=oncall@example.com",
    ]
    senders, _ = apprise_channels({"mixed": urls})
    shown = " ".join(s.describe() + repr(s) for s in senders.values())
    for secret in ("pa55word", "s3cr3t-header", "TIiajkdnlazkcOXrIdevi7FQ", "smtp-secret"):
        assert secret not in shown
    assert "X-Token=****" in shown


async def test_it_keeps_header_secrets_out_of_send_outcomes(receiver: Receiver) -> None:
    """A send's detail (which is logged and stored) names the URL without its header value."""
    url = f"json://127.0.0.1:{receiver.port}/hook?+X-Token=s3cr3t-header"
    senders, _ = apprise_channels({"hook": [url]})
    receiver.set_mode("fail")
    outcome = await senders[("hook", "1")].send(
        Outgoing(title="t", body="b", notify_type="info"), timeout=5.0
    )
    assert outcome.verdict == "retry"
    assert "s3cr3t-header" not in outcome.detail
    assert outcome.detail == f"json://127.0.0.1:{receiver.port}/hook: FAILURE"


def test_it_reports_every_unusable_url_as_a_config_error() -> None:
    """Unknown schemas and malformed URLs are named by key path, without quoting the URL."""
    with pytest.raises(ConfigError) as raised:
        apprise_channels(
            {
                "ok": ["json://127.0.0.1:9/"],
                "typo": ["slakc://TokenA/TokenB/TokenC"],
                "broken": ["slack://T1JJ3T3L2/A1BRTD4JD/sec$ret!!/#x"],
            }
        )
    problems = raised.value.problems
    assert [p.split(":")[0] for p in problems] == ["channels.typo[0]", "channels.broken[0]"]
    assert "slakc://" in problems[0]
    assert not any("sec$ret" in p for p in problems)  # Apprise's own message quotes it


def test_it_builds_one_apprise_object_per_url_without_apprise_pacing() -> None:
    """Each URL gets its own Apprise object, named by its position, and no service sleeps
    between its sends."""
    mail = "mailto://127.0.0.1:9?from=runwatch@example.com&to=ops@example.com"
    slack = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#ml-runs"
    senders, _ = apprise_channels({"both": [mail, slack]})
    assert set(senders) == {("both", "1"), ("both", "2"), ("both", "")}
    services = [s for lane, t in senders.items() if lane[1] for s in t._apprise]  # type: ignore[attr-defined]
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


def test_it_captures_apprise_debug_only_behind_handlers_that_write_warning(
    apprise_logger: logging.Logger,
) -> None:
    """Apprise's logger goes to DEBUG (sends read their details back) without propagating;
    what it hands on is WARNING and above; calling twice adds nothing."""
    apprise_logger.setLevel(logging.WARNING)
    apprise_logger.propagate = True
    apprise_logger.handlers[:] = [logging.NullHandler()]
    route_apprise_logging()
    route_apprise_logging()
    assert (apprise_logger.level, apprise_logger.propagate) == (logging.DEBUG, False)
    active = [h for h in apprise_logger.handlers if not isinstance(h, logging.NullHandler)]
    assert len(active) == 1 and active[0].level == logging.WARNING


def test_it_stays_at_warning_behind_a_handler_that_writes_lower(
    apprise_logger: logging.Logger,
) -> None:
    """A handler someone attached below WARNING would print Apprise's secrets: no DEBUG then."""
    handler = logging.StreamHandler()
    apprise_logger.setLevel(logging.NOTSET)
    apprise_logger.handlers[:] = [handler]
    route_apprise_logging()
    assert apprise_logger.level == logging.WARNING


class Recording:
    """A target that accepts everything and remembers what it got (the worker is under test)."""

    def __init__(self) -> None:
        self.messages: list[Outgoing] = []

    def describe(self) -> str:
        return "recording"

    async def send(self, message: Outgoing, *, timeout: float) -> SendOutcome:
        self.messages.append(message)
        return SendOutcome(verdict="ok")


async def test_it_coalesces_a_runs_pending_rows_into_one_send_when_the_channel_asks(
    store: SqliteStore, clock: FakeClock
) -> None:
    """A coalescing channel gets one send per run: the latest row's text, carrying every row."""
    target = Recording()
    policy = {"team": ChannelPolicy(flavour="markdown", min_interval=0.0, coalesce=True)}
    deliverer = Deliverer(store, {("team", "slack"): target}, policy, CONFIG, clock=clock)
    now_ms = int(clock() * 1000)
    items = [
        OutboxItem(
            event_key=f"k{i}", channel="team", target="slack", title=f"t{i}", body=f"b{i}",
            notify_type="info", run_key=run, condition="Running",
        )
        for i, run in enumerate(["a", "a", "b", "a"])
    ]  # fmt: skip
    store.enqueue(items, now_ms)

    assert await deliverer.deliver_due() == 4

    assert [(m.body, tuple(m.event_keys), tuple(m.parts)) for m in target.messages] == [
        ("b3", ("k0", "k1", "k3"), ("b0", "b1", "b3")),
        ("b2", ("k2",), ("b2",)),
    ]
    assert store.outbox_stats(now_ms).pending == 0
