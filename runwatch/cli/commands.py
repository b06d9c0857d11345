"""The commands behind the CLI, each taking a loaded configuration and returning an exit status."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import structlog

from runwatch.config.describe import describe
from runwatch.config.loading import load_config
from runwatch.config.settings import Config
from runwatch.core.compose import outbox_items
from runwatch.core.render import flavour_for, sample_events
from runwatch.delivery.apprise_channel import build_channels, route_apprise_logging, unsupported
from runwatch.delivery.console import register_console_schema
from runwatch.errors import ViError
from runwatch.logs import register_secrets
from runwatch.service.daemon import Daemon
from runwatch.service.sdnotify import Notifier
from runwatch.state.lock import writer_lock
from runwatch.state.sqlite import Store

log = structlog.get_logger("runwatch.cli.commands")


def load(path: Path) -> Config:
    """Load and validate; register secrets for redaction before anything else can log them."""
    register_console_schema()
    route_apprise_logging()
    config = load_config(path)
    register_secrets(config.secrets)
    for warning in config.warnings:
        log.warning("config.warning", message=warning)
    return config


def run(config: Config, config_path: Path) -> int:
    from runwatch.cli.main import install_signal_handlers
    from runwatch.service.http import HealthServer

    async def main() -> bool:
        stop, reload_requested = asyncio.Event(), asyncio.Event()
        install_signal_handlers(asyncio.get_running_loop(), stop, reload_requested)
        state_path = config.state.sqlite_path()
        with Store.open(state_path) as store, writer_lock(state_path):
            daemon = Daemon(config, store, notifier=Notifier())
            server = None
            if config.http is not None:
                server = HealthServer(
                    config.http.host, config.http.port, health=daemon.health, metrics=daemon.metrics
                )
                server.start()
                log.info("http.listening", url=server.url)
            try:
                await daemon.run(
                    stop, reload_requested=reload_requested, load_config=lambda: load(config_path)
                )
            finally:
                if server is not None:
                    server.stop()
        return daemon.delivery_abandoned

    if asyncio.run(main()):
        # The abandoned send still blocks one of Apprise's worker threads, which the
        # interpreter would join at exit: up to the channel's own timeout, far past the
        # shutdown bound. The store is closed and the row is still pending, so nothing is
        # lost by not waiting; the message goes out after the restart.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def once(config: Config, *, dry_run: bool = False, out: TextIO = sys.stdout) -> int:
    """One poll cycle and one delivery pass; exit 1 if a workspace could not be polled."""

    async def main() -> int:
        with Store.open(config.state.sqlite_path()) as store:
            if dry_run:
                return await _dry_run(config, store, out)
            with writer_lock(config.state.sqlite_path()):
                return await _once(config, store, out)

    return asyncio.run(main())


async def _once(config: Config, store: Store, out: TextIO) -> int:
    daemon = Daemon(config, store)
    try:
        reports = await daemon.poll_cycle()
        sent = await daemon.deliver_once()
    finally:
        await daemon.aclose()
    stats = store.outbox_stats(daemon.now_ms())
    for r in reports:
        state = "ok" if r.ok else f"FAILED: {r.error}"
        print(f"{r.workspace}: {r.kind} poll {state}; {r.events} event(s)", file=out)
    print(f"delivered {sent}; {stats.pending} pending", file=out)
    return 0 if all(r.ok for r in reports) else 1


async def _dry_run(config: Config, store: Store, out: TextIO) -> int:
    daemon = Daemon(config, store)
    status = 0
    try:
        for ws in config.workspaces:
            now_ms = daemon.now_ms()
            plan = daemon.plan_for(ws, now_ms)
            kind = plan.kind
            try:
                outcome = await daemon.observe(ws, plan, now_ms)
            except ViError as exc:
                print(f"{ws.name}: poll failed: {exc}", file=out)
                status = 1
                continue
            items = daemon.messages(outcome.diff.events)
            print(
                f"{ws.name}: {kind} poll saw {outcome.runs_seen} run(s); "
                f"{len(outcome.diff.events)} event(s); {len(items)} message(s) would be sent"
                + (" (baseline: nothing is sent)" if kind == "baseline" else ""),
                file=out,
            )
            for item in items:
                print(
                    f"\n--> {item.channel} [{item.notify_type}] {item.title}\n{item.body}", file=out
                )
    finally:
        await daemon.aclose()
    print("\ndry run: nothing was recorded or sent", file=out)
    return status


def check(config: Config, out: TextIO = sys.stdout) -> int:
    """Print what the configuration means; every template was already rendered by the loader."""
    for line in describe(config):
        print(line, file=out)
    flavours = {name: flavour_for(list(ch.urls)) for name, ch in config.channels.items()}
    items = outbox_items(
        sample_events(), rules=config.rules, templates=config.templates, flavours=flavours
    )
    print(
        f"\nrendered {len(items)} sample message(s) for {len(config.rules)} rule(s): OK", file=out
    )
    for warning in config.warnings:
        print(f"warning: {warning}", file=out)
    print("configuration OK", file=out)
    return 0


def notify_test(config: Config, names: list[str], out: TextIO = sys.stdout) -> int:
    unknown = [n for n in names if n not in config.channels]
    if unknown:
        print(
            f"unknown channel(s): {', '.join(unknown)}; have: {', '.join(config.channels)}",
            file=out,
        )
        return 2
    chosen = {n: config.channels[n] for n in (names or list(config.channels))}
    channels = build_channels(chosen)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")

    async def main() -> list[tuple[str, bool, str]]:
        results = await asyncio.gather(
            *(
                ch.send(
                    "🔔 runwatch test message",
                    f"This is a test from runwatch on {os.uname().nodename} at {now}. "
                    f"If you can read it, channel **{name}** works.",
                    "info",
                    timeout=config.delivery.timeout,
                )
                for name, ch in channels.items()
            )
        )
        return [(r.channel, r.ok, r.detail) for r in results]

    failed = 0
    results = asyncio.run(main())
    results += [(n, False, why) for n, ch in chosen.items() if (why := unsupported(ch))]
    for name, ok, detail in results:
        failed += not ok
        print(f"{name}: {'OK' if ok else 'FAILED'} {detail}", file=out)
    return 1 if failed else 0


def runs(config: Config, out: TextIO = sys.stdout) -> int:
    names = {ws.organization_id: ws.name for ws in config.workspaces}
    with Store.open(config.state.sqlite_path()) as store:
        states = store.tracked_runs()
    rows = [("WORKSPACE", "RUN", "FLOW", "CONDITION", "SINCE")]
    for s in states:
        latest = s.latest
        since = (
            datetime.fromtimestamp(latest.last_transition_time / 1000, tz=timezone.utc).strftime(
                "%Y-%m-%d %H:%M"
            )
            if latest
            else "-"
        )
        condition = f"{latest.condition} ({latest.status})" if latest else "-"
        rows.append(
            (
                names.get(s.organization_id, s.organization_id),
                s.run_id,
                s.flow_name or "-",
                condition,
                since,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
    print(f"\n{len(states)} run(s) tracked", file=out)
    return 0
