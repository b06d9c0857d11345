"""The SQLite schema, its migrations, and what SQLite's errors mean to an operator.

Each migration is a list of statements applied in one transaction together with the
user_version bump, so a crash mid-migration leaves the previous version intact.
(Statements, not one script: executescript() would commit the transaction first.)

How it fails: every sqlite3 error becomes a StoreError that says what to do. The store never
resets, recreates or "repairs" a database it cannot use: starting over silently would
re-baseline every workspace and swallow the notifications of the gap, so refusing loudly is
the safer failure.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from runwatch.errors import StoreError

SCHEMA_VERSION = 5
APPLICATION_ID = 0x72776368  # "rwch" in the file header: tells runwatch's files from others'
PRUNE_EVERY_MS = 3_600_000
BUSY_TIMEOUT_MS = 5_000
LOW_SPACE_BYTES = 1 << 20  # an I/O error with less free than this is taken for a full disk

# Each migration is a list of statements applied in one transaction together with the
# user_version bump, so a crash mid-migration leaves the previous version intact.
# (Statements, not one script: executescript() would commit the transaction first.)
MIGRATIONS: tuple[tuple[str, ...], ...] = (
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
    (
        # The document's version decides staleness; runwatch's own observations feed the
        # time-in-state rules; a tombstone (deleted_at) outlives a confirmed deletion.
        "ALTER TABLE runs ADD COLUMN generation INTEGER",
        "ALTER TABLE runs ADD COLUMN seen_at INTEGER",
        "ALTER TABLE runs ADD COLUMN changed_at INTEGER",
        "ALTER TABLE runs ADD COLUMN marks TEXT",
        "ALTER TABLE runs ADD COLUMN deleted_at INTEGER",
        # Until when the API asked not to be called (a Retry-After longer than one call's
        # retries): kept across restarts, so a restart does not knock again too early.
        "ALTER TABLE workspaces ADD COLUMN resume_at INTEGER",
    ),
    (
        # Delivery per target: one row per (event, channel, target), a target being one URL
        # of an Apprise channel (or the whole of a webhook or Slack channel). Rows written
        # before this schema keep target '' and go to every URL of their channel. New states:
        # 'uncertain' (an attempt whose outcome is unknown, several times: possibly
        # delivered), 'dropped' (by the operator) and 'muted' (recorded, never sent).
        # SQLite cannot change a CHECK constraint in place: the table is rebuilt.
        """CREATE TABLE outbox_v3 (
            id                 INTEGER PRIMARY KEY AUTOINCREMENT,
            event_key          TEXT NOT NULL,
            channel            TEXT NOT NULL,
            target             TEXT NOT NULL DEFAULT '',
            run_key            TEXT NOT NULL,
            condition          TEXT,
            title              TEXT NOT NULL,
            body               TEXT NOT NULL,
            notify_type        TEXT NOT NULL,
            state              TEXT NOT NULL CHECK (state IN
                ('pending', 'sent', 'dead', 'uncertain', 'dropped', 'muted')),
            created_at         INTEGER NOT NULL,
            attempts           INTEGER NOT NULL DEFAULT 0,
            uncertain_attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at    INTEGER NOT NULL,
            last_attempt_at    INTEGER,
            last_error         TEXT,
            sent_at            INTEGER,
            dead_at            INTEGER,
            claimed_by         TEXT,
            claimed_until      INTEGER
        )""",
        """INSERT INTO outbox_v3 (id, event_key, channel, run_key, title, body, notify_type,
            state, created_at, attempts, next_attempt_at, last_attempt_at, last_error,
            sent_at, dead_at)
           SELECT id, event_key, channel, run_key, title, body, notify_type, state,
            created_at, attempts, next_attempt_at, last_attempt_at, last_error, sent_at,
            dead_at FROM outbox""",
        "DROP TABLE outbox",
        "ALTER TABLE outbox_v3 RENAME TO outbox",
        "CREATE INDEX outbox_lane_state_id ON outbox (channel, target, state, id)",
        "CREATE INDEX outbox_state_channel ON outbox (state, channel)",
        # Each target hears about an event once, whoever enqueues it and however often.
        "CREATE UNIQUE INDEX outbox_event_lane ON outbox (event_key, channel, target)",
    ),
    (
        # The native Slack channel's one message per run: where Slack keeps it (the channel
        # id it answered and the message's ts), per runwatch channel and run incarnation
        # (time_created), so a run id deleted and re-created starts a message of its own.
        # `destination` is the channel as configured: re-pointing a runwatch channel at
        # another Slack channel starts new messages there rather than editing old ones.
        """CREATE TABLE slack_messages (
            channel       TEXT NOT NULL,
            run_key       TEXT NOT NULL,
            incarnation   INTEGER NOT NULL,
            destination   TEXT NOT NULL,
            slack_channel TEXT NOT NULL,
            ts            TEXT NOT NULL,
            posted_at     INTEGER NOT NULL,
            updated_at    INTEGER NOT NULL,
            PRIMARY KEY (channel, run_key, incarnation)
        ) WITHOUT ROWID""",
        "CREATE INDEX slack_messages_updated_at ON slack_messages (updated_at)",
    ),
    (
        # The operator's mutes (`runwatch mute`): what, where, until when, who and why. The
        # criteria are JSON lists; a removed mute keeps its row (removed_at) until pruned.
        """CREATE TABLE mutes (
            id         INTEGER PRIMARY KEY AUTOINCREMENT,
            runs       TEXT NOT NULL DEFAULT '[]',
            projects   TEXT NOT NULL DEFAULT '[]',
            flows      TEXT NOT NULL DEFAULT '[]',
            workspaces TEXT NOT NULL DEFAULT '[]',
            channel    TEXT,
            created_at INTEGER NOT NULL,
            until      INTEGER NOT NULL,
            reason     TEXT,
            who        TEXT NOT NULL DEFAULT '',
            removed_at INTEGER
        )""",
        "CREATE INDEX mutes_until ON mutes (until)",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION


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


def store_error(error: sqlite3.Error, path: Path, doing: str) -> StoreError:
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
        return corrupt(path, text)
    return StoreError(f"the state database {path} failed while {doing}: {text}")


def corrupt(path: Path, why: str) -> StoreError:
    return StoreError(
        f"the state database {path} is corrupt or not a runwatch database ({why}); "
        "refusing to touch it. Restore it from a backup, or move it aside to start over "
        "(runwatch will then record every run again as a silent baseline)"
    )


def check_file(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version of the database behind `conn`, after refusing one that is not (a
    usable) runwatch state: written by a newer runwatch, another program's, or damaged.

    Read-only: nothing is written to a file that may be refused.
    """
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the state database {path} was written by a newer runwatch "
            f"(schema {version} > {SCHEMA_VERSION}); upgrade runwatch or point "
            "state.path elsewhere — refusing to touch it"
        )
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if (version == 0 and tables) or (version > 0 and app_id != APPLICATION_ID):
        raise StoreError(
            f"{path} is an SQLite database of another program, not runwatch's "
            "state; point state.path elsewhere — refusing to touch it"
        )
    if version > 0:
        problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise corrupt(path, "quick_check: " + " ".join(problems).replace("\n", " "))
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return version
