"""`runwatch check`, `notify-test` and `runs`: look at the configuration, channels and state.

`runs` reads the state without the configuration's secrets (see `state_access`), newest
change first and at most `--limit` runs (50), so it stays readable at 100,000 tracked runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime, timezone
from typing import TextIO

from runwatch.cli.startup import load
from runwatch.cli.state_access import read
from runwatch.config.describe import describe
from runwatch.config.settings import Config
from runwatch.core.compose import outbox_items
from runwatch.core.render import sample_events
from runwatch.core.transitions import terminal_conditions
from runwatch.delivery.apprise_channel import ALL_URLS
from runwatch.delivery.lanes import WEBHOOK_TARGET, build_senders, close_senders, unsupported
from runwatch.delivery.senders import Outgoing, Sender
from runwatch.delivery.slack import SlackSender
from runwatch.service.cycle import destinations, styles
from runwatch.state.store import Lane

__all__ = ["check", "load", "notify_test", "runs"]


def check(config: Config, out: TextIO = sys.stdout) -> int:
    """Print what the configuration means; every template was already rendered by the loader."""
    for line in describe(config):
        print(line, file=out)
    items = outbox_items(
        sample_events(),
        rules=config.rules,
        templates=config.templates,
        destinations=destinations(config.channels),
        workspaces=styles(config),
    )
    print(
        f"\nrendered {len(items)} sample message(s) for {len(config.rules)} rule(s): OK", file=out
    )
    for warning in config.warnings:
        print(f"warning: {warning}", file=out)
    print("configuration OK", file=out)
    return 0


def notify_test(config: Config, names: list[str], out: TextIO = sys.stdout) -> int:
    """Send one test message to every target of the channels; exit 1 if any failed.

    A Slack channel posts its test message and then edits it, each step reported: editing
    in place is what its messages need beyond a plain post."""
    unknown = [n for n in names if n not in config.channels]
    if unknown:
        print(
            f"unknown channel(s): {', '.join(unknown)}; have: {', '.join(config.channels)}",
            file=out,
        )
        return 2
    chosen = {n: config.channels[n] for n in (names or list(config.channels))}
    senders = {
        lane: sender
        for lane, sender in build_senders(chosen).items()
        if lane[1] != ALL_URLS  # the lane of old rows: the same URLs once more
    }
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    text = (
        f"This is a test from runwatch on {os.uname().nodename} at {now}. "
        "If you can read it, channel **{name}** works."
    )

    async def main() -> list[tuple[str, bool, str]]:
        async def one(lane: Lane, sender: Sender) -> list[tuple[str, bool, str]]:
            name, target = lane
            if isinstance(sender, SlackSender):
                steps = await sender.trial(
                    host=os.uname().nodename, timeout=config.delivery.timeout
                )
                return [(name, ok, detail) for ok, detail in steps]
            body = text.format(name=name)
            if target == WEBHOOK_TARGET:
                body = json.dumps({"schema": "runwatch.test/1", "kind": "test", "message": body})
            message = Outgoing(
                title="🔔 runwatch test message",
                body=body,
                notify_type="info",
                event_keys=(f"runwatch/test/{name}/{now}",),
            )
            outcome = await sender.send(message, timeout=config.delivery.timeout)
            return [(name, outcome.ok, outcome.detail or sender.describe())]

        try:
            results = await asyncio.gather(*(one(lane, s) for lane, s in senders.items()))
            return [step for steps in results for step in steps]
        finally:
            await close_senders(senders)

    failed = 0
    results = asyncio.run(main())
    results += [(n, False, why) for n, ch in chosen.items() if (why := unsupported(ch))]
    for name, ok, detail in results:
        failed += not ok
        print(f"{name}: {'OK' if ok else 'FAILED'} {detail}", file=out)
    return 1 if failed else 0


def runs(
    config: Config,
    out: TextIO = sys.stdout,
    *,
    active: bool = False,
    condition: str | None = None,
    limit: int = 50,
) -> int:
    """The tracked runs, newest change first, at most `limit` (0: all of them)."""
    names = {ws.organization_id: ws.name for ws in config.workspaces}
    store = read(config, out)
    if store is None:
        return 0
    with store:
        states, total = store.latest_runs(
            terminal=terminal_conditions(config.poll.terminal_conditions),
            active=active,
            condition=condition,
            limit=limit or 2**62,
        )
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
        condition_text = f"{latest.condition} ({latest.status})" if latest else "-"
        rows.append(
            (
                names.get(s.organization_id, s.organization_id),
                s.run_id,
                s.flow_name or "-",
                condition_text,
                since,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
    which = " unfinished" if active else ""
    which += f" in a condition matching {condition!r}" if condition is not None else ""
    shown = f"; the {len(states)} newest shown (--limit N, 0: all)" if len(states) < total else ""
    print(f"\n{total} run(s) tracked{which}{shown}", file=out)
    return 0
