"""What the operator's commands ask of the runs table of a PostgreSQL store: counts and the
latest runs, answered by SQL (the same answers as `runwatch.state.sqlite_runs`, whose
theory applies: unfinished = latest condition not terminal; a condition glob matched in
Python against the few distinct conditions, then used as a list)."""

from __future__ import annotations

import fnmatch
from contextlib import AbstractContextManager
from typing import Any, Protocol

import psycopg
from psycopg.rows import TupleRow

from runwatch.core.model import RunState
from runwatch.state.rows import RUN_COLUMNS, run_from_row

Cursor = psycopg.Cursor[TupleRow]
_UNFINISHED = "(condition IS NULL OR NOT (condition = ANY(%s)))"


class _Database(Protocol):
    def transaction(self, doing: str) -> AbstractContextManager[Cursor]: ...


def run_counts(db: _Database, terminal: frozenset[str]) -> dict[str, tuple[int, int]]:
    """Organization id -> (runs tracked, of which unfinished); tombstones aside."""
    with db.transaction("counting runs") as cur:
        cur.execute(
            f"SELECT organization_id, count(*), count(*) FILTER (WHERE {_UNFINISHED}) "
            "FROM runs WHERE deleted_at IS NULL GROUP BY organization_id",
            (sorted(terminal),),
        )
        return {str(org): (int(total), int(unfinished)) for org, total, unfinished in cur}


def latest_runs(
    db: _Database,
    *,
    terminal: frozenset[str],
    active: bool = False,
    condition: str | None = None,
    limit: int = 50,
) -> tuple[list[RunState], int]:
    """The tracked runs, newest change first, at most `limit`; and how many match in all."""
    where = ["deleted_at IS NULL"]
    params: list[Any] = []
    with db.transaction("reading runs") as cur:
        if active:
            where.append(_UNFINISHED)
            params.append(sorted(terminal))
        if condition is not None:
            cur.execute("SELECT DISTINCT condition FROM runs WHERE condition IS NOT NULL")
            values = [str(v) for (v,) in cur if fnmatch.fnmatchcase(str(v), condition)]
            if not values:
                return [], 0
            where.append("condition = ANY(%s)")
            params.append(values)
        clause = " AND ".join(where)
        cur.execute(f"SELECT count(*) FROM runs WHERE {clause}", params)
        row = cur.fetchone()
        total = int(row[0]) if row else 0
        cur.execute(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE {clause} "
            "ORDER BY coalesce(last_transition_time, time_created) DESC, run_id LIMIT %s",
            (*params, limit),
        )
        return [run_from_row(r) for r in cur.fetchall()], total
