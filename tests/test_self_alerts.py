"""Alerts about runwatch itself, end to end in-process: simulator, daemon, SQLite, Apprise.

Time is a FakeClock: the tests poll and deliver at chosen moments of an outage instead of
waiting through it. The admin channels are paths on the loopback receiver.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import FakeClock, daemon_on, write_config
from receiver import Receiver

from runwatch.service.daemon import Daemon
from runwatch.simulator.server import Simulator

MINUTE = 60.0


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(runs=10, active=3, seed=11) as s:
        yield s


def api_down_config(tmp_path: Path, sim: Simulator, receiver: Receiver, **sections: Any) -> Path:
    """The workspace on `sim`; runs go to "hook", alerts after 10 minutes to "admin" only."""
    return write_config(
        tmp_path,
        sim,
        channels={"hook": receiver.apprise_url("/hook"), "admin": receiver.apprise_url("/admin")},
        rules=[{"name": "all", "match": {}, "notify": ["hook"]}],
        alerts={"api_down_after": "10m", "notify": ["admin"]},
        **sections,
    )


async def step(daemon: Daemon, clock: FakeClock, minutes: float = 1) -> None:
    """Let `minutes` pass, then one poll cycle and one delivery pass."""
    clock.advance(minutes * MINUTE)
    await daemon.poll_cycle()
    await daemon.deliver_once()


def at(receiver: Receiver, path: str) -> list[dict[str, Any]]:
    return [m for m in receiver.received if m["path"] == path]


async def test_it_alerts_once_when_the_api_stays_down_and_once_when_it_is_back(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """Past api_down_after one alert names the failure; later failures are quiet; one recovery."""
    clock = FakeClock()
    with daemon_on(api_down_config(tmp_path, sim, receiver), clock) as daemon:
        await step(daemon, clock, 0)
        sim.set_outage(True)
        for _ in range(9):  # 9 minutes (and the retries' few seconds) since the last success
            await step(daemon, clock)
        assert at(receiver, "/admin") == []
        await step(daemon, clock)
        [down] = at(receiver, "/admin")
        assert "runwatch cannot poll Vi for prod" in down["title"]
        assert down["type"] == "failure"
        assert "Reason:" in down["message"] and "503" in down["message"]
        for _ in range(30):
            await step(daemon, clock)
        assert len(at(receiver, "/admin")) == 1

        sim.set_outage(False)
        await step(daemon, clock)
        await step(daemon, clock)
        await daemon.aclose()
    [_, up] = at(receiver, "/admin")
    assert "Vi API reachable again for prod" in up["title"]
    assert up["type"] == "success"
    assert at(receiver, "/hook") == []


async def test_it_says_the_secret_key_was_rejected(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """With a wrong secret key the alert calls out the rejected key and never repeats the key."""
    wrong_key = "dtvi_" + "x" * 98
    workspace = {
        "name": "prod",
        "organization_id": sim.organization_id,
        "secret_key": wrong_key,
        "endpoint": sim.url,
    }
    cfg = api_down_config(tmp_path, sim, receiver, workspaces=[workspace])
    clock = FakeClock()
    with daemon_on(cfg, clock) as daemon:
        for _ in range(10):
            await step(daemon, clock, 0 if _ == 0 else 1)
        assert at(receiver, "/admin") == []  # 9 minutes since the first failure
        await step(daemon, clock)
        await step(daemon, clock)
        await daemon.aclose()
    [down] = at(receiver, "/admin")
    assert "the secret key was rejected" in down["message"]
    assert "Last successful poll: never since start" in down["message"]
    assert wrong_key not in down["message"] and wrong_key not in down["title"]


async def test_it_does_not_repeat_the_api_alert_after_a_restart_mid_outage(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """A daemon restarted during an outage stays quiet about it and still sends the recovery."""
    cfg = api_down_config(tmp_path, sim, receiver)
    clock = FakeClock()
    with daemon_on(cfg, clock) as daemon:
        await step(daemon, clock, 0)
        sim.set_outage(True)
        await step(daemon, clock, 6)
        await daemon.aclose()
    # Restarted before the threshold: the outage is still measured from the last success.
    with daemon_on(cfg, clock) as daemon:
        await step(daemon, clock, 5)
        await daemon.aclose()
    assert len(at(receiver, "/admin")) == 1
    with daemon_on(cfg, clock) as daemon:
        for _ in range(20):
            await step(daemon, clock)
        assert len(at(receiver, "/admin")) == 1
        sim.set_outage(False)
        await step(daemon, clock)
        await step(daemon, clock)
        await daemon.aclose()
    assert [m["type"] for m in at(receiver, "/admin")] == ["failure", "success"]


def channel_config(tmp_path: Path, sim: Simulator, receiver: Receiver) -> Path:
    """Runs go to "ops"; "ops" and "pager" are the admin channels; channels fail after 30 m."""
    return write_config(
        tmp_path,
        sim,
        channels={"ops": receiver.apprise_url("/ops"), "pager": receiver.apprise_url("/pager")},
        rules=[{"name": "all", "match": {}, "notify": ["ops"]}],
        alerts={"channel_failing_after": "30m", "notify": ["ops", "pager"]},
    )


def alerts_in(messages: list[dict[str, Any]]) -> list[str]:
    return [m["title"] for m in messages if "runwatch" in m["title"]]


async def test_it_tells_the_other_admin_channels_when_a_channel_keeps_failing(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """A channel failing past its threshold is reported to the other admin channels, then back."""
    clock = FakeClock()
    receiver.set_mode("fail", "/ops")
    with daemon_on(channel_config(tmp_path, sim, receiver), clock) as daemon:
        await step(daemon, clock, 0)
        sim.append_condition(sim.active_run_ids()[0], "Failed")
        for _ in range(6):  # the first failed send, then 25 minutes of retries
            await step(daemon, clock, 5)
        assert at(receiver, "/pager") == []
        await step(daemon, clock, 6)
        [down] = at(receiver, "/pager")
        assert down["title"] == "🚨 runwatch: channel ops is failing"
        assert "Deliveries to ops have failed for 31m." in down["message"]
        for _ in range(5):
            await step(daemon, clock, 5)
        assert len(at(receiver, "/pager")) == 1
        # Never offered to the failing channel itself: only the run's message was tried there.
        assert alerts_in([r for r in receiver.requests if r["path"] == "/ops"]) == []

        receiver.set_mode("ok", "/ops")
        await step(daemon, clock, 2)  # the retry succeeds
        await step(daemon, clock, 1)  # the next poll notices, the pass sends the recovery
        await step(daemon, clock, 1)
        await daemon.aclose()
    assert alerts_in(at(receiver, "/pager")) == [
        "🚨 runwatch: channel ops is failing",
        "✅ runwatch: channel ops delivers again",
    ]
    assert alerts_in(at(receiver, "/ops")) == ["✅ runwatch: channel ops delivers again"]


async def test_it_keeps_a_channel_alert_across_a_restart_until_the_channel_works(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """A restart while a channel fails neither repeats its alert nor announces a recovery."""
    clock = FakeClock()
    cfg = channel_config(tmp_path, sim, receiver)
    receiver.set_mode("fail", "/ops")
    with daemon_on(cfg, clock) as daemon:
        await step(daemon, clock, 0)
        sim.append_condition(sim.active_run_ids()[0], "Failed")
        for _ in range(8):
            await step(daemon, clock, 5)
        await daemon.aclose()
    assert len(at(receiver, "/pager")) == 1
    with daemon_on(cfg, clock) as daemon:
        await daemon.poll_cycle()  # before the restarted daemon has tried the channel
        await daemon.deliver_once()
        for _ in range(10):
            await step(daemon, clock, 5)
        assert alerts_in(at(receiver, "/pager")) == ["🚨 runwatch: channel ops is failing"]
        receiver.set_mode("ok", "/ops")
        await step(daemon, clock, 2)
        await step(daemon, clock, 1)
        await daemon.aclose()
    assert alerts_in(at(receiver, "/pager")) == [
        "🚨 runwatch: channel ops is failing",
        "✅ runwatch: channel ops delivers again",
    ]
