"""How long a run ran, waited, or has held its condition: exact, or not said at all.

Theory: a message that says "ran 41m" must mean it. A run that ends (a terminal condition)
ran from the first Running condition in its history to the end; a run that starts
(Running) waited from its Pending condition (else from its creation) until then; nothing
else has a duration, and a new Pending run in particular has none (not "0s"). Times come
from the API's condition history and, when the run was not observed in full this poll,
from the conditions the event carries. An interval that is negative or longer than
`MAX_PLAUSIBLE_S` is a clock or a simulation talking, not a run, and is left out: never
"334d" for a simulated run whose history starts long ago.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from runwatch.core.model import PENDING, RUNNING, TERMINAL_CONDITIONS, Condition, Event

MAX_PLAUSIBLE_S = 90 * 86_400


@dataclass(frozen=True, kw_only=True, slots=True)
class Timing:
    """Seconds a run ran (terminal), waited (started running), or held its condition
    (overdue); None when unknown or not applicable."""

    ran_s: int | None = None
    waited_s: int | None = None
    elapsed_s: int | None = None

    @property
    def duration_s(self) -> int | None:
        """The one duration that applies to the event."""
        for seconds in (self.ran_s, self.waited_s, self.elapsed_s):
            if seconds is not None:
                return seconds
        return None


def timing(event: Event) -> Timing:
    """The durations `event` can state exactly."""
    if event.kind == "overdue":
        return Timing(elapsed_s=_plausible(event.elapsed_s))
    current = event.current
    if event.kind == "deleted" or current is None:
        return Timing()
    known = _conditions(event)
    if current.condition in TERMINAL_CONDITIONS:
        started = _first(known, RUNNING)
        if started is None:
            return Timing()
        return Timing(ran_s=_between(started.last_transition_time, current.last_transition_time))
    if current.condition == RUNNING:
        pending = _first(known, PENDING)
        since = pending.last_transition_time if pending is not None else event.time_created
        if since <= 0:
            return Timing()  # an unknown creation time would make a 50-year wait
        return Timing(waited_s=_between(since, current.last_transition_time))
    return Timing()


def _conditions(event: Event) -> tuple[Condition, ...]:
    # The history as observed first; the conditions the event carries when it is empty (the
    # run was not fetched in full this poll) or lacks the one looked for.
    before = () if event.previous is None else (event.previous,)
    return (*event.history, *before, *event.skipped)


def _first(conditions: tuple[Condition, ...], name: str) -> Condition | None:
    return next((c for c in conditions if c.condition == name), None)


def _between(start_ms: int, end_ms: int) -> int | None:
    return _plausible((end_ms - start_ms) // 1000)


def _plausible(seconds: int | None) -> int | None:
    if seconds is None or seconds < 0 or seconds > MAX_PLAUSIBLE_S:
        return None
    return seconds


def human_duration(seconds: int) -> str:
    """A duration as people write it: "45s", "3m 5s", "1h 12m", "2d 3h" (two units at most)."""
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return _two_units(minutes, "m", secs, "s")
    hours, mins = divmod(minutes, 60)
    if hours < 24:
        return _two_units(hours, "h", mins, "m")
    days, hrs = divmod(hours, 24)
    return _two_units(days, "d", hrs, "h")


def _two_units(big: int, big_unit: str, small: int, small_unit: str) -> str:
    return f"{big}{big_unit} {small}{small_unit}" if small else f"{big}{big_unit}"


def iso(epoch_ms: int | None) -> str | None:
    """An epoch-ms time as ISO 8601 UTC to the second; None for a nonsense time."""
    if epoch_ms is None:
        return None
    try:
        moment = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None  # a nonsense timestamp from the API must not cost the message
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
