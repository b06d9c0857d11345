"""The daemon: the loop around the units of work, the watchdog, and reload.

Theory: the loop only sequences work and waits. Each turn it runs one poll cycle
(`PollCycle`: plan, observe, compose, commit for every workspace), one self-alert decision
(`SelfAlerts`), updates what it tells the world (`StatusBoard`: /healthz, STATUS=, gauges)
and wakes the delivery worker when rows were queued; the worker drains the outbox on its own
task, so a slow channel never delays a poll. Time comes from an injected `Clock`, so tests
move it instead of waiting.

Stop (SIGTERM/SIGINT): a poll in flight is dropped (nothing of it was committed), a delivery
in flight gets `SHUTDOWN_GRACE_S` to finish; what is not delivered stays pending in the
outbox for the next start. Reload (SIGHUP): a validated configuration is swapped in between
cycles; state and pending rows carry over. A rejected one changes nothing, and every STATUS=
says so until a reload is accepted.

Several instances (a PostgreSQL state): a `LeaseKeeper` says which workspaces this one
polls (the cycle skips the others, and `/healthz` judges only those, plus whether the
database could be reached within a lease); senders are fenced by the outbox's lane claims,
so a paused instance sends nothing another has taken over. Leases are released at a clean
stop, after the last delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from runwatch.clock import SYSTEM_CLOCK, Clock
from runwatch.config.settings import Config
from runwatch.core.alerts import Thresholds
from runwatch.core.run_index import RunIndex
from runwatch.delivery.fence import LaneFence, fenced
from runwatch.delivery.lanes import build_senders, close_senders, policies
from runwatch.delivery.senders import Sender
from runwatch.delivery.worker import Deliverer
from runwatch.errors import StoreError
from runwatch.service.cycle import PollCycle
from runwatch.service.leases import LeaseKeeper
from runwatch.service.metrics import Metrics
from runwatch.service.sdnotify import Notifier
from runwatch.service.self_alerts import (
    ALERTS_META_KEY,
    SelfAlerts,
    StoreOutageAlerts,
    instance_key,
)
from runwatch.service.status import PollReport, StatusBoard
from runwatch.state.store import Lane, StateStore

log = structlog.get_logger("runwatch.service.daemon")

SHUTDOWN_GRACE_S = 5.0  # how long an in-flight delivery may finish after SIGTERM


class Heartbeat:
    """Progress marks for the watchdog: a poll that stops making progress stops the pings."""

    def __init__(self, stall_after_s: float, clock: Clock) -> None:
        self.stall_after_s = stall_after_s
        self._clock = clock
        self.last = clock.monotonic()
        self.polling = False

    def beat(self) -> None:
        self.last = self._clock.monotonic()

    def stalled_for(self) -> float:
        return self._clock.monotonic() - self.last

    def alive(self) -> bool:
        """Between polls the loop is alive by definition; during one, only while it progresses."""
        return not self.polling or self.stalled_for() < self.stall_after_s


class Daemon:
    def __init__(
        self,
        config: Config,
        store: StateStore,
        *,
        clock: Clock = SYSTEM_CLOCK,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
        leases: LeaseKeeper | None = None,
        lane_fence: LaneFence | None = None,
    ) -> None:
        self.config = config
        self.store = store
        # Several instances on PostgreSQL: the workspaces this one polls, the lanes it sends.
        self.leases = leases
        self.lane_fence = lane_fence
        self.clock = clock
        self.notifier = notifier or Notifier({})
        self.metrics = metrics or Metrics()
        self.wake = asyncio.Event()  # set when rows were queued: the worker starts a pass
        self.heartbeat = Heartbeat(_stall_after(config), clock)
        self.board = StatusBoard(clock=clock, store=store, metrics=self.metrics)
        self.cycle = PollCycle(
            config,
            store,
            clock=clock,
            metrics=self.metrics,
            on_progress=self.heartbeat.beat,
            leases=leases,
        )
        self.store_alerts = StoreOutageAlerts()
        self.alerts = SelfAlerts(
            store, key=ALERTS_META_KEY if leases is None else instance_key(config.ha.instance)
        )
        self.cycles = 0  # completed poll cycles
        self.delivery_abandoned = False  # a send outlived SHUTDOWN_GRACE_S at the last stop
        self._sent_to: set[str] = set()  # channels with a successful send since start
        self._cycle_done = asyncio.Condition()
        self._held: frozenset[str] = frozenset()  # the leases held at the last cycle
        self.deliverer = Deliverer(
            store,
            self._senders(config),
            policies(config.channels, config.delivery),
            config.delivery,
            clock=clock,
            on_result=self._count_delivery,
        )
        self._remember_successes(config)

    @property
    def known(self) -> dict[str, RunIndex]:
        """Each workspace's known runs, by organization id."""
        return self.cycle.known

    def now_ms(self) -> int:
        """The daemon's clock in epoch milliseconds."""
        return int(self.clock.time() * 1000)

    # -- configuration -------------------------------------------------------------------

    def _senders(self, config: Config) -> dict[Lane, Sender]:
        senders = build_senders(config.channels, clock=self.clock, store=self.store)
        return senders if self.lane_fence is None else fenced(senders, self.lane_fence)

    def _remember_successes(self, config: Config) -> None:
        try:
            for ws in config.workspaces:
                meta = self.store.workspace(ws.organization_id)
                if meta.last_success is not None:
                    self.board.remember_success(ws.name, meta.last_success)
        except StoreError as exc:  # the database is away: the next cycle tells
            log.warning("status.successes_not_read", error=str(exc))

    def _workspace_names(self) -> list[str]:
        """The workspaces this instance answers for: all, or those it holds leases on."""
        return [ws.name for ws in self.cycle.polled()]

    async def reload(self, config: Config) -> None:
        """Swap in a validated configuration; state and pending deliveries carry over."""
        senders = self._senders(config)
        self.config = config
        if self.leases is not None:
            self.leases.configure([ws.organization_id for ws in config.workspaces])
        old_clients = self.cycle.configure(config)
        self.heartbeat.stall_after_s = _stall_after(config)
        old_senders = self.deliverer.senders
        self.deliverer.replace(senders, policies(config.channels, config.delivery), config.delivery)
        await close_senders(old_senders)
        self._remember_successes(config)
        for client in old_clients:
            await client.aclose()
        self.wake.set()
        log.info("config.reloaded", workspaces=len(config.workspaces), rules=len(config.rules))

    async def aclose(self) -> None:
        await self.cycle.aclose()
        await close_senders(self.deliverer.senders)

    # -- one turn of the loop ------------------------------------------------------------

    async def poll_cycle(self) -> list[PollReport]:
        """Poll every workspace and commit each; then self-alerts, status and gauges."""
        if self.leases is not None:
            held = frozenset(self.leases.held())
            if held - self._held:
                # Workspaces taken over: their last success is the previous holder's.
                self._remember_successes(self.config)
            self._held = held
        polls = await self.cycle.run()
        reports = [p.report for p in polls]
        now_ms = self.now_ms()
        self.board.record(reports, now_ms)
        cfg = self.config.alerts
        self.alerts.evaluate(
            reports,
            last_success=self.board.last_success,
            failing_channels=self.failing_channels(),
            channels=list(self.config.channels),
            notify=cfg.notify,
            targets={name: d.targets for name, d in self.cycle.destinations.items()},
            thresholds=Thresholds(
                api_down_after=cfg.api_down_after,
                channel_failing_after=cfg.channel_failing_after,
            ),
            now_ms=now_ms,
        )
        store_errors = [r.error for r in reports if r.store_failed]
        reachable = self.leases is None or self.leases.reachable()
        await self.store_alerts.evaluate(
            failing=bool(store_errors) or not reachable,
            error=store_errors[0] if store_errors else "the state database is unreachable",
            now_ms=now_ms,
            threshold_s=cfg.api_down_after,
            senders=self.deliverer.senders,
            notify=cfg.notify,
            apprise_channels=[n for n, c in self.config.channels.items() if c.kind == "apprise"],
            targets={name: d.targets for name, d in self.cycle.destinations.items()},
            timeout=self.config.delivery.timeout,
        )
        # Every cycle, not only when rows were queued: what the operator revived with
        # `runwatch outbox retry` from another process goes out after the next poll.
        self.wake.set()
        self.board.refresh_gauges(self.cycle.runs_by_workspace())
        self.notifier.status(self.status_line())
        async with self._cycle_done:
            self.cycles += 1
            self._cycle_done.notify_all()
        return reports

    async def wait_cycles(self, count: int) -> None:
        """Wait until `count` poll cycles have completed (for the demo and tests)."""
        async with self._cycle_done:
            await self._cycle_done.wait_for(lambda: self.cycles >= count)

    async def deliver_once(self) -> int:
        return await self.deliverer.deliver_due()

    def failing_channels(self) -> dict[str, float]:
        """Channel -> epoch s since it fails; one alerted before a restart fails until it works.

        A restarted deliverer has not tried that channel yet (its row waits for its backoff):
        that silence is no recovery, and taking it for one would announce a false recovery
        now and repeat the alert once the channel fails again.
        """
        failing = self.deliverer.failing_channels()
        for subject, alerted_ms in self.alerts.state.down.items():
            kind, _, name = subject.partition(":")
            if kind == "channel" and name not in self._sent_to:
                failing.setdefault(name, alerted_ms / 1000)
        return failing

    def _count_delivery(self, channel: str, result: str) -> None:
        if result == "sent":
            self._sent_to.add(channel)
        self.metrics.notifications.labels(channel, result).inc()

    def health(self) -> tuple[bool, dict[str, object]]:
        """Healthy while every workspace's last successful poll is recent (any thread); with
        several instances, every workspace this one holds, and the database reachable."""
        healthy, summary = self.board.health(
            self._workspace_names(),
            interval_s=self.config.poll.interval,
            failing=self.deliverer.failing_channels(),
        )
        if self.leases is not None:
            reachable = self.leases.reachable()
            summary["instance"] = self.leases.instance
            summary["state_database"] = "ok" if reachable else "unreachable"
            if not reachable:
                healthy = False
                summary["status"] = "unhealthy"
        return healthy, summary

    def status_line(self) -> str:
        try:
            return self.board.status_line(
                self._workspace_names(),
                runs_watched=sum(self.cycle.runs_by_workspace().values()),
                failing=self.deliverer.failing_channels(),
            )
        except StoreError:  # (the outbox count needs the store)
            return "the state database is unreachable; retrying"

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
        if self.leases is not None:
            await asyncio.to_thread(self.leases.start)
        delivery = asyncio.create_task(self.deliverer.run(delivery_stop, self.wake))
        watchdog = asyncio.create_task(self._watchdog(stop))
        self.notifier.ready(status="starting first poll")
        log.info("daemon.started", workspaces=[ws.name for ws in self.config.workspaces])
        try:
            while not stop.is_set():
                if reload_requested.is_set():
                    reload_requested.clear()
                    await self._reload(load_config)
                started = self.clock.monotonic()
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
                cycle.result()  # each workspace's failure is in its report; this is a bug
                remaining = self.config.poll.interval - (self.clock.monotonic() - started)
                await self.clock.wait_any(stop, reload_requested, timeout=remaining)
        finally:
            await self._shut_down(delivery, delivery_stop, watchdog)

    async def _shut_down(
        self,
        delivery: asyncio.Task[None],
        delivery_stop: asyncio.Event,
        watchdog: asyncio.Task[None],
    ) -> None:
        self.notifier.stopping()
        log.info("daemon.stopping")
        delivery_stop.set()
        self.wake.set()
        grace = asyncio.create_task(self.clock.sleep(SHUTDOWN_GRACE_S))
        await asyncio.wait({delivery, grace}, return_when=asyncio.FIRST_COMPLETED)
        grace.cancel()
        if not delivery.done():
            self.delivery_abandoned = True
            delivery.cancel()
            log.warning("delivery.interrupted", grace_s=SHUTDOWN_GRACE_S)
        with contextlib.suppress(asyncio.CancelledError):
            await delivery
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        if self.leases is not None:
            # Released only now that nothing of this instance polls or sends any more.
            await asyncio.to_thread(self.leases.stop, release=not self.delivery_abandoned)
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
            self.board.reload_done(problems, self.now_ms())
        else:
            await self.reload(config)
            self.board.reload_done(None, self.now_ms())
        self.notifier.ready(status=self.status_line())

    async def _watchdog(self, stop: asyncio.Event) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while not stop.is_set():
            if self.heartbeat.alive():
                self.notifier.watchdog()
            else:
                log.error("watchdog.stalled", stalled_s=round(self.heartbeat.stalled_for()))
            await self.clock.wait_any(stop, timeout=interval)


def _stall_after(config: Config) -> float:
    return config.poll.request_timeout + config.poll.max_retry_after + 30
