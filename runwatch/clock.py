"""Time, as the daemon sees it: the wall clock, a monotonic clock, and waiting.

Theory: nothing in runwatch reads `time.time()` or sleeps on its own; the shell asks a
`Clock`. In production that is `SYSTEM_CLOCK` (the OS clocks and asyncio's timers). Tests pass
a clock whose time moves only when they say so, and whose waits return as soon as the time
they wait for has been reached, so a test of a 30-second poll interval or a 5-second shutdown
grace takes milliseconds and never races a loaded machine.

`wait_any` is the one way to wait: for any of some events, or until `timeout` seconds of this
clock have passed, whichever comes first.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (timestamps, Retry-After dates)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never steps (intervals, deadlines, the watchdog)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    async def wait_any(self, *events: asyncio.Event, timeout: float) -> None:
        """Return when any of `events` is set or `timeout` seconds have passed."""
        ...


class SystemClock:
    """The operating system's clocks and asyncio's timers."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait_any(self, *events: asyncio.Event, timeout: float) -> None:
        await wait_any(*events, timeout=timeout)


SYSTEM_CLOCK = SystemClock()


async def wait_any(*events: asyncio.Event, timeout: float) -> None:
    """Return when any of `events` is set or `timeout` real seconds have passed."""
    if any(event.is_set() for event in events):
        return
    if not events:
        await asyncio.sleep(max(0.0, timeout))
        return
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
