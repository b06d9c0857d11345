"""The runs and workspaces tables of a SQLite store: what the poll cycle reads and writes
outside a poll's commit (`SqliteStore` delegates here), and what the operator's commands
ask — counts and the latest runs, answered by SQL so `runwatch status` and `runwatch runs`
stay quick at 100,000 tracked runs (neither loads them all).

Theory: a run is unfinished when its latest condition is not terminal (or it has none yet),
as `core.run_index.is_unfinished` says; the caller passes the terminal set of its
configuration. "Newest change first" orders by the latest condition's time, a run without a
condition by its creation. A condition glob has the rules' semantics (case-sensitive, whole
value): it is matched in Python against the few distinct conditions, then used as an IN list.
"""

from __future__ import annotations

import fnmatch
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from runwatch.core.model import RunState
from runwatch.state.rows import (
    RUN_COLUMNS,
    RUN_PLACEHOLDERS,
    WORKSPACE_COLUMNS,
    gc_paused,
    run_from_row,
    run_params,
    workspace_meta,
)
from runwatch.state.store import WorkspaceMeta


class _Database(Protocol):
    def reading(self, doing: str) -> AbstractContextManager[sqlite3.Connection]: ...
    def writing(self, doing: str) -> AbstractContextManager[sqlite3.Connection]: ...


# -- what the poll cycle reads and writes---------------------------------------------------


def workspace(db: _Database, organization_id: str) -> WorkspaceMeta:
    """What the store knows of a workspace; all None for one never polled."""
    with db.reading("reading a workspace") as conn:
        row = conn.execute(
            f"SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE organization_id = ?",
            (organization_id,),
        ).fetchone()
    return workspace_meta(organization_id, row)


def load_runs(db: _Database, organization_id: str) -> dict[str, RunState]:
    """Every tracked run of a workspace, by run id (tombstones aside)."""
    with db.reading("reading runs") as conn, gc_paused():
        rows = conn.execute(
            f"SELECT {RUN_COLUMNS} FROM runs "
            "WHERE organization_id = ? AND deleted_at IS NULL",
            (organization_id,),
        )
        return {row[1]: run_from_row(row) for row in rows}


def iter_runs(db: _Database, organization_id: str) -> Iterator[RunState]:
    """Every tracked run of a workspace (tombstones aside), one at a time: building the
    index of 100,000 runs never holds them all at once."""
    with db.reading("reading runs") as conn, gc_paused():
        cursor = conn.execute(
            f"SELECT {RUN_COLUMNS} FROM runs "
            "WHERE organization_id = ? AND deleted_at IS NULL",
            (organization_id,),
        )
        while rows := cursor.fetchmany(1_000):
            yield from map(run_from_row, rows)


def load_run_states(
    db: _Database, organization_id: str, run_ids: Sequence[str]
) -> dict[str, RunState]:
    """The stored states of these runs of a workspace (those it has), by run id."""
    found: dict[str, RunState] = {}
    with db.reading("reading runs") as conn:
        for start in range(0, len(run_ids), 500):
            chunk = list(run_ids[start : start + 500])
            marks = ", ".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT {RUN_COLUMNS} FROM runs WHERE organization_id = ? "
                f"AND deleted_at IS NULL AND run_id IN ({marks})",
                (organization_id, *chunk),
            ):
                found[row[1]] = run_from_row(row)
    return found


def load_tombstones(db: _Database, organization_id: str) -> dict[str, RunState]:
    """The runs of a workspace confirmed deleted and still remembered, by run id."""
    with db.reading("reading runs") as conn:
        rows = conn.execute(
            f"SELECT {RUN_COLUMNS} FROM runs "
            "WHERE organization_id = ? AND deleted_at IS NOT NULL",
            (organization_id,),
        )
        return {row[1]: run_from_row(row) for row in rows}


def tracked_runs(db: _Database) -> list[RunState]:
    """Every tracked run, by organization, newest first (for `runwatch runs`)."""
    with db.reading("reading runs") as conn, gc_paused():
        rows = conn.execute(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE deleted_at IS NULL "
            "ORDER BY organization_id, time_created DESC"
        )
        return [run_from_row(row) for row in rows]


def record_runs(db: _Database, organization_id: str, states: Sequence[RunState]) -> None:
    """Write run states alone, in one transaction: a part of a baseline (no events, no
    bookkeeping: the baseline counts as done when its last part commits with it)."""
    with db.writing(f"recording runs of {organization_id}") as tx:
        tx.executemany(
            f"INSERT OR REPLACE INTO runs ({RUN_COLUMNS}) VALUES ({RUN_PLACEHOLDERS})",
            (run_params(run) for run in states),
        )


def set_resume_at(db: _Database, organization_id: str, resume_at: int | None) -> None:
    """Remember until when the API asked not to be polled (None: no such wish)."""
    with db.writing(f"recording when to poll {organization_id} again") as tx:
        tx.execute(
            "INSERT INTO workspaces (organization_id, resume_at) VALUES (?, ?) "
            "ON CONFLICT (organization_id) DO UPDATE SET resume_at = excluded.resume_at",
            (organization_id, resume_at),
        )


# -- what the operator's commands read ------------------------------------------------


def run_counts(db: _Database, terminal: frozenset[str]) -> dict[str, tuple[int, int]]:
    """Organization id -> (runs tracked, of which unfinished); tombstones aside."""
    with db.reading("counting runs") as conn:
        rows = conn.execute(
            f"SELECT organization_id, count(*), sum({_unfinished(terminal)}) FROM runs "
            "WHERE deleted_at IS NULL GROUP BY organization_id",
            sorted(terminal),
        ).fetchall()
    return {org: (total, unfinished or 0) for org, total, unfinished in rows}


def latest_runs(
    db: _Database,
    *,
    terminal: frozenset[str],
    active: bool = False,
    condition: str | None = None,
    limit: int = 50,
) -> tuple[list[RunState], int]:
    """The tracked runs, newest change first, at most `limit`; and how many match in all.

    `active`: only unfinished runs; `condition`: only runs whose latest condition matches
    this glob.
    """
    where = ["deleted_at IS NULL"]
    params: list[Any] = []
    with db.reading("reading runs") as conn:
        if active:
            where.append(_unfinished(terminal))
            params.extend(sorted(terminal))
        if condition is not None:
            values = _matching(conn, condition)
            if not values:
                return [], 0
            where.append(f"condition IN ({_marks(values)})")
            params.extend(values)
        clause = " AND ".join(where)
        total = conn.execute(f"SELECT count(*) FROM runs WHERE {clause}", params).fetchone()[0]
        rows = conn.execute(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE {clause} "
            "ORDER BY coalesce(last_transition_time, time_created) DESC, run_id LIMIT ?",
            (*params, limit),
        ).fetchall()
    return [run_from_row(row) for row in rows], int(total)


def _unfinished(terminal: frozenset[str]) -> str:
    if not terminal:
        return "1"
    return f"(condition IS NULL OR condition NOT IN ({_marks(terminal)}))"


def _matching(conn: sqlite3.Connection, pattern: str) -> list[str]:
    found = conn.execute("SELECT DISTINCT condition FROM runs WHERE condition IS NOT NULL")
    return [value for (value,) in found if fnmatch.fnmatchcase(value, pattern)]


def _marks(values: Sequence[object] | frozenset[str]) -> str:
    return ", ".join("?" * len(values))
