"""Copy a SQLite state into PostgreSQL: the move from one machine to several instances.

Theory: what makes a state worth keeping is what spares the new home a fresh baseline and
keeps every promise already made: the workspaces' bookkeeping (baselined, last listings),
every run as last seen (tombstones too), the events recorded (a transition seen again after
the move is still not sent twice), the undelivered outbox rows (pending, dead and uncertain,
in their order), the self-alert state and other meta, the Slack message ids (a run's
message is still edited in place) and the active mutes. Sent, muted and dropped rows are
history and stay behind. Everything is written in ONE transaction into a destination that
holds no state yet: a failed copy leaves it empty, a second copy is refused rather than
merged. The source is opened read-only and never changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from runwatch.errors import StoreError
from runwatch.state.postgres import PostgresStore
from runwatch.state.rows import RUN_COLUMNS
from runwatch.state.sqlite import SqliteStore

_TABLES: dict[str, tuple[str, str]] = {
    # table: (columns, which rows)
    "workspaces": (
        "organization_id, baselined_at, last_full_listing, last_success, last_failure, "
        "last_error, resume_at",
        "1 = 1",
    ),
    "runs": (RUN_COLUMNS, "1 = 1"),
    "events": (
        "event_key, organization_id, run_id, kind, payload, created_at",
        "1 = 1 ORDER BY id",
    ),
    "outbox": (
        "event_key, channel, target, run_key, condition, title, body, notify_type, state, "
        "created_at, attempts, uncertain_attempts, next_attempt_at, last_attempt_at, "
        "last_error, sent_at, dead_at",
        "state IN ('pending', 'dead', 'uncertain') ORDER BY id",
    ),
    "meta": ("key, value", "1 = 1"),
    "slack_messages": (
        "channel, run_key, incarnation, destination, slack_channel, ts, posted_at, updated_at",
        "1 = 1",
    ),
    "mutes": (
        "runs, projects, flows, workspaces, channel, created_at, until, reason, who",
        "removed_at IS NULL AND until > ? ORDER BY id",
    ),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class Copied:
    """How many rows of each table were copied."""

    counts: dict[str, int]


def copy_state(source: SqliteStore, destination: PostgresStore, *, now_ms: int) -> Copied:
    """Copy `source` into the empty `destination` in one transaction (see the theory)."""
    counts: dict[str, int] = {}
    with destination.transaction("copying a SQLite state in") as cur:
        cur.execute(
            "SELECT (SELECT count(*) FROM workspaces) + (SELECT count(*) FROM runs) "
            "+ (SELECT count(*) FROM outbox)"
        )
        row = cur.fetchone()
        if row is not None and row[0]:
            raise StoreError(
                f"the PostgreSQL state {destination.where} already holds runwatch state; "
                "migrate-state copies into an empty one only (nothing was changed)"
            )
        for table, (columns, which) in _TABLES.items():
            params = (now_ms,) if "?" in which else ()
            with source.reading(f"reading its {table}") as conn:
                rows = conn.execute(f"SELECT {columns} FROM {table} WHERE {which}", params)
                values = [tuple(r) for r in rows]
            marks = ", ".join(["%s"] * len(columns.split(",")))
            if values:
                cur.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", values)
            counts[table] = len(values)
    return Copied(counts=counts)
