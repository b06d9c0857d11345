"""The commands on a PostgreSQL state: `migrate-state` from SQLite, `once` and `status`."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import pytest
import yaml
from harness import daemon_on, write_config
from pg import fresh_schema, query
from receiver import Receiver

from runwatch.cli.daemon_commands import once
from runwatch.cli.migrate_command import migrate_state
from runwatch.cli.operator_commands import status
from runwatch.cli.state_access import load_config
from runwatch.core.mutes import Mute
from runwatch.simulator.server import Simulator
from runwatch.state.postgres import PostgresStore
from runwatch.state.sqlite import SqliteStore


def pg_config(path: Path, url: str) -> Path:
    """The configuration at `path`, moved to the PostgreSQL state at `url`."""
    data = yaml.safe_load(path.read_text())
    data["state"] = {"url": url}
    data["ha"] = {"lease": "3s", "instance": "cli"}
    moved = path.with_name("pg.yaml")
    moved.write_text(yaml.safe_dump(data, sort_keys=False))
    return moved


def test_migrate_state_copies_a_sqlite_state_and_the_daemon_goes_on_without_a_baseline(
    tmp_path: Path, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs, bookkeeping, events, an undelivered message and a mute move to PostgreSQL; the
    next poll there is no baseline, and the message still goes out, once."""
    with Simulator(runs=6, active=2, seed=3) as sim, fresh_schema() as url:
        cfg = write_config(tmp_path, sim, channels={"ops": receiver.apprise_url("/ops")})
        receiver.set_mode("fail")
        with daemon_on(cfg) as daemon:

            async def two_cycles() -> None:
                await daemon.poll_cycle()  # the baseline
                sim.create_run(condition="Failed", status="FailedReach")
                await daemon.poll_cycle()
                await daemon.deliver_once()  # refused: stays pending
                await daemon.aclose()

            asyncio.run(two_cycles())
            now = int(time.time() * 1000)
            daemon.store.mutes.add(
                Mute(workspaces=("elsewhere",), created_at=now, until=now + 3_600_000, who="ops")
            )
        assert receiver.received == []
        db = tmp_path / "state.db"

        told = io.StringIO()
        assert migrate_state(db, url, out=told) == 0
        said = told.getvalue()
        assert "7 run(s)" in said and "1 undelivered message(s)" in said, said
        assert "1 active mute(s)" in said
        with SqliteStore.open_read_only(db) as before, PostgresStore.open(url, instance="x") as pg:
            assert before is not None
            assert pg.load_runs(sim.organization_id) == before.load_runs(sim.organization_id)
            assert pg.workspace(sim.organization_id) == before.workspace(sim.organization_id)
        assert query(url, "SELECT state, attempts FROM outbox") == [("pending", 1)]
        # A second copy is refused, not merged.
        assert migrate_state(db, url, out=told) == 1
        assert "already holds runwatch state" in capsys.readouterr().err

        receiver.set_mode("ok")
        query(url, "UPDATE outbox SET next_attempt_at = 0")  # (its backoff, run out)
        config = load_config(pg_config(cfg, url))
        out = io.StringIO()
        assert once(config, out=out) == 0
        assert "incremental poll ok" in out.getvalue() or "full poll ok" in out.getvalue()
        assert len(receiver.received) == 1


def test_status_shows_instances_and_who_holds_which_workspace_until_when(
    tmp_path: Path, receiver: Receiver
) -> None:
    """On PostgreSQL `status` lists the instances, each workspace's holder and its lease's
    end, and the channel claims; the URL's password appears nowhere."""
    with Simulator(runs=2, active=1, seed=4) as sim, fresh_schema() as url:
        cfg = write_config(tmp_path, sim, channels={"ops": receiver.apprise_url("/ops")})
        config = load_config(pg_config(cfg, url))
        with PostgresStore.open(url, instance="web-1/77-ab") as store:
            store.leases.tick([sim.organization_id], 30.0)
            out = io.StringIO()
            status(config, as_json=True, out=out)
            report = json.loads(out.getvalue())
            text = io.StringIO()
            status(config, out=text)
    ha = report["ha"]
    assert [(i["name"], i["alive"], i["workspaces"]) for i in ha["instances"]] == [
        ("web-1", True, ["prod"])
    ]
    [lease] = ha["leases"]
    assert (lease["workspace"], lease["holder"]) == ("prod", "web-1/77-ab")
    assert lease["until"].endswith("Z")
    assert report["state"].startswith("postgresql://127.0.0.1:5432/test")
    assert "workspace prod: held by web-1/77-ab until" in text.getvalue()
    assert "instances: 1 alive" in text.getvalue()
