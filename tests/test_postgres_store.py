"""The PostgreSQL store's own promises: leases, fencing, lane claims, its schema, an
unreachable database. (The contract it shares with SQLite is `tests/test_store.py`'s
`any_store` tests.) Each test has a schema of its own on the real server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pg import fresh_schema, query
from structlog.testing import capture_logs

from runwatch.cli.daemon_commands import open_waiting
from runwatch.config.settings import Config, HAConfig, StateConfig
from runwatch.core.model import Event, OutboxItem, RunState
from runwatch.errors import LeaseLostError, StoreError
from runwatch.service.leases import LeaseKeeper
from runwatch.state.postgres import PostgresStore
from runwatch.state.postgres_schema import SCHEMA_VERSION
from runwatch.state.store import PollCommit

T0 = 1_760_000_000_000
ORG = "org-1"
LANE = ("ops", "")


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_schema() as u:
        yield u


class Monotonic:
    """A monotonic clock that moves when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def stores(url: str, *names: str, clock: Monotonic | None = None) -> Iterator[list[PostgresStore]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                PostgresStore.open(url, instance=f"{n}/1", lease_s=30.0,
                                   monotonic=clock or Monotonic())
            )
            for n in names
        ]  # fmt: skip


def failed(run_id: str) -> tuple[RunState, Event, OutboxItem]:
    run = RunState(organization_id=ORG, run_id=run_id, latest=None, time_created=T0)
    event = Event(kind="new", workspace="prod", organization_id=ORG, run_id=run_id,
                  previous=None, current=None, detected_at=T0)  # fmt: skip
    item = OutboxItem(event_key=event.key, channel="ops", title=run_id, body="b",
                      notify_type="failure", run_key=f"{ORG}/{run_id}")  # fmt: skip
    return run, event, item


def commit(store: PostgresStore, run_id: str) -> int:
    run, event, item = failed(run_id)
    return store.commit_poll(
        PollCommit(organization_id=ORG, polled_at=T0, upserts=[run], events=[event],
                   outbox=[item])
    )  # fmt: skip


def expire(url: str, table: str, holder: str) -> None:
    """Let `holder`'s rows in `table` run out, as if it had stopped renewing long ago."""
    query(url, f"UPDATE {table} SET expires_at = now() - interval '1 hour' "
               f"WHERE holder = '{holder}'")  # fmt: skip


def test_it_spreads_leases_fairly_and_takes_over_a_dead_instances_share(url: str) -> None:
    """Three instances on five workspaces hold 2, 2 and 1; one dies and the others take its
    share once its leases expire, without ever holding a workspace twice."""
    workspaces = [f"org-{i}" for i in range(5)]
    with stores(url, "a", "b", "c") as (a, b, c):
        for _ in range(3):
            ticks = [s.leases.tick(workspaces, 30.0) for s in (a, b, c)]
        shares = [set(t.held) for t in ticks]
        assert sorted(map(len, shares)) == [1, 2, 2]
        assert set().union(*shares) == set(workspaces)
        assert sum(map(len, shares)) == 5  # disjoint
        expire(url, "leases", "c/1")
        query(url, "UPDATE instances SET expires_at = now() WHERE name = 'c/1'")
        after = [set(s.leases.tick(workspaces, 30.0).held) for s in (a, b)]
        assert after[0].isdisjoint(after[1])
        assert after[0] | after[1] == set(workspaces)
        assert {len(x) for x in after} == {2, 3}
        lease = {row.workspace: row for row in a.leases.leases()}
        assert all(lease[w].holder in ("a/1", "b/1") and lease[w].valid for w in workspaces)
        assert [i.name for i in a.leases.instances() if i.alive] == ["a/1", "b/1"]


def test_it_refuses_a_poll_commit_without_a_valid_lease(url: str) -> None:
    """The commit checks the lease in its own transaction: a holder whose lease expired (or
    that never held it) writes nothing, and the new holder's commit of the same event goes
    through once."""
    with stores(url, "a", "b") as (a, b):
        a.leases.tick([ORG], 30.0)
        with pytest.raises(LeaseLostError, match="b/1 no longer holds the lease"):
            commit(b, "r1")
        expire(url, "leases", "a/1")
        b.leases.tick([ORG], 30.0)
        with pytest.raises(LeaseLostError):
            commit(a, "r1")
        run, _, _ = failed("r1")
        with pytest.raises(LeaseLostError):
            a.record_runs(ORG, [run])
        assert a.load_runs(ORG) == {}
        assert commit(b, "r1") == 1
        assert commit(b, "r1") == 0  # a re-detected event is never enqueued again
        assert query(url, "SELECT count(*) FROM outbox") == [(1,)]


def test_one_instance_at_a_time_sends_a_lane_and_a_taken_over_row_is_marked_once(
    url: str,
) -> None:
    """A lane's rows go to the instance that claimed it; after its claim expires another
    takes them over, and the first one's late mark changes nothing."""
    clock = Monotonic()
    with stores(url, "a", "b", clock=clock) as (a, b):
        a.leases.tick([ORG], 30.0)
        commit(a, "r1")
        commit(a, "r2")
        rows = a.outbox.pending(LANE)
        assert [r.title for r in rows] == ["r1", "r2"]
        assert a.outbox.holds_lane(LANE)
        assert b.outbox.lanes() == [] and b.outbox.pending(LANE) == []
        assert not b.outbox.holds_lane(LANE)
        a.outbox.mark_sent([rows[0].id], T0)
        clock.now += 20.0  # two thirds of the 30 s claim since a's last renewal
        assert not a.outbox.holds_lane(LANE)  # a stops sending before the claim can expire
        expire(url, "lane_claims", "a/1")  # (its rows' claims end with the lane's)
        query(url, "UPDATE outbox SET claimed_until = 0 WHERE claimed_by = 'a/1'")
        taken = b.outbox.pending(LANE)
        assert [r.title for r in taken] == ["r2"]
        a.outbox.mark_sent([taken[0].id], T0 + 1)  # a's send, too late: not recorded
        assert query(url, f"SELECT claimed_by, attempts, state FROM outbox "
                          f"WHERE id = {taken[0].id}") == [("b/1", 0, "pending")]  # fmt: skip
        b.outbox.mark_sent([taken[0].id], T0 + 2)
        assert query(url, "SELECT title, state, attempts, sent_at FROM outbox ORDER BY id") == [
            ("r1", "sent", 1, T0),
            ("r2", "sent", 1, T0 + 2),
        ]
        b.outbox.release()
        assert query(url, "SELECT count(*) FROM lane_claims") == [(0,)]


def test_a_lease_keeper_stops_holding_two_thirds_of_a_lease_after_its_last_renewal(
    url: str,
) -> None:
    """Renewals it cannot make leave the database's lease valid a while longer; the keeper
    says no from two thirds of the lease on its own clock, before anyone can take over."""
    clock = Monotonic()
    with stores(url, "a") as (a,):
        keeper = LeaseKeeper(a.leases, lease_s=30.0, workspaces=[ORG], monotonic=clock)
        tick = keeper.tick()
        assert tick is not None and tick.acquired == {ORG}
        assert keeper.holds(ORG) and keeper.epoch(ORG) == 1 and keeper.reachable()
        clock.now += 19.9
        assert keeper.holds(ORG)
        clock.now += 0.2
        assert not keeper.holds(ORG)
        assert keeper.reachable()  # (30 s without a renewal: the database is lost)
        clock.now += 10.0
        assert not keeper.reachable()
        assert keeper.tick() is not None and keeper.holds(ORG) and keeper.epoch(ORG) == 1
        keeper.stop()
        assert a.leases.leases()[0].valid is False


def test_it_refuses_another_programs_schema_and_a_newer_one(url: str) -> None:
    """A schema with foreign tables, or from a newer runwatch, is refused and left alone."""
    query(url, "CREATE TABLE invoices (id int)")
    with pytest.raises(StoreError, match="another program"):
        PostgresStore.open(url, instance="a/1")
    query(url, "DROP TABLE invoices")
    PostgresStore.open(url, instance="a/1").close()
    query(url, f"UPDATE runwatch_schema SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer runwatch"):
        PostgresStore.open(url, instance="a/1")


def test_an_unreachable_database_is_a_store_error_that_never_shows_the_password() -> None:
    """Connection refused is a StoreError naming host, port and database only."""
    url = "postgresql://runwatch:hunter2secret@127.0.0.1:1/runwatch"
    with pytest.raises(StoreError) as info:
        PostgresStore.open(url, instance="a/1")
    assert "unreachable" in str(info.value) and "127.0.0.1:1/runwatch" in str(info.value)
    assert "hunter2secret" not in str(info.value) and "runwatch:" not in str(info.value)


async def test_a_daemon_waits_for_an_unreachable_database_until_it_is_stopped(
    tmp_path: Path,
) -> None:
    """`runwatch run` waits (with backoff) for a database it cannot reach, never exits to be
    restarted in a loop, and stops cleanly when told to while waiting."""
    config = Config(
        state=StateConfig(url="postgresql://runwatch:hunter2secret@127.0.0.1:1/runwatch"),
        ha=HAConfig(lease=3.0, instance="a"),
        workspaces=(),
        channels={},
        rules=(),
    )
    stop = asyncio.Event()
    stop.set()  # SIGTERM came: the first backoff's wait ends at once
    with capture_logs() as logs, contextlib.ExitStack() as stack:
        assert await open_waiting(config, stop, stack) is None
    assert [e["retry_in"] for e in logs if e["event"] == "store.unreachable"] == [1.0]
    assert not any("hunter2secret" in str(e) for e in logs)


def test_the_test_server_is_postgresql_15_or_newer() -> None:
    """The tests talk to a real PostgreSQL (CI starts one); they fail, never skip, without."""
    with fresh_schema() as u, psycopg.connect(u) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None and int(row[0]) >= 150000


def test_it_names_a_database_by_host_port_and_name_only() -> None:
    """What logs, errors and `status` show of a state URL: never its user or password."""
    from runwatch.state.postgres_schema import describe_url

    assert describe_url("postgresql://u:pw@db.x:6543/rw?sslmode=require&password=zz") == (
        "postgresql://db.x:6543/rw"
    )
    assert describe_url("postgresql:///rw?host=/run/postgresql") == (
        "postgresql:///run/postgresql:5432/rw"
    )


def test_each_instance_keeps_its_own_alert_state_and_adopts_a_migrated_one(url: str) -> None:
    """Instances decide self-alerts from what each sees, so each keeps its own state; one
    without a state yet starts from the single-instance one (`migrate-state` copies it), and
    `status` reads them all."""
    import json

    from runwatch.cli.ha_status import alert_states
    from runwatch.core.alerts import AlertState
    from runwatch.service.self_alerts import ALERTS_META_KEY, SelfAlerts, instance_key

    def state(**down: int) -> str:
        return json.dumps(AlertState(down=down).to_json())

    with stores(url, "a") as (store,):
        store.set_meta(ALERTS_META_KEY, state(**{"workspace:prod": T0}))
        store.set_meta(instance_key("b"), state(**{"channel:ops": T0 + 1}))
        assert SelfAlerts(store, key=instance_key("a")).state.down == {"workspace:prod": T0}
        assert SelfAlerts(store, key=instance_key("b")).state.down == {"channel:ops": T0 + 1}
        assert sorted(alert_states(store)) == sorted(
            [state(**{"workspace:prod": T0}), state(**{"channel:ops": T0 + 1})]
        )
