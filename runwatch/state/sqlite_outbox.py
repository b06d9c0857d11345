"""The outbox of the SQLite store: rows waiting to be sent, per channel and target.

Theory: a row is one message for one target (a URL of an Apprise channel, or a whole
webhook or Slack channel) of one channel: a lane. A row is `pending` until its lane accepts
it (`sent`), the operator drops it (`dropped`), or runwatch gives up: `dead` (refused for
good, or still undelivered after `delivery.max_age`) or `uncertain` (its attempts kept ending
without knowing whether the target got it: possibly delivered). Rows of muted events are
written `muted` and never sent. No row is ever deleted while it is not sent; sent rows are
pruned after 30 days. Every change is one short transaction, so operator commands may act on
rows while a daemon delivers them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from runwatch.core.model import OutboxItem
from runwatch.state.rows import OUTBOX_COLUMNS, OUTBOX_STATS_QUERY, outbox_row, outbox_stats
from runwatch.state.store import Lane, OutboxRow, OutboxStats


class _Database(Protocol):
    def reading(self, doing: str) -> AbstractContextManager[sqlite3.Connection]: ...
    def writing(self, doing: str) -> AbstractContextManager[sqlite3.Connection]: ...


def insert(tx: sqlite3.Connection, items: Sequence[OutboxItem], now: int) -> int:
    """Insert `items` in the open transaction `tx`; return how many were new."""
    if not items:
        return 0
    cursor = tx.executemany(
        "INSERT INTO outbox (event_key, channel, target, run_key, condition, title, body, "
        "notify_type, state, created_at, attempts, next_attempt_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?) "
        # Not OR IGNORE: that would also skip a row breaking NOT NULL, silently.
        "ON CONFLICT (event_key, channel, target) DO NOTHING",
        [
            (
                i.event_key,
                i.channel,
                i.target,
                i.run_key,
                i.condition,
                i.title,
                i.body,
                i.notify_type,
                i.state,
                now,
                now,
            )
            for i in items
        ],
    )
    return max(cursor.rowcount, 0)


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


class SqliteOutbox:
    """The outbox table of one SQLite store (reached as `SqliteStore.outbox`)."""

    def __init__(self, db: _Database) -> None:
        self._db = db

    def lanes(self) -> list[Lane]:
        """(channel, target) pairs with at least one pending row, sorted."""
        with self._db.reading("reading the outbox") as conn:
            rows = conn.execute(
                "SELECT DISTINCT channel, target FROM outbox WHERE state = 'pending' "
                "ORDER BY channel, target"
            ).fetchall()
        return [(channel, target) for channel, target in rows]

    def pending(self, lane: Lane, *, limit: int = 10_000) -> list[OutboxRow]:
        """The lane's pending rows, oldest first (at most `limit`)."""
        channel, target = lane
        with self._db.reading("reading the outbox") as conn:
            rows = conn.execute(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE channel = ? AND target = ? "
                "AND state = 'pending' ORDER BY id LIMIT ?",
                (channel, target, limit),
            ).fetchall()
        return [outbox_row(r) for r in rows]

    def rows(
        self,
        *,
        states: Sequence[str] = ("pending",),
        channel: str | None = None,
        ids: Sequence[int] = (),
        limit: int = 1_000,
    ) -> list[OutboxRow]:
        """Rows in `states` (optionally of one channel, or these ids), oldest first."""
        where = [f"state IN ({_marks(states)})"]
        params: list[Any] = list(states)
        if channel is not None:
            where.append("channel = ?")
            params.append(channel)
        if ids:
            where.append(f"id IN ({_marks(ids)})")
            params.extend(ids)
        with self._db.reading("reading the outbox") as conn:
            rows = conn.execute(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE {' AND '.join(where)} "
                "ORDER BY id LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [outbox_row(r) for r in rows]

    def event_payloads(self, keys: Sequence[str]) -> dict[str, str]:
        """The stored JSON of the events with these keys (those that have one)."""
        found: dict[str, str] = {}
        with self._db.reading("reading events") as conn:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                for key, payload in conn.execute(
                    f"SELECT event_key, payload FROM events WHERE event_key IN ({_marks(chunk)})",
                    chunk,
                ):
                    found[key] = payload
        return found

    def mark_sent(self, ids: Sequence[int], now_ms: int) -> None:
        self._update(
            ids,
            "state = 'sent', sent_at = ?, last_attempt_at = ?, attempts = attempts + 1",
            (now_ms, now_ms),
            "marking notifications sent",
        )

    def mark_retry(
        self,
        ids: Sequence[int],
        now_ms: int,
        next_attempt_at: int,
        error: str,
        *,
        uncertain: bool = False,
    ) -> None:
        """Record a failed attempt; `error` must be sanitized text (it is stored).
        `uncertain`: the attempt's outcome is unknown (the target may have it)."""
        self._update(
            ids,
            "attempts = attempts + 1, uncertain_attempts = uncertain_attempts + ?, "
            "last_attempt_at = ?, next_attempt_at = ?, last_error = ?",
            (int(uncertain), now_ms, next_attempt_at, error),
            "scheduling a retry",
        )

    def mark_given_up(
        self, ids: Sequence[int], now_ms: int, error: str, *, state: str, attempted: bool
    ) -> None:
        """Give up on rows: `state` 'dead' or 'uncertain'; kept, counted, retryable."""
        if state not in ("dead", "uncertain"):
            raise ValueError(f"cannot give up into state {state!r}")
        self._update(
            ids,
            "state = ?, dead_at = ?, last_error = ?, attempts = attempts + ?, "
            "uncertain_attempts = uncertain_attempts + ?, "
            "last_attempt_at = CASE WHEN ? THEN ? ELSE last_attempt_at END",
            (
                state,
                now_ms,
                error,
                int(attempted),
                int(attempted and state == "uncertain"),
                int(attempted),
                now_ms,
            ),
            "giving up on notifications",
        )

    def revive(self, ids: Sequence[int], now_ms: int) -> int:
        """Make dead, uncertain or pending rows due now, as new (the operator's retry)."""
        with self._db.writing("reviving notifications") as tx:
            cursor = tx.execute(
                "UPDATE outbox SET state = 'pending', next_attempt_at = ?, created_at = ?, "
                "attempts = 0, uncertain_attempts = 0, dead_at = NULL "
                f"WHERE id IN ({_marks(ids)}) AND state IN ('dead', 'uncertain', 'pending')",
                (now_ms, now_ms, *ids),
            )
            return max(cursor.rowcount, 0)

    def drop(self, ids: Sequence[int], now_ms: int) -> int:
        """Mark rows dropped by the operator: kept and counted, never sent."""
        with self._db.writing("dropping notifications") as tx:
            cursor = tx.execute(
                f"UPDATE outbox SET state = 'dropped', dead_at = ? WHERE id IN ({_marks(ids)}) "
                "AND state IN ('pending', 'dead', 'uncertain')",
                (now_ms, *ids),
            )
            return max(cursor.rowcount, 0)

    def stats(self, now_ms: int) -> OutboxStats:
        with self._db.reading("reading the outbox") as conn:
            rows = conn.execute(OUTBOX_STATS_QUERY).fetchall()
        return outbox_stats(rows, now_ms)

    def _update(
        self, ids: Sequence[int], assignments: str, params: tuple[Any, ...], doing: str
    ) -> None:
        if not ids:
            return
        with self._db.writing(doing) as tx:
            for chunk in _chunks(ids):
                tx.execute(
                    f"UPDATE outbox SET {assignments} WHERE id IN ({_marks(chunk)}) "
                    "AND state = 'pending'",
                    (*params, *chunk),
                )


def _chunks(ids: Sequence[int], size: int = 500) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]
