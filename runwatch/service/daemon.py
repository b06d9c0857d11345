"""The daemon: poll every workspace, commit what changed, deliver, until told to stop.

The loop is the imperative shell around the pure core. For each workspace a poll cycle:
loads what is known, polls (poller), routes and renders (dispatch), then commits state,
events and outbox rows in ONE transaction (store) before waking the delivery worker.
Nothing is sent before the commit: a crash between the two can neither lose a
notification nor, after a restart, detect the same transition again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import structlog

from runwatch.clock import wait_any
from runwatch.config.settings import Config, WorkspaceConfig
from runwatch.core.alerts import Alert, AlertState, channel_alerts, workspace_alerts
from runwatch.core.compose import outbox_items
from runwatch.core.model import TERMINAL_CONDITIONS, Event, OutboxItem
from runwatch.core.render import Flavour, flavour_for
from runwatch.delivery.apprise_channel import Channel, build_channels, unsupported
from runwatch.delivery.worker import Deliverer
from runwatch.errors import StoreError, ViAuthError, ViError
from runwatch.service.metrics import Metrics
from runwatch.service.sdnotify import Notifier
from runwatch.state.sqlite import PollCommit, Store
from runwatch.vi.client import ViClient
from runwatch.vi.poller import PollOutcome, PollPlan, RunIndex, choose_kind, poll_workspace
from runwatch.vi.retry import RetryPolicy

log = structlog.get_logger("runwatch.service.daemon")

SHUTDOWN_GRACE_S = 5.0  # how long an in-flight delivery may finish after SIGTERM
ALERTS_META_KEY = "alerts.state"


@dataclass(frozen=True, kw_only=True, slots=True)
class PollReport:
    workspace: str
    ok: bool
    kind: str
    events: int = 0
    queued: int = 0
    error: str | None = None
    auth_failed: bool = False  # the API rejected the secret key (401/403)
    store_failed: bool = False  # the API answered; the state store could not record it


class Heartbeat:
    """Progress marks for the watchdog: a poll that stops making progress stops the pings."""

    def __init__(self, stall_after_s: float) -> None:
        self.stall_after_s = stall_after_s
        self.last = time.monotonic()
        self.polling = False

    def beat(self) -> None:
        self.last = time.monotonic()

    def alive(self) -> bool:
        """Between polls the loop is alive by definition; during one, only while it progresses."""
        return not self.polling or time.monotonic() - self.last < self.stall_after_s


class Daemon:
    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.sleep = sleep
        self.notifier = notifier or Notifier({})
        self.metrics = metrics or Metrics()
        self.known: dict[str, RunIndex] = {}
        self.last_success: dict[str, int] = {}  # workspace name -> epoch ms
        self.last_error: dict[str, str] = {}
        self.alert_state = AlertState.from_json(_load_json(store.get_meta(ALERTS_META_KEY)))
        self.wake = asyncio.Event()
        self.heartbeat = Heartbeat(config.poll.request_timeout + config.poll.max_retry_after + 30)
        self.last_poll_at: int | None = None
        self.cycles = 0  # completed poll cycles
        self.delivery_abandoned = False  # a send outlived SHUTDOWN_GRACE_S at the last stop
        self._sent_to: set[str] = set()  # channels with a successful send since start
        self._cycle_done = asyncio.Condition()
        self.config = config
        self.channels: dict[str, Channel] = build_channels(config.channels)
        self.deliverer = Deliverer(
            store, self.channels, config.delivery, clock=clock, on_result=self._count_delivery
        )
        self._apply(config)

    # -- configuration -------------------------------------------------------------------
    def _apply(self, config: Config) -> None:
        self.config = config
        self.flavours: dict[str, Flavour] = {
            name: flavour_for(list(channel.urls)) for name, channel in config.channels.items()
        }
        for name, channel in config.channels.items():
            why = unsupported(channel)
            if why is not None:
                log.warning("channel.unsupported", channel=name, kind=channel.kind, message=why)
        self.terminal = TERMINAL_CONDITIONS | frozenset(config.poll.terminal_conditions)
        self.clients: dict[str, ViClient] = {ws.name: self._client(ws) for ws in config.workspaces}
        for ws in config.workspaces:
            meta = self.store.workspace(ws.organization_id)
            if meta.last_success is not None:
                self.last_success.setdefault(ws.name, meta.last_success)

    def _client(self, ws: WorkspaceConfig) -> ViClient:
        poll, tls = self.config.poll, self.config.tls
        verify: bool | str = str(tls.ca_bundle) if tls.ca_bundle and tls.verify else tls.verify

        def on_request(endpoint: str, outcome: str, seconds: float) -> None:
            self.heartbeat.beat()
            self.metrics.api_requests.labels(ws.name, endpoint, outcome).inc()
            self.metrics.api_latency.labels(ws.name, endpoint).observe(seconds)

        async def sleep(seconds: float) -> None:
            self.heartbeat.beat()
            await self.sleep(seconds)

        return ViClient(
            endpoint=ws.endpoint,
            organization_id=ws.organization_id,
            secret_key=ws.secret_key,
            timeout=poll.request_timeout,
            retry=RetryPolicy(
                max_attempts=poll.max_attempts,
                max_retry_time=poll.max_retry_time,
                max_retry_after=poll.max_retry_after,
                sleep=sleep,
                clock=self.clock,
            ),
            verify=verify,
            max_connections=max(2, poll.max_concurrency),
            on_request=on_request,
            max_requests_per_second=poll.max_requests_per_second,
        )

    async def reload(self, config: Config) -> None:
        """Swap in a validated configuration; state and pending deliveries carry over."""
        old_clients = self.clients
        channels = build_channels(config.channels)
        self._apply(config)
        self.channels = channels
        self.deliverer.replace_channels(channels, config.delivery)
        for client in old_clients.values():
            await client.aclose()
        self.wake.set()
        log.info("config.reloaded", workspaces=len(config.workspaces), rules=len(config.rules))

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()

    # -- polling -------------------------------------------------------------------------
    def _known(self, organization_id: str) -> RunIndex:
        if organization_id not in self.known:
            self.known[organization_id] = RunIndex(self.store.load_runs(organization_id))
            _settle_heap()
        return self.known[organization_id]

    async def poll_cycle(self) -> list[PollReport]:
        """Poll every workspace concurrently, commit each; then evaluate self-alerts."""
        reports = await asyncio.gather(*(self.poll_one(ws) for ws in self.config.workspaces))
        self.last_poll_at = self.now_ms()
        self._self_alerts(list(reports))
        self._refresh_gauges()
        self.notifier.status(self.status_line())
        async with self._cycle_done:
            self.cycles += 1
            self._cycle_done.notify_all()
        return list(reports)

    async def wait_cycles(self, count: int) -> None:
        """Wait until `count` poll cycles have completed (for the demo and tests)."""
        async with self._cycle_done:
            await self._cycle_done.wait_for(lambda: self.cycles >= count)

    def plan_for(self, ws: WorkspaceConfig, now_ms: int) -> PollPlan:
        """What kind of poll `ws` is due for (baseline, full or incremental), and its limits."""
        meta = self.store.workspace(ws.organization_id)
        poll = self.config.poll
        return PollPlan(
            kind=choose_kind(
                baselined_at=meta.baselined_at,
                last_full_listing=meta.last_full_listing,
                now_ms=now_ms,
                full_resync_s=poll.full_resync,
            ),
            page_size=poll.page_size,
            max_pages=poll.max_pages,
            max_concurrency=poll.max_concurrency,
            terminal=self.terminal,
        )

    async def observe(self, ws: WorkspaceConfig, plan: PollPlan, now_ms: int) -> PollOutcome:
        """Poll `ws` and diff against what is known, committing nothing (raises ViError)."""
        known = self._known(ws.organization_id)
        return await poll_workspace(
            self.clients[ws.name], known, workspace=ws.name, plan=plan, now_ms=now_ms
        )

    def messages(self, events: Sequence[Event]) -> list[OutboxItem]:
        """The outbox rows `events` make under the current rules and templates."""
        return outbox_items(
            events,
            rules=self.config.rules,
            templates=self.config.templates,
            flavours=self.flavours,
        )

    async def poll_one(self, ws: WorkspaceConfig) -> PollReport:
        now_ms = self.now_ms()
        plan = self.plan_for(ws, now_ms)
        kind = plan.kind
        known = self._known(ws.organization_id)
        started = time.monotonic()
        try:
            outcome = await self.observe(ws, plan, now_ms)
        except ViError as exc:
            return self._poll_failed(ws, kind, exc)
        try:
            queued = self._commit(ws, outcome, now_ms)
        except StoreError as exc:
            # Rolled back whole and `known` untouched: the next poll sees the same changes
            # again, so a full disk delays notifications but loses none. Keep going.
            return self._poll_failed(ws, kind, exc)
        ms = round((time.monotonic() - started) * 1000)
        self.metrics.polls.labels(ws.name, kind).inc()
        self.last_success[ws.name] = now_ms
        self.last_error.pop(ws.name, None)
        if kind == "baseline":
            log.info("baseline.recorded", workspace=ws.name, runs=len(known), notified=0)
        log.info(
            "poll.done",
            workspace=ws.name,
            kind=kind,
            runs=len(known),
            seen=outcome.runs_seen,
            events=len(outcome.diff.events),
            queued=queued,
            pages=outcome.pages,
            gets=outcome.gets,
            ms=ms,
        )
        if queued:
            self.wake.set()
        return PollReport(
            workspace=ws.name, ok=True, kind=kind, events=len(outcome.diff.events), queued=queued
        )

    def _commit(self, ws: WorkspaceConfig, outcome: PollOutcome, now_ms: int) -> int:
        diff = outcome.diff
        items = self.messages(diff.events)
        queued = self.store.commit_poll(
            PollCommit(
                organization_id=ws.organization_id,
                polled_at=now_ms,
                upserts=diff.upserts,
                deleted=diff.deleted,
                events=diff.events,
                outbox=items,
                full_listing=outcome.kind != "incremental",
                baseline=outcome.kind == "baseline",
            )
        )
        # No await between the commit and this update: cancellation cannot split them.
        known = self._known(ws.organization_id)
        for state in diff.upserts:
            known[state.run_id] = state
        for run_id in diff.deleted:
            known.pop(run_id, None)
        if outcome.kind != "incremental":
            _settle_heap()
        for event in diff.events:
            condition = event.current.condition if event.current else "deleted"
            self.metrics.transitions.labels(ws.name, condition).inc()
        return queued

    def _poll_failed(self, ws: WorkspaceConfig, kind: str, exc: ViError | StoreError) -> PollReport:
        reason = type(exc).__name__.removeprefix("Vi").removesuffix("Error").lower() or "error"
        self.metrics.poll_failures.labels(ws.name, reason).inc()
        self.last_error[ws.name] = str(exc)
        # The API's faults pass by themselves; the state store's need the operator.
        emit = log.error if isinstance(exc, StoreError) else log.warning
        emit("poll.failed", workspace=ws.name, kind=kind, reason=reason, error=str(exc))
        return PollReport(
            workspace=ws.name,
            ok=False,
            kind=kind,
            error=str(exc),
            auth_failed=isinstance(exc, ViAuthError),
            store_failed=isinstance(exc, StoreError),
        )

    # -- self-alerts ---------------------------------------------------------------------
    def _self_alerts(self, reports: list[PollReport]) -> None:
        cfg = self.config.alerts
        if not cfg.notify:
            return
        now_ms = self.now_ms()
        # Decided on a copy, adopted once the alerts are enqueued: on a full disk they are
        # decided again next cycle instead of being marked sent and lost.
        state = AlertState.from_json(self.alert_state.to_json())
        alerts: list[Alert] = []
        for report in reports:
            alerts += workspace_alerts(
                state,
                workspace=report.workspace,
                ok=report.ok or report.store_failed,  # a full disk is no API outage
                now_ms=now_ms,
                last_success_ms=self.last_success.get(report.workspace),
                threshold_s=cfg.api_down_after,
                error=report.error,
                auth_failed=report.auth_failed,
            )
        alerts += channel_alerts(
            state,
            failing=self._failing_channels(),
            channels=list(self.config.channels),
            now_ms=now_ms,
            threshold_s=cfg.channel_failing_after,
        )
        items = [
            OutboxItem(
                event_key=alert.key,
                channel=channel,
                title=alert.title,
                body=alert.body,
                notify_type=alert.notify_type,
                run_key="runwatch",
            )
            for alert in alerts
            for channel in cfg.notify
            if channel != alert.exclude_channel
        ]
        try:
            if items:
                self.store.enqueue(items, now_ms=now_ms)
            self.alert_state = state
            self.store.set_meta(ALERTS_META_KEY, json.dumps(state.to_json()))
        except StoreError as exc:
            log.error("alerts.not_recorded", error=str(exc))
        if items and self.alert_state is state:
            for alert in alerts:
                log.warning("alert.sent", title=alert.title)
            self.wake.set()

    # -- delivery, health, status ----------------------------------------------------------
    def _failing_channels(self) -> dict[str, float]:
        """Channel -> epoch s since it fails; one alerted before a restart fails until it works.

        A restarted deliverer has not tried that channel yet (its row waits for its backoff):
        that silence is no recovery, and taking it for one would announce a false recovery
        now and repeat the alert once the channel fails again.
        """
        failing = self.deliverer.failing_channels()
        for subject, alerted_ms in self.alert_state.down.items():
            kind, _, name = subject.partition(":")
            if kind == "channel" and name not in self._sent_to:
                failing.setdefault(name, alerted_ms / 1000)
        return failing

    def _count_delivery(self, channel: str, result: str) -> None:
        if result == "sent":
            self._sent_to.add(channel)
        self.metrics.notifications.labels(channel, result).inc()

    async def deliver_once(self) -> int:
        return await self.deliverer.deliver_due()

    def _refresh_gauges(self) -> None:
        for ws in self.config.workspaces:
            self.metrics.runs_watched.labels(ws.name).set(
                len(self.known.get(ws.organization_id, {}))
            )
            if ws.name in self.last_success:
                self.metrics.last_success.labels(ws.name).set(self.last_success[ws.name] / 1000)
        stats = self.store.outbox_stats(self.now_ms())
        self.metrics.outbox_depth.set(stats.pending)
        self.metrics.oldest_pending.set(stats.oldest_pending_age)

    def health(self) -> tuple[bool, dict[str, object]]:
        """Healthy while every workspace's last successful poll is recent."""
        now_ms = self.now_ms()
        stale_after_ms = max(3 * self.config.poll.interval, 60.0) * 1000
        workspaces: dict[str, object] = {}
        healthy = True
        for ws in self.config.workspaces:
            last = self.last_success.get(ws.name)
            ok = last is not None and now_ms - last <= stale_after_ms
            healthy = healthy and ok
            workspaces[ws.name] = {
                "ok": ok,
                "last_success": _iso(last) if last is not None else None,
                "error": self.last_error.get(ws.name),
            }
        return healthy, {
            "status": "ok" if healthy else "unhealthy",
            "workspaces": workspaces,
            "failing_channels": sorted(self.deliverer.failing_channels()),
        }

    def status_line(self) -> str:
        runs = sum(len(self.known.get(ws.organization_id, {})) for ws in self.config.workspaces)
        ok = sum(1 for ws in self.config.workspaces if ws.name not in self.last_error)
        last = _iso(self.last_poll_at) if self.last_poll_at else "never"
        failing = ", ".join(sorted(self.deliverer.failing_channels())) or "none"
        pending = self.store.outbox_stats(self.now_ms()).pending
        return (
            f"watching {runs} runs in {ok}/{len(self.config.workspaces)} workspaces ok; "
            f"last poll {last}; outbox {pending} pending; failing channels: {failing}"
        )

    def now_ms(self) -> int:
        """The daemon's clock (injected in tests) in epoch milliseconds."""
        return int(self.clock() * 1000)

    # -- the loop ------------------------------------------------------------------------
    async def run(
        self,
        stop: asyncio.Event,
        *,
        reload_requested: asyncio.Event | None = None,
        load_config: Callable[[], Config] | None = None,
    ) -> None:
        """Poll and deliver until `stop` is set; then finish in-flight work within a bound."""
        reload_requested = reload_requested or asyncio.Event()
        delivery_stop = asyncio.Event()
        delivery = asyncio.create_task(self.deliverer.run(delivery_stop, self.wake))
        watchdog = asyncio.create_task(self._watchdog(stop))
        self.notifier.ready(status="starting first poll")
        log.info("daemon.started", workspaces=[ws.name for ws in self.config.workspaces])
        try:
            while not stop.is_set():
                if reload_requested.is_set():
                    reload_requested.clear()
                    await self._reload(load_config)
                started = time.monotonic()
                self.heartbeat.polling = True
                self.heartbeat.beat()
                cycle = asyncio.create_task(self.poll_cycle())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({cycle, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if not cycle.done():
                    # Stop arrived mid-poll: nothing of this poll was committed; drop it.
                    cycle.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await cycle
                    break
                self.heartbeat.polling = False
                cycle.result()  # a StoreError of a commit fails its poll only; others end it
                remaining = self.config.poll.interval - (time.monotonic() - started)
                await wait_any(stop, reload_requested, timeout=max(0.0, remaining))
        finally:
            self.notifier.stopping()
            log.info("daemon.stopping")
            delivery_stop.set()
            self.wake.set()
            try:
                await asyncio.wait_for(delivery, timeout=SHUTDOWN_GRACE_S)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self.delivery_abandoned = True
                log.warning("delivery.interrupted", grace_s=SHUTDOWN_GRACE_S)
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            await self.aclose()
            log.info("daemon.stopped")

    async def _reload(self, load_config: Callable[[], Config] | None) -> None:
        if load_config is None:
            return
        self.notifier.reloading()
        try:
            config = load_config()
        except Exception as exc:  # ConfigError lists every problem; keep the old config
            problems = getattr(exc, "problems", [str(exc)])
            log.error("config.reload_rejected", problems=problems)
        else:
            await self.reload(config)
        self.notifier.ready(status=self.status_line())

    async def _watchdog(self, stop: asyncio.Event) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while not stop.is_set():
            if self.heartbeat.alive():
                self.notifier.watchdog()
            else:
                log.error(
                    "watchdog.stalled", stalled_s=round(time.monotonic() - self.heartbeat.last)
                )
            await wait_any(stop, timeout=interval)


def _settle_heap() -> None:
    """Take the known runs out of the cyclic garbage collector's way.

    100,000 known runs are some 300,000 long-lived objects that are never cyclic garbage,
    yet every full collection traverses them all, and the allocations of a full listing
    trigger dozens of those: a third of its CPU. So after the state is loaded and after each
    full listing, collect once and freeze what survives (the collector skips frozen objects;
    reference counting still frees them). Unfreezing first lets that collection reclaim any
    cyclic garbage frozen the time before, so nothing leaks across months of resyncs.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def _load_json(text: str | None) -> object:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
