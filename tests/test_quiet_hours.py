"""Quiet hours, proved: real Apprise to the loopback receiver, a real SQLite outbox, and an
injected clock set to wall-clock moments in UTC and in other zones."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from harness import FakeClock, apprise_channels, daemon_on, write_config
from receiver import Receiver

from runwatch.config.loading import load_config
from runwatch.config.settings import DeliveryConfig, DigestConfig, QuietHours
from runwatch.core.model import Condition, Event, OutboxItem
from runwatch.delivery import quiet_hours
from runwatch.delivery.apprise_channel import url_target
from runwatch.delivery.worker import Deliverer
from runwatch.simulator.server import Simulator
from runwatch.state.sqlite import SqliteStore
from runwatch.state.store import PollCommit

ORG = "org-1"
UTC = dt.timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NIGHT = QuietHours(from_=dt.time(22, 0), to=dt.time(7, 0), except_=("Failed", "Error"))
CONFIG = DeliveryConfig(
    max_age=3_600.0, initial_backoff=30.0, max_backoff=240.0, timeout=5.0, min_interval=0.0
)


def at(year: int, month: int, day: int, hour: int, minute: int = 0, tz: Any = UTC) -> float:
    """Epoch seconds of a wall-clock moment in `tz`."""
    return dt.datetime(year, month, day, hour, minute, tzinfo=tz).timestamp()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(at(2026, 1, 15, 23, 0))  # a winter night, 23:00 UTC


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[SqliteStore]:
    with SqliteStore.open(tmp_path / "state.db", clock=clock) as s:
        yield s


def enqueue(
    store: SqliteStore, clock: FakeClock, runs: list[tuple[str, str]], channel: str = "ops"
) -> None:
    """Commit one poll with an event per (run, condition), each for the channel's first URL."""
    now_ms = round(clock() * 1000)
    events = [
        Event(
            kind="transition",
            workspace="prod",
            organization_id=ORG,
            run_id=run_id,
            previous=None,
            current=Condition(condition=condition, status="Reached", last_transition_time=now_ms),
            generation=now_ms,
            detected_at=now_ms,
        )
        for run_id, condition in runs
    ]
    items = [
        OutboxItem(
            event_key=event.key,
            channel=channel,
            target=url_target(0),
            title=f"{event.run_id} {event.current.condition.lower()}",
            body=f"Run **{event.run_id}**",
            notify_type="info",
            run_key=f"{ORG}/{event.run_id}",
            condition=event.current.condition,
        )
        for event in events
        if event.current is not None
    ]
    store.commit_poll(
        PollCommit(organization_id=ORG, polled_at=now_ms, events=events, outbox=items)
    )


def deliverer(
    store: SqliteStore,
    clock: FakeClock,
    receiver: Receiver,
    quiet: QuietHours | None = NIGHT,
    digest: DigestConfig | None = None,
    config: DeliveryConfig = CONFIG,
) -> Deliverer:
    senders, policies = apprise_channels(
        {"ops": [receiver.apprise_url("/ops")]}, quiet_hours=quiet, digest=digest
    )
    return Deliverer(store, senders, policies, config, clock=clock)


def titles(receiver: Receiver) -> list[str]:
    return [str(m["title"]) for m in receiver.received]


def states(store: SqliteStore) -> dict[str, int]:
    stats = store.outbox_stats(0)
    return {"pending": stats.pending, "dead": stats.dead}


async def test_it_holds_non_excepted_messages_and_sends_excepted_ones_at_once(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """At 23:00 a Running waits for the morning; a Failed goes now."""
    worker = deliverer(store, clock, receiver)
    enqueue(store, clock, [("a", "Running"), ("b", "Failed"), ("c", "Succeeded")])
    assert await worker.deliver_due() == 1
    assert titles(receiver) == ["b failed"]
    assert worker.next_due_in() == 8 * 3600  # 07:00
    assert states(store) == {"pending": 2, "dead": 0}


async def test_it_releases_what_it_held_as_one_digest_when_the_window_ends(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """Two held messages are one digest at 07:00, even on a channel without digests; a message
    after that goes alone."""
    worker = deliverer(store, clock, receiver, digest=None)
    enqueue(store, clock, [("a", "Running")])
    clock.advance(3 * 3600)  # 02:00
    enqueue(store, clock, [("b", "Succeeded")])
    assert await worker.deliver_due() == 0

    clock.advance(worker.next_due_in() or 0)
    assert dt.datetime.fromtimestamp(clock(), UTC).time() == dt.time(7, 0)
    assert await worker.deliver_due() == 2
    [digest] = receiver.wait_for(1)
    assert str(digest["title"]).startswith("2 runs changed")
    clock.advance(60)
    enqueue(store, clock, [("c", "Running")])
    assert await worker.deliver_due() == 1
    assert receiver.wait_for(2) and titles(receiver)[1] == "c running"


async def test_it_releases_held_messages_as_one_digest_below_the_channels_burst_size(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """A digest channel that would send 3 messages one by one still sends 2 held ones as one."""
    worker = deliverer(store, clock, receiver, digest=DigestConfig(max_single=3, window=60.0))
    enqueue(store, clock, [("a", "Running"), ("b", "Running")])
    clock.advance(8 * 3600)
    assert await worker.deliver_due() == 2
    [digest] = receiver.wait_for(1)
    assert str(digest["title"]).startswith("2 runs changed")


async def test_it_sends_an_excepted_message_even_behind_a_held_one_of_the_same_run(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """Running (held) then Failed (excepted) for one run at night: the Failed goes now."""
    worker = deliverer(store, clock, receiver)
    enqueue(store, clock, [("a", "Running")])
    clock.advance(60)
    enqueue(store, clock, [("a", "Failed")])
    assert await worker.deliver_due() == 1
    assert titles(receiver) == ["a failed"]
    clock.advance(worker.next_due_in() or 0)
    assert await worker.deliver_due() == 1
    assert receiver.wait_for(2) and titles(receiver) == ["a failed", "a running"]


async def test_it_keeps_an_excepted_retry_on_time_behind_a_held_message(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """An excepted message that failed is retried at its backoff, not at the window's end."""
    worker = deliverer(store, clock, receiver)
    enqueue(store, clock, [("a", "Running")])
    enqueue(store, clock, [("a", "Failed")])
    receiver.set_mode("fail")
    assert await worker.deliver_due() == 0
    wait = worker.next_due_in()
    assert wait is not None and 30 <= wait <= 33  # initial_backoff and its jitter
    receiver.set_mode("ok")
    clock.advance(wait)
    assert await worker.deliver_due() == 1
    assert titles(receiver) == ["a failed"]


@pytest.mark.parametrize(
    ("start", "quiet", "held_until"),
    [
        # Berlin in winter is UTC+1: 23:30 local is 22:30 UTC; quiet until 07:00 local.
        (
            at(2026, 1, 15, 23, 30, BERLIN),
            QuietHours(from_=dt.time(22), to=dt.time(7), timezone=BERLIN),
            at(2026, 1, 16, 7, 0, BERLIN),
        ),
        # in summer UTC+2, and past midnight already: 01:15 local
        (
            at(2026, 7, 1, 1, 15, BERLIN),
            QuietHours(from_=dt.time(22), to=dt.time(7), timezone=BERLIN),
            at(2026, 7, 1, 7, 0, BERLIN),
        ),
        # a window that does not wrap, in a half-hour zone: 12:00-13:30 in Kolkata
        (
            at(2026, 3, 3, 12, 10, ZoneInfo("Asia/Kolkata")),
            QuietHours(from_=dt.time(12), to=dt.time(13, 30), timezone=ZoneInfo("Asia/Kolkata")),
            at(2026, 3, 3, 13, 30, ZoneInfo("Asia/Kolkata")),
        ),
        # New York, the night the clocks go back (2026-11-01): 23:00 to 06:00 is 8 hours
        (
            at(2026, 10, 31, 23, 0, ZoneInfo("America/New_York")),
            QuietHours(from_=dt.time(23), to=dt.time(6), timezone=ZoneInfo("America/New_York")),
            at(2026, 11, 1, 6, 0, ZoneInfo("America/New_York")),
        ),
    ],
    ids=["berlin-winter", "berlin-summer-after-midnight", "kolkata-midday", "new-york-dst-end"],
)
async def test_it_holds_until_the_windows_end_on_the_wall_clock_of_its_zone(
    tmp_path: Path, receiver: Receiver, start: float, quiet: QuietHours, held_until: float
) -> None:
    """Held one second before the local end, released at it, across midnight and DST."""
    clock = FakeClock(start)
    with SqliteStore.open(tmp_path / "state.db", clock=clock) as store:
        worker = deliverer(store, clock, receiver, quiet=quiet)
        enqueue(store, clock, [("a", "Running")])
        assert await worker.deliver_due() == 0
        assert worker.next_due_in() == pytest.approx(held_until - start)
        clock.now = held_until - 1
        assert await worker.deliver_due() == 0
        clock.now = held_until
        assert await worker.deliver_due() == 1
    assert titles(receiver) == ["a running"]


def test_it_answers_is_quiet_on_the_local_wall_clock() -> None:
    """22:00-07:00 Berlin: 21:59 and 07:00 are not quiet, 22:00, midnight and 06:59 are."""
    quiet = QuietHours(from_=dt.time(22), to=dt.time(7), timezone=BERLIN)
    moments = [(21, 59), (22, 0), (0, 0), (6, 59), (7, 0), (12, 0)]
    found = [
        quiet_hours.is_quiet(quiet, round(at(2026, 1, 15, h, m, BERLIN) * 1000)) for h, m in moments
    ]
    assert found == [False, True, True, True, False, False]


async def test_it_never_lets_a_held_message_die_of_waiting(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """max_age 1h, held 8h: sent at the end; a failing channel then kills it 1h after 07:00."""
    worker = deliverer(store, clock, receiver)
    enqueue(store, clock, [("a", "Running"), ("b", "Running")])
    clock.advance(8 * 3600 - 1)  # 06:59:59
    assert await worker.deliver_due() == 0
    assert states(store) == {"pending": 2, "dead": 0}

    receiver.set_mode("fail")
    clock.advance(1)  # 07:00: released, refused
    assert await worker.deliver_due() == 0
    assert states(store) == {"pending": 2, "dead": 0}
    clock.advance(3_500)
    await worker.deliver_due()
    assert states(store)["dead"] == 0  # 58 minutes after the end: still worth trying
    clock.advance(200)
    await worker.deliver_due()
    assert states(store) == {"pending": 0, "dead": 2}  # past max_age counted from 07:00


async def test_it_applies_a_reload_that_removes_or_moves_quiet_hours_to_what_it_holds(
    store: SqliteStore, clock: FakeClock, receiver: Receiver
) -> None:
    """Held at 23:00; quiet hours moved to end at 05:00: due then; removed: sent at once."""
    worker = deliverer(store, clock, receiver)
    enqueue(store, clock, [("a", "Running")])
    assert await worker.deliver_due() == 0

    earlier = QuietHours(from_=dt.time(22), to=dt.time(5))
    senders, policies = apprise_channels(
        {"ops": [receiver.apprise_url("/ops")]}, quiet_hours=earlier
    )
    worker.replace(senders, policies, CONFIG)
    assert worker.next_due_in() == 6 * 3600
    enqueue(store, clock, [("b", "Running")])
    senders, policies = apprise_channels({"ops": [receiver.apprise_url("/ops")]})
    worker.replace(senders, policies, CONFIG)
    assert worker.next_due_in() == 0
    assert await worker.deliver_due() == 2
    assert receiver.wait_for(2) and titles(receiver) == ["a running", "b running"]


async def test_it_applies_a_reload_of_the_daemon_to_messages_already_held(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A daemon holding a message at night sends it after `reload` drops the quiet hours."""
    clock = FakeClock(at(2026, 1, 15, 23, 0))
    channel: dict[str, Any] = {
        "urls": receiver.apprise_url("/ops"),
        "digest": False,
        "quiet_hours": {"from": "22:00", "to": "07:00", "timezone": "Europe/Berlin"},
    }
    with Simulator(runs=5, active=1, seed=3, clock=clock) as sim:
        cfg = write_config(tmp_path, sim, channels={"ops": channel})
        with daemon_on(cfg, clock) as daemon:
            await daemon.poll_cycle()
            run_id = sim.active_run_ids()[0]
            sim.append_condition(run_id, "Succeeded")
            clock.advance(30)
            await daemon.poll_cycle()
            assert await daemon.deliver_once() == 0
            assert daemon.store.outbox_stats(0).pending == 1

            del channel["quiet_hours"]
            await daemon.reload(load_config(write_config(tmp_path, sim, channels={"ops": channel})))
            assert await daemon.deliver_once() == 1
            await daemon.aclose()
    [message] = receiver.received
    assert run_id in str(message["title"])
