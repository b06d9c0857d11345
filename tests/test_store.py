"""The state store against real SQLite files in tmp_path; the contract tests (`any_store`)
also against PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from harness import next_pending

from runwatch.core.model import Condition, Event, OutboxItem, RunState
from runwatch.errors import StoreError
from runwatch.state.retention import RETENTION_MS
from runwatch.state.rows import RUN_STATE_FIELDS
from runwatch.state.sqlite import SqliteStore
from runwatch.state.sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from runwatch.state.store import PollCommit

ORG = "org-1"
T0 = 1_760_000_000_000  # epoch ms
DAY_MS = 86_400_000


def cond(condition: str, at: int, status: str = "Reached") -> Condition:
    return Condition(condition=condition, status=status, last_transition_time=at)


def run(run_id: str, condition: str = "Running", at: int = T0, org: str = ORG) -> RunState:
    return RunState(
        organization_id=org,
        run_id=run_id,
        latest=cond(condition, at),
        time_created=at - 1000,
        flow_name="flow",
    )


def event(run_id: str, condition: str, at: int, previous: Condition | None = None) -> Event:
    return Event(
        kind="transition" if previous else "new",
        workspace="prod",
        organization_id=ORG,
        run_id=run_id,
        previous=previous,
        current=cond(condition, at),
        detected_at=at,
    )


def item(ev: Event, channel: str, title: str = "title") -> OutboxItem:
    return OutboxItem(
        event_key=ev.key,
        channel=channel,
        title=title,
        body=f"body of {ev.run_id}",
        notify_type="failure",
        run_key=f"{ev.organization_id}/{ev.run_id}",
    )


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the file behind the store's back, as an operator with sqlite3 would."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def store(db: Path) -> Iterator[SqliteStore]:
    with SqliteStore.open(db, clock=lambda: T0 / 1000) as s:
        yield s


@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, db: Path) -> Iterator[Any]:
    """The store contract, on each backend: SQLite, and PostgreSQL in a schema of its own
    (holding the leases of the organizations these tests commit for)."""
    if request.param == "sqlite":
        with SqliteStore.open(db, clock=lambda: T0 / 1000) as s:
            yield s
        return
    from pg import fresh_schema

    from runwatch.state.postgres import PostgresStore

    with fresh_schema() as url, PostgresStore.open(url, instance="test/1") as pg:
        pg.leases.tick([ORG, "a", "b"], 30.0)
        yield pg


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make `path` unwritable for this process: chmod, or `chattr +i` when running as root."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    done = chattr and subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode
    if not chattr or done != 0:
        pytest.skip("running as root without a usable chattr: cannot make a path read-only")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


def test_it_creates_the_schema_on_first_open(db: Path) -> None:
    """A new file gets the current schema, WAL mode, and an empty state."""
    with SqliteStore.open(db) as store:
        meta = store.workspace(ORG)
        assert (meta.baselined_at, meta.last_full_listing, meta.last_success) == (None,) * 3
        assert store.load_runs(ORG) == {}
        assert store.outbox.lanes() == []
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert query(db, "PRAGMA journal_mode") == [("wal",)]
    tables = {r[0] for r in query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"workspaces", "runs", "events", "outbox", "meta"} <= tables


def test_it_keeps_state_across_a_reopen(db: Path) -> None:
    """Runs, workspace bookkeeping, events, outbox rows and meta survive closing the file."""
    ev = event("r1", "Failed", T0)
    with SqliteStore.open(db) as store:
        inserted = store.commit_poll(
            PollCommit(
                organization_id=ORG,
                polled_at=T0,
                upserts=[run("r1", "Failed"), run("r2")],
                events=[ev],
                outbox=[item(ev, "slack")],
                full_listing=True,
                baseline=True,
            )
        )
        store.set_meta("alerts", '{"down": {}}')
        before = store.load_runs(ORG)
    assert inserted == 1
    with SqliteStore.open(db) as store:
        assert store.load_runs(ORG) == before
        assert set(before) == {"r1", "r2"}
        meta = store.workspace(ORG)
        assert (meta.baselined_at, meta.last_full_listing, meta.last_success) == (T0, T0, T0)
        row = next_pending(store, "slack")
        assert row is not None
        assert (row.event_key, row.title, row.created_at, row.attempts) == (ev.key, "title", T0, 0)
        assert store.get_meta("alerts") == '{"down": {}}'
        assert store.get_meta("missing") is None
    payload = json.loads(str(query(db, "SELECT payload FROM events")[0][0]))
    assert payload["current"]["condition"] == "Failed"
    assert payload["run_id"] == "r1"


def test_it_round_trips_every_run_state_field(any_store: Any) -> None:
    store = any_store
    """Every field of RunState comes back as it was written, including absent ones."""
    assert {f.name for f in dataclasses.fields(RunState)} == RUN_STATE_FIELDS
    full = RunState(
        organization_id=ORG,
        run_id="full",
        latest=Condition(
            condition="Failed",
            status="FailedReach",
            last_transition_time=T0,
            reason="OOM",
            message="killed: out of memory",
        ),
        time_created=T0 - 5,
        last_updated=T0 + 5,
        flow_name="detector",
        training_project="proj-7",
        etag='W/"abc"',
        log="https://logs.example/run/full",
        killed_at=T0 + 9,
        attributes={"team": "vision", "ünïcode": "✓"},
    )
    bare = RunState(organization_id=ORG, run_id="bare", latest=None, time_created=T0)
    store.commit_poll(PollCommit(organization_id=ORG, polled_at=T0, upserts=[full, bare]))
    assert store.load_runs(ORG) == {"full": full, "bare": bare}


def test_it_updates_runs_and_keeps_tombstones_apart(any_store: Any) -> None:
    store = any_store
    """A later commit replaces a run's state; a tombstone leaves the live runs, kept aside."""
    store.commit_poll(PollCommit(organization_id=ORG, polled_at=T0, upserts=[run("a"), run("b")]))
    tomb = dataclasses.replace(run("b"), deleted_at=T0 + 1)
    store.commit_poll(
        PollCommit(
            organization_id=ORG,
            polled_at=T0 + 1,
            upserts=[run("a", "Succeeded", T0 + 1), tomb],
        )
    )
    runs = store.load_runs(ORG)
    assert list(runs) == ["a"]
    assert runs["a"].latest == cond("Succeeded", T0 + 1)
    assert store.load_tombstones(ORG) == {"b": tomb}
    assert [s.run_id for s in store.tracked_runs()] == ["a"]
    assert list(store.iter_runs(ORG)) == [runs["a"]]
    assert store.load_run_states(ORG, ["a", "b", "zz"]) == {"a": runs["a"]}


def test_it_keeps_workspace_bookkeeping(any_store: Any) -> None:
    store = any_store
    """Baseline and full-listing times only move when the commit says so; failures are noted."""
    store.commit_poll(PollCommit(organization_id=ORG, polled_at=T0, baseline=True))
    store.commit_poll(PollCommit(organization_id=ORG, polled_at=T0 + 10, full_listing=True))
    store.commit_poll(PollCommit(organization_id=ORG, polled_at=T0 + 20))
    store.record_poll_failure(ORG, T0 + 30, "Vi API answered 503")
    meta = store.workspace(ORG)
    assert (meta.baselined_at, meta.last_full_listing, meta.last_success) == (
        T0,
        T0 + 10,
        T0 + 20,
    )
    assert (meta.last_failure, meta.last_error) == (T0 + 30, "Vi API answered 503")
    store.record_poll_failure("org-never-polled", T0, "401")
    assert store.workspace("org-never-polled").baselined_at is None


def test_it_lists_tracked_runs_by_organization_newest_first(any_store: Any) -> None:
    store = any_store
    """`runwatch runs` sees every organization, each with its newest run first."""
    store.commit_poll(
        PollCommit(organization_id="b", polled_at=T0, upserts=[run("b1", org="b", at=T0)])
    )
    store.commit_poll(
        PollCommit(
            organization_id="a",
            polled_at=T0,
            upserts=[run("old", org="a", at=T0), run("new", org="a", at=T0 + 5)],
        )
    )
    assert [(r.organization_id, r.run_id) for r in store.tracked_runs()] == [
        ("a", "new"),
        ("a", "old"),
        ("b", "b1"),
    ]


def test_it_does_not_enqueue_an_event_already_recorded(db: Path) -> None:
    """A transition detected again, even after a restart, is neither recorded nor sent twice."""
    ev = event("r1", "Failed", T0)
    commit = PollCommit(
        organization_id=ORG,
        polled_at=T0,
        upserts=[run("r1", "Failed")],
        events=[ev],
        outbox=[item(ev, "slack"), item(ev, "email")],
    )
    # Seen again, now also routed to a channel added since: still nothing new to send.
    again = dataclasses.replace(commit, outbox=[*commit.outbox, item(ev, "pager")])
    with SqliteStore.open(db) as store:
        assert store.commit_poll(commit) == 2
        assert store.commit_poll(dataclasses.replace(again, polled_at=T0 + 1)) == 0
    with SqliteStore.open(db) as store:
        assert store.commit_poll(dataclasses.replace(again, polled_at=T0 + 2)) == 0
        assert store.outbox_stats(T0).pending_by_channel == {"email": 1, "slack": 1}
    assert query(db, "SELECT count(*) FROM events") == [(1,)]


def test_it_enqueues_an_event_once_per_channel(any_store: Any) -> None:
    store = any_store
    """Two items for the same event and channel in one commit make one row."""
    ev = event("r1", "Failed", T0)
    commit = PollCommit(
        organization_id=ORG,
        polled_at=T0,
        events=[ev],
        outbox=[item(ev, "slack", "first"), item(ev, "slack", "second")],
    )
    assert store.commit_poll(commit) == 1
    row = next_pending(store, "slack")
    assert row is not None and row.title == "first"


def test_it_enqueues_alerts_once_per_key_and_channel(any_store: Any) -> None:
    store = any_store
    """Messages that belong to no poll go in through `enqueue`, once per key and channel."""
    alert = OutboxItem(
        event_key="alert/channel:slack/down/1",
        channel="oncall",
        title="slack is failing",
        body="…",
        notify_type="failure",
        run_key="",
    )
    assert store.enqueue([alert], T0) == 1
    assert store.enqueue([alert], T0 + 1) == 0
    assert store.workspace(ORG).last_success is None  # no workspace was touched
    assert store.outbox_stats(T0).pending_by_channel == {"oncall": 1}


def test_it_commits_a_poll_atomically(any_store: Any) -> None:
    store = any_store
    """A commit that fails at its last statement leaves no run, event or row behind."""
    store.commit_poll(PollCommit(organization_id=ORG, polled_at=T0, upserts=[run("r1")]))
    ev = event("r1", "Failed", T0 + 1)
    broken = dataclasses.replace(item(ev, "slack"), title=None)  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.commit_poll(
            PollCommit(
                organization_id=ORG,
                polled_at=T0 + 1,
                upserts=[run("r1", "Failed", T0 + 1), run("r2")],
                events=[ev],
                outbox=[item(ev, "email"), broken],
                full_listing=True,
            )
        )
    assert store.load_runs(ORG) == {"r1": run("r1")}
    assert store.workspace(ORG).last_full_listing is None
    assert store.workspace(ORG).last_success == T0
    assert store.outbox.lanes() == []
    # The event was not recorded either: the same transition, seen again, is sent.
    assert (
        store.commit_poll(
            PollCommit(
                organization_id=ORG, polled_at=T0 + 2, events=[ev], outbox=[item(ev, "email")]
            )
        )
        == 1
    )


def test_it_serves_each_lane_oldest_first(any_store: Any) -> None:
    store = any_store
    """Each lane's pending rows come oldest first, and a row waiting to retry stays first."""
    events = [event(f"r{i}", "Failed", T0 + i) for i in range(3)]
    for i, ev in enumerate(events):
        store.commit_poll(
            PollCommit(
                organization_id=ORG,
                polled_at=T0 + i,
                events=[ev],
                outbox=[item(ev, "slack"), item(ev, "email")],
            )
        )
    assert store.outbox.lanes() == [("email", ""), ("slack", "")]
    head = next_pending(store, "slack")
    assert head is not None and head.run_key == f"{ORG}/r0"
    store.outbox.mark_retry([head.id], T0 + 10, T0 + 1_000, "json://127.0.0.1:1/: FAILURE")
    retried = next_pending(store, "slack")
    assert retried is not None
    assert (retried.id, retried.attempts, retried.next_attempt_at, retried.last_error) == (
        head.id,
        1,
        T0 + 1_000,
        "json://127.0.0.1:1/: FAILURE",
    )
    store.outbox.mark_sent([head.id], T0 + 1_000)
    second = next_pending(store, "slack")
    assert second is not None and second.run_key == f"{ORG}/r1"
    email = next_pending(store, "email")
    assert email is not None and email.run_key == f"{ORG}/r0"


def test_it_counts_pending_and_dead_rows(store: SqliteStore) -> None:
    """Outbox stats count pending and dead rows per channel and age the oldest pending one."""
    evs = [event(f"r{i}", "Failed", T0 + i) for i in range(3)]
    store.commit_poll(
        PollCommit(
            organization_id=ORG,
            polled_at=T0,
            events=evs,
            outbox=[item(e, "slack") for e in evs] + [item(evs[0], "email")],
        )
    )
    first = next_pending(store, "slack")
    assert first is not None
    store.outbox.mark_given_up([first.id], T0 + 5, "expired", state="dead", attempted=True)
    sent = next_pending(store, "email")
    assert sent is not None
    store.outbox.mark_sent([sent.id], T0 + 5)
    stats = store.outbox_stats(T0 + 90_000)
    assert (stats.pending, stats.dead) == (2, 1)
    assert stats.pending_by_channel == {"slack": 2}
    assert stats.dead_by_channel == {"slack": 1}
    assert stats.oldest_pending_age == 90.0
    assert store.outbox_stats(T0).pending_by_channel == {"slack": 2}
    assert query(store.path, f"SELECT state, attempts FROM outbox WHERE id = {first.id}") == [
        ("dead", 1)
    ]


def test_it_prunes_old_sent_rows_and_events_but_keeps_dead_ones(store: SqliteStore) -> None:
    """After 30 days sent rows and their events go; dead rows and their events stay."""
    sent_ev, dead_ev, fresh_ev = (event(f"r{i}", "Failed", T0 + i) for i in range(3))
    store.commit_poll(
        PollCommit(
            organization_id=ORG,
            polled_at=T0,
            events=[sent_ev, dead_ev],
            outbox=[item(sent_ev, "slack"), item(dead_ev, "email")],
        )
    )
    for channel in ("slack", "email"):
        row = next_pending(store, channel)
        assert row is not None
        if channel == "slack":
            store.outbox.mark_sent([row.id], T0)
        else:
            store.outbox.mark_given_up([row.id], T0, "gave up", state="dead", attempted=False)
    later = T0 + RETENTION_MS + DAY_MS
    store.commit_poll(
        PollCommit(
            organization_id=ORG,
            polled_at=later,
            events=[fresh_ev],
            outbox=[item(fresh_ev, "slack")],
        )
    )
    store.prune(later)
    assert sorted(query(store.path, "SELECT event_key, state FROM outbox")) == sorted(
        [(dead_ev.key, "dead"), (fresh_ev.key, "pending")]
    )
    assert sorted(r[0] for r in query(store.path, "SELECT event_key FROM events")) == sorted(
        [dead_ev.key, fresh_ev.key]
    )


def test_it_refuses_a_database_from_a_newer_schema(db: Path) -> None:
    """A file written by a newer runwatch is refused, untouched."""
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = db.read_bytes()
    newer = rf"newer runwatch \(schema {SCHEMA_VERSION + 1} > {SCHEMA_VERSION}\); upgrade runwatch"
    with pytest.raises(StoreError, match=newer):
        SqliteStore.open(db)
    assert db.read_bytes() == before


def test_it_refuses_a_file_that_is_not_a_database(db: Path) -> None:
    """A garbage file is reported as corrupt and left exactly as it was, never recreated."""
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not sqlite " * 500)
    before = db.read_bytes()
    with pytest.raises(StoreError, match=r"corrupt or not a runwatch database.*refusing"):
        SqliteStore.open(db)
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["state.db"]


def test_it_refuses_a_database_damaged_inside(db: Path) -> None:
    """A file with a valid header but a damaged page fails the integrity check at open."""
    with SqliteStore.open(db) as store:
        store.commit_poll(
            PollCommit(
                organization_id=ORG,
                polled_at=T0,
                upserts=[run(f"r{i:05}") for i in range(2_000)],
            )
        )
    data = bytearray(db.read_bytes())
    page = 4096
    data[5 * page : 6 * page] = b"\x5a" * page
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"corrupt.*quick_check"):
        SqliteStore.open(db)
    assert db.read_bytes() == bytes(data)


def test_it_refuses_another_programs_database(db: Path) -> None:
    """An SQLite file of some other program is not taken over."""
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    with pytest.raises(StoreError, match="another program"):
        SqliteStore.open(db)
    assert query(db, "SELECT name FROM sqlite_master") == [("notes",)]


def test_it_reports_a_directory_it_cannot_create(tmp_path: Path) -> None:
    """A state path under a read-only directory says which directory to fix."""
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked), pytest.raises(StoreError, match="cannot create the directory"):
        SqliteStore.open(locked / "sub" / "state.db")


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "existing-file"])
def test_it_reports_a_read_only_directory(tmp_path: Path, existing: bool) -> None:
    """A state file in a directory it cannot write is a StoreError that says to make it writable."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    if existing:
        SqliteStore.open(state_dir / "state.db").close()
    with read_only(state_dir), pytest.raises(StoreError, match="writable by the user"):
        SqliteStore.open(state_dir / "state.db")


def test_it_reports_a_read_only_file(db: Path) -> None:
    """A state file it cannot write is reported at open, not at the first poll."""
    SqliteStore.open(db).close()
    with read_only(db), pytest.raises(StoreError, match="is read-only"):
        SqliteStore.open(db)


def test_it_rolls_back_a_commit_when_the_disk_is_full_and_stays_usable(db: Path) -> None:
    """A commit that hits a full disk writes nothing, and the store takes the next commit."""
    ev = event("r0", "Failed", T0)
    with SqliteStore.open(db, max_pages=64) as store:  # 64 pages of 4 KiB: a tiny "disk"
        store.commit_poll(
            PollCommit(
                organization_id=ORG,
                polled_at=T0,
                upserts=[run(f"r{i}") for i in range(10)],
                events=[ev],
                outbox=[item(ev, "slack")],
            )
        )
        before = store.load_runs(ORG)
        big = [
            dataclasses.replace(run(f"big{i}"), attributes={"note": "x" * 200})
            for i in range(5_000)
        ]
        ev2 = event("r1", "Failed", T0 + 1)
        with pytest.raises(StoreError, match=r"disk holding the state database .* is full"):
            store.commit_poll(
                PollCommit(
                    organization_id=ORG,
                    polled_at=T0 + 1,
                    upserts=big,
                    events=[ev2],
                    outbox=[item(ev2, "slack")],
                    full_listing=True,
                )
            )
        assert store.load_runs(ORG) == before
        assert store.workspace(ORG).last_success == T0
        assert store.outbox_stats(T0).pending_by_channel == {"slack": 1}
        assert (
            store.commit_poll(
                PollCommit(
                    organization_id=ORG,
                    polled_at=T0 + 2,
                    upserts=[run("r10")],
                    events=[ev2],
                    outbox=[item(ev2, "slack")],
                )
            )
            == 1
        )
        assert len(store.load_runs(ORG)) == 11
    with SqliteStore.open(db) as store:
        assert len(store.load_runs(ORG)) == 11


def test_it_commits_and_loads_a_100k_run_baseline(db: Path) -> None:
    """A 100,000-run baseline commits in one transaction and loads back whole.

    (How fast: benchmarks/RESULTS.md.)"""
    runs = [
        RunState(
            organization_id=ORG,
            run_id=f"run-{i:06d}",
            latest=cond("Succeeded", T0 + i),
            time_created=T0 + i,
            last_updated=T0 + i,
            flow_name="flow-a",
            training_project="project-1",
            etag=f'W/"{i}"',
            attributes={"team": "vision"} if i % 10 == 0 else {},
        )
        for i in range(100_000)
    ]
    with SqliteStore.open(db) as store:
        store.commit_poll(
            PollCommit(organization_id=ORG, polled_at=T0, upserts=runs, baseline=True)
        )
    with SqliteStore.open(db) as store:
        loaded = store.load_runs(ORG)
    assert len(loaded) == 100_000
    assert loaded == {r.run_id: r for r in runs}


def test_it_migrates_a_schema_1_file_and_reads_one_without_changing_it(db: Path) -> None:
    """A state file of the first schema keeps its runs through the upgrade; read-only, too."""
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db, isolation_level=None)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO runs (organization_id, run_id, condition, status, last_transition_time, "
        "time_created) VALUES (?, 'old', 'Running', 'Reached', ?, ?)",
        (ORG, T0 + 5, T0),
    )
    conn.close()
    before = db.read_bytes()

    reader = SqliteStore.open_read_only(db)
    assert reader is not None
    with reader:
        [seen] = reader.tracked_runs()
    assert (seen.run_id, seen.generation, seen.deleted_at) == ("old", None, None)
    assert db.read_bytes() == before

    with SqliteStore.open(db) as store:
        runs = store.load_runs(ORG)
    assert runs["old"].latest == cond("Running", T0 + 5)
    assert query(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_it_keeps_mutes_slack_message_ids_and_meta(any_store: Any) -> None:
    """Mutes are active until they end or are removed; a Slack message id and a meta value
    are replaced by a later write."""
    from runwatch.core.mutes import Mute
    from runwatch.state.store import SlackMessage

    store = any_store
    first = store.mutes.add(Mute(runs=("r1",), created_at=T0, until=T0 + 10, who="alice"))
    second = store.mutes.add(
        Mute(flows=("yolo-*",), channel="slack", created_at=T0, until=T0 + 20, reason="noisy")
    )
    assert second.id > first.id
    assert store.mutes.active(T0) == [first, second]
    assert store.mutes.active(T0 + 15) == [second]
    assert store.mutes.remove([second.id, 999], T0 + 1) == 1
    assert store.mutes.active(T0 + 1) == [first]
    assert store.mutes.remove_all(T0 + 2) == 1 and store.mutes.active(T0 + 2) == []

    message = SlackMessage(channel="slack", run_key=f"{ORG}/r1", incarnation=T0,
                           destination="#ml", slack_channel="C1", ts="1.1", posted_at=T0,
                           updated_at=T0)  # fmt: skip
    assert store.slack_message("slack", f"{ORG}/r1", T0) is None
    store.set_slack_message(message)
    store.set_slack_message(dataclasses.replace(message, updated_at=T0 + 5))
    assert store.slack_message("slack", f"{ORG}/r1", T0) == dataclasses.replace(
        message, updated_at=T0 + 5
    )
    assert store.slack_message("slack", f"{ORG}/r1", T0 + 1) is None

    assert store.get_meta("k") is None
    store.set_meta("k", "1")
    store.set_meta("k", "2")
    assert store.get_meta("k") == "2"


def test_it_counts_and_lists_runs_for_the_operator(any_store: Any) -> None:
    """`status` counts tracked and unfinished runs per organization; `runs` lists the newest
    change first, filtered by activity or a condition glob."""
    store = any_store
    store.commit_poll(
        PollCommit(
            organization_id=ORG,
            polled_at=T0,
            upserts=[
                run("a", "Running", T0),
                run("b", "Failed", T0 + 2),
                run("c", "Succeeded", T0 + 1),
                dataclasses.replace(run("d"), deleted_at=T0),
            ],
        )
    )
    terminal = frozenset({"Failed", "Succeeded"})
    assert store.run_counts(terminal) == {ORG: (3, 1)}
    runs, total = store.latest_runs(terminal=terminal, limit=2)
    assert [r.run_id for r in runs] == ["b", "c"] and total == 3
    assert [r.run_id for r in store.latest_runs(terminal=terminal, active=True)[0]] == ["a"]
    assert [r.run_id for r in store.latest_runs(terminal=terminal, condition="*ed")[0]] == [
        "b",
        "c",
    ]
    assert store.latest_runs(terminal=terminal, condition="Nope*") == ([], 0)
