"""The shared state store: runwatch's state in PostgreSQL, for two or three instances.

Theory: the same promises as `runwatch.state.store` and the SQLite store, with several
writers. Every write is one transaction on a pooled connection, committed whole or rolled
back whole. What SQLite's writer lock did for one file, three mechanisms do here:

- a lease per workspace (`postgres_leases`): one live instance polls it at a time;
- a fence in the commit: `commit_poll` (and a baseline's parts) first locks this
  instance's lease row, `holder = me AND expires_at > now()`, in the same transaction. An
  instance paused or partitioned past its lease finds no such row and rolls back: its poll
  was never committed, and the new holder observes the same changes again — none lost,
  none recorded twice;
- lane claims for the outbox (`postgres_outbox`): one instance sends a lane's rows at a time.

Why leases in rows, not advisory locks: a session-level advisory lock lives as long as the
session, and with a pool (or a connection that dies while the process goes on, or a TCP
connection the server has not yet noticed is gone) the lock and the process that thinks it
holds it part ways silently. A row with an expiry on the database's clock means the same
thing to every instance, survives reconnects, and can be checked inside the very
transaction it protects.

How it fails: the database unreachable is a StoreError like a full disk is for SQLite: the
poll fails, nothing of it is written, the next cycle tries again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import psycopg
import psycopg_pool
import structlog
from psycopg.rows import TupleRow

from runwatch.core.model import OutboxItem, RunState
from runwatch.errors import LeaseLostError, StoreError
from runwatch.state import postgres_runs
from runwatch.state.postgres_leases import PostgresLeases
from runwatch.state.postgres_mutes import PostgresMutes, PostgresSlackMessages
from runwatch.state.postgres_outbox import PostgresOutbox
from runwatch.state.postgres_outbox import insert as insert_outbox
from runwatch.state.postgres_schema import (
    SCHEMA_VERSION,
    check_schema,
    describe_url,
    migrate,
    store_error,
)
from runwatch.state.retention import prune_statements
from runwatch.state.rows import (
    RUN_COLUMNS,
    WORKSPACE_COLUMNS,
    event_payload,
    gc_paused,
    run_from_row,
    run_params,
    workspace_meta,
)
from runwatch.state.store import OutboxStats, PollCommit, SlackMessage, WorkspaceMeta

log = structlog.get_logger("runwatch.state.postgres")
# The pool's own reconnection messages repeat what each failed call already reports, once
# per attempt; runwatch's StoreErrors say it (and what to do) once per poll.
logging.getLogger("psycopg.pool").setLevel(logging.ERROR)

Cursor = psycopg.Cursor[TupleRow]

PRUNE_EVERY_MS = 3_600_000
POOL_TIMEOUT_S = 5.0  # waiting for a connection longer than this is "unreachable"
STATEMENT_TIMEOUT = "60s"  # a statement hung on a lost server must end, as a failed poll

_KEYS = ("organization_id", "run_id")
UPSERT_RUNS = (
    f"INSERT INTO runs ({RUN_COLUMNS}) VALUES ({', '.join(['%s'] * len(RUN_COLUMNS.split(',')))}) "
    "ON CONFLICT (organization_id, run_id) DO UPDATE SET "
    + ", ".join(
        f"{c} = excluded.{c}" for c in (c.strip() for c in RUN_COLUMNS.split(",")) if c not in _KEYS
    )
)


class PostgresStore:
    """runwatch's state in one PostgreSQL schema; `open(url, instance=...)` to use it."""

    def __init__(
        self,
        pool: psycopg_pool.ConnectionPool[psycopg.Connection[TupleRow]],
        *,
        where: str,
        instance: str,
        lease_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self.where = where  # host, port and database: safe to show
        self.instance = instance
        self._last_prune_ms = 0
        self._outbox = PostgresOutbox(self, instance=instance, claim_s=lease_s, monotonic=monotonic)
        self._mutes = PostgresMutes(self)
        self._slack = PostgresSlackMessages(self)
        self.leases = PostgresLeases(self, instance=instance)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        instance: str,
        lease_s: float = 30.0,
        create: bool = True,
        monotonic: Callable[[], float] = time.monotonic,
        pool_timeout: float = POOL_TIMEOUT_S,
    ) -> PostgresStore:
        """Connect (and with `create`, migrate) the state at `url`, or raise StoreError.

        Without `create` (the operator's commands) nothing is created or migrated: a
        database of another schema version is refused, one without runwatch's tables is an
        empty state.
        """
        where = describe_url(url)
        settings: dict[str, Any] = {
            "connect_timeout": 5,
            "application_name": f"runwatch {instance}"[:63],
            # A server that vanished (no RST) is noticed in seconds, not hours.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": 10_000,
        }
        # One plain connection first: a refused or wrong URL fails at once, with libpq's
        # reason, instead of after the pool's patience.
        try:
            with psycopg.connect(url, **settings) as conn:
                empty = cls._prepare(conn, where, create=create)
        except psycopg.Error as exc:
            raise store_error(exc, where, "connecting") from exc

        def configure(conn: psycopg.Connection[TupleRow]) -> None:
            conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
            conn.commit()

        pool: psycopg_pool.ConnectionPool[psycopg.Connection[TupleRow]] = (
            psycopg_pool.ConnectionPool(
                url,
                min_size=1,
                max_size=4,
                open=False,
                timeout=pool_timeout,
                configure=configure,
                check=psycopg_pool.ConnectionPool.check_connection,
                # A connection that keeps failing is given up on after this, so its backoff
                # never grows past it: once the database is back, the next call reconnects.
                reconnect_timeout=30.0,
                name=f"runwatch-{instance}",
                kwargs=settings,
            )
        )
        pool.open(wait=False)
        store = cls(pool, where=where, instance=instance, lease_s=lease_s, monotonic=monotonic)
        store.empty = empty
        return store

    empty = False  # opened without `create` on a database runwatch never wrote to

    @staticmethod
    def _prepare(conn: psycopg.Connection[TupleRow], where: str, *, create: bool) -> bool:
        """Migrate (with `create`) or check the schema; True when it holds no state yet."""
        if create:
            found = migrate(conn, where)
            if found < SCHEMA_VERSION:
                log.info("store.migrated", database=where, schema=SCHEMA_VERSION)
            return False
        with conn.cursor() as cur:
            found = check_schema(cur, where)
        if found not in (0, SCHEMA_VERSION):
            raise StoreError(
                f"the state database {where} has schema {found}, and this runwatch reads "
                f"schema {SCHEMA_VERSION}: restart the daemon (it migrates the database "
                "when it starts), then try again"
            )
        return found == 0

    @contextmanager
    def transaction(self, doing: str) -> Iterator[Cursor]:
        """One transaction: committed whole, or rolled back whole and StoreError raised."""
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield cur
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise store_error(exc, self.where, doing) from exc

    # The SQLite store's names for the same thing, so shared helpers read alike.
    reading = transaction
    writing = transaction

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- workspaces and runs ------------------------------------------------------------

    def workspace(self, organization_id: str) -> WorkspaceMeta:
        with self.transaction("reading a workspace") as cur:
            cur.execute(
                f"SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE organization_id = %s",
                (organization_id,),
            )
            row = cur.fetchone()
        return workspace_meta(organization_id, row)

    def _select_runs(self, where: str, params: Sequence[Any]) -> list[RunState]:
        with self.transaction("reading runs") as cur, gc_paused():
            cur.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE {where}", params)
            return [run_from_row(row) for row in cur.fetchall()]

    def load_runs(self, organization_id: str) -> dict[str, RunState]:
        runs = self._select_runs("organization_id = %s AND deleted_at IS NULL", (organization_id,))
        return {run.run_id: run for run in runs}

    def iter_runs(self, organization_id: str) -> Iterator[RunState]:
        """Every tracked run of a workspace, 1,000 at a time through a server-side cursor:
        building the index of 100,000 runs never holds them all at once (as with SQLite)."""
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor(
                name="runwatch_runs"
            ) as cur, gc_paused():
                cur.itersize = 1_000
                cur.execute(
                    f"SELECT {RUN_COLUMNS} FROM runs "
                    "WHERE organization_id = %s AND deleted_at IS NULL",
                    (organization_id,),
                )
                yield from map(run_from_row, cur)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise store_error(exc, self.where, "reading runs") from exc

    def load_run_states(self, organization_id: str, run_ids: Sequence[str]) -> dict[str, RunState]:
        runs = self._select_runs(
            "organization_id = %s AND deleted_at IS NULL AND run_id = ANY(%s)",
            (organization_id, list(run_ids)),
        )
        return {run.run_id: run for run in runs}

    def load_tombstones(self, organization_id: str) -> dict[str, RunState]:
        runs = self._select_runs(
            "organization_id = %s AND deleted_at IS NOT NULL", (organization_id,)
        )
        return {run.run_id: run for run in runs}

    def tracked_runs(self) -> list[RunState]:
        return self._select_runs(
            "deleted_at IS NULL ORDER BY organization_id, time_created DESC", ()
        )

    def run_counts(self, terminal: frozenset[str]) -> dict[str, tuple[int, int]]:
        return postgres_runs.run_counts(self, terminal)

    def latest_runs(
        self,
        *,
        terminal: frozenset[str],
        active: bool = False,
        condition: str | None = None,
        limit: int = 50,
    ) -> tuple[list[RunState], int]:
        return postgres_runs.latest_runs(
            self, terminal=terminal, active=active, condition=condition, limit=limit
        )

    def record_runs(self, organization_id: str, states: Sequence[RunState]) -> None:
        """A part of a baseline, fenced like a poll's commit."""
        with self.transaction(f"recording runs of {organization_id}") as cur:
            self._fence(cur, organization_id)
            cur.executemany(UPSERT_RUNS, [run_params(run) for run in states])

    def set_resume_at(self, organization_id: str, resume_at: int | None) -> None:
        with self.transaction(f"recording when to poll {organization_id} again") as cur:
            cur.execute(
                "INSERT INTO workspaces (organization_id, resume_at) VALUES (%s, %s) "
                "ON CONFLICT (organization_id) DO UPDATE SET resume_at = excluded.resume_at",
                (organization_id, resume_at),
            )

    def _fence(self, cur: Cursor, organization_id: str) -> None:
        """Refuse to write a workspace's poll unless this instance holds its lease now.

        FOR SHARE keeps the row as it is until this transaction ends: a takeover waits for
        this commit, and then polls on top of what it wrote."""
        cur.execute(
            "SELECT 1 FROM leases WHERE workspace = %s AND holder = %s AND expires_at > now() "
            "FOR SHARE",
            (organization_id, self.instance),
        )
        if cur.fetchone() is None:
            raise LeaseLostError(
                f"instance {self.instance} no longer holds the lease on workspace "
                f"{organization_id}: this poll was not committed (the instance holding it "
                "now sees the same changes)"
            )

    def commit_poll(self, commit: PollCommit) -> int:
        """Write one poll's outcome in ONE fenced transaction; return the outbox rows inserted
        (the same semantics as `SqliteStore.commit_poll`)."""
        org = commit.organization_id
        now = commit.polled_at
        for run in commit.upserts:
            if run.organization_id != org:
                raise ValueError(
                    f"run {run.run_id} of organization {run.organization_id} in a commit "
                    f"for organization {org}"
                )
        with self.transaction(f"recording the poll of {org}") as cur:
            self._fence(cur, org)
            cur.execute(
                "INSERT INTO workspaces (organization_id, baselined_at, last_full_listing, "
                "last_success) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (organization_id) DO UPDATE SET "
                "baselined_at = coalesce(excluded.baselined_at, workspaces.baselined_at), "
                "last_full_listing = coalesce(excluded.last_full_listing, "
                "workspaces.last_full_listing), last_success = excluded.last_success",
                (org, now if commit.baseline else None, now if commit.full_listing else None, now),
            )
            if commit.upserts:
                cur.executemany(UPSERT_RUNS, [run_params(run) for run in commit.upserts])
            recorded: set[str] = set()
            for event in commit.events:
                cur.execute(
                    "INSERT INTO events "
                    "(event_key, organization_id, run_id, kind, payload, created_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (event_key) DO NOTHING",
                    (event.key, event.organization_id, event.run_id, event.kind,
                     event_payload(event), now),
                )  # fmt: skip
                if cur.rowcount == 0:
                    recorded.add(event.key)
            fresh = {event.key for event in commit.events} - recorded
            loose = {i.event_key for i in commit.outbox} - fresh - recorded
            if loose:
                cur.execute(
                    "SELECT event_key FROM events WHERE event_key = ANY(%s)", (list(loose),)
                )
                recorded |= {str(row[0]) for row in cur.fetchall()}
            items = [i for i in commit.outbox if i.event_key not in recorded]
            inserted = insert_outbox(cur, items, now)
        log.debug(
            "store.commit",
            organization_id=org,
            upserts=len(commit.upserts),
            events=len(commit.events) - len(recorded & {e.key for e in commit.events}),
            outbox=inserted,
        )
        if now - self._last_prune_ms >= PRUNE_EVERY_MS:
            self._prune_quietly(now)
        return inserted

    def enqueue(self, items: Sequence[OutboxItem], now_ms: int) -> int:
        with self.transaction("enqueuing messages") as cur:
            return insert_outbox(cur, items, now_ms)

    def commit_alerts(
        self, items: Sequence[OutboxItem], *, meta: Mapping[str, str], now_ms: int
    ) -> int:
        with self.transaction("recording self-alerts") as cur:
            inserted = insert_outbox(cur, items, now_ms)
            for key, value in meta.items():
                _put_meta(cur, key, value)
        return inserted

    def record_poll_failure(self, organization_id: str, now_ms: int, error: str) -> None:
        with self.transaction(f"recording a failed poll of {organization_id}") as cur:
            cur.execute(
                "INSERT INTO workspaces (organization_id, last_failure, last_error) "
                "VALUES (%s, %s, %s) ON CONFLICT (organization_id) DO UPDATE SET "
                "last_failure = excluded.last_failure, last_error = excluded.last_error",
                (organization_id, now_ms, error),
            )

    # -- the outbox, Slack message ids, mutes -----------------------------------------------

    @property
    def outbox(self) -> PostgresOutbox:
        return self._outbox

    def outbox_stats(self, now_ms: int) -> OutboxStats:
        return self._outbox.stats(now_ms)

    def slack_message(self, channel: str, run_key: str, incarnation: int) -> SlackMessage | None:
        return self._slack.get(channel, run_key, incarnation)

    def set_slack_message(self, message: SlackMessage) -> None:
        self._slack.put(message)

    @property
    def mutes(self) -> PostgresMutes:
        return self._mutes

    # -- upkeep and small state -----------------------------------------------------------

    def prune(self, now_ms: int) -> None:
        """Forget what the SQLite store forgets (one rule: `state.retention`)."""
        with self.transaction("pruning old rows") as cur:
            for sql, params in prune_statements("%s", now_ms):
                cur.execute(sql, params)
        self._last_prune_ms = now_ms

    def _prune_quietly(self, now_ms: int) -> None:
        try:
            self.prune(now_ms)
        except StoreError as e:
            self._last_prune_ms = now_ms
            log.warning("store.prune_failed", error=str(e))

    def get_meta(self, key: str) -> str | None:
        with self.transaction("reading meta") as cur:
            cur.execute("SELECT value FROM meta WHERE key = %s", (key,))
            row = cur.fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction("writing meta") as cur:
            _put_meta(cur, key, value)

    def meta_with_prefix(self, prefix: str) -> dict[str, str]:
        """Every meta value whose key starts with `prefix` (each instance's alert state)."""
        with self.transaction("reading meta") as cur:
            cur.execute(
                "SELECT key, value FROM meta WHERE starts_with(key, %s) ORDER BY key", (prefix,)
            )
            return {str(k): str(v) for k, v in cur.fetchall()}


def _put_meta(cur: Cursor, key: str, value: str) -> None:
    cur.execute(
        "INSERT INTO meta (key, value) VALUES (%s, %s) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
