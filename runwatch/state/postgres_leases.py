"""Workspace leases and instance heartbeats in the PostgreSQL store.

Theory: a lease row (workspace, holder, expires_at) says which instance polls a workspace;
it is valid while `expires_at > now()` on the database's clock, so hosts whose clocks
disagree still agree on it. Each instance runs `tick` every lease/3, in ONE transaction:
heartbeat its `instances` row, renew the leases it holds, and move towards its fair share,
ceil(workspaces / live instances): above it, it releases the surplus (another instance
takes it at its next tick); below it, it takes expired leases (`FOR UPDATE SKIP LOCKED`, so
two instances never take the same one, and a lease locked by its holder's commit in flight
is skipped, not waited for). A workspace left expired for a whole lease (no one's share
covers it: a configuration that differs between instances) is taken by whoever sees it,
share or not, so none is orphaned.

A holder is this process, not this host: `instance` is the configured name plus a token of
the process, so a restarted daemon (or a second machine configured with the same name) never
mistakes an older process's lease for its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import psycopg
from psycopg.rows import TupleRow

Cursor = psycopg.Cursor[TupleRow]


class _Database(Protocol):
    def transaction(self, doing: str) -> AbstractContextManager[Cursor]: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaseTick:
    """What one tick found: the leases held after it, those newly taken, live instances."""

    held: frozenset[str]
    acquired: frozenset[str]
    released: frozenset[str]
    live: int


@dataclass(frozen=True, kw_only=True, slots=True)
class InstanceRow:
    name: str
    started_at: datetime
    heartbeat_at: datetime
    expires_at: datetime
    alive: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class LeaseRow:
    workspace: str
    holder: str
    expires_at: datetime
    valid: bool


class PostgresLeases:
    """The leases and instances tables of one PostgreSQL store (`PostgresStore.leases`)."""

    def __init__(self, db: _Database, *, instance: str) -> None:
        self._db = db
        self.instance = instance

    def tick(self, workspaces: Sequence[str], lease_s: float) -> LeaseTick:
        """Heartbeat, renew, rebalance (see the theory above); one transaction."""
        me, ws = self.instance, sorted(set(workspaces))
        with self._db.transaction("renewing workspace leases") as cur:
            cur.execute(
                "INSERT INTO instances (name, expires_at) "
                "VALUES (%s, now() + make_interval(secs => %s)) ON CONFLICT (name) DO UPDATE "
                "SET heartbeat_at = now(), expires_at = excluded.expires_at",
                (me, lease_s),
            )
            cur.execute("DELETE FROM instances WHERE expires_at < now() - interval '1 day'")
            cur.execute("SELECT count(*) FROM instances WHERE expires_at > now()")
            row = cur.fetchone()
            live = max(1, int(row[0]) if row else 1)
            cur.execute(
                "INSERT INTO leases (workspace, expires_at) SELECT unnest(%s::text[]), now() "
                "ON CONFLICT (workspace) DO NOTHING",
                (ws,),
            )
            # Leases of workspaces this configuration no longer names go at once.
            cur.execute(
                "UPDATE leases SET holder = '', expires_at = now() "
                "WHERE holder = %s AND NOT (workspace = ANY(%s))",
                (me, ws),
            )
            cur.execute(
                "UPDATE leases SET expires_at = now() + make_interval(secs => %s) "
                "WHERE holder = %s AND expires_at > now() AND workspace = ANY(%s) "
                "RETURNING workspace",
                (lease_s, me, ws),
            )
            held = {str(r[0]) for r in cur.fetchall()}
            fair = math.ceil(len(ws) / live)
            released: set[str] = set()
            if len(held) > fair:
                released = set(sorted(held)[fair:])
                cur.execute(
                    "UPDATE leases SET holder = '', expires_at = now() "
                    "WHERE holder = %s AND workspace = ANY(%s)",
                    (me, sorted(released)),
                )
                held -= released
            acquired: set[str] = set()
            want = max(0, fair - len(held))
            if want:
                acquired |= _take(cur, me, ws, lease_s, expired_for=0.0, limit=want)
            # Expired for a whole lease and in no one's share: taken whatever the share.
            acquired |= _take(cur, me, ws, lease_s, expired_for=lease_s, limit=len(ws))
            acquired -= released
        return LeaseTick(
            held=frozenset(held | acquired),
            acquired=frozenset(acquired),
            released=frozenset(released),
            live=live,
        )

    def release_all(self) -> None:
        """A clean stop: every lease of this instance free now, its heartbeat gone."""
        with self._db.transaction("releasing workspace leases") as cur:
            cur.execute(
                "UPDATE leases SET holder = '', expires_at = now() WHERE holder = %s",
                (self.instance,),
            )
            cur.execute("DELETE FROM instances WHERE name = %s", (self.instance,))

    def instances(self) -> list[InstanceRow]:
        with self._db.transaction("reading instances") as cur:
            cur.execute(
                "SELECT name, started_at, heartbeat_at, expires_at, expires_at > now() "
                "FROM instances ORDER BY name"
            )
            return [
                InstanceRow(name=n, started_at=s, heartbeat_at=h, expires_at=e, alive=bool(a))
                for n, s, h, e, a in cur.fetchall()
            ]

    def leases(self) -> list[LeaseRow]:
        with self._db.transaction("reading leases") as cur:
            cur.execute(
                "SELECT workspace, holder, expires_at, expires_at > now() AND holder <> '' "
                "FROM leases ORDER BY workspace"
            )
            return [
                LeaseRow(workspace=w, holder=h, expires_at=e, valid=bool(v))
                for w, h, e, v in cur.fetchall()
            ]


def _take(
    cur: Cursor, me: str, ws: Sequence[str], lease_s: float, *, expired_for: float, limit: int
) -> set[str]:
    """Take up to `limit` leases expired for `expired_for` seconds; return their workspaces."""
    cur.execute(
        "UPDATE leases SET holder = %s, acquired_at = now(), "
        "expires_at = now() + make_interval(secs => %s) WHERE workspace IN ("
        "SELECT workspace FROM leases WHERE workspace = ANY(%s) "
        "AND expires_at <= now() - make_interval(secs => %s) "
        "ORDER BY workspace LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING workspace",
        (me, lease_s, list(ws), expired_for, limit),
    )
    return {str(r[0]) for r in cur.fetchall()}
