"""The signed JSON webhook channel, to a loopback receiver, through the daemon and the worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import FakeClock, daemon_on, write_config
from receiver import Receiver

from runwatch.config.settings import DeliveryConfig, WebhookConfig
from runwatch.core.model import OutboxItem
from runwatch.core.webhook import event_id, verify
from runwatch.delivery.lanes import WEBHOOK_TARGET, ChannelPolicy
from runwatch.delivery.senders import Outgoing
from runwatch.delivery.webhook import WebhookSender
from runwatch.delivery.worker import Deliverer
from runwatch.simulator.server import Simulator
from runwatch.state.sqlite import SqliteStore

SECRET = "whsec-0123456789abcdef-not-a-real-one"
CONFIG = DeliveryConfig(max_age=3_600.0, initial_backoff=30.0, max_backoff=240.0, timeout=2.0)


def hook(receiver: Receiver) -> dict[str, object]:
    return {"webhook": {"url": f"{receiver.url}/ci", "secret": SECRET}}


async def test_it_posts_one_signed_document_per_event_that_verifies(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Each event is one POST (no digest by default), signed so the documented recipe
    verifies it, with a stable event id and the event's fields in the body."""
    with Simulator(runs=20, active=4, seed=2) as sim:
        cfg = write_config(tmp_path, sim, channels={"ci": hook(receiver)})
        clock = FakeClock()
        with daemon_on(cfg, clock) as daemon:
            try:
                await daemon.poll_cycle()
                for run_id in sim.active_run_ids():
                    sim.append_condition(run_id, "Failed", reason="OOM")
                clock.advance(30)
                [report] = await daemon.poll_cycle()
                assert await daemon.deliver_once() == 4
            finally:
                await daemon.aclose()
    assert len(receiver.raw) == 4
    ids = set()
    for headers, body in receiver.raw:
        timestamp = int(headers["X-Runwatch-Timestamp"])
        assert verify(SECRET, timestamp, body, headers["X-Runwatch-Signature"])
        assert not verify("another secret", timestamp, body, headers["X-Runwatch-Signature"])
        doc = json.loads(body)
        assert (doc["schema"], doc["kind"], doc["condition"]) == (
            "runwatch.event/1", "transition", "Failed",
        )  # fmt: skip
        ids.add(headers["X-Runwatch-Event-Id"])
    assert len(ids) == 4 and all(i.startswith("evt_") for i in ids)
    assert report.queued == 4
    assert SECRET not in json.dumps([h for h, _ in receiver.raw])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore.open(tmp_path / "state.db") as s:
        yield s


def deliverer(store: SqliteStore, receiver: Receiver, clock: FakeClock) -> Deliverer:
    sender = WebhookSender(WebhookConfig(url=f"{receiver.url}/ci", secret=SECRET), clock=clock)
    policy = {"ci": ChannelPolicy(flavour="markdown", min_interval=0.0)}
    return Deliverer(store, {("ci", WEBHOOK_TARGET): sender}, policy, CONFIG, clock=clock)


def enqueue(store: SqliteStore, clock: FakeClock, key: str = "org/run_1/transition/x") -> None:
    item = OutboxItem(
        event_key=key, channel="ci", target=WEBHOOK_TARGET, title="t",
        body=json.dumps({"schema": "runwatch.event/1", "run_id": "run_1"}),
        notify_type="failure", run_key="org/run_1",
    )  # fmt: skip
    store.enqueue([item], int(clock() * 1000))


async def test_it_keeps_the_event_id_and_body_across_retries_and_honours_retry_after(
    store: SqliteStore, receiver: Receiver
) -> None:
    """A 5xx is retried later with the same id and bytes (a fresh timestamp and signature)."""
    clock = FakeClock()
    worker = deliverer(store, receiver, clock)
    enqueue(store, clock)
    receiver.set_mode("fail")
    assert await worker.deliver_due() == 0
    receiver.set_mode("ok")
    wait = worker.next_due_in()
    assert wait is not None and wait >= 30
    clock.advance(wait)
    assert await worker.deliver_due() == 1

    (first, first_body), (second, second_body) = receiver.raw
    assert first["X-Runwatch-Event-Id"] == second["X-Runwatch-Event-Id"] == event_id(
        "org/run_1/transition/x"
    )
    assert first_body == second_body
    assert first["X-Runwatch-Timestamp"] != second["X-Runwatch-Timestamp"]
    assert verify(SECRET, int(second["X-Runwatch-Timestamp"]), second_body,
                  second["X-Runwatch-Signature"])  # fmt: skip


async def test_it_marks_a_4xx_dead_at_once_and_treats_no_answer_as_unknown(
    store: SqliteStore, receiver: Receiver
) -> None:
    """A 400 is permanent (dead at once); a receiver that reads and hangs up may have it."""
    clock = FakeClock()
    worker = deliverer(store, receiver, clock)
    receiver.set_mode("reject")
    enqueue(store, clock, "k-rejected")
    assert await worker.deliver_due() == 0
    receiver.set_mode("drop")
    enqueue(store, clock, "k-dropped")
    assert await worker.deliver_due() == 0

    stats = store.outbox_stats(int(clock() * 1000))
    assert (stats.dead, stats.pending) == (1, 1)
    [row] = store.outbox.rows()
    assert (row.event_key, row.uncertain_attempts) == ("k-dropped", 1)
    assert row.last_error is not None and "RemoteProtocolError" in row.last_error


async def test_it_retries_after_what_a_429_asks(tmp_path: Path) -> None:
    """A 429 with Retry-After: 120 comes due no earlier than 120 s later."""
    import http.server
    import threading

    class TooMany(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(429)
            self.send_header("Retry-After", "120")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TooMany)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        clock = FakeClock()
        sender = WebhookSender(
            WebhookConfig(url=f"http://127.0.0.1:{server.server_address[1]}/", secret=SECRET),
            clock=clock,
        )
        outcome = await sender.send(
            Outgoing(title="t", body="{}", notify_type="info", event_keys=("k",)), timeout=2
        )
        await sender.aclose()
    finally:
        server.shutdown()
    assert (outcome.verdict, outcome.retry_after) == ("retry", 120.0)
