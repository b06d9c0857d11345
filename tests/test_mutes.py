"""Mutes: what they silence (plain values), where they live (real SQLite), and what a daemon
does with them (the simulator, Apprise and the loopback receiver, an injected clock)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from harness import FakeClock, daemon_on, write_config
from receiver import Receiver

from runwatch.core.model import Condition, Enrichment, Event, OutboxItem
from runwatch.core.mutes import Mute, apply_mutes, silences
from runwatch.simulator.server import Simulator
from runwatch.state.sqlite import SqliteStore

NOW = 1_800_000_000_000
HOUR = 3_600_000
FAILED = Condition(condition="Failed", status="Reached", last_transition_time=NOW)
EVENT = Event(
    kind="transition",
    workspace="prod",
    organization_id="org-1",
    run_id="run_1",
    previous=None,
    current=FAILED,
    flow_name="yolo-detector",
    training_project="proj-7",
    enrichment=Enrichment(project_name="traffic-signs"),
)


def mute(**fields: object) -> Mute:
    values: dict[str, object] = {"created_at": NOW - HOUR, "until": NOW + HOUR}
    values.update(fields)
    return Mute(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("the_mute", "channel", "expected"),
    [
        (mute(runs=("run_1",)), "slack", True),
        (mute(runs=("run_2",)), "slack", False),
        (mute(runs=("run_2", "run_1")), "slack", True),  # values ORed
        (mute(runs=("run_*",)), "slack", False),  # run ids are names, not globs
        (mute(flows=("yolo-*",)), "slack", True),
        (mute(flows=("resnet-*",)), "slack", False),
        (mute(projects=("proj-7",)), "slack", True),  # the project's id ...
        (mute(projects=("traffic-*",)), "slack", True),  # ... or its name
        (mute(projects=("other",)), "slack", False),
        (mute(workspaces=("prod",)), "slack", True),
        (mute(workspaces=("prod*",)), "slack", False),  # a workspace by its name
        (mute(workspaces=("prod",), flows=("yolo-*",)), "slack", True),  # criteria ANDed
        (mute(workspaces=("prod",), flows=("resnet",)), "slack", False),
        (mute(runs=("run_1",), channel="slack"), "slack", True),
        (mute(runs=("run_1",), channel="slack"), "email", False),  # only on its channel
        (mute(runs=("run_1",), until=NOW), "slack", False),  # expired
        (mute(), "slack", False),  # names nothing: silences nothing
    ],
)
def test_it_silences_exactly_what_the_mute_names(
    the_mute: Mute, channel: str, expected: bool
) -> None:
    """Criteria ANDed, values ORed; runs and workspaces by name, projects and flows by glob."""
    assert silences(the_mute, EVENT, channel, NOW) is expected


def test_it_marks_the_rows_of_silenced_events_muted_and_leaves_the_others() -> None:
    """Only rows whose event and channel a mute silences are written "muted"."""
    other = replace(EVENT, run_id="run_2")

    def row(event: Event, channel: str) -> OutboxItem:
        return OutboxItem(
            event_key=event.key,
            channel=channel,
            title="t",
            body="b",
            notify_type="failure",
            run_key=f"org-1/{event.run_id}",
        )

    items = [row(EVENT, "slack"), row(EVENT, "email"), row(other, "slack")]
    result = apply_mutes(items, [EVENT, other], [mute(runs=("run_1",), channel="slack")], NOW)
    assert [i.state for i in result] == ["muted", "pending", "pending"]
    assert apply_mutes(items, [EVENT, other], [], NOW) == items


def test_it_says_what_a_mute_silences() -> None:
    """The listing's words for a mute."""
    assert mute(runs=("a", "b"), flows=("yolo-*",), channel="slack").what() == (
        "run a, b; flow yolo-* on channel slack"
    )


def test_it_keeps_mutes_in_the_store_until_they_expire_or_are_removed(tmp_path: Path) -> None:
    """add gives ids; active lists what holds now; remove and remove_all end mutes."""
    with SqliteStore.open(tmp_path / "state.db") as store:
        first = store.mutes.add(mute(runs=("run_1",), reason="flaky", who="alice"))
        second = store.mutes.add(mute(flows=("yolo-*",), until=NOW + 2 * HOUR))
        third = store.mutes.add(mute(workspaces=("prod",), channel="slack"))
        assert (first.id, second.id, third.id) == (1, 2, 3)
        assert store.mutes.active(NOW) == [first, second, third]
        assert store.mutes.active(NOW + HOUR) == [second]  # the others expired

        assert store.mutes.remove([first.id, 99], NOW) == 1
        assert store.mutes.remove([first.id], NOW) == 0
        assert [m.id for m in store.mutes.active(NOW)] == [2, 3]
        assert store.mutes.remove_all(NOW) == 2
        assert store.mutes.active(NOW) == []
        with pytest.raises(ValueError, match="must name a run"):
            store.mutes.add(mute())
    reader = SqliteStore.open_read_only(tmp_path / "state.db")
    assert reader is not None
    with reader:
        assert reader.mutes.active(NOW) == []


async def test_it_silences_a_muted_run_at_the_next_poll_until_the_mute_ends(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Muted while the daemon runs: recorded "muted", not sent, not replayed later; the
    others still go; once it expires the run is heard of again."""
    clock = FakeClock()
    with Simulator(runs=5, active=0, seed=9, clock=clock) as sim:
        cfg = write_config(tmp_path, sim, channels={"hook": receiver.apprise_url("/hook")})
        with daemon_on(cfg, clock) as daemon:
            await daemon.poll_cycle()
            noisy = sim.create_run(condition="Running", flow="noisy-flow")
            quiet = sim.create_run(condition="Running", flow="other-flow")
            clock.advance(30)
            await daemon.poll_cycle()
            assert await daemon.deliver_once() == 2  # both new runs

            now_ms = daemon.now_ms()
            daemon.store.mutes.add(
                Mute(runs=(noisy,), created_at=now_ms, until=now_ms + HOUR, who="test")
            )
            sim.append_condition(noisy, "Failed")
            sim.append_condition(quiet, "Failed")
            clock.advance(30)
            await daemon.poll_cycle()
            assert await daemon.deliver_once() == 1
            [muted] = daemon.store.outbox.rows(states=("muted",))
            assert muted.run_key.endswith(noisy) and muted.condition == "Failed"
            assert daemon.store.outbox_stats(daemon.now_ms()).muted == 1

            clock.advance(HOUR / 1000)  # the mute expires by itself
            sim.append_condition(noisy, "Running")
            clock.advance(30)
            await daemon.poll_cycle()
            assert await daemon.deliver_once() == 1
            await daemon.aclose()
    paths = [(m["path"], m["title"]) for m in receiver.received]
    assert len(paths) == 4
    assert sum(noisy in str(title) for _, title in paths) == 2  # new, and Running again
    assert not any(noisy in str(title) and "failed" in str(title) for _, title in paths)


async def test_it_hears_of_a_run_again_once_its_mute_is_removed(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A workspace muted on one channel: that channel hears nothing, the other everything;
    after unmute both hear the next change."""
    clock = FakeClock()
    with Simulator(runs=5, active=0, seed=9, clock=clock) as sim:
        cfg = write_config(
            tmp_path,
            sim,
            channels={"a": receiver.apprise_url("/a"), "b": receiver.apprise_url("/b")},
        )
        with daemon_on(cfg, clock) as daemon:
            await daemon.poll_cycle()
            now_ms = daemon.now_ms()
            the_mute = daemon.store.mutes.add(
                Mute(workspaces=("prod",), channel="a", created_at=now_ms, until=now_ms + HOUR)
            )
            run_id = sim.create_run(condition="Running")
            clock.advance(30)
            await daemon.poll_cycle()
            assert await daemon.deliver_once() == 1
            daemon.store.mutes.remove([the_mute.id], daemon.now_ms())
            sim.append_condition(run_id, "Succeeded")
            clock.advance(30)
            await daemon.poll_cycle()
            assert await daemon.deliver_once() == 2
            await daemon.aclose()
    assert [m["path"] for m in receiver.received].count("/a") == 1
    assert [m["path"] for m in receiver.received].count("/b") == 2
