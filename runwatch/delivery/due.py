"""Which of a lane's outbox rows may go now: per-run order, retries and quiet hours.

Pure functions of the rows, the channel's policy and the time, so the worker's scheduling can
be read (and tested) apart from its sending.
"""

from __future__ import annotations

from collections.abc import Sequence

from runwatch.delivery import quiet_hours
from runwatch.delivery.lanes import ChannelPolicy
from runwatch.state.store import OutboxRow


def max_age_start(row: OutboxRow, policy: ChannelPolicy, now_ms: int) -> int:
    """When a row's max_age starts: its creation, or the end of the last quiet window since."""
    released = quiet_hours.last_end(policy.quiet_hours, row.created_at, now_ms)
    return row.created_at if released is None else max(row.created_at, released)


def heads(
    rows: Sequence[OutboxRow], policy: ChannelPolicy, now_ms: int
) -> list[tuple[OutboxRow, bool]]:
    """The rows that may go next, each with whether quiet hours hold it: of each run, its
    held rows and its first row that is not held (which holds back the rest), in order."""
    blocked: set[str] = set()
    heads = []
    for row in rows:
        if row.run_key in blocked:
            continue
        held = quiet_hours.holds(policy.quiet_hours, row.condition, now_ms)
        if not held:
            blocked.add(row.run_key)
        heads.append((row, held))
    return heads


def due_rows(rows: Sequence[OutboxRow], policy: ChannelPolicy, now_ms: int) -> list[OutboxRow]:
    """The rows that may go now, in order: each run's rows from its oldest, while each is due;
    a run whose row waits for its retry holds back its later rows, a row held by quiet hours
    none (it is not failing: an excepted message behind it goes at once)."""
    blocked: set[str] = set()
    due: list[OutboxRow] = []
    for row in rows:
        if row.run_key in blocked:
            continue
        if row.next_attempt_at > now_ms:
            blocked.add(row.run_key)
            continue
        if quiet_hours.holds(policy.quiet_hours, row.condition, now_ms):
            continue
        due.append(row)
    return due
