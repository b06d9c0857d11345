"""The native Slack channel's messages in the SQLite store: one row per (channel, run).

Theory: a Slack channel posts one message per run and edits it afterwards, so it must find
that message again after a restart: the channel id Slack answered and the message's `ts`
are written here right after `chat.postMessage` succeeds and before the send is reported
as delivered. A crash between Slack's answer and this write costs at worst one extra
message (the rows are still pending, so the next start posts again); it never loses an
update. Each write is one short transaction of its own. Rows not touched for the store's
retention (30 days) are pruned with the sent outbox rows: a run quiet for that long gets a
fresh message at its next change.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Protocol

from runwatch.state.store import SlackMessage

_COLUMNS = (
    "channel, run_key, incarnation, destination, slack_channel, ts, posted_at, updated_at"
)


class _Database(Protocol):
    def reading(self, doing: str) -> AbstractContextManager[sqlite3.Connection]: ...
    def writing(self, doing: str) -> AbstractContextManager[sqlite3.Connection]: ...


class SqliteSlackMessages:
    """The slack_messages table of one SQLite store (reached through `SqliteStore`)."""

    def __init__(self, db: _Database) -> None:
        self._db = db

    def get(self, channel: str, run_key: str, incarnation: int) -> SlackMessage | None:
        with self._db.reading("reading a Slack message's id") as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM slack_messages "
                "WHERE channel = ? AND run_key = ? AND incarnation = ?",
                (channel, run_key, incarnation),
            ).fetchone()
        if row is None:
            return None
        return SlackMessage(
            channel=row[0],
            run_key=row[1],
            incarnation=row[2],
            destination=row[3],
            slack_channel=row[4],
            ts=row[5],
            posted_at=row[6],
            updated_at=row[7],
        )

    def put(self, message: SlackMessage) -> None:
        """Record (or replace: a message posted anew) the message of a run in a channel."""
        m = message
        with self._db.writing("recording a Slack message's id") as tx:
            tx.execute(
                f"INSERT INTO slack_messages ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (channel, run_key, incarnation) DO UPDATE SET "
                "destination = excluded.destination, slack_channel = excluded.slack_channel, "
                "ts = excluded.ts, posted_at = excluded.posted_at, "
                "updated_at = excluded.updated_at",
                (m.channel, m.run_key, m.incarnation, m.destination, m.slack_channel, m.ts,
                 m.posted_at, m.updated_at),
            )  # fmt: skip
