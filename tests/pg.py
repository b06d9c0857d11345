"""A PostgreSQL schema of its own for each test, on the database CI runs at 127.0.0.1:5432.

Each schema is created for one test and dropped after it, so tests run in parallel (pytest
xdist workers) without seeing each other's rows. The store reaches it through libpq's
`options=-csearch_path=...` in the URL, as an operator would point runwatch at a schema.
There is no skipping: when PostgreSQL is not reachable the tests that need it fail, saying so.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import psycopg

SERVER = os.environ.get("RUNWATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def schema_url(schema: str) -> str:
    return f"{SERVER}?options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def fresh_schema() -> Iterator[str]:
    """The URL of a new, empty schema; the schema and everything in it is dropped after."""
    schema = f"rw_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(SERVER, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise AssertionError(
            f"PostgreSQL is not reachable at {SERVER} ({exc}); the PostgreSQL tests need it "
            "(.ci/run starts it)"
        ) from exc
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield schema_url(schema)
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    """Read (or change) the schema behind the store's back, as an operator with psql would."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql)  # type: ignore[arg-type]
        return list(cursor.fetchall()) if cursor.description is not None else []
