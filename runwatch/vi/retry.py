"""The one retry policy every Vi API call goes through.

What is retried is decided at the edge, where the client translates HTTP into `ViError`s:
an error whose `.permanent` is False (timeouts, dropped connections, 429, 5xx, a body that
is not the documented JSON) may succeed later; 400/401/403/404 never will, so they surface
at once. Anything that is not a `ViError` is a bug and is never retried.

Waits are exponential with full jitter (a random wait in a window that doubles each
attempt), so many runwatch instances hitting one recovering API spread out. When the server
says when to come back (`Retry-After` on a 429 or 503), that wait is used exactly, capped
at `max_retry_after`. The policy gives up after `max_attempts` or before a wait would take
the call past `max_retry_time`, and re-raises the last typed error, never tenacity's
RetryError, so callers see one exception tree.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import structlog
import tenacity

from runwatch.errors import (
    ViBadResponseError,
    ViError,
    ViRateLimitedError,
    ViServerError,
    ViTransportError,
)

log = structlog.get_logger("runwatch.vi.retry")

T = TypeVar("T")


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), or None.

    `now` is the wall clock (epoch seconds) the HTTP date is measured against; a date in the
    past means "now" (0 seconds). An unreadable value is None: back off as usual instead.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; RFC 9110 dates are GMT anyway
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now)


def describe(exc: BaseException) -> str:
    """A short reason for a failed attempt, for logs: "HTTP 503", "timeout", ..."""
    if isinstance(exc, ViTransportError):
        return "timeout" if _timed_out(exc) else "connection dropped"
    if isinstance(exc, ViBadResponseError):  # often on a 200, so the status says nothing
        return "bad response"
    if isinstance(exc, ViError) and exc.status_code is not None:
        return f"HTTP {exc.status_code}"
    return type(exc).__name__


def _timed_out(exc: BaseException) -> bool:
    cause = exc.__cause__
    return isinstance(cause, httpx.TimeoutException | asyncio.TimeoutError | TimeoutError)


def _server_wait(exc: BaseException | None) -> float | None:
    """The wait the server asked for, if this failure carries one."""
    if isinstance(exc, ViRateLimitedError | ViServerError):
        return exc.retry_after
    return None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ViError) and not exc.permanent


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How one HTTP call is retried; `sleep` and `clock` are injectable so tests never wait."""

    max_attempts: int = 5  # first try included
    max_retry_time: float = 120.0  # seconds: attempts plus waits of one call
    initial_backoff: float = 0.5  # width of the first jitter window
    max_backoff: float = 30.0
    max_retry_after: float = 300.0  # cap on a server's Retry-After
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.time  # wall clock, for Retry-After HTTP dates

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    async def call(self, fn: Callable[[], Awaitable[T]], *, what: str) -> T:
        """Run `fn` until it succeeds or the policy gives up; then raise its last error."""
        # Time spent inside attempts, measured here rather than by tenacity's clock: with an
        # injected sleep that returns at once, tenacity's elapsed time would omit the waits.
        busy = 0.0

        async def attempt() -> T:
            nonlocal busy
            started = time.monotonic()
            try:
                return await fn()
            finally:
                busy += time.monotonic() - started

        # The first attempt runs without tenacity (setting up its machinery costs ~5 % of a
        # request's CPU, and nearly every call succeeds at once); a retryable failure is then
        # handed to tenacity as its attempt 1, so the waits, stops and logs are the same.
        try:
            return await attempt()
        except ViError as exc:
            if not _retryable(exc) or self.max_attempts == 1:
                raise
            failed: ViError | None = exc

        async def replay_then_attempt() -> T:
            nonlocal failed
            if failed is not None:
                first, failed = failed, None
                raise first
            return await attempt()

        jitter = tenacity.wait_random_exponential(
            multiplier=self.initial_backoff, max=self.max_backoff
        )

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome is not None else None
            asked = _server_wait(exc)
            if asked is not None:
                return min(max(asked, 0.0), self.max_retry_after)
            return float(jitter(state))

        def stop(state: tenacity.RetryCallState) -> bool:
            if state.attempt_number >= self.max_attempts:
                return True
            return busy + state.idle_for + state.upcoming_sleep > self.max_retry_time

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            log.warning(
                "vi.retry",
                what=what,
                attempt=state.attempt_number,
                wait=round(state.upcoming_sleep, 3),
                reason=describe(exc) if exc is not None else "unknown",
            )

        retrying = tenacity.AsyncRetrying(
            sleep=self.sleep,
            stop=stop,
            wait=wait,
            retry=tenacity.retry_if_exception(_retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        result: T = await retrying(replay_then_attempt)
        return result
