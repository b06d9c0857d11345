"""The PostgreSQL schema, its migrations, and what psycopg's errors mean to an operator.

The tables are those of the SQLite schema (version 5 there), with epoch milliseconds as
BIGINT, plus what several instances need: `leases` (which instance polls which workspace,
until when by the database's clock), `instances` (who is alive, from their heartbeats) and
`lane_claims` (which instance sends a lane's rows). Versions are counted on their own in
`runwatch_schema`; each migration runs in one transaction under a transaction-scoped
advisory lock, so two daemons starting together migrate once, and a crash mid-migration
leaves the previous version whole.

How it fails: every psycopg error becomes a StoreError naming the database by host, port
and name only (never the URL: it may hold a password) and saying what to do. A schema that
holds tables but no `runwatch_schema` is another program's and is refused, never reset.
"""

from __future__ import annotations

import urllib.parse

import psycopg
import psycopg_pool
from psycopg.rows import TupleRow

from runwatch.errors import StoreError

SCHEMA_VERSION = 1
MIGRATION_LOCK = 0x72776368  # the advisory lock key migrations take ("rwch")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE workspaces (
            organization_id   TEXT PRIMARY KEY,
            baselined_at      BIGINT,
            last_full_listing BIGINT,
            last_success      BIGINT,
            last_failure      BIGINT,
            last_error        TEXT,
            resume_at         BIGINT
        )""",
        """CREATE TABLE runs (
            organization_id      TEXT NOT NULL,
            run_id               TEXT NOT NULL,
            condition            TEXT,
            status               TEXT,
            last_transition_time BIGINT,
            reason               TEXT,
            message              TEXT,
            time_created         BIGINT NOT NULL,
            last_updated         BIGINT,
            flow_name            TEXT,
            training_project     TEXT,
            etag                 TEXT,
            log                  TEXT,
            killed_at            BIGINT,
            attributes           TEXT,
            generation           BIGINT,
            seen_at              BIGINT,
            changed_at           BIGINT,
            marks                TEXT,
            deleted_at           BIGINT,
            PRIMARY KEY (organization_id, run_id)
        )""",
        """CREATE TABLE events (
            id              BIGSERIAL PRIMARY KEY,
            event_key       TEXT NOT NULL UNIQUE,
            organization_id TEXT NOT NULL,
            run_id          TEXT NOT NULL,
            kind            TEXT NOT NULL,
            payload         TEXT NOT NULL,
            created_at      BIGINT NOT NULL
        )""",
        "CREATE INDEX events_created_at ON events (created_at)",
        # A sequence never hands out an id twice, so "oldest first" is "lowest id" as in SQLite.
        """CREATE TABLE outbox (
            id                 BIGSERIAL PRIMARY KEY,
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
            created_at         BIGINT NOT NULL,
            attempts           INTEGER NOT NULL DEFAULT 0,
            uncertain_attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at    BIGINT NOT NULL,
            last_attempt_at    BIGINT,
            last_error         TEXT,
            sent_at            BIGINT,
            dead_at            BIGINT,
            claimed_by         TEXT,
            claimed_until      BIGINT
        )""",
        "CREATE INDEX outbox_lane_state_id ON outbox (channel, target, state, id)",
        "CREATE INDEX outbox_state_channel ON outbox (state, channel)",
        "CREATE UNIQUE INDEX outbox_event_lane ON outbox (event_key, channel, target)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE slack_messages (
            channel       TEXT NOT NULL,
            run_key       TEXT NOT NULL,
            incarnation   BIGINT NOT NULL,
            destination   TEXT NOT NULL,
            slack_channel TEXT NOT NULL,
            ts            TEXT NOT NULL,
            posted_at     BIGINT NOT NULL,
            updated_at    BIGINT NOT NULL,
            PRIMARY KEY (channel, run_key, incarnation)
        )""",
        "CREATE INDEX slack_messages_updated_at ON slack_messages (updated_at)",
        """CREATE TABLE mutes (
            id         BIGSERIAL PRIMARY KEY,
            runs       TEXT NOT NULL DEFAULT '[]',
            projects   TEXT NOT NULL DEFAULT '[]',
            flows      TEXT NOT NULL DEFAULT '[]',
            workspaces TEXT NOT NULL DEFAULT '[]',
            channel    TEXT,
            created_at BIGINT NOT NULL,
            until      BIGINT NOT NULL,
            reason     TEXT,
            who        TEXT NOT NULL DEFAULT '',
            removed_at BIGINT
        )""",
        "CREATE INDEX mutes_until ON mutes (until)",
        # Several instances. Expiry is the database's clock (now()), never a host's: two
        # hosts whose clocks disagree still agree on whether a lease has expired.
        """CREATE TABLE instances (
            name         TEXT PRIMARY KEY,
            started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
            heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            expires_at   TIMESTAMPTZ NOT NULL
        )""",
        """CREATE TABLE leases (
            workspace   TEXT PRIMARY KEY,
            holder      TEXT NOT NULL DEFAULT '',
            acquired_at TIMESTAMPTZ,
            expires_at  TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
        )""",
        """CREATE TABLE lane_claims (
            channel    TEXT NOT NULL,
            target     TEXT NOT NULL,
            holder     TEXT NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (channel, target)
        )""",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION


def describe_url(url: str) -> str:
    """The database as an operator may read it anywhere: host, port and name, no user and no
    password (a URL's userinfo or ?password= never reaches a log, an error or `status`)."""
    try:
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        host = parts.hostname or query.get("host") or "localhost"
        port = parts.port or query.get("port") or 5432
    except ValueError:
        return "postgresql://(unparsable URL)"
    name = parts.path.lstrip("/") or query.get("dbname") or "(default database)"
    return f"postgresql://{host}:{port}/{name}"


def store_error(error: Exception, where: str, doing: str) -> StoreError:
    """Translate a psycopg (or pool) error into what the operator should do about it."""
    if isinstance(error, psycopg_pool.PoolTimeout | psycopg.OperationalError):
        # libpq's messages name host and user, never the password; the first line is enough.
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return StoreError(
            f"the PostgreSQL state database {where} is unreachable ({doing}: {first}); "
            "runwatch keeps going and retries — check that the database is up and reachable"
        )
    if isinstance(error, psycopg.errors.InsufficientPrivilege):
        return StoreError(
            f"the PostgreSQL state database {where} refused {doing} (insufficient privilege): "
            "grant the runwatch role CREATE and write access on its schema"
        )
    text = " ".join(str(error).split())
    return StoreError(f"the PostgreSQL state database {where} failed while {doing}: {text}")


def check_schema(cur: psycopg.Cursor[TupleRow], where: str) -> int:
    """The schema version of the current schema, after refusing one that is not runwatch's
    (tables but no version) or was written by a newer runwatch."""
    cur.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
    )
    row = cur.fetchone()
    tables = int(row[0]) if row else 0
    cur.execute(
        "SELECT 1 FROM information_schema.tables "
        "WHERE table_schema = current_schema() AND table_name = 'runwatch_schema'"
    )
    if cur.fetchone() is None:
        if tables:
            raise StoreError(
                f"the schema of {where} holds tables of another program, not runwatch's "
                "state; give runwatch a database (or a schema, ?options=-csearch_path%3D...) "
                "of its own — refusing to touch it"
            )
        return 0
    cur.execute("SELECT version FROM runwatch_schema")
    row = cur.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the state database {where} was written by a newer runwatch (schema {version} > "
            f"{SCHEMA_VERSION}); upgrade runwatch — refusing to touch it"
        )
    return version


def migrate(conn: psycopg.Connection[TupleRow], where: str) -> int:
    """Bring the current schema to SCHEMA_VERSION; return the version found before."""
    with conn.transaction(), conn.cursor() as cur:
        # Transaction-scoped: released at commit or rollback, even if the session is lost.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        found = check_schema(cur, where)
        if found == 0:
            cur.execute("CREATE TABLE runwatch_schema (version INTEGER NOT NULL)")
            cur.execute("INSERT INTO runwatch_schema (version) VALUES (0)")
        for target, statements in enumerate(MIGRATIONS[found:], start=found + 1):
            for statement in statements:
                cur.execute(statement)
            cur.execute("UPDATE runwatch_schema SET version = %s", (target,))
    return found
