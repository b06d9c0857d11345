"""The operator's mutes and the native Slack channel's message ids in the PostgreSQL store.

Theory: the same rows and semantics as `runwatch.state.sqlite_mutes` and
`runwatch.state.sqlite_slack` (read those first); each change is one short transaction of
its own, so the operator's commands work while daemons poll.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import psycopg
from psycopg.rows import TupleRow

from runwatch.core.mutes import Mute
from runwatch.state.sqlite_mutes import mute_from_row
from runwatch.state.store import SlackMessage

Cursor = psycopg.Cursor[TupleRow]

_MUTE_COLUMNS = "id, runs, projects, flows, workspaces, channel, created_at, until, reason, who"
_SLACK_COLUMNS = (
    "channel, run_key, incarnation, destination, slack_channel, ts, posted_at, updated_at"
)


class _Database(Protocol):
    def transaction(self, doing: str) -> AbstractContextManager[Cursor]: ...


class PostgresMutes:
    """The mutes table of one PostgreSQL store (reached as `PostgresStore.mutes`)."""

    def __init__(self, db: _Database) -> None:
        self._db = db

    def add(self, mute: Mute) -> Mute:
        if not (mute.runs or mute.projects or mute.flows or mute.workspaces):
            raise ValueError("a mute must name a run, project, flow or workspace")
        with self._db.transaction("recording a mute") as cur:
            cur.execute(
                "INSERT INTO mutes (runs, projects, flows, workspaces, channel, created_at, "
                "until, reason, who) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (json.dumps(list(mute.runs)), json.dumps(list(mute.projects)),
                 json.dumps(list(mute.flows)), json.dumps(list(mute.workspaces)), mute.channel,
                 mute.created_at, mute.until, mute.reason, mute.who),
            )  # fmt: skip
            row = cur.fetchone()
        assert row is not None
        return dataclasses.replace(mute, id=int(row[0]))

    def active(self, now_ms: int) -> list[Mute]:
        with self._db.transaction("reading mutes") as cur:
            cur.execute(
                f"SELECT {_MUTE_COLUMNS} FROM mutes WHERE until > %s AND removed_at IS NULL "
                "ORDER BY id",
                (now_ms,),
            )
            return [mute_from_row(row) for row in cur.fetchall()]

    def remove(self, ids: Sequence[int], now_ms: int) -> int:
        if not ids:
            return 0
        with self._db.transaction("removing mutes") as cur:
            cur.execute(
                "UPDATE mutes SET removed_at = %s WHERE id = ANY(%s) "
                "AND removed_at IS NULL AND until > %s",
                (now_ms, list(ids), now_ms),
            )
            return max(cur.rowcount, 0)

    def remove_all(self, now_ms: int) -> int:
        with self._db.transaction("removing mutes") as cur:
            cur.execute(
                "UPDATE mutes SET removed_at = %s WHERE removed_at IS NULL AND until > %s",
                (now_ms, now_ms),
            )
            return max(cur.rowcount, 0)


class PostgresSlackMessages:
    """The slack_messages table of one PostgreSQL store (reached through `PostgresStore`)."""

    def __init__(self, db: _Database) -> None:
        self._db = db

    def get(self, channel: str, run_key: str, incarnation: int) -> SlackMessage | None:
        with self._db.transaction("reading a Slack message's id") as cur:
            cur.execute(
                f"SELECT {_SLACK_COLUMNS} FROM slack_messages "
                "WHERE channel = %s AND run_key = %s AND incarnation = %s",
                (channel, run_key, incarnation),
            )
            row = cur.fetchone()
        if row is None:
            return None
        return SlackMessage(
            channel=row[0], run_key=row[1], incarnation=row[2], destination=row[3],
            slack_channel=row[4], ts=row[5], posted_at=row[6], updated_at=row[7],
        )  # fmt: skip

    def put(self, message: SlackMessage) -> None:
        m = message
        with self._db.transaction("recording a Slack message's id") as cur:
            cur.execute(
                f"INSERT INTO slack_messages ({_SLACK_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (channel, run_key, incarnation) DO UPDATE SET "
                "destination = excluded.destination, slack_channel = excluded.slack_channel, "
                "ts = excluded.ts, posted_at = excluded.posted_at, "
                "updated_at = excluded.updated_at",
                (m.channel, m.run_key, m.incarnation, m.destination, m.slack_channel, m.ts,
                 m.posted_at, m.updated_at),
            )  # fmt: skip
