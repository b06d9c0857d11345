"""The state store: what runwatch remembers across restarts, in one SQLite file.

Theory: the store is the pipeline's one point of durability. Everything one poll decided
(the new run states, the events, one outbox row per event and channel) is written in ONE
transaction by `commit_poll`, and nothing is sent before that commit: a crash between seeing
a transition and sending it loses nothing, and a restart never re-detects a transition that
was recorded, because an event's key is UNIQUE and a recorded event is never enqueued again.
Delivery then works off the outbox, oldest first per channel, marking each row sent, due for
a retry, or dead. Dead rows are kept for the operator; sent rows and old events are pruned
after 30 days.

How it fails: every sqlite3 error becomes a StoreError that says what to do. The store never
resets, recreates or "repairs" a database it cannot use: starting over silently would
re-baseline every workspace and swallow the notifications of the gap, so refusing loudly is
the safer failure. A failed transaction is rolled back whole.

One connection, one writer: WAL with synchronous=FULL (a commit lost on power failure is a
notification lost), calls serialised by a lock so the daemon may call from a worker thread.
"""

from __future__ import annotations

import functools
import gc
import json
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

import structlog

from runwatch.core.model import Condition, Event, OutboxItem, RunState
from runwatch.errors import StoreError

log = structlog.get_logger("runwatch.state.sqlite")

SCHEMA_VERSION = 1
APPLICATION_ID = 0x72776368  # "rwch" in the file header: tells runwatch's files from others'
RETENTION_MS = 30 * 86_400_000  # sent outbox rows and events older than this are pruned
PRUNE_EVERY_MS = 3_600_000
BUSY_TIMEOUT_MS = 5_000
LOW_SPACE_BYTES = 1 << 20  # an I/O error with less free than this is taken for a full disk

# Each migration is a list of statements applied in one transaction together with the
# user_version bump, so a crash mid-migration leaves the previous version intact.
# (Statements, not one script: executescript() would commit the transaction first.)
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        f"PRAGMA application_id = {APPLICATION_ID}",
        """CREATE TABLE workspaces (
            organization_id   TEXT PRIMARY KEY,
            baselined_at      INTEGER,
            last_full_listing INTEGER,
            last_success      INTEGER,
            last_failure      INTEGER,
            last_error        TEXT
        )""",
        # WITHOUT ROWID: the primary key is the only way rows are found, and one b-tree
        # instead of table + index halves the work of a 100,000-run baseline.
        """CREATE TABLE runs (
            organization_id      TEXT NOT NULL,
            run_id               TEXT NOT NULL,
            condition            TEXT,
            status               TEXT,
            last_transition_time INTEGER,
            reason               TEXT,
            message              TEXT,
            time_created         INTEGER NOT NULL,
            last_updated         INTEGER,
            flow_name            TEXT,
            training_project     TEXT,
            etag                 TEXT,
            log                  TEXT,
            killed_at            INTEGER,
            attributes           TEXT,
            PRIMARY KEY (organization_id, run_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE events (
            id              INTEGER PRIMARY KEY,
            event_key       TEXT NOT NULL UNIQUE,
            organization_id TEXT NOT NULL,
            run_id          TEXT NOT NULL,
            kind            TEXT NOT NULL,
            payload         TEXT NOT NULL,
            created_at      INTEGER NOT NULL
        )""",
        "CREATE INDEX events_created_at ON events (created_at)",
        # AUTOINCREMENT: ids are never reused after pruning, so "oldest first" is "lowest id".
        """CREATE TABLE outbox (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            event_key       TEXT NOT NULL,
            channel         TEXT NOT NULL,
            run_key         TEXT NOT NULL,
            title           TEXT NOT NULL,
            body            TEXT NOT NULL,
            notify_type     TEXT NOT NULL,
            state           TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'dead')),
            created_at      INTEGER NOT NULL,
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER NOT NULL,
            last_attempt_at INTEGER,
            last_error      TEXT,
            sent_at         INTEGER,
            dead_at         INTEGER
        )""",
        "CREATE INDEX outbox_channel_state_id ON outbox (channel, state, id)",
        # Each channel hears about an event once, whoever enqueues it and however often.
        "CREATE UNIQUE INDEX outbox_event_channel ON outbox (event_key, channel)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkspaceMeta:
    organization_id: str
    baselined_at: int | None  # epoch ms of the baseline poll; None = never polled successfully
    last_full_listing: int | None  # epoch ms of the last complete listing
    last_success: int | None  # epoch ms of the last successful poll (any kind)
    last_failure: int | None = None  # epoch ms of the last failed poll (record_poll_failure)
    last_error: str | None = None  # its sanitized error text


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxRow:
    """A pending outbox row."""

    id: int
    event_key: str
    channel: str
    title: str
    body: str
    notify_type: str
    run_key: str
    created_at: int  # epoch ms
    attempts: int
    next_attempt_at: int  # epoch ms
    last_error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxStats:
    pending: int
    dead: int
    pending_by_channel: Mapping[str, int]
    dead_by_channel: Mapping[str, int]
    oldest_pending_age: float  # seconds; 0.0 when nothing is pending


@dataclass(frozen=True, kw_only=True, slots=True)
class PollCommit:
    """Everything one poll of one workspace decided, written by `Store.commit_poll` at once."""

    organization_id: str
    polled_at: int  # epoch ms
    upserts: Sequence[RunState] = ()
    deleted: Sequence[str] = ()  # run ids
    events: Sequence[Event] = ()
    outbox: Sequence[OutboxItem] = ()
    full_listing: bool = False  # sets last_full_listing = polled_at
    baseline: bool = False  # sets baselined_at = polled_at


_RUN_COLUMNS = (
    "organization_id, run_id, condition, status, last_transition_time, reason, message, "
    "time_created, last_updated, flow_name, training_project, etag, log, killed_at, attributes"
)
# The RunState fields the runs table holds; tests compare it with the dataclass, so a field
# added to RunState without a column here fails loudly instead of being dropped on restart.
RUN_STATE_FIELDS = frozenset(
    {
        "organization_id",
        "run_id",
        "latest",
        "time_created",
        "last_updated",
        "flow_name",
        "training_project",
        "etag",
        "log",
        "killed_at",
        "attributes",
    }
)
_OUTBOX_COLUMNS = (
    "id, event_key, channel, title, body, notify_type, run_key, created_at, attempts, "
    "next_attempt_at, last_error"
)

RunRow = tuple[Any, ...]


def _run_params(run: RunState) -> RunRow:
    c = run.latest
    return (
        run.organization_id,
        run.run_id,
        None if c is None else c.condition,
        None if c is None else c.status,
        None if c is None else c.last_transition_time,
        None if c is None else c.reason,
        None if c is None else c.message,
        run.time_created,
        run.last_updated,
        run.flow_name,
        run.training_project,
        run.etag,
        run.log,
        run.killed_at,
        # NULL for the common empty case: saves a json.loads per row on load.
        json.dumps(dict(run.attributes), separators=(",", ":")) if run.attributes else None,
    )


def _interned(value: str | None) -> str | None:
    return None if value is None else sys.intern(value)


_SHARED_MESSAGES: dict[str, str] = {}  # as in decode: the first 4096 distinct ones


def _shared_message(value: str | None) -> str | None:
    if value is None:
        return None
    shared = _SHARED_MESSAGES.get(value)
    if shared is None:
        shared = value
        if len(_SHARED_MESSAGES) < 4096:
            _SHARED_MESSAGES[value] = value
    return shared


@functools.lru_cache(maxsize=4096)
def _attributes(text: str) -> Mapping[str, str]:
    # Runs with the same attribute set share one read-only mapping, as decoded ones do.
    return MappingProxyType({sys.intern(k): sys.intern(v) for k, v in json.loads(text).items()})


def _run_from_row(row: RunRow) -> RunState:
    # The names that repeat across 100,000 runs (condition, status, flow, project) are
    # interned and messages shared, as decoding does: else each row brings its own copies.
    (org, run_id, cond, status, ltt, reason, message, created) = row[:8]
    (last_updated, flow, project, etag, run_log, killed_at, attributes) = row[8:]
    latest = (
        None
        if cond is None
        else Condition(
            condition=sys.intern(cond),
            status=sys.intern(status),
            last_transition_time=ltt,
            reason=_interned(reason),
            message=_shared_message(message),
        )
    )
    return RunState(
        organization_id=sys.intern(org),
        run_id=run_id,
        latest=latest,
        time_created=created,
        last_updated=ltt if last_updated == ltt else last_updated,  # one int for both
        flow_name=_interned(flow),
        training_project=_interned(project),
        etag=etag,
        log=run_log,
        killed_at=killed_at,
        attributes=_attributes(attributes) if attributes else {},
    )


def _outbox_row(row: tuple[Any, ...]) -> OutboxRow:
    (id_, key, channel, title, body, notify_type, run_key, created, attempts, due, error) = row
    return OutboxRow(
        id=id_,
        event_key=key,
        channel=channel,
        title=title,
        body=body,
        notify_type=notify_type,
        run_key=run_key,
        created_at=created,
        attempts=attempts,
        next_attempt_at=due,
        last_error=error,
    )


def _plain(value: object) -> object:
    """A JSON-ready copy of an event's field values (conditions, tuples, mappings)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def event_payload(event: Event) -> str:
    """The JSON the events table keeps of an event (for the operator and for audits)."""
    return json.dumps(_plain(event), separators=(",", ":"), sort_keys=True)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects at once.

    Loading 100,000 runs makes 200,000 objects, none of them cyclic garbage; the collections
    their allocation triggers find nothing and cost about a quarter of the load time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _out_of_space(error: sqlite3.Error, path: Path) -> bool:
    name = getattr(error, "sqlite_errorname", "")
    if name in ("SQLITE_FULL", "SQLITE_IOERR_SHMSIZE"):  # (the -shm file could not grow)
        return True
    # Other writes that hit ENOSPC surface as a bare "disk I/O error": look at the disk.
    if name.startswith("SQLITE_IOERR") or "disk i/o error" in str(error).lower():
        try:
            return shutil.disk_usage(path.parent).free < LOW_SPACE_BYTES
        except OSError:
            return False
    return False


def _store_error(error: sqlite3.Error, path: Path, doing: str) -> StoreError:
    """Translate a sqlite3 error into what the operator should do about it."""
    text = str(error)
    lowered = text.lower()
    if "disk is full" in lowered or _out_of_space(error, path):
        return StoreError(
            f"the disk holding the state database {path} is full: {doing} failed and "
            "nothing of it was written; free some space (runwatch keeps going and retries)"
        )
    if "readonly" in lowered or "read-only" in lowered:
        return StoreError(
            f"the state database {path} is read-only ({doing}): make the file and its "
            f"directory writable by the user runwatch runs as (SQLite also writes "
            f"{path.name}-wal and {path.name}-shm next to it), or point state.path elsewhere"
        )
    if "unable to open" in lowered:
        return StoreError(
            f"cannot open the state database {path} ({text}): make its directory exist and "
            f"writable by the user runwatch runs as (SQLite also creates {path.name}-wal and "
            f"{path.name}-shm there), or point state.path elsewhere"
        )
    if "locked" in lowered or "busy" in lowered:
        return StoreError(
            f"the state database {path} is locked by another process ({doing}); is another "
            "runwatch using the same state.path? Stop it or give each its own state.path"
        )
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return _corrupt(path, text)
    return StoreError(f"the state database {path} failed while {doing}: {text}")


def _corrupt(path: Path, why: str) -> StoreError:
    return StoreError(
        f"the state database {path} is corrupt or not a runwatch database ({why}); "
        "refusing to touch it. Restore it from a backup, or move it aside to start over "
        "(runwatch will then record every run again as a silent baseline)"
    )


class Store:
    """runwatch's state in one SQLite file; open with `Store.open(path)`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, clock: Callable[[], float]) -> None:
        self._conn = conn
        self._path = path
        self._clock = clock
        self._lock = threading.RLock()
        self._last_prune_ms = 0

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        max_pages: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Store:
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
            raise _store_error(e, path, "opening it") from e
        store = cls(conn, path, clock)
        try:
            store._prepare(max_pages)
        except BaseException:
            conn.close()
            raise
        return store

    def _prepare(self, max_pages: int | None) -> None:
        conn = self._conn
        with self._errors("opening it"):
            # Read-only checks first: nothing is written to a file we may refuse.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the state database {self._path} was written by a newer runwatch "
                    f"(schema {version} > {SCHEMA_VERSION}); upgrade runwatch or point "
                    "state.path elsewhere — refusing to touch it"
                )
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if (version == 0 and tables) or (version > 0 and app_id != APPLICATION_ID):
                raise StoreError(
                    f"{self._path} is an SQLite database of another program, not runwatch's "
                    "state; point state.path elsewhere — refusing to touch it"
                )
            if version > 0:
                problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise _corrupt(
                        self._path, "quick_check: " + " ".join(problems).replace("\n", " ")
                    )
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
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
        for target, statements in enumerate(_MIGRATIONS[version:], start=version + 1):
            with self._transaction(f"migrating it to schema {target}") as tx:
                for statement in statements:
                    tx.execute(statement)
                tx.execute(f"PRAGMA user_version = {target}")
            log.info("store.migrated", path=str(self._path), schema=target)
        # Pruning writes, so a read-only file or directory is found here, at start-up.
        self.prune(int(self._clock() * 1000))

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except sqlite3.Error as e:
                raise _store_error(e, self._path, doing) from e

    @contextmanager
    def _transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
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
                    raise _store_error(e, self._path, doing) from e
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
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
        with self._errors("reading a workspace"):
            row = self._conn.execute(
                "SELECT baselined_at, last_full_listing, last_success, last_failure, last_error "
                "FROM workspaces WHERE organization_id = ?",
                (organization_id,),
            ).fetchone()
        if row is None:
            return WorkspaceMeta(
                organization_id=organization_id,
                baselined_at=None,
                last_full_listing=None,
                last_success=None,
            )
        return WorkspaceMeta(
            organization_id=organization_id,
            baselined_at=row[0],
            last_full_listing=row[1],
            last_success=row[2],
            last_failure=row[3],
            last_error=row[4],
        )

    def load_runs(self, organization_id: str) -> dict[str, RunState]:
        """Every tracked run of a workspace, by run id."""
        with self._errors("reading runs"), _gc_paused():
            rows = self._conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE organization_id = ?",
                (organization_id,),
            )
            return {row[1]: _run_from_row(row) for row in rows}

    def tracked_runs(self) -> list[RunState]:
        """Every tracked run, by organization, newest first (for `runwatch runs`)."""
        with self._errors("reading runs"), _gc_paused():
            rows = self._conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY organization_id, time_created DESC"
            )
            return [_run_from_row(row) for row in rows]

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
        with self._transaction(f"recording the poll of {org}") as tx:
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
                    f"INSERT OR REPLACE INTO runs ({_RUN_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (_run_params(run) for run in commit.upserts),
                )
            if commit.deleted:
                tx.executemany(
                    "DELETE FROM runs WHERE organization_id = ? AND run_id = ?",
                    [(org, run_id) for run_id in commit.deleted],
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
            inserted = self._insert_outbox(tx, items, now)
        log.debug(
            "store.commit",
            organization_id=org,
            upserts=len(commit.upserts),
            deleted=len(commit.deleted),
            events=len(commit.events) - len(recorded),
            outbox=inserted,
        )
        if now - self._last_prune_ms >= PRUNE_EVERY_MS:
            self._prune_quietly(now)
        return inserted

    def _event_known(self, key: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM events WHERE event_key = ?", (key,)).fetchone()
        return row is not None

    @staticmethod
    def _insert_outbox(tx: sqlite3.Connection, items: Sequence[OutboxItem], now: int) -> int:
        if not items:
            return 0
        cursor = tx.executemany(
            "INSERT INTO outbox (event_key, channel, run_key, title, body, "
            "notify_type, state, created_at, attempts, next_attempt_at) "
            "VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, 0, ?) "
            # Not OR IGNORE: that would also skip a row breaking NOT NULL, silently.
            "ON CONFLICT (event_key, channel) DO NOTHING",
            [
                (i.event_key, i.channel, i.run_key, i.title, i.body, i.notify_type, now, now)
                for i in items
            ],
        )
        return max(cursor.rowcount, 0)

    def enqueue(self, items: Sequence[OutboxItem], now_ms: int) -> int:
        """Enqueue messages that belong to no poll (self-alerts); return the rows inserted.

        Like `commit_poll`, one row per (event_key, channel) ever: a second enqueue of the
        same key for the same channel inserts nothing.
        """
        with self._transaction("enqueuing messages") as tx:
            return self._insert_outbox(tx, items, now_ms)

    def record_poll_failure(self, organization_id: str, now_ms: int, error: str) -> None:
        """Remember the last failed poll of a workspace; `error` must be sanitized text."""
        with self._transaction(f"recording a failed poll of {organization_id}") as tx:
            tx.execute(
                "INSERT INTO workspaces (organization_id, last_failure, last_error) "
                "VALUES (?, ?, ?) ON CONFLICT (organization_id) DO UPDATE SET "
                "last_failure = excluded.last_failure, last_error = excluded.last_error",
                (organization_id, now_ms, error),
            )

    # -- the outbox -----------------------------------------------------------------------

    def next_pending(self, channel: str) -> OutboxRow | None:
        """The channel's oldest pending row, due or not.

        Per-channel FIFO keeps one run's messages in order ("Running" before "Failed"): a
        row waiting for its retry holds back the rows behind it. The caller checks
        `next_attempt_at`.
        """
        with self._errors("reading the outbox"):
            row = self._conn.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox "
                "WHERE channel = ? AND state = 'pending' ORDER BY id LIMIT 1",
                (channel,),
            ).fetchone()
        return None if row is None else _outbox_row(row)

    def pending_channels(self) -> list[str]:
        """Channels with at least one pending row, sorted."""
        with self._errors("reading the outbox"):
            rows = self._conn.execute(
                "SELECT DISTINCT channel FROM outbox WHERE state = 'pending' ORDER BY channel"
            ).fetchall()
        return [r[0] for r in rows]

    def mark_sent(self, row_id: int, now_ms: int) -> None:
        with self._transaction("marking a notification sent") as tx:
            tx.execute(
                "UPDATE outbox SET state = 'sent', sent_at = ?, last_attempt_at = ?, "
                "attempts = attempts + 1 WHERE id = ? AND state = 'pending'",
                (now_ms, now_ms, row_id),
            )

    def mark_retry(self, row_id: int, now_ms: int, next_attempt_at: int, error: str) -> None:
        """Record a failed attempt; `error` must be sanitized text (it is stored)."""
        with self._transaction("scheduling a retry") as tx:
            tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_attempt_at = ?, "
                "next_attempt_at = ?, last_error = ? WHERE id = ? AND state = 'pending'",
                (now_ms, next_attempt_at, error, row_id),
            )

    def mark_dead(self, row_id: int, now_ms: int, error: str, *, attempted: bool = False) -> None:
        """Give up on a row; it is kept, as state 'dead'. `attempted`: after a failed try."""
        with self._transaction("marking a notification dead") as tx:
            tx.execute(
                "UPDATE outbox SET state = 'dead', dead_at = ?, last_error = ?, "
                "attempts = attempts + ?, "
                "last_attempt_at = CASE WHEN ? THEN ? ELSE last_attempt_at END "
                "WHERE id = ? AND state = 'pending'",
                (now_ms, error, int(attempted), int(attempted), now_ms, row_id),
            )

    def outbox_stats(self, now_ms: int) -> OutboxStats:
        with self._errors("reading the outbox"):
            rows = self._conn.execute(
                "SELECT channel, state, count(*), min(created_at) FROM outbox "
                "WHERE state IN ('pending', 'dead') GROUP BY channel, state"
            ).fetchall()
        pending: dict[str, int] = {}
        dead: dict[str, int] = {}
        oldest: int | None = None
        for channel, state, count, created in rows:
            if state == "pending":
                pending[channel] = count
                oldest = created if oldest is None else min(oldest, created)
            else:
                dead[channel] = count
        return OutboxStats(
            pending=sum(pending.values()),
            dead=sum(dead.values()),
            pending_by_channel=pending,
            dead_by_channel=dead,
            oldest_pending_age=0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000),
        )

    # -- upkeep and small state -----------------------------------------------------------

    def prune(self, now_ms: int) -> None:
        """Forget sent rows and events older than 30 days; dead rows and their events stay."""
        cutoff = now_ms - RETENTION_MS
        with self._transaction("pruning old rows") as tx:
            tx.execute("DELETE FROM outbox WHERE state = 'sent' AND sent_at < ?", (cutoff,))
            tx.execute(
                "DELETE FROM events WHERE created_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM outbox WHERE outbox.event_key = events.event_key)",
                (cutoff,),
            )
        self._last_prune_ms = now_ms

    def _prune_quietly(self, now_ms: int) -> None:
        # Pruning is upkeep: failing it must not turn a poll that was committed into an error.
        try:
            self.prune(now_ms)
        except StoreError as e:
            self._last_prune_ms = now_ms
            log.warning("store.prune_failed", error=str(e))

    def get_meta(self, key: str) -> str | None:
        with self._errors("reading meta"):
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction("writing meta") as tx:
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
