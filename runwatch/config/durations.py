"""Durations as configuration files write them: "30s", "15m", "1h30m", "500ms"."""

from __future__ import annotations

import math
import re

_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)")
_UNIT_SECONDS = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_UNIT_ORDER = ("d", "h", "m", "s", "ms")
_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*")


def parse_duration(value: object) -> float:
    """Seconds in `value`: "30s", "15m", "2h", "1d", "1h30m", "500ms", or a number of seconds.

    Units must be written largest first, each at most once, so "30m1h" (a likely typo) is
    refused rather than guessed at. Raises ValueError for anything else, negatives included.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration_text(value)
    else:
        raise ValueError(f"{type(value).__name__} is not a duration")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be a finite number of seconds, not negative")
    return seconds


def _parse_duration_text(text: str) -> float:
    if _NUMBER.fullmatch(text):
        return float(text)
    total, pos, last_unit = 0.0, 0, -1
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            if text[pos:].strip() == "":
                break
            raise ValueError(f"{text!r} is not a duration")
        unit = _UNIT_ORDER.index(m.group(2))
        if unit <= last_unit:
            raise ValueError(f"{text!r}: write units largest first, each once (e.g. 1h30m)")
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos, last_unit = m.end(), unit
    if last_unit < 0:
        raise ValueError(f"{text!r} is not a duration")
    return total


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration for display: 90 -> "1m30s", 0.5 -> "500ms"."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    parts: list[str] = []
    rest = seconds
    for unit in ("d", "h", "m"):
        n, rest = divmod(rest, _UNIT_SECONDS[unit])
        if n:
            parts.append(f"{int(n)}{unit}")
    if rest:
        parts.append(f"{rest:g}s")
    return "".join(parts)
