"""What the operator's commands ask of the runs table of a SQLite store: counts and the
latest runs, answered by SQL so `runwatch status` and `runwatch runs` stay quick at 100,000
tracked runs (neither loads them all).

Theory: a run is unfinished when its latest condition is not terminal (or it has none yet),
as `core.run_index.is_unfinished` says; the caller passes the terminal set of its
configuration. "Newest change first" orders by the latest condition's time, a run without a
condition by its creation. A condition glob has the rules' semantics (case-sensitive, whole
value): it is matched in Python against the few distinct conditions, then used as an IN list.
"""

from __future__ import annotations

import fnmatch
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from runwatch.core.model import RunState
from runwatch.state.rows import RUN_COLUMNS, run_from_row


class _Database(Protocol):
    def reading(self, doing: str) -> AbstractContextManager[sqlite3.Connection]: ...


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
