"""The outbox of the PostgreSQL store: the SQLite outbox's rows, sent by one instance per lane.

Theory: the rows and their states are those of `runwatch.state.sqlite_outbox`. What is
added is who may send them. Per-channel order and pacing live in the deliverer of ONE
process, so a lane (channel, target) is claimed whole: `pending(lane)` first takes or
renews the lane's row in `lane_claims` (free, expired, or already this instance's), then
claims the lane's pending rows (`FOR UPDATE SKIP LOCKED`, `claimed_by`/`claimed_until`).
Another instance gets no rows of that lane until the claim expires, which it does when its
holder dies or stops renewing (every mark renews the holder's claims, every pass re-takes
them). Expiry is on the database's clock; the holder also keeps, on its own monotonic clock,
when it last renewed, and `holds_lane` says no from two thirds of the claim on: a paused
instance stops sending before another can have taken over.

A row is marked (sent, retry, dead) only while `claimed_by` is still this instance: a send
by an instance whose claim was taken over is not marked a second time, and the new holder's
own send is the one recorded. At most one message is sent twice: the one in flight when its
sender died or stalled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import psycopg
from psycopg.rows import TupleRow

from runwatch.core.model import OutboxItem
from runwatch.state.rows import OUTBOX_COLUMNS, OUTBOX_STATS_QUERY, outbox_row, outbox_stats
from runwatch.state.store import Lane, OutboxRow, OutboxStats

Cursor = psycopg.Cursor[TupleRow]
NOW_MS = "(extract(epoch FROM now()) * 1000)::bigint"


class _Database(Protocol):
    def transaction(self, doing: str) -> AbstractContextManager[Cursor]: ...


def insert(cur: Cursor, items: Sequence[OutboxItem], now: int) -> int:
    """Insert `items` in the open transaction; return how many were new."""
    if not items:
        return 0
    cur.executemany(
        "INSERT INTO outbox (event_key, channel, target, run_key, condition, title, body, "
        "notify_type, state, created_at, attempts, next_attempt_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0, %s) "
        "ON CONFLICT (event_key, channel, target) DO NOTHING",
        [
            (i.event_key, i.channel, i.target, i.run_key, i.condition, i.title, i.body,
             i.notify_type, i.state, now, now)
            for i in items
        ],
    )  # fmt: skip
    return max(cur.rowcount, 0)


class PostgresOutbox:
    """The outbox table of one PostgreSQL store (reached as `PostgresStore.outbox`)."""

    def __init__(
        self, db: _Database, *, instance: str, claim_s: float, monotonic: Callable[[], float]
    ) -> None:
        self._db = db
        self._instance = instance
        self._claim_s = claim_s
        self._monotonic = monotonic
        self._held: dict[Lane, float] = {}  # lane -> monotonic time its claim was last renewed
        self._lock = threading.Lock()

    # -- claims ---------------------------------------------------------------------------

    def holds_lane(self, lane: Lane) -> bool:
        """Whether this instance may send the lane's rows now (see the theory above)."""
        with self._lock:
            renewed = self._held.get(lane)
        return renewed is not None and self._monotonic() - renewed < self._claim_s * 2 / 3

    def _renew(self, cur: Cursor, started: float) -> None:
        cur.execute(
            "UPDATE lane_claims SET expires_at = now() + make_interval(secs => %s) "
            "WHERE holder = %s AND expires_at > now() RETURNING channel, target",
            (self._claim_s, self._instance),
        )
        held = {(str(c), str(t)) for c, t in cur.fetchall()}
        cur.execute(
            f"UPDATE outbox SET claimed_until = {NOW_MS} + %s "
            "WHERE claimed_by = %s AND state = 'pending'",
            (int(self._claim_s * 1000), self._instance),
        )
        with self._lock:
            self._held = {lane: started for lane in held}

    def release(self) -> None:
        """Give up this instance's lane claims (a clean stop): another may send at once."""
        with self._db.transaction("releasing outbox claims") as cur:
            cur.execute("DELETE FROM lane_claims WHERE holder = %s", (self._instance,))
            cur.execute(
                "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL "
                "WHERE claimed_by = %s AND state = 'pending'",
                (self._instance,),
            )
        with self._lock:
            self._held.clear()

    def claims(self) -> list[tuple[str, str, str, Any]]:
        """(channel, target, holder, expires_at) of every unexpired lane claim."""
        with self._db.transaction("reading outbox claims") as cur:
            cur.execute(
                "SELECT channel, target, holder, expires_at FROM lane_claims "
                "WHERE expires_at > now() ORDER BY channel, target"
            )
            return [(str(a), str(b), str(c), d) for a, b, c, d in cur.fetchall()]

    # -- what delivery asks -------------------------------------------------------------------

    def lanes(self) -> list[Lane]:
        """Lanes with a pending row that no other live instance has claimed, sorted."""
        with self._db.transaction("reading the outbox") as cur:
            cur.execute(
                "SELECT DISTINCT o.channel, o.target FROM outbox o WHERE o.state = 'pending' "
                "AND NOT EXISTS (SELECT 1 FROM lane_claims c WHERE c.channel = o.channel "
                "AND c.target = o.target AND c.holder <> %s AND c.expires_at > now()) "
                "ORDER BY o.channel, o.target",
                (self._instance,),
            )
            return [(str(c), str(t)) for c, t in cur.fetchall()]

    def pending(self, lane: Lane, *, limit: int = 10_000) -> list[OutboxRow]:
        """The lane's pending rows, oldest first, claimed for this instance; none while
        another live instance holds the lane."""
        channel, target = lane
        started = self._monotonic()
        with self._db.transaction("claiming outbox rows") as cur:
            cur.execute(
                "INSERT INTO lane_claims (channel, target, holder, expires_at) "
                "VALUES (%s, %s, %s, now() + make_interval(secs => %s)) "
                "ON CONFLICT (channel, target) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at WHERE lane_claims.holder = excluded.holder "
                "OR lane_claims.expires_at <= now() RETURNING holder",
                (channel, target, self._instance, self._claim_s),
            )
            if cur.fetchone() is None:
                with self._lock:
                    self._held.pop(lane, None)
                return []
            cur.execute(
                f"UPDATE outbox SET claimed_by = %s, claimed_until = {NOW_MS} + %s "
                "WHERE id IN (SELECT id FROM outbox WHERE channel = %s AND target = %s "
                "AND state = 'pending' AND (claimed_by IS NULL OR claimed_by = %s "
                f"OR claimed_until <= {NOW_MS}) ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"RETURNING {OUTBOX_COLUMNS}",
                (self._instance, int(self._claim_s * 1000), channel, target, self._instance,
                 limit),
            )  # fmt: skip
            rows = sorted((outbox_row(r) for r in cur.fetchall()), key=lambda r: r.id)
        with self._lock:
            self._held[lane] = started
        return rows

    def rows(
        self,
        *,
        states: Sequence[str] = ("pending",),
        channel: str | None = None,
        ids: Sequence[int] = (),
        limit: int = 1_000,
    ) -> list[OutboxRow]:
        where = ["state = ANY(%s)"]
        params: list[Any] = [list(states)]
        if channel is not None:
            where.append("channel = %s")
            params.append(channel)
        if ids:
            where.append("id = ANY(%s)")
            params.append(list(ids))
        with self._db.transaction("reading the outbox") as cur:
            cur.execute(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE {' AND '.join(where)} "
                "ORDER BY id LIMIT %s",
                (*params, limit),
            )
            return [outbox_row(r) for r in cur.fetchall()]

    def event_payloads(self, keys: Sequence[str]) -> dict[str, str]:
        with self._db.transaction("reading events") as cur:
            cur.execute(
                "SELECT event_key, payload FROM events WHERE event_key = ANY(%s)", (list(keys),)
            )
            return {str(k): str(p) for k, p in cur.fetchall()}

    def mark_sent(self, ids: Sequence[int], now_ms: int) -> None:
        self._update(
            ids,
            "state = 'sent', sent_at = %s, last_attempt_at = %s, attempts = attempts + 1",
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
        self._update(
            ids,
            "attempts = attempts + 1, uncertain_attempts = uncertain_attempts + %s, "
            "last_attempt_at = %s, next_attempt_at = %s, last_error = %s",
            (int(uncertain), now_ms, next_attempt_at, error),
            "scheduling a retry",
        )

    def mark_given_up(
        self, ids: Sequence[int], now_ms: int, error: str, *, state: str, attempted: bool
    ) -> None:
        if state not in ("dead", "uncertain"):
            raise ValueError(f"cannot give up into state {state!r}")
        self._update(
            ids,
            "state = %s, dead_at = %s, last_error = %s, attempts = attempts + %s, "
            "uncertain_attempts = uncertain_attempts + %s, "
            "last_attempt_at = CASE WHEN %s THEN %s ELSE last_attempt_at END",
            (state, now_ms, error, int(attempted), int(attempted and state == "uncertain"),
             attempted, now_ms),
            "giving up on notifications",
        )  # fmt: skip

    def revive(self, ids: Sequence[int], now_ms: int) -> int:
        with self._db.transaction("reviving notifications") as cur:
            cur.execute(
                "UPDATE outbox SET state = 'pending', next_attempt_at = %s, created_at = %s, "
                "attempts = 0, uncertain_attempts = 0, dead_at = NULL "
                "WHERE id = ANY(%s) AND state IN ('dead', 'uncertain', 'pending')",
                (now_ms, now_ms, list(ids)),
            )
            return max(cur.rowcount, 0)

    def drop(self, ids: Sequence[int], now_ms: int) -> int:
        with self._db.transaction("dropping notifications") as cur:
            cur.execute(
                "UPDATE outbox SET state = 'dropped', dead_at = %s WHERE id = ANY(%s) "
                "AND state IN ('pending', 'dead', 'uncertain')",
                (now_ms, list(ids)),
            )
            return max(cur.rowcount, 0)

    def stats(self, now_ms: int) -> OutboxStats:
        with self._db.transaction("reading the outbox") as cur:
            cur.execute(OUTBOX_STATS_QUERY)
            rows = cur.fetchall()
        return outbox_stats(rows, now_ms)

    def _update(
        self, ids: Sequence[int], assignments: str, params: tuple[Any, ...], doing: str
    ) -> None:
        if not ids:
            return
        started = self._monotonic()
        with self._db.transaction(doing) as cur:
            # Only this instance's claims (or rows nobody claimed): a row taken over by
            # another instance is that one's to record.
            cur.execute(
                f"UPDATE outbox SET {assignments} WHERE id = ANY(%s) AND state = 'pending' "
                "AND (claimed_by = %s OR claimed_by IS NULL)",
                (*params, list(ids), self._instance),
            )
            self._renew(cur, started)
