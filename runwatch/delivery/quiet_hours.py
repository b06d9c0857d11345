"""Quiet hours: when a channel's messages wait, and when waiting began and ended. Pure.

Theory: a channel's quiet hours are a daily window `[from, to)` on the wall clock of its
time zone; `from` later than `to` wraps midnight (22:00-07:00). During the window a message
is held unless its condition matches one of `except` (Failed and Error usually), and held
messages go out when the window ends, as one digest when there are several (`held`: made
before a window's end, not excepted). Holding is a question asked at delivery time, never
written down, so a reload that changes or removes quiet hours applies at once to what is
already held. Waiting never kills a message:
`delivery.max_age` counts from the end of the last quiet window a row lived through.
"""

from __future__ import annotations

import datetime as dt
import fnmatch

from runwatch.config.settings import QuietHours

_DAY = dt.timedelta(days=1)


def is_quiet(quiet: QuietHours, now_ms: int) -> bool:
    """Whether `now_ms` falls inside the daily window."""
    local = _local(quiet, now_ms).time()
    start, end = quiet.from_, quiet.to
    if start < end:
        return start <= local < end
    return local >= start or local < end


def holds(quiet: QuietHours | None, condition: str | None, now_ms: int) -> bool:
    """Whether a message about `condition` waits now (excepted conditions never wait)."""
    if quiet is None or not is_quiet(quiet, now_ms):
        return False
    return not excepted(quiet, condition)


def excepted(quiet: QuietHours, condition: str | None) -> bool:
    """Whether messages about `condition` go out even in quiet hours (`except`)."""
    return condition is not None and any(
        fnmatch.fnmatchcase(condition, pattern) for pattern in quiet.except_
    )


def held(quiet: QuietHours | None, condition: str | None, created_ms: int, now_ms: int) -> bool:
    """Whether a message made at `created_ms` was held by a window that has ended since: made
    before that end, and not excepted (an excepted one was never held)."""
    if quiet is None or excepted(quiet, condition):
        return False
    return last_end(quiet, created_ms, now_ms) is not None


def last_end(quiet: QuietHours | None, since_ms: int, now_ms: int) -> int | None:
    """The end of the latest quiet window that ended in `(since_ms, now_ms]`, or None."""
    if quiet is None:
        return None
    local_now = _local(quiet, now_ms)
    for days_back in range(0, 2):
        day = (local_now - days_back * _DAY).date()
        end = dt.datetime.combine(day, quiet.to, tzinfo=quiet.timezone)
        end_ms = int(end.timestamp() * 1000)
        if since_ms < end_ms <= now_ms:
            return end_ms
    return None


def next_change(quiet: QuietHours, now_ms: int) -> int:
    """When the window next opens or closes after `now_ms` (epoch ms)."""
    local_now = _local(quiet, now_ms)
    candidates: list[int] = []
    for days in range(0, 2):
        day = (local_now + days * _DAY).date()
        for moment in (quiet.from_, quiet.to):
            at = int(dt.datetime.combine(day, moment, tzinfo=quiet.timezone).timestamp() * 1000)
            if at > now_ms:
                candidates.append(at)
    return min(candidates)


def _local(quiet: QuietHours, now_ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(now_ms / 1000, tz=quiet.timezone)
