"""Delivery: drain the outbox lane by lane, every lane on its own.

Theory: a lane is one target of one channel (an Apprise URL, a webhook). Each lane has its
own sender, pacing and backoff, so one target's outage delays only that target: when a
channel's webhook fails and its email works, the retry goes to the webhook only.

Order is kept where it matters, within one run: a run's messages go out oldest first, and
a message waiting for its retry holds back the later messages of the same run (Running
before Failed), never those of other runs. A failed send backs off exponentially (from
`initial_backoff` doubling to `max_backoff`, a little jitter, a server's Retry-After when it
gave one); a send refused for good (a permanent error) is dead at once; a message still not
accepted `max_age` after it became sendable is dead. A send whose outcome is unknown (the
request went out, no answer came back) may have arrived: it is retried only after a much
longer wait and at most `MAX_UNCERTAIN` times, then recorded as "uncertain" (possibly
delivered), not dead. Dead and uncertain rows are kept, logged and counted, and the
operator can retry them.

Bursts (per channel `digest`): within any `window` at most `max_single` messages go out on
a lane, each as soon as it is due; when more are due than the window allows, they go out
together as ONE digest as soon as the window lets a message go (and at once when a burst
larger than `max_single` comes due at the same moment). Bookkeeping stays per row: a digest
accepted marks every row in it sent, a digest failed retries every row in it. Quiet hours
hold a channel's messages (see `quiet_hours`) until they end; what was held then goes out as
ONE digest when there are several, whatever the channel's burst settings. A held message
holds back nothing: an excepted message (a Failed at 3 am) goes at once even when an earlier
message of its run waits for the morning, and then arrives after it.

Delivery is at-least-once: a row is marked sent only after its target accepted it, so the
only duplicates are a message accepted just before a crash, before the mark, and a message
of unknown outcome that is retried (at most `MAX_UNCERTAIN` times).
"""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import structlog

from runwatch.clock import SYSTEM_CLOCK, Clock
from runwatch.config.settings import DeliveryConfig
from runwatch.core.digest import compose_digest
from runwatch.core.model import Event
from runwatch.delivery import quiet_hours
from runwatch.delivery.due import due_rows, heads, max_age_start
from runwatch.delivery.lanes import ChannelPolicy
from runwatch.delivery.senders import Outgoing, Sender, SendOutcome
from runwatch.errors import StoreError
from runwatch.state.rows import event_from_payload
from runwatch.state.store import Lane, OutboxRow, StateStore

log = structlog.get_logger("runwatch.delivery.worker")

Outcome = Literal["sent", "failed", "dead", "uncertain"]

JITTER = 0.1  # a retry comes up to 10 % later than its backoff
MIN_BACKOFF = 1.0  # seconds; a zero backoff would retry a failing lane in a busy loop
UNCERTAIN_BACKOFF = 1_800.0  # seconds before retrying a send of unknown outcome, at least
MAX_UNCERTAIN = 3  # sends of unknown outcome before a row is "uncertain"
MAX_IDLE = 60.0  # the loop re-checks the outbox at least this often (clock jumps, reloads)
STORE_RETRY = 5.0  # seconds to wait after the store failed before the next pass
BATCH = 10_000  # rows of one lane read per pass: a digest of more counts the rest next pass


class Deliverer:
    """Drains the outbox: `deliver_due()` is one pass, `run()` the daemon's loop."""

    def __init__(
        self,
        store: StateStore,
        senders: Mapping[Lane, Sender],
        policies: Mapping[str, ChannelPolicy],
        config: DeliveryConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_result: Callable[[str, str], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._senders = dict(senders)
        self._policies = dict(policies)
        self._config = config
        self._clock = clock
        self._on_result = on_result
        self._rng = rng if rng is not None else random.Random()
        self._last_send: dict[Lane, float] = {}  # monotonic time of the last message
        self._window: dict[Lane, collections.deque[int]] = {}  # recent sends, epoch ms
        self._wait_until: dict[Lane, int] = {}  # a lane's digest window opens then
        self._failing_since: dict[Lane, float] = {}  # epoch s of the first failure
        self._missing_logged: set[Lane] = set()
        # Two overlapping passes could both send the same row.
        self._pass_lock = asyncio.Lock()

    def now_ms(self) -> int:
        # round, not int: 1_760_000_033.123 * 1000 may be ...122.99998, one ms short of due.
        return round(self._clock.time() * 1000)

    # -- one pass ------------------------------------------------------------------------

    async def deliver_due(self) -> int:
        """One pass over every lane at once; return the number of rows delivered."""
        async with self._pass_lock:
            lanes = self._store.outbox.lanes()
            self._log_missing(lanes)
            results = await asyncio.gather(
                *(self._drain(lane) for lane in lanes if lane in self._senders),
                return_exceptions=True,
            )
        sent = 0
        for result in results:
            if isinstance(result, StoreError):
                raise result
            if isinstance(result, BaseException):
                # A bug in one lane must not stop the others, nor the worker.
                log.error("delivery.crashed", error=type(result).__name__, exc_info=result)
                continue
            sent += result
        return sent

    def _log_missing(self, lanes: Sequence[Lane]) -> None:
        for lane in lanes:
            if lane not in self._senders and lane not in self._missing_logged:
                self._missing_logged.add(lane)
                log.warning(
                    "delivery.channel_missing",
                    channel=lane[0],
                    target=lane[1] or "every URL",
                    hint="rows stay pending until a configuration names this target again",
                )

    async def _drain(self, lane: Lane) -> int:
        policy = self._policy(lane[0])
        now_ms = self.now_ms()
        rows = self._expire(self._store.outbox.pending(lane, limit=BATCH), policy, now_ms)
        due = due_rows(rows, policy, now_ms)
        if not due:
            return 0
        quiet = policy.quiet_hours
        released = [r for r in due if quiet_hours.held(quiet, r.condition, r.created_at, now_ms)]
        if len(released) > 1 and not policy.coalesce:
            # The morning after quiet hours: the night's messages as one, then the rest.
            sent = await self._send_digest(lane, released, policy)
            ids = {r.id for r in released}
            waiting = set() if sent else {r.run_key for r in released}  # failed: runs wait
            rest = [r for r in due if r.id not in ids and r.run_key not in waiting]
            return sent + (await self._send_singles(lane, rest, policy) if rest else 0)
        digest = policy.digest
        if digest is not None and len(due) > 1:
            window = self._recent(lane, digest.window, now_ms)
            room = digest.max_single - len(window)
            if room <= 0:
                self._wait_until[lane] = window[0] + int(digest.window * 1000)
                return 0
            if len(due) > room:
                return await self._send_digest(lane, due, policy)
        return await self._send_singles(lane, due, policy)

    async def _send_singles(self, lane: Lane, due: list[OutboxRow], policy: ChannelPolicy) -> int:
        if policy.coalesce:
            return await self._send_coalesced(lane, due, policy)
        sent = 0
        failed_runs: set[str] = set()
        for row in due:
            if row.run_key in failed_runs:
                continue  # an earlier message of this run failed: it goes first
            digest = policy.digest
            if digest is not None:
                window = self._recent(lane, digest.window, self.now_ms())
                if len(window) >= digest.max_single:
                    self._wait_until[lane] = window[0] + int(digest.window * 1000)
                    break
            message = Outgoing(
                title=row.title, body=row.body, notify_type=row.notify_type,
                event_keys=(row.event_key,),
            )  # fmt: skip
            if await self._send(lane, [row], message, policy):
                sent += 1
            else:
                failed_runs.add(row.run_key)
        return sent

    async def _send_coalesced(
        self, lane: Lane, due: list[OutboxRow], policy: ChannelPolicy
    ) -> int:
        """Each run's due rows as one send: the latest row's message, carrying them all."""
        by_run: dict[str, list[OutboxRow]] = {}
        for row in due:
            by_run.setdefault(row.run_key, []).append(row)
        sent = 0
        for rows in by_run.values():
            last = rows[-1]
            message = Outgoing(
                title=last.title,
                body=last.body,
                notify_type=last.notify_type,
                event_keys=tuple(r.event_key for r in rows),
                parts=tuple(r.body for r in rows),
                titles=tuple(r.title for r in rows),
            )
            if await self._send(lane, rows, message, policy):
                sent += len(rows)
        return sent

    async def _send_digest(self, lane: Lane, due: list[OutboxRow], policy: ChannelPolicy) -> int:
        payloads = self._store.outbox.event_payloads([r.event_key for r in due])
        events: list[Event] = []
        others: list[str] = []
        for row in due:
            payload = payloads.get(row.event_key)
            event = None if payload is None else event_from_payload(payload)
            if event is None:
                others.append(row.title)
            else:
                events.append(event)
        max_lines = policy.digest.max_lines if policy.digest is not None else 50
        digest = compose_digest(events, others=others, flavour=policy.flavour, max_lines=max_lines)
        message = Outgoing(
            title=digest.title,
            body=digest.body,
            notify_type=digest.notify_type,
            event_keys=tuple(r.event_key for r in due),
        )
        ok = await self._send(lane, due, message, policy)
        if ok:
            log.info("delivery.digest_sent", channel=lane[0], rows=len(due), runs=len(events))
        return len(due) if ok else 0

    async def _send(
        self, lane: Lane, rows: list[OutboxRow], message: Outgoing, policy: ChannelPolicy
    ) -> bool:
        """Send one message carrying `rows`; record the outcome on every row. True if sent."""
        sender = self._senders.get(lane)
        if sender is None:  # (a reload may remove a target mid-pass)
            return False
        await self._pace(lane, policy.min_interval)
        try:
            outcome = await sender.send(message, timeout=self._config.timeout)
        except Exception as exc:  # a sender must not raise; if one does, it is a failed send
            log.error("delivery.send_crashed", channel=lane[0], exc_info=exc)
            outcome = SendOutcome(verdict="retry", detail=f"internal error ({type(exc).__name__})")
        self._last_send[lane] = self._clock.monotonic()
        now_ms = self.now_ms()
        self._recent(lane, policy.digest.window if policy.digest else 0, now_ms).append(now_ms)
        ids = [r.id for r in rows]
        if outcome.ok:
            self._store.outbox.mark_sent(ids, now_ms)
            self._failing_since.pop(lane, None)
            for row in rows:
                self._report(row.channel, "sent")
                log.info(
                    "delivery.sent",
                    channel=row.channel,
                    target=row.target or "every URL",
                    row=row.id,
                    run=row.run_key,
                    attempt=row.attempts + 1,
                )
            return True
        self._failing_since.setdefault(lane, self._clock.time())
        if outcome.verdict == "permanent":
            self._give_up(rows, now_ms, outcome.detail, state="dead", attempted=True)
        elif outcome.verdict == "unknown":
            self._unknown(rows, now_ms, outcome)
        else:
            self._retry(rows, now_ms, outcome)
        return False

    # -- what a failure does to its rows -----------------------------------------------------

    def _retry(self, rows: list[OutboxRow], now_ms: int, outcome: SendOutcome) -> None:
        max_age_ms = self._config.max_age * 1000
        policy = self._policy(rows[0].channel)
        expired = [r for r in rows if now_ms - max_age_start(r, policy, now_ms) > max_age_ms]
        if expired:
            self._give_up(expired, now_ms, outcome.detail, state="dead", attempted=True)
        alive = [r for r in rows if r not in expired]
        if not alive:
            return
        attempt = max(r.attempts for r in alive) + 1
        delay = max(self._backoff(attempt), outcome.retry_after or 0.0)
        self._store.outbox.mark_retry(
            [r.id for r in alive], now_ms, now_ms + int(delay * 1000), outcome.detail
        )
        for row in alive:
            self._report(row.channel, "failed")
        log.warning(
            "delivery.failed",
            channel=alive[0].channel,
            target=alive[0].target or "every URL",
            rows=[r.id for r in alive],
            runs=sorted({r.run_key for r in alive}),
            attempt=attempt,
            retry_in=round(delay, 1),
            error=outcome.detail,
        )

    def _unknown(self, rows: list[OutboxRow], now_ms: int, outcome: SendOutcome) -> None:
        settled = [r for r in rows if r.uncertain_attempts + 1 >= MAX_UNCERTAIN]
        if settled:
            self._give_up(settled, now_ms, outcome.detail, state="uncertain", attempted=True)
        again = [r for r in rows if r not in settled]
        if not again:
            return
        delay = max(UNCERTAIN_BACKOFF, self._backoff(max(r.attempts for r in again) + 1))
        self._store.outbox.mark_retry(
            [r.id for r in again], now_ms, now_ms + int(delay * 1000), outcome.detail,
            uncertain=True,
        )  # fmt: skip
        for row in again:
            self._report(row.channel, "failed")
        log.warning(
            "delivery.outcome_unknown",
            channel=again[0].channel,
            rows=[r.id for r in again],
            retry_in=round(delay, 1),
            error=outcome.detail,
            hint="the target may have the message; retried later, a few times at most",
        )

    def _give_up(
        self, rows: list[OutboxRow], now_ms: int, error: str, *, state: str, attempted: bool
    ) -> None:
        self._store.outbox.mark_given_up(
            [r.id for r in rows], now_ms, error, state=state, attempted=attempted
        )
        outcome: Outcome = "dead" if state == "dead" else "uncertain"
        for row in rows:
            self._report(row.channel, outcome)
            log.error(
                "delivery.dead" if state == "dead" else "delivery.uncertain",
                channel=row.channel,
                target=row.target or "every URL",
                row=row.id,
                run=row.run_key,
                event_key=row.event_key,
                attempts=row.attempts + int(attempted),
                age_s=round((now_ms - row.created_at) / 1000),
                error=error,
            )

    def _expire(
        self, rows: list[OutboxRow], policy: ChannelPolicy, now_ms: int
    ) -> list[OutboxRow]:
        """The rows still worth sending; those past max_age (and not held) are dead."""
        max_age_ms = self._config.max_age * 1000
        expired = [
            r
            for r in rows
            if not quiet_hours.holds(policy.quiet_hours, r.condition, now_ms)
            and now_ms - max_age_start(r, policy, now_ms) > max_age_ms
            and r.next_attempt_at <= now_ms
        ]
        if expired:
            for row in expired:
                self._give_up(
                    [row], now_ms, row.last_error or "not delivered within max_age",
                    state="dead", attempted=False,
                )  # fmt: skip
        return [r for r in rows if r not in expired] if expired else rows

    # -- pacing, windows, backoff --------------------------------------------------------

    async def _pace(self, lane: Lane, min_interval: float) -> None:
        last = self._last_send.get(lane)
        if last is None or min_interval <= 0:
            return
        # Capped at min_interval, so a clock stepping backwards cannot stall a lane.
        wait = min(min_interval, last + min_interval - self._clock.monotonic())
        if wait > 0:
            await self._clock.sleep(wait)

    def _recent(self, lane: Lane, window_s: float, now_ms: int) -> collections.deque[int]:
        sends = self._window.setdefault(lane, collections.deque())
        while sends and sends[0] <= now_ms - window_s * 1000:
            sends.popleft()
        return sends

    def _backoff(self, attempt: int) -> float:
        """Seconds before retrying after failed attempt number `attempt` (1 = the first)."""
        cfg = self._config
        base = min(cfg.max_backoff, cfg.initial_backoff * 2.0 ** min(attempt - 1, 60))
        return max(MIN_BACKOFF, base) * (1 + self._rng.uniform(0, JITTER))

    def _policy(self, channel: str) -> ChannelPolicy:
        policy = self._policies.get(channel)
        if policy is None:
            return ChannelPolicy(flavour="markdown", min_interval=self._config.min_interval)
        return policy

    def _report(self, channel: str, outcome: Outcome) -> None:
        # One report per row and attempt ("sent" or "failed"); a row given up on reports
        # "dead" or "uncertain" instead.
        if self._on_result is not None:
            self._on_result(channel, outcome)

    # -- the loop and what the daemon asks ------------------------------------------------

    def next_due_in(self) -> float | None:
        """Seconds until the earliest lane has something to send; None if none will."""
        now_ms = self.now_ms()
        due: int | None = None
        for lane in self._store.outbox.lanes():
            if lane not in self._senders:
                continue
            policy = self._policy(lane[0])
            rows = self._store.outbox.pending(lane, limit=BATCH)
            for row, held in heads(rows, policy, now_ms):
                at = max(row.next_attempt_at, self._wait_until.get(lane, 0))
                if held:
                    assert policy.quiet_hours is not None
                    at = max(at, quiet_hours.next_change(policy.quiet_hours, now_ms))
                due = at if due is None else min(due, at)
        if due is None:
            return None
        return max(0.0, (due - now_ms) / 1000)

    @property
    def senders(self) -> Mapping[Lane, Sender]:
        return self._senders

    def failing_channels(self) -> dict[str, float]:
        """Channel -> epoch seconds since which one of its lanes has failed without success."""
        failing: dict[str, float] = {}
        for (channel, _), since in self._failing_since.items():
            failing[channel] = min(since, failing.get(channel, since))
        return failing

    def replace(
        self,
        senders: Mapping[Lane, Sender],
        policies: Mapping[str, ChannelPolicy],
        config: DeliveryConfig,
    ) -> None:
        """Use a reloaded configuration; rows of removed targets stay pending."""
        self._senders = dict(senders)
        self._policies = dict(policies)
        self._config = config
        for state in (self._last_send, self._failing_since, self._window, self._wait_until):
            for lane in [lane for lane in state if lane not in self._senders]:
                del state[lane]
        self._missing_logged.clear()  # a target still missing after the reload is told again

    async def run(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        """Deliver until `stop` is set; `wake` starts a pass early (after a commit).

        A pass in flight when `stop` is set is finished first; the caller bounds that.
        """
        while not stop.is_set():
            # Cleared before the pass, so a wake-up set during the pass is not lost.
            wake.clear()
            try:
                await self.deliver_due()
                delay = self.next_due_in()
            except StoreError as e:
                # The store may recover (disk space freed); the rows are safe in it meanwhile.
                log.error("delivery.store_failed", error=str(e), retry_in=STORE_RETRY)
                await self._clock.wait_any(stop, timeout=STORE_RETRY)
                continue
            except Exception as exc:  # a bug: logged, and delivery goes on
                log.error("delivery.crashed", error=type(exc).__name__, exc_info=exc)
                await self._clock.wait_any(stop, timeout=STORE_RETRY)
                continue
            timeout = MAX_IDLE if delay is None else min(delay, MAX_IDLE)
            await self._clock.wait_any(stop, wake, timeout=timeout)
