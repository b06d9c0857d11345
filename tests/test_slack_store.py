"""Where the native Slack channel keeps each run's message: the SQLite store's own table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from runwatch.state.retention import RETENTION_MS
from runwatch.state.sqlite import SqliteStore
from runwatch.state.sqlite_schema import MIGRATIONS
from runwatch.state.store import SlackMessage

T0 = 1_760_000_000_000
CREATED = 1_759_000_000_000


def clock() -> float:
    return T0 / 1000  # opening a store prunes: its clock must not be years past T0


def message(**overrides: object) -> SlackMessage:
    values: dict[str, object] = {
        "channel": "ml-runs",
        "run_key": "org-1/run_a",
        "incarnation": CREATED,
        "destination": "#ml-runs",
        "slack_channel": "C0123456789",
        "ts": "1760000000.000100",
        "posted_at": T0,
        "updated_at": T0,
    }
    values.update(overrides)
    return SlackMessage(**values)  # type: ignore[arg-type]


def test_it_finds_a_runs_message_again_after_a_restart(tmp_path: Path) -> None:
    """A message recorded before closing the store is found by a new one on the same file."""
    with SqliteStore.open(tmp_path / "state.db", clock=clock) as store:
        assert store.slack_message("ml-runs", "org-1/run_a", CREATED) is None
        store.set_slack_message(message())
    with SqliteStore.open(tmp_path / "state.db", clock=clock) as store:
        assert store.slack_message("ml-runs", "org-1/run_a", CREATED) == message()


def test_it_keeps_one_message_per_channel_and_run_incarnation(tmp_path: Path) -> None:
    """Another channel, and the same run id created anew, each have a message of their own;
    recording a run's message again replaces it."""
    with SqliteStore.open(tmp_path / "state.db", clock=clock) as store:
        store.set_slack_message(message())
        store.set_slack_message(message(channel="ops", ts="1.1"))
        store.set_slack_message(message(incarnation=CREATED + 5, ts="2.2"))
        store.set_slack_message(message(ts="3.3", updated_at=T0 + 9))
        assert store.slack_message("ml-runs", "org-1/run_a", CREATED) == message(
            ts="3.3", updated_at=T0 + 9
        )
        found = store.slack_message("ops", "org-1/run_a", CREATED)
        assert found is not None and found.ts == "1.1"
        found = store.slack_message("ml-runs", "org-1/run_a", CREATED + 5)
        assert found is not None and found.ts == "2.2"


def test_it_forgets_messages_untouched_for_the_retention(tmp_path: Path) -> None:
    """Pruning drops the messages neither posted nor edited within 30 days, and keeps the rest."""
    with SqliteStore.open(tmp_path / "state.db", clock=clock) as store:
        store.set_slack_message(message())
        store.set_slack_message(message(run_key="org-1/run_b", updated_at=T0 + RETENTION_MS))
        store.prune(T0 + RETENTION_MS + 1)
        assert store.slack_message("ml-runs", "org-1/run_a", CREATED) is None
        assert store.slack_message("ml-runs", "org-1/run_b", CREATED) is not None


def test_it_adds_the_table_to_a_file_of_the_previous_schema(tmp_path: Path) -> None:
    """A state file of schema 3 migrates in place and can then record messages."""
    db = tmp_path / "state.db"
    conn = sqlite3.connect(db, isolation_level=None)
    for version, statements in enumerate(MIGRATIONS[:3], start=1):
        for statement in statements:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    with SqliteStore.open(db, clock=clock) as store:
        store.set_slack_message(message())
        assert store.slack_message("ml-runs", "org-1/run_a", CREATED) == message()
