"""Losing the PostgreSQL state mid-run: a poll failure like an API outage, never a crash,
never a lost event. The link to the real server runs through a proxy that can be cut."""

from __future__ import annotations

from pathlib import Path

import yaml
from harness import FakeClock, wait_until, write_config
from pg import fresh_schema
from receiver import Receiver
from tcp_proxy import TcpProxy

from runwatch.config.loading import load_config
from runwatch.service.daemon import Daemon
from runwatch.service.leases import LeaseKeeper
from runwatch.simulator.server import Simulator
from runwatch.state.postgres import PostgresStore


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_lost_database_fails_polls_and_health_and_loses_no_event(
    tmp_path: Path, receiver: Receiver
) -> None:
    """With the database cut off, polls fail (nothing committed), /healthz says unhealthy,
    the workspace is no longer held, and after alerts.api_down_after the admins are told
    straight (the outbox is in that database); once it is back, what happened meanwhile is
    sent once, and the admins hear that it works again."""
    with Simulator(runs=4, active=2, seed=9) as sim, fresh_schema() as direct, \
            TcpProxy(("127.0.0.1", 5432)) as proxy:  # fmt: skip
        url = direct.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        cfg = write_config(
            tmp_path,
            sim,
            channels={"ops": receiver.apprise_url("/ops"), "admins": receiver.apprise_url("/ad")},
            rules=[{"name": "all", "match": {}, "notify": ["ops"]}],
            alerts={"notify": ["admins"], "api_down_after": "1m"},
        )
        data = yaml.safe_load(cfg.read_text())
        data["state"] = {"url": url}
        data["ha"] = {"lease": "3s", "instance": "a"}
        cfg.write_text(yaml.safe_dump(data))
        config = load_config(cfg)
        mono = Monotonic()
        with PostgresStore.open(url, instance="a/1", lease_s=3.0, monotonic=mono,
                                pool_timeout=0.5) as store:  # fmt: skip
            keeper = LeaseKeeper(store.leases, lease_s=3.0, workspaces=[sim.organization_id],
                                 monotonic=mono)  # fmt: skip
            keeper.tick()
            clock = FakeClock()
            daemon = Daemon(config, store, clock=clock, leases=keeper,
                            lane_fence=store.outbox)  # fmt: skip
            [baseline] = await daemon.poll_cycle()
            assert baseline.ok and baseline.kind == "baseline"
            assert daemon.health()[0]

            proxy.cut()
            failed = sim.create_run(condition="Failed", status="FailedReach")
            [report] = await daemon.poll_cycle()
            assert not report.ok and report.store_failed
            assert "unreachable" in (report.error or "")
            assert keeper.tick() is None
            mono.now += 3.0  # a lease without a renewal
            healthy, summary = daemon.health()
            assert not healthy and summary["state_database"] == "unreachable"
            assert receiver.requests == []
            clock.advance(61)
            assert await daemon.poll_cycle() == []  # no lease held: nothing polled
            [down] = receiver.wait_for(1)
            assert down["path"] == "/ad" and "state database" in str(down["title"])
            assert "unreachable" in str(down["message"])

            proxy.restore()
            wait_until(lambda: keeper.tick() is not None, 60, "a renewal once it is back")
            assert keeper.holds(sim.organization_id)
            [report] = await daemon.poll_cycle()
            assert report.ok and report.events == 1
            assert await daemon.deliver_once() == 1
            assert daemon.health()[0]
            await daemon.aclose()
    assert [m["title"] for m in receiver.received if failed in m["title"]] != []
    [to_ops] = [m for m in receiver.received if m["path"] == "/ops"]
    assert failed in str(to_ops["title"])
    assert [m["title"] for m in receiver.received if m["path"] == "/ad"] == [
        "🚨 runwatch cannot use its state database",
        "✅ runwatch: its state database works again",
    ]
