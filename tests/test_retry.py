"""The retry policy: what is retried, how long it waits, when it gives up; sleeps are recorded."""

from __future__ import annotations

import asyncio
import email.utils
import random
from collections.abc import Callable

import httpx
import pytest
import structlog

from runwatch.errors import (
    ViAuthError,
    ViBadResponseError,
    ViError,
    ViNotFoundError,
    ViRateLimitedError,
    ViServerError,
    ViTransportError,
)
from runwatch.vi.retry import RetryPolicy, describe, parse_retry_after

NOW = 1_750_000_000.0  # a fixed wall clock


class Flaky:
    """An operation that raises the given errors in turn, then returns "ok"; counts its calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def recording_policy(**kw: float) -> tuple[RetryPolicy, list[float]]:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return RetryPolicy(sleep=sleep, clock=lambda: NOW, **kw), sleeps  # type: ignore[arg-type]


def server_error() -> ViServerError:
    return ViServerError("HTTP 502 from the API", status_code=502)


async def test_it_retries_transient_errors_until_the_call_succeeds() -> None:
    """Timeouts, 5xx, 429 and bad bodies are retried, and the eventual result is returned."""
    policy, sleeps = recording_policy()
    op = Flaky(
        ViTransportError("timed out"),
        server_error(),
        ViRateLimitedError("slow down", status_code=429),
        ViBadResponseError("not JSON"),
    )

    assert await policy.call(op, what="list") == "ok"

    assert op.calls == 5
    assert len(sleeps) == 4


@pytest.mark.parametrize(
    "error",
    [
        ViAuthError("rejected", status_code=401),
        ViAuthError("forbidden", status_code=403),
        ViNotFoundError("no such run", status_code=404),
    ],
)
async def test_it_never_retries_a_permanent_error(error: ViError) -> None:
    """401, 403 and 404 surface after exactly one call, with no wait."""
    policy, sleeps = recording_policy()
    op = Flaky(error)

    with pytest.raises(type(error)) as caught:
        await policy.call(op, what="get")

    assert caught.value is error
    assert op.calls == 1
    assert sleeps == []


async def test_it_never_retries_an_error_that_is_not_a_vi_error() -> None:
    """A bug (any non-ViError) propagates at once instead of being retried."""
    policy, sleeps = recording_policy()
    op = Flaky(KeyError("bug"))

    with pytest.raises(KeyError):
        await policy.call(op, what="list")

    assert op.calls == 1
    assert sleeps == []


async def test_it_reraises_the_last_typed_error_after_max_attempts() -> None:
    """After max_attempts failures the last ViError itself is raised, not tenacity's RetryError."""
    errors = [ViTransportError(f"dropped {i}") for i in range(3)]
    policy, sleeps = recording_policy(max_attempts=3)
    op = Flaky(*errors, ViTransportError("never reached"))

    with pytest.raises(ViTransportError) as caught:
        await policy.call(op, what="list")

    assert caught.value is errors[-1]
    assert op.calls == 3
    assert len(sleeps) == 2


async def test_it_backs_off_with_full_jitter_in_doubling_windows() -> None:
    """Each wait is random in [0, initial*2^n] capped at max_backoff, and the windows grow."""
    random.seed(20240611)
    policy, sleeps = recording_policy(max_attempts=6, initial_backoff=0.5, max_backoff=4.0)
    per_call: list[list[float]] = []
    for _ in range(200):
        before = len(sleeps)
        with pytest.raises(ViServerError):
            await policy.call(Flaky(*(server_error() for _ in range(6))), what="list")
        per_call.append(sleeps[before:])

    windows = [0.5, 1.0, 2.0, 4.0, 4.0]
    for waits in per_call:
        assert len(waits) == 5
        assert all(0 <= w <= cap for w, cap in zip(waits, windows, strict=True))
    # Full jitter: waits spread over the window, and later windows reach beyond earlier ones.
    firsts = [w[0] for w in per_call]
    fourths = [w[3] for w in per_call]
    assert min(firsts) < 0.1 and max(firsts) > 0.4
    assert max(fourths) > 2.0


async def test_it_waits_exactly_the_retry_after_seconds_of_a_429() -> None:
    """A 429 carrying Retry-After waits exactly that long before the next attempt."""
    policy, sleeps = recording_policy()
    op = Flaky(
        ViRateLimitedError("slow down", retry_after=7.0, status_code=429),
        ViRateLimitedError("slow down", retry_after=2.5, status_code=429),
    )

    assert await policy.call(op, what="list") == "ok"

    assert sleeps == [7.0, 2.5]


async def test_it_honours_retry_after_on_a_503() -> None:
    """A 503 carrying Retry-After waits exactly that long too."""
    policy, sleeps = recording_policy()
    op = Flaky(ViServerError("maintenance", retry_after=12.0, status_code=503))

    assert await policy.call(op, what="get") == "ok"

    assert sleeps == [12.0]


async def test_it_caps_a_server_retry_after_at_max_retry_after() -> None:
    """A Retry-After longer than max_retry_after waits max_retry_after instead."""
    policy, sleeps = recording_policy(max_retry_after=60.0, max_retry_time=1000.0)
    op = Flaky(ViRateLimitedError("come back tomorrow", retry_after=86_400.0, status_code=429))

    assert await policy.call(op, what="list") == "ok"

    assert sleeps == [60.0]


async def test_it_gives_up_before_a_wait_would_pass_max_retry_time() -> None:
    """When the next wait would take the call past max_retry_time, the error is raised now."""
    policy, sleeps = recording_policy(max_retry_time=150.0)
    last = ViRateLimitedError("still busy", retry_after=100.0, status_code=429)
    op = Flaky(ViRateLimitedError("busy", retry_after=100.0, status_code=429), last)

    with pytest.raises(ViRateLimitedError) as caught:
        await policy.call(op, what="list")

    assert caught.value is last
    assert op.calls == 2
    assert sleeps == [100.0]


async def test_it_logs_each_retry_once_with_its_reason() -> None:
    """Every retry is one `vi.retry` warning with what, attempt, wait and a short reason."""
    policy, _ = recording_policy()
    op = Flaky(
        ViServerError("unavailable", status_code=503, retry_after=3.0),
        ViRateLimitedError("slow down", status_code=429, retry_after=1.0),
    )

    with structlog.testing.capture_logs() as logs:
        await policy.call(op, what="list")

    assert [e for e in logs if e["event"] == "vi.retry"] == [
        {
            "event": "vi.retry",
            "log_level": "warning",
            "what": "list",
            "attempt": 1,
            "wait": 3.0,
            "reason": "HTTP 503",
        },
        {
            "event": "vi.retry",
            "log_level": "warning",
            "what": "list",
            "attempt": 2,
            "wait": 1.0,
            "reason": "HTTP 429",
        },
    ]


async def test_it_uses_the_injected_sleep_so_no_time_passes() -> None:
    """Four 25-second Retry-After waits complete at once through the injected sleep."""
    policy, sleeps = recording_policy()
    op = Flaky(*(ViRateLimitedError("x", retry_after=25.0, status_code=429) for _ in range(4)))
    loop = asyncio.get_running_loop()
    started = loop.time()

    assert await policy.call(op, what="list") == "ok"

    assert sleeps == [25.0] * 4
    assert loop.time() - started < 5.0


def _http_date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        (_http_date(NOW + 90), 90.0),
        (email.utils.formatdate(NOW + 45), 45.0),  # "-0000" zone
        (_http_date(NOW - 600), 0.0),  # already past: retry now
        ("soon", None),
        ("-5", None),
        ("", None),
        (None, None),
    ],
)
def test_it_reads_retry_after_as_seconds_or_an_http_date(
    header: str | None, seconds: float | None
) -> None:
    """Retry-After is delta-seconds or an HTTP date measured against the given wall clock."""
    assert parse_retry_after(header, now=NOW) == seconds


def _caused(error: ViError, cause: BaseException) -> ViError:
    error.__cause__ = cause
    return error


_REQUEST = httpx.Request("GET", "http://127.0.0.1/")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: ViServerError("x", status_code=503), "HTTP 503"),
        (lambda: ViRateLimitedError("x", status_code=429), "HTTP 429"),
        (
            lambda: _caused(ViTransportError("x"), httpx.ReadTimeout("t", request=_REQUEST)),
            "timeout",
        ),
        (lambda: _caused(ViTransportError("x"), TimeoutError()), "timeout"),
        (
            lambda: _caused(
                ViTransportError("x"), httpx.RemoteProtocolError("gone", request=_REQUEST)
            ),
            "connection dropped",
        ),
        (lambda: ViBadResponseError("x"), "bad response"),
        (lambda: ViBadResponseError("not JSON", status_code=200), "bad response"),
    ],
)
def test_it_names_the_reason_for_a_retry(make: Callable[[], ViError], reason: str) -> None:
    """The log reason says HTTP status, timeout, dropped connection or bad response."""
    assert describe(make()) == reason
