"""`runwatch migrate-state`: copy a SQLite state into PostgreSQL (see `state.migrate`).

The destination is `--to URL`, or the configuration's `state.url` (better: its password
then comes from ${VAR} or a passfile rather than the command line, where `ps` shows it).
Stop the daemon using the SQLite file first, so nothing is committed there after the copy.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from runwatch.errors import StoreError
from runwatch.state.postgres_schema import describe_url

EX_OK, EX_FAILURE, EX_USAGE = 0, 1, 2


def migrate_state(
    source: Path, url: str, *, instance: str = "migrate-state", out: TextIO = sys.stdout
) -> int:
    from runwatch.state.migrate import copy_state
    from runwatch.state.postgres import PostgresStore
    from runwatch.state.sqlite import SqliteStore

    if not url.startswith(("postgresql://", "postgres://")):
        print("runwatch: migrate-state: --to must be a postgresql:// URL", file=sys.stderr)
        return EX_USAGE
    sqlite = SqliteStore.open_read_only(source)
    if sqlite is None:
        print(f"runwatch: migrate-state: no state file at {source}", file=sys.stderr)
        return EX_FAILURE
    try:
        with sqlite, PostgresStore.open(url, instance=instance) as pg:
            copied = copy_state(sqlite, pg, now_ms=int(time.time() * 1000))
    except StoreError as exc:
        print(f"runwatch: migrate-state: {exc}", file=sys.stderr)
        return EX_FAILURE
    counts = copied.counts
    print(
        f"copied {source} into {describe_url(url)}: {counts['workspaces']} workspace(s), "
        f"{counts['runs']} run(s), {counts['events']} event(s), {counts['outbox']} undelivered "
        f"message(s), {counts['slack_messages']} Slack message id(s), {counts['mutes']} "
        f"active mute(s), {counts['meta']} meta value(s) (the self-alert state among them)",
        file=out,
    )
    print("point state.url at it and start the daemons; no new baseline is needed", file=out)
    return EX_OK
