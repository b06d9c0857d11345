"""`runwatch check`, `notify-test` and `runs`: look at the configuration, channels and state."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import datetime, timezone
from typing import TextIO

from runwatch.cli.startup import load
from runwatch.config.describe import describe
from runwatch.config.settings import Config
from runwatch.core.compose import outbox_items
from runwatch.core.render import flavour_for, sample_events
from runwatch.delivery.apprise_channel import build_channels, unsupported
from runwatch.state.sqlite import SqliteStore

__all__ = ["check", "load", "notify_test", "runs"]


def check(config: Config, out: TextIO = sys.stdout) -> int:
    """Print what the configuration means; every template was already rendered by the loader."""
    for line in describe(config):
        print(line, file=out)
    flavours = {name: flavour_for(list(channel.urls)) for name, channel in config.channels.items()}
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
    store = SqliteStore.open_read_only(config.state.sqlite_path())
    if store is None:
        print(f"no state file at {config.state.sqlite_path()} yet: nothing is tracked", file=out)
        return 0
    with store:
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
