"""`runwatch run` and `runwatch once`: the daemon, forever or for one cycle.

On a PostgreSQL state the daemon is one of several instances: it keeps workspace leases
(`service.leases`) and sends only the lanes it has claimed (`delivery.fence`). A database
that cannot be reached at start-up is waited for (with backoff, until SIGTERM), as an API
outage is: exiting to be restarted in a loop would help nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

from runwatch.cli.signals import install_signal_handlers
from runwatch.cli.startup import load
from runwatch.config.settings import Config
from runwatch.errors import StoreError
from runwatch.service.daemon import Daemon
from runwatch.service.http import HealthServer
from runwatch.service.leases import LeaseKeeper
from runwatch.service.sdnotify import Notifier
from runwatch.state.open import AnyStore, open_reader, open_writer
from runwatch.state.sqlite import SqliteStore

log = structlog.get_logger("runwatch.cli.daemon_commands")

EX_OK, EX_FAILURE, EX_TEMPFAIL = 0, 1, 75
OPEN_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # waits between attempts to reach the database

__all__ = ["load", "once", "run"]


def run(config: Config, config_path: Path) -> int:
    raise_file_limit()

    async def main() -> bool:
        stop, reload_requested = asyncio.Event(), asyncio.Event()
        install_signal_handlers(asyncio.get_running_loop(), stop, reload_requested)
        with contextlib.ExitStack() as stack:
            store = await open_waiting(config, stop, stack)
            if store is None:
                return False
            daemon = ha_daemon(config, store, notifier=Notifier())
            server = None
            if config.http is not None:
                server = HealthServer(
                    config.http.host, config.http.port, health=daemon.health, metrics=daemon.metrics
                )
                server.start()
            try:
                await daemon.run(
                    stop, reload_requested=reload_requested, load_config=lambda: load(config_path)
                )
            finally:
                if server is not None:
                    server.stop()
                release_lanes(store)
        return daemon.delivery_abandoned

    if asyncio.run(main()):
        # The abandoned send still blocks one of Apprise's worker threads, which the
        # interpreter would join at exit: up to the channel's own timeout, far past the
        # shutdown bound. The store is closed and the row is still pending, so nothing is
        # lost by not waiting; the message goes out after the restart.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EX_OK)
    return EX_OK


async def open_waiting(
    config: Config, stop: asyncio.Event, stack: contextlib.ExitStack
) -> AnyStore | None:
    """The writer's store (closed with `stack`), once it can be opened; None when stopped
    while waiting. SQLite's problems (a corrupt file, another daemon on it) end the command
    at once; a PostgreSQL that cannot be reached is waited for."""
    attempt = 0
    while True:
        try:
            return await asyncio.to_thread(stack.enter_context, open_writer(config))
        except StoreError as exc:
            if config.state.url is None or "unreachable" not in str(exc):
                raise
            wait = OPEN_BACKOFF_S[min(attempt, len(OPEN_BACKOFF_S) - 1)]
            attempt += 1
            log.error("store.unreachable", error=str(exc), retry_in=wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
            if stop.is_set():
                return None


def ha_daemon(config: Config, store: AnyStore, **kwargs: Any) -> Daemon:
    """A daemon on `store`; on PostgreSQL one that keeps leases and fences its sends."""
    if isinstance(store, SqliteStore):
        return Daemon(config, store, **kwargs)
    keeper = LeaseKeeper(
        store.leases,
        lease_s=config.ha.lease,
        workspaces=[ws.organization_id for ws in config.workspaces],
    )
    return Daemon(config, store, leases=keeper, lane_fence=store.outbox, **kwargs)


def release_lanes(store: AnyStore) -> None:
    """A clean stop on PostgreSQL: free this instance's lane claims for the others."""
    if isinstance(store, SqliteStore):
        return
    try:
        store.outbox.release()
    except StoreError as exc:
        log.warning("outbox.release_failed", error=str(exc))


def raise_file_limit(ceiling: int = 65_536) -> None:
    """Lift the soft limit on open files towards the hard one (systemd's default soft limit is
    1,024): connections to /metrics, the Vi API and the channels share the process's
    descriptors, and running out of them fails sends. Left alone where it cannot be raised."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (OSError, ValueError) as exc:
        log.debug("limits.unchanged", error=str(exc))


def once(config: Config, *, dry_run: bool = False, out: TextIO = sys.stdout) -> int:
    """One poll cycle and one delivery pass.

    Exit 1 if a workspace could not be polled, else 75 (EX_TEMPFAIL) if messages are left
    undelivered, else 0. A dry run computes the same cycle and records and sends nothing.
    """

    async def main() -> int:
        if dry_run:
            store = open_reader(config) or SqliteStore.empty()
            with store:
                return await _dry_run(config, store, out)
        with open_writer(config) as store:
            return await _once(config, store, out)

    return asyncio.run(main())


async def _once(config: Config, store: AnyStore, out: TextIO) -> int:
    daemon = ha_daemon(config, store)
    if daemon.leases is not None:
        # One tick: this run polls the workspaces no live daemon holds (its fair share).
        await asyncio.to_thread(daemon.leases.tick)
    try:
        reports = await daemon.poll_cycle()
        sent = await daemon.deliver_once()
    finally:
        if daemon.leases is not None:
            await asyncio.to_thread(daemon.leases.stop)
        release_lanes(store)
        await daemon.aclose()
    stats = store.outbox_stats(daemon.now_ms())
    for r in reports:
        state = "ok" if r.ok else f"FAILED: {r.error}"
        print(f"{r.workspace}: {r.kind} poll {state}; {r.events} event(s)", file=out)
    print(f"delivered {sent}; {stats.pending} pending", file=out)
    if not all(r.ok for r in reports):
        return EX_FAILURE
    return EX_TEMPFAIL if stats.pending else EX_OK


async def _dry_run(config: Config, store: AnyStore, out: TextIO) -> int:
    daemon = Daemon(config, store)
    try:
        polls = await daemon.cycle.run(commit=False)
    finally:
        await daemon.aclose()
    for poll in polls:
        report = poll.report
        if not report.ok or poll.outcome is None:
            print(f"{report.workspace}: poll failed: {report.error}", file=out)
            continue
        baseline = " (baseline: nothing is sent)" if report.kind == "baseline" else ""
        print(
            f"{report.workspace}: {report.kind} poll saw {poll.outcome.runs_seen} run(s); "
            f"{report.events} event(s); "
            f"{sum(i.state != 'muted' for i in poll.items)} message(s) would be sent{baseline}",
            file=out,
        )
        for item in poll.items:
            muted = " (muted: would be recorded, not sent)" if item.state == "muted" else ""
            print(
                f"\n--> {item.channel} [{item.notify_type}]{muted} {item.title}\n{item.body}",
                file=out,
            )
    print("\ndry run: nothing was recorded or sent", file=out)
    return EX_OK if all(p.report.ok for p in polls) else EX_FAILURE
