"""The embedded state store: runwatch's state in one SQLite file.

Theory: see `runwatch.state.store` for what a store promises. Here: one connection, one
writer, WAL with synchronous=FULL (a commit lost on power failure is a notification lost),
calls serialised by a lock so the daemon may call from a worker thread; every write is one
`BEGIN IMMEDIATE` transaction, committed whole or rolled back whole. Dead outbox rows are kept
for the operator; sent rows and old events are pruned after 30 days.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType

import structlog

from runwatch.core.model import OutboxItem, RunState
from runwatch.errors import StoreError
from runwatch.state import sqlite_runs
from runwatch.state.retention import prune_statements
from runwatch.state.rows import (
    RUN_COLUMNS,
    RUN_PLACEHOLDERS,
    event_payload,
    run_params,
)
from runwatch.state.sqlite_mutes import SqliteMutes
from runwatch.state.sqlite_outbox import SqliteOutbox
from runwatch.state.sqlite_outbox import insert as insert_outbox
from runwatch.state.sqlite_schema import (
    BUSY_TIMEOUT_MS,
    MIGRATIONS,
    PRUNE_EVERY_MS,
    SCHEMA_VERSION,
    check_file,
    store_error,
)
from runwatch.state.sqlite_slack import SqliteSlackMessages
from runwatch.state.store import OutboxStats, PollCommit, SlackMessage, WorkspaceMeta

log = structlog.get_logger("runwatch.state.sqlite")


class SqliteStore:
    """runwatch's state in one SQLite file; `open(path)` to use it, `open_read_only(path)` to
    look at it."""

    def __init__(self, conn: sqlite3.Connection, path: Path, clock: Callable[[], float]) -> None:
        self._conn = conn
        self._path = path
        self._clock = clock
        self._lock = threading.RLock()
        self._last_prune_ms = 0
        self._outbox = SqliteOutbox(self)
        self._slack = SqliteSlackMessages(self)
        self._mutes = SqliteMutes(self)

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        max_pages: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> SqliteStore:
        """Open (creating if needed) the state database at `path`, or raise StoreError.

        `max_pages` caps the database size in pages (PRAGMA max_page_count): a test hook
        that makes "disk full" real without filling a disk.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the directory {path.parent} for the state database "
                f"({e.strerror}); create it, writable by the user runwatch runs as, or point "
                "state.path elsewhere"
            ) from e
        if path.exists() and not path.is_file():
            raise StoreError(f"the state path {path} exists but is not a file; fix state.path")
        try:
            conn = sqlite3.connect(
                str(path),
                isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
                check_same_thread=False,  # serialised by Store._lock instead
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
        except sqlite3.Error as e:
            raise store_error(e, path, "opening it") from e
        store = cls(conn, path, clock)
        try:
            store._prepare(max_pages)
        except BaseException:
            conn.close()
            raise
        return store

    @classmethod
    def open_read_only(
        cls, path: Path, *, clock: Callable[[], float] = time.time
    ) -> SqliteStore | None:
        """The state database at `path` for reading, or None when there is none.

        Never creates, migrates or prunes anything: commands that only look (`runs`,
        `once --dry-run`, the operator's commands) must not leave a state file behind, nor
        change one a daemon is using. A database of an older schema is copied into memory and
        migrated there, so an upgraded runwatch can still read it before its daemon restarts.
        """
        store = cls._existing(Path(path), "ro", clock)
        if store is None:
            return None
        conn = store._conn
        try:
            version = store._check()
            if version < SCHEMA_VERSION:
                memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                with store.reading("copying it to read it"):
                    conn.backup(memory)
                conn.close()
                store._conn = conn = memory
                store._migrate(version)
        except BaseException:
            conn.close()
            raise
        return store

    @classmethod
    def open_existing(
        cls, path: Path, *, clock: Callable[[], float] = time.time
    ) -> SqliteStore | None:
        """The state database at `path` for the operator's short writes (mutes, outbox rows),
        or None when there is none. Never creates, migrates or prunes, takes no writer lock:
        a daemon may be using the file. Another schema than ours is refused (the daemon
        migrates the file when it starts). As root, SQLite gives the -wal and -shm files it
        creates the database file's owner, so the service can still open them."""
        store = cls._existing(Path(path), "rw", clock)
        if store is None:
            return None
        try:
            version = store._check()
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"the state database {path} has schema {version}, and this runwatch writes "
                    f"schema {SCHEMA_VERSION}: restart the daemon (it migrates the file when it "
                    "starts), then try again"
                )
            with store.reading("opening it"):
                store._conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            store.close()
            raise
        return store

    @classmethod
    def _existing(cls, path: Path, mode: str, clock: Callable[[], float]) -> SqliteStore | None:
        """A store on the file at `path` opened in SQLite URI `mode`, never creating it."""
        if not path.exists():
            return None
        if not path.is_file():
            raise StoreError(f"the state path {path} exists but is not a file; fix state.path")
        try:
            conn = sqlite3.connect(
                f"{path.absolute().as_uri()}?mode={mode}",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=BUSY_TIMEOUT_MS / 1000,
            )
        except sqlite3.Error as e:
            raise store_error(e, path, "opening it" + (" to read" if mode == "ro" else "")) from e
        return cls(conn, path, clock)

    @classmethod
    def empty(cls, *, clock: Callable[[], float] = time.time) -> SqliteStore:
        """A store with nothing in it, in memory: what a command that only looks reads when
        there is no state file yet."""
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        store = cls(conn, Path(":memory:"), clock)
        store._migrate(0)
        return store

    def _check(self) -> int:
        """The schema version, after refusing a file that is not (a usable) runwatch state."""
        with self.reading("opening it") as conn:
            return check_file(conn, self._path)

    def _prepare(self, max_pages: int | None) -> None:
        conn = self._conn
        version = self._check()
        with self.reading("opening it"):
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"the state database {self._path} cannot use write-ahead logging "
                    f"(journal mode stays {mode}); put state.path on a local filesystem"
                )
            # FULL: in WAL mode NORMAL may lose the last commits on power failure, and a
            # lost commit is a lost notification.
            conn.execute("PRAGMA synchronous = FULL")
            if max_pages is not None:
                conn.execute(f"PRAGMA max_page_count = {int(max_pages)}")
        self._migrate(version)
        # Pruning writes, so a read-only file or directory is found here, at start-up.
        self.prune(int(self._clock() * 1000))

    def _migrate(self, version: int) -> None:
        for target, statements in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.writing(f"migrating it to schema {target}") as tx:
                for statement in statements:
                    tx.execute(statement)
                tx.execute(f"PRAGMA user_version = {target}")
            log.info("store.migrated", path=str(self._path), schema=target)

    @contextmanager
    def reading(self, doing: str) -> Iterator[sqlite3.Connection]:
        """Reads under the store's lock; a sqlite3 error becomes a StoreError saying what to do."""
        with self._lock:
            try:
                yield self._conn
            except sqlite3.Error as e:
                raise store_error(e, self._path, doing) from e

    @contextmanager
    def writing(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole, or rolled back whole and StoreError raised."""
        with self._lock:
            conn = self._conn
            try:
                # IMMEDIATE takes the write lock now, so a second writer fails here, early,
                # rather than at COMMIT after all the work.
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException as e:
                # SQLite has already rolled back after some errors (SQLITE_FULL among them).
                # A failed rollback is ignored: the original error says more.
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise store_error(e, self._path, doing) from e
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    # -- workspaces and runs ------------------------------------------------------------

    def workspace(self, organization_id: str) -> WorkspaceMeta:
        """What the store knows of a workspace; all None for one never polled."""
        return sqlite_runs.workspace(self, organization_id)

    def load_runs(self, organization_id: str) -> dict[str, RunState]:
        """Every tracked run of a workspace, by run id (tombstones aside)."""
        return sqlite_runs.load_runs(self, organization_id)

    def iter_runs(self, organization_id: str) -> Iterator[RunState]:
        """Every tracked run of a workspace (tombstones aside), one at a time."""
        return sqlite_runs.iter_runs(self, organization_id)

    def load_run_states(self, organization_id: str, run_ids: Sequence[str]) -> dict[str, RunState]:
        """The stored states of these runs of a workspace (those it has), by run id."""
        return sqlite_runs.load_run_states(self, organization_id, run_ids)

    def record_runs(self, organization_id: str, states: Sequence[RunState]) -> None:
        """Write run states alone, in one transaction: a part of a baseline."""
        sqlite_runs.record_runs(self, organization_id, states)

    def load_tombstones(self, organization_id: str) -> dict[str, RunState]:
        """The runs of a workspace confirmed deleted and still remembered, by run id."""
        return sqlite_runs.load_tombstones(self, organization_id)

    def tracked_runs(self) -> list[RunState]:
        """Every tracked run, by organization, newest first (for `runwatch runs`)."""
        return sqlite_runs.tracked_runs(self)

    def run_counts(self, terminal: frozenset[str]) -> dict[str, tuple[int, int]]:
        """Organization id -> (runs tracked, of which unfinished), for `runwatch status`."""
        return sqlite_runs.run_counts(self, terminal)

    def latest_runs(
        self,
        *,
        terminal: frozenset[str],
        active: bool = False,
        condition: str | None = None,
        limit: int = 50,
    ) -> tuple[list[RunState], int]:
        """The tracked runs, newest change first, for `runwatch runs`."""
        return sqlite_runs.latest_runs(
            self, terminal=terminal, active=active, condition=condition, limit=limit
        )

    def set_resume_at(self, organization_id: str, resume_at: int | None) -> None:
        """Remember until when the API asked not to be polled (None: no such wish)."""
        sqlite_runs.set_resume_at(self, organization_id, resume_at)

    def commit_poll(self, commit: PollCommit) -> int:
        """Write one poll's outcome in ONE transaction; return the outbox rows inserted.

        An event whose key is already recorded is neither recorded nor enqueued again, and
        the outbox items for it are skipped: a re-detected transition sends nothing twice.
        Items whose key names no event are enqueued once per (key, channel).
        """
        org = commit.organization_id
        now = commit.polled_at
        for run in commit.upserts:
            if run.organization_id != org:
                raise ValueError(
                    f"run {run.run_id} of organization {run.organization_id} in a commit "
                    f"for organization {org}"
                )
        with self.writing(f"recording the poll of {org}") as tx:
            tx.execute(
                "INSERT INTO workspaces (organization_id, baselined_at, last_full_listing, "
                "last_success) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (organization_id) DO UPDATE SET "
                "baselined_at = coalesce(excluded.baselined_at, baselined_at), "
                "last_full_listing = coalesce(excluded.last_full_listing, last_full_listing), "
                "last_success = excluded.last_success",
                (
                    org,
                    now if commit.baseline else None,
                    now if commit.full_listing else None,
                    now,
                ),
            )
            if commit.upserts:
                # Rows made one at a time as SQLite takes them: a baseline of 100,000 runs
                # does not hold 100,000 parameter tuples at once.
                tx.executemany(
                    f"INSERT OR REPLACE INTO runs ({RUN_COLUMNS}) VALUES ({RUN_PLACEHOLDERS})",
                    (run_params(run) for run in commit.upserts),
                )
            recorded: set[str] = set()  # keys of events already known before this commit
            for event in commit.events:
                cursor = tx.execute(
                    "INSERT INTO events "
                    "(event_key, organization_id, run_id, kind, payload, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_key) DO NOTHING",
                    (
                        event.key,
                        event.organization_id,
                        event.run_id,
                        event.kind,
                        event_payload(event),
                        now,
                    ),
                )
                if cursor.rowcount == 0:
                    recorded.add(event.key)
            fresh = {event.key for event in commit.events} - recorded
            items = [
                item
                for item in commit.outbox
                if item.event_key in fresh
                or (item.event_key not in recorded and not self._event_known(item.event_key))
            ]
            inserted = insert_outbox(tx, items, now)
        log.debug(
            "store.commit",
            organization_id=org,
            upserts=len(commit.upserts),
            events=len(commit.events) - len(recorded),
            outbox=inserted,
        )
        if now - self._last_prune_ms >= PRUNE_EVERY_MS:
            self._prune_quietly(now)
        return inserted

    def _event_known(self, key: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM events WHERE event_key = ?", (key,)).fetchone()
        return row is not None

    def enqueue(self, items: Sequence[OutboxItem], now_ms: int) -> int:
        """Enqueue messages that belong to no poll (self-alerts); return the rows inserted.

        Like `commit_poll`, one row per (event_key, channel, target) ever: a second enqueue
        of the same key for the same target inserts nothing.
        """
        with self.writing("enqueuing messages") as tx:
            return insert_outbox(tx, items, now_ms)

    def commit_alerts(
        self, items: Sequence[OutboxItem], *, meta: Mapping[str, str], now_ms: int
    ) -> int:
        """Enqueue self-alerts and write the state that records them, in ONE transaction."""
        with self.writing("recording self-alerts") as tx:
            inserted = insert_outbox(tx, items, now_ms)
            for key, value in meta.items():
                self._put_meta(tx, key, value)
        return inserted

    def record_poll_failure(self, organization_id: str, now_ms: int, error: str) -> None:
        """Remember the last failed poll of a workspace; `error` must be sanitized text."""
        with self.writing(f"recording a failed poll of {organization_id}") as tx:
            tx.execute(
                "INSERT INTO workspaces (organization_id, last_failure, last_error) "
                "VALUES (?, ?, ?) ON CONFLICT (organization_id) DO UPDATE SET "
                "last_failure = excluded.last_failure, last_error = excluded.last_error",
                (organization_id, now_ms, error),
            )

    # -- the outbox -----------------------------------------------------------------------

    @property
    def outbox(self) -> SqliteOutbox:
        return self._outbox

    def outbox_stats(self, now_ms: int) -> OutboxStats:
        return self._outbox.stats(now_ms)

    # -- the native Slack channel's messages, the operator's mutes -----------------------------

    def slack_message(self, channel: str, run_key: str, incarnation: int) -> SlackMessage | None:
        """The message a Slack channel posted for this run incarnation, if it did."""
        return self._slack.get(channel, run_key, incarnation)

    def set_slack_message(self, message: SlackMessage) -> None:
        """Record where a run's message is (after posting it, or editing it: `updated_at`)."""
        self._slack.put(message)

    @property
    def mutes(self) -> SqliteMutes:
        return self._mutes

    # -- upkeep and small state -----------------------------------------------------------

    def prune(self, now_ms: int) -> None:
        """Forget what has been settled for `RETENTION_MS` (see `state.retention`)."""
        with self.writing("pruning old rows") as tx:
            for sql, params in prune_statements("?", now_ms):
                tx.execute(sql, params)
        self._last_prune_ms = now_ms

    def _prune_quietly(self, now_ms: int) -> None:
        # Pruning is upkeep: failing it must not turn a poll that was committed into an error.
        try:
            self.prune(now_ms)
        except StoreError as e:
            self._last_prune_ms = now_ms
            log.warning("store.prune_failed", error=str(e))

    def get_meta(self, key: str) -> str | None:
        with self.reading("reading meta"):
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.writing("writing meta") as tx:
            self._put_meta(tx, key, value)

    @staticmethod
    def _put_meta(tx: sqlite3.Connection, key: str, value: str) -> None:
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
