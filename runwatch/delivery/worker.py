"""Delivery: drain the outbox through Apprise, every channel on its own.

Theory: each channel has its own Apprise object, its own pacing and its own backoff, so one
channel's outage delays only that channel. A channel sends its pending rows oldest first;
the head row holds back the rows behind it, which keeps one run's messages in order
("Running" arrives before "Failed"). A failed send backs off exponentially (doubling from
`initial_backoff` to `max_backoff`, with a little jitter so channels that failed together do
not retry together) and is retried until the row is older than `max_age`; then the row is
marked dead, logged and counted, never dropped silently.

Delivery is at-least-once: a row is marked sent only after Apprise reports success, so the
only duplicate comes from a crash between the service accepting a message and that mark.

Apprise paces each service itself with a blocking sleep (5.5 s per email); runwatch turns
that off (`request_rate_per_sec = 0`) and paces each channel here with `min_interval`,
without blocking the event loop.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Literal

import structlog

from runwatch.clock import SYSTEM_CLOCK, Clock
from runwatch.config.settings import DeliveryConfig
from runwatch.delivery.apprise_channel import Channel
from runwatch.errors import StoreError
from runwatch.state.store import OutboxRow, StateStore

log = structlog.get_logger("runwatch.delivery.worker")

Outcome = Literal["sent", "failed", "dead"]

JITTER = 0.1  # a retry comes up to 10 % later than its backoff
MIN_BACKOFF = 1.0  # seconds; a zero backoff would retry a failing channel in a busy loop
MAX_IDLE = 60.0  # the loop re-checks the outbox at least this often (clock jumps, reloads)
STORE_RETRY = 5.0  # seconds to wait after the store failed before the next pass


class Deliverer:
    """Drains the outbox: `deliver_due()` is one pass, `run()` the daemon's loop."""

    def __init__(
        self,
        store: StateStore,
        channels: Mapping[str, Channel],
        config: DeliveryConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_result: Callable[[str, str], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._channels = dict(channels)
        self._config = config
        self._clock = clock
        self._on_result = on_result
        self._rng = rng if rng is not None else random.Random()
        self._last_send: dict[str, float] = {}
        self._failing_since: dict[str, float] = {}
        self._missing_logged: set[str] = set()
        # Two overlapping passes could both send the same head row.
        self._pass_lock = asyncio.Lock()

    def now_ms(self) -> int:
        # round, not int: 1_760_000_033.123 * 1000 may be ...122.99998, one ms short of due.
        return round(self._clock.time() * 1000)

    async def deliver_due(self) -> int:
        """One pass over every channel at once; return the number of messages sent.

        Each channel sends its due rows oldest first until none is due or one fails. A
        failing or hanging channel never delays another (one task per channel).
        """
        async with self._pass_lock:
            names = self._store.pending_channels()
            self._log_missing(names)
            results = await asyncio.gather(
                *(self._drain(name) for name in names if name in self._channels),
                return_exceptions=True,
            )
        sent = 0
        for result in results:
            if isinstance(result, BaseException):
                raise result
            sent += result
        return sent

    def _log_missing(self, names: list[str]) -> None:
        for name in names:
            if name not in self._channels and name not in self._missing_logged:
                self._missing_logged.add(name)
                log.warning(
                    "delivery.channel_missing",
                    channel=name,
                    hint="rows stay pending until a configuration names this channel again",
                )

    async def _drain(self, name: str) -> int:
        sent = 0
        max_age_ms = self._config.max_age * 1000
        while True:
            channel = self._channels.get(name)
            row = self._store.next_pending(name)
            if channel is None or row is None:  # (a reload may remove a channel mid-pass)
                return sent
            now_ms = self.now_ms()
            if row.next_attempt_at > now_ms:
                return sent
            if now_ms - row.created_at > max_age_ms:
                self._dead(row, now_ms, row.last_error or "not delivered within max_age")
                continue
            await self._pace(name)
            result = await channel.send(
                row.title, row.body, row.notify_type, timeout=self._config.timeout
            )
            self._last_send[name] = self._clock.time()
            now_ms = self.now_ms()
            if result.ok:
                self._store.mark_sent(row.id, now_ms)
                self._failing_since.pop(name, None)
                self._report(name, "sent")
                log.info(
                    "delivery.sent",
                    channel=name,
                    row=row.id,
                    run=row.run_key,
                    attempt=row.attempts + 1,
                )
                sent += 1
                continue
            self._failing_since.setdefault(name, self._clock.time())
            if now_ms - row.created_at > max_age_ms:
                self._dead(row, now_ms, result.detail, attempted=True)
            else:
                self._retry(row, now_ms, result.detail)
            return sent

    async def _pace(self, name: str) -> None:
        last = self._last_send.get(name)
        if last is None:
            return
        # Capped at min_interval, so a clock stepping backwards cannot stall a channel.
        wait = min(self._config.min_interval, last + self._config.min_interval - self._clock.time())
        if wait > 0:
            await self._clock.sleep(wait)

    def _backoff(self, attempt: int) -> float:
        """Seconds before retrying after failed attempt number `attempt` (1 = the first)."""
        cfg = self._config
        base = min(cfg.max_backoff, cfg.initial_backoff * 2.0 ** min(attempt - 1, 60))
        return max(MIN_BACKOFF, base) * (1 + self._rng.uniform(0, JITTER))

    def _retry(self, row: OutboxRow, now_ms: int, error: str) -> None:
        attempt = row.attempts + 1
        delay = self._backoff(attempt)
        self._store.mark_retry(row.id, now_ms, now_ms + int(delay * 1000), error)
        self._report(row.channel, "failed")
        log.warning(
            "delivery.failed",
            channel=row.channel,
            row=row.id,
            run=row.run_key,
            attempt=attempt,
            retry_in=round(delay, 1),
            error=error,
        )

    def _dead(self, row: OutboxRow, now_ms: int, error: str, *, attempted: bool = False) -> None:
        self._store.mark_dead(row.id, now_ms, error, attempted=attempted)
        self._report(row.channel, "dead")
        log.error(
            "delivery.dead",
            channel=row.channel,
            row=row.id,
            run=row.run_key,
            event_key=row.event_key,
            attempts=row.attempts + int(attempted),
            age_s=round((now_ms - row.created_at) / 1000),
            error=error,
        )

    def _report(self, channel: str, outcome: Outcome) -> None:
        # One report per attempt ("sent" or "failed"); an attempt that fails past max_age,
        # or a row that expires waiting, reports "dead" instead.
        if self._on_result is not None:
            self._on_result(channel, outcome)

    def next_due_in(self) -> float | None:
        """Seconds until the earliest head row of a configured channel comes due; None if none."""
        due: int | None = None
        for name in self._store.pending_channels():
            if name not in self._channels:
                continue
            row = self._store.next_pending(name)
            if row is not None and (due is None or row.next_attempt_at < due):
                due = row.next_attempt_at
        if due is None:
            return None
        return max(0.0, (due - self.now_ms()) / 1000)

    def failing_channels(self) -> dict[str, float]:
        """Channel -> epoch seconds since which its sends have failed without a success."""
        return dict(self._failing_since)

    def replace_channels(self, channels: Mapping[str, Channel], config: DeliveryConfig) -> None:
        """Use a reloaded configuration; rows of removed channels stay pending."""
        self._channels = dict(channels)
        self._config = config
        for state in (self._last_send, self._failing_since):
            for name in [n for n in state if n not in self._channels]:
                del state[name]
        self._missing_logged.clear()  # a channel still missing after the reload is told again

    async def run(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        """Deliver until `stop` is set; `wake` starts a pass early (after a commit).

        A pass in flight when `stop` is set is finished first; the caller bounds that.
        """
        while not stop.is_set():
            # Cleared before the pass, so a wake-up set during the pass is not lost.
            wake.clear()
            try:
                await self.deliver_due()
            except StoreError as e:
                # The store may recover (disk space freed); the rows are safe in it meanwhile.
                log.error("delivery.store_failed", error=str(e), retry_in=STORE_RETRY)
                await self._clock.wait_any(stop, timeout=STORE_RETRY)
                continue
            delay = self.next_due_in()
            await self._clock.wait_any(
                stop, wake, timeout=MAX_IDLE if delay is None else min(delay, MAX_IDLE)
            )
