"""The mutes of the SQLite store: what the operator silenced, until when.

Theory: see `runwatch.core.mutes` for what a mute means. Here: one row per mute, its
criteria as JSON lists; `active` is what the poll cycle reads at every poll; `add` and
`remove` are the operator's, each one short transaction that never needs the daemon's
writer lock, so they work while a daemon polls. A removed mute keeps its row (`removed_at`)
and an expired one is simply no longer active; both are pruned with the rest of the old
rows after 30 days.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from runwatch.core.mutes import Mute

_COLUMNS = "id, runs, projects, flows, workspaces, channel, created_at, until, reason, who"


class _Database(Protocol):
    def reading(self, doing: str) -> AbstractContextManager[sqlite3.Connection]: ...
    def writing(self, doing: str) -> AbstractContextManager[sqlite3.Connection]: ...


class SqliteMutes:
    """The mutes table of one SQLite store (reached as `SqliteStore.mutes`)."""

    def __init__(self, db: _Database) -> None:
        self._db = db

    def add(self, mute: Mute) -> Mute:
        """Record `mute`; return it with the id the store gave it."""
        if not (mute.runs or mute.projects or mute.flows or mute.workspaces):
            raise ValueError("a mute must name a run, project, flow or workspace")
        with self._db.writing("recording a mute") as tx:
            cursor = tx.execute(
                "INSERT INTO mutes (runs, projects, flows, workspaces, channel, created_at, "
                "until, reason, who) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    json.dumps(list(mute.runs)),
                    json.dumps(list(mute.projects)),
                    json.dumps(list(mute.flows)),
                    json.dumps(list(mute.workspaces)),
                    mute.channel,
                    mute.created_at,
                    mute.until,
                    mute.reason,
                    mute.who,
                ),
            )
            mute_id = cursor.lastrowid
        assert mute_id is not None
        return dataclasses.replace(mute, id=mute_id)

    def active(self, now_ms: int) -> list[Mute]:
        """The mutes in force at `now_ms`, oldest first."""
        with self._db.reading("reading mutes") as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM mutes WHERE until > ? AND removed_at IS NULL ORDER BY id",
                (now_ms,),
            ).fetchall()
        return [mute_from_row(row) for row in rows]

    def remove(self, ids: Sequence[int], now_ms: int) -> int:
        """End these mutes now; return how many were active."""
        if not ids:
            return 0
        marks = ", ".join("?" * len(ids))
        with self._db.writing("removing mutes") as tx:
            cursor = tx.execute(
                f"UPDATE mutes SET removed_at = ? WHERE id IN ({marks}) "
                "AND removed_at IS NULL AND until > ?",
                (now_ms, *ids, now_ms),
            )
            return max(cursor.rowcount, 0)

    def remove_all(self, now_ms: int) -> int:
        """End every active mute now; return how many there were."""
        with self._db.writing("removing mutes") as tx:
            cursor = tx.execute(
                "UPDATE mutes SET removed_at = ? WHERE removed_at IS NULL AND until > ?",
                (now_ms, now_ms),
            )
            return max(cursor.rowcount, 0)


def _strings(text: str) -> tuple[str, ...]:
    try:
        value = json.loads(text)
    except ValueError:
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def mute_from_row(row: tuple[Any, ...]) -> Mute:
    (id_, runs, projects, flows, workspaces, channel, created_at, until, reason, who) = row
    return Mute(
        id=id_,
        runs=_strings(runs),
        projects=_strings(projects),
        flows=_strings(flows),
        workspaces=_strings(workspaces),
        channel=channel,
        created_at=created_at,
        until=until,
        reason=reason,
        who=who or "",
    )
