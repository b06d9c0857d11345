"""`runwatch status` and `runwatch outbox [retry|drop]`: what the daemon is doing, and what
to do about undelivered messages — from another process, while the daemon runs.

Everything here goes through `state_access` (no secrets needed, no writer lock, no state
file created). `status` only reads. `outbox retry` and `outbox drop` change rows in one
short transaction each: retried rows are due at once as if new (a fresh `delivery.max_age`),
and the daemon sends them after its next poll; dropped rows are kept and counted, never sent.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from runwatch.cli.ha_status import alert_states, ha_report, print_ha
from runwatch.cli.state_access import ago, cut, iso, now_ms, read, span, table, write
from runwatch.config.settings import Config
from runwatch.core.alerts import AlertState
from runwatch.core.mutes import Mute
from runwatch.core.transitions import terminal_conditions
from runwatch.delivery import quiet_hours
from runwatch.service.status import MIN_STALE_AFTER_S
from runwatch.state.open import AnyStore, where
from runwatch.state.store import OutboxRow

EX_OK, EX_FAILURE, EX_USAGE = 0, 1, 2
LISTED = 1_000  # rows `runwatch outbox` prints at most
SCANNED = 10_000  # pending rows `runwatch status` looks at for "held" and "retrying"
GIVEN_UP = ("dead", "uncertain")


def main(args: argparse.Namespace, config: Config, out: TextIO = sys.stdout) -> int:
    if args.command == "status":
        return status(config, as_json=args.json, out=out)
    action = getattr(args, "outbox_action", None)
    if action == "retry":
        return retry(config, args.ids, dead=args.dead, channel=args.channel, out=out)
    if action == "drop":
        return drop(config, args.ids, out=out)
    return outbox(config, dead=args.dead, channel=args.channel, out=out)


# -- status ---------------------------------------------------------------------------------


def status(config: Config, *, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """Exit 0 when every workspace polls, 1 when one is down (or never polled)."""
    store = read(config, out=sys.stderr if as_json else out)
    report = _report(config, store, now_ms())
    if store is not None:
        store.close()
    if as_json:
        print(json.dumps(report, indent=2), file=out)
    else:
        _print_report(report, out)
    return EX_OK if report["ok"] else EX_FAILURE


def _report(config: Config, store: AnyStore | None, now: int) -> dict[str, Any]:
    """Everything `status` shows, as plain data (its --json form)."""
    stale_ms = max(3 * config.poll.interval, MIN_STALE_AFTER_S) * 1000
    counts = {} if store is None else store.run_counts(terminal_conditions(
        config.poll.terminal_conditions
    ))  # fmt: skip
    workspaces = []
    for ws in config.workspaces:
        meta = None if store is None else store.workspace(ws.organization_id)
        success = None if meta is None else meta.last_success
        failure = None if meta is None else meta.last_failure
        runs, unfinished = counts.get(ws.organization_id, (0, 0))
        workspaces.append(
            {
                "name": ws.name,
                "organization_id": ws.organization_id,
                "ok": success is not None and now - success <= stale_ms,
                "last_success": None if success is None else iso(success),
                "last_success_age_s": None if success is None else (now - success) // 1000,
                "last_error_at": iso(failure) if failure is not None else None,
                # The error of a failure since the last success; an older one is history.
                "last_error": (
                    meta.last_error
                    if meta is not None and failure is not None and failure > (success or 0)
                    else None
                ),
                "runs": runs,
                "unfinished": unfinished,
            }
        )
    report = {
        "ok": all(w["ok"] for w in workspaces),
        "state": where(config),
        "workspaces": workspaces,
        "outbox": _outbox_summary(config, store, now),
        "failing_channels": _failing(store, now),
        "mutes": [] if store is None else [_mute_data(m) for m in store.mutes.active(now)],
    }
    ha = ha_report(config, store)
    if ha is not None:
        report["ha"] = ha
    return report


def _outbox_summary(config: Config, store: AnyStore | None, now: int) -> dict[str, Any]:
    if store is None:
        return {"pending": 0, "held": 0, "dead": 0, "uncertain": 0, "muted": 0, "dropped": 0}
    stats = store.outbox_stats(now)
    held = 0
    if any(ch.quiet_hours is not None for ch in config.channels.values()):
        # Counted among the oldest SCANNED pending rows: a backlog larger than that is news
        # enough, and reading it whole (bodies included) would cost more than it tells.
        for row in store.outbox.rows(states=("pending",), limit=SCANNED):
            channel = config.channels.get(row.channel)
            quiet = None if channel is None else channel.quiet_hours
            held += quiet_hours.holds(quiet, row.condition, now)
    return {
        "pending": stats.pending,
        "held": held,  # of the pending: waiting for the end of their channel's quiet hours
        "dead": stats.dead,
        "uncertain": stats.uncertain,
        "muted": stats.muted,
        "dropped": stats.dropped,
        "oldest_pending_age_s": round(stats.oldest_pending_age),
        "by_channel": {
            name: {
                "pending": stats.pending_by_channel.get(name, 0),
                "dead": stats.dead_by_channel.get(name, 0),
                "uncertain": stats.uncertain_by_channel.get(name, 0),
            }
            for name in sorted(
                {*stats.pending_by_channel, *stats.dead_by_channel, *stats.uncertain_by_channel}
            )
        },
    }


def _failing(store: AnyStore | None, now: int) -> list[dict[str, Any]]:
    """Channels the stored alert state has down, and channels whose pending rows keep failing."""
    if store is None:
        return []
    failing: dict[str, dict[str, Any]] = {}
    for text in alert_states(store):  # (several instances keep one each)
        try:
            state = AlertState.from_json(json.loads(text))
        except ValueError:
            state = AlertState()
        for subject, alerted_ms in sorted(state.down.items(), key=lambda kv: kv[1]):
            kind, _, name = subject.partition(":")
            if kind == "channel" and name not in failing:
                failing[name] = {"channel": name, "alerted_at": iso(alerted_ms)}
    for row in store.outbox.rows(states=("pending",), limit=SCANNED):
        if row.attempts and row.last_error:
            entry = failing.setdefault(row.channel, {"channel": row.channel, "alerted_at": None})
            entry["retrying"] = entry.get("retrying", 0) + 1
            entry["last_error"] = row.last_error
    return [failing[name] for name in sorted(failing)]


def _mute_data(mute: Mute) -> dict[str, Any]:
    return {
        "id": mute.id,
        "what": mute.what(),
        "until": iso(mute.until),
        "reason": mute.reason,
        "who": mute.who,
    }


def _print_report(report: dict[str, Any], out: TextIO) -> None:
    for ws in report["workspaces"]:
        state = "ok" if ws["ok"] else "DOWN"
        age = ws["last_success_age_s"]
        when = "never" if age is None else f"{ws['last_success']} ({span(age)} ago)"
        print(
            f"workspace {ws['name']}: {state}; last successful poll {when}; "
            f"{ws['runs']} runs watched, {ws['unfinished']} unfinished",
            file=out,
        )
        if ws["last_error"]:
            print(f"  last error ({ws['last_error_at']}): {ws['last_error']}", file=out)
    box = report["outbox"]
    print(
        f"outbox: {box['pending']} pending ({box['held']} held for quiet hours), "
        f"{box['dead']} dead, {box['uncertain']} uncertain; {box['muted']} muted, "
        f"{box['dropped']} dropped",
        file=out,
    )
    for name, counts in box.get("by_channel", {}).items():
        parts = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
        print(f"  {name}: {parts}", file=out)
    failing = report["failing_channels"]
    print("failing channels:" + ("" if failing else " none"), file=out)
    for entry in failing:
        alerted = f"alerted {entry['alerted_at']}" if entry["alerted_at"] else "not alerted yet"
        retrying = f"; {entry['retrying']} message(s) retrying" if entry.get("retrying") else ""
        error = entry.get("last_error")
        error = f"; last error: {cut(error, 100)}" if error else ""
        print(f"  {entry['channel']}: {alerted}{retrying}{error}", file=out)
    mutes = report["mutes"]
    print(f"mutes: {len(mutes) or 'none'} active", file=out)
    for m in mutes:
        reason = f" ({m['reason']})" if m["reason"] else ""
        print(f"  #{m['id']} {m['what']} until {m['until']}, by {m['who']}{reason}", file=out)
    if "ha" in report:
        print_ha(report["ha"], out)


# -- outbox ---------------------------------------------------------------------------------


def outbox(
    config: Config, *, dead: bool = False, channel: str | None = None, out: TextIO = sys.stdout
) -> int:
    """The pending messages, or with `dead` the dead and uncertain ones, oldest first."""
    store = read(config, out=out)
    if store is None:
        return EX_OK
    states = GIVEN_UP if dead else ("pending",)
    now = now_ms()
    with store:
        rows = store.outbox.rows(states=states, channel=channel, limit=LISTED + 1)
    what = "dead or uncertain" if dead else "pending"
    if not rows:
        print(f"no {what} messages" + (f" for channel {channel}" if channel else ""), file=out)
        return EX_OK
    lines = [("ID", "STATE", "CHANNEL", "TARGET", "RUN", "TITLE", "TRIES", "LAST ERROR", "AGE")]
    for row in rows[:LISTED]:
        lines.append(
            (
                str(row.id),
                row.state,
                row.channel,
                row.target or "all",
                row.run_key.rpartition("/")[2],
                cut(row.title, 50),
                str(row.attempts),
                cut(row.last_error, 60),
                ago(row.created_at, now),
            )
        )
    table(lines, out)
    more = f" (the oldest {LISTED} shown)" if len(rows) > LISTED else ""
    hint = "retry: runwatch outbox retry ID... | --dead; drop: runwatch outbox drop ID..."
    print(f"\n{min(len(rows), LISTED)} {what} message(s){more}; {hint}", file=out)
    return EX_OK


def retry(
    config: Config,
    ids: Sequence[int],
    *,
    dead: bool = False,
    channel: str | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Make messages due now: the given ones, or with `dead` every dead and uncertain one."""
    if bool(ids) == dead:
        print("runwatch: outbox retry: give message ids, or --dead (not both)", file=sys.stderr)
        return EX_USAGE
    store = write(config)
    if store is None:
        return EX_FAILURE
    with store:
        if dead:
            ids = [r.id for r in store.outbox.rows(states=GIVEN_UP, channel=channel, limit=10**9)]
        revived = sum(store.outbox.revive(chunk, now_ms()) for chunk in _chunks(ids))
        left = [] if dead else _not_in(store.outbox.rows(states=("pending",), ids=ids), ids)
    print(f"{revived} message(s) due now; the daemon sends them after its next poll", file=out)
    return _report_left(left, "retried (sent or dropped already?)")


def drop(config: Config, ids: Sequence[int], *, out: TextIO = sys.stdout) -> int:
    """Mark messages dropped: kept and counted, never sent."""
    if not ids:
        print("runwatch: outbox drop: give the ids of the messages to drop", file=sys.stderr)
        return EX_USAGE
    store = write(config)
    if store is None:
        return EX_FAILURE
    with store:
        dropped = sum(store.outbox.drop(chunk, now_ms()) for chunk in _chunks(ids))
        left = _not_in(store.outbox.rows(states=("dropped",), ids=ids), ids)
    print(f"{dropped} message(s) dropped: kept, counted, never sent", file=out)
    return _report_left(left, "dropped (sent already, or no such id?)")


def _not_in(rows: Sequence[OutboxRow], ids: Sequence[int]) -> list[int]:
    found = {r.id for r in rows}
    return [i for i in ids if i not in found]


def _report_left(left: Sequence[int], why: str) -> int:
    if not left:
        return EX_OK
    print(f"runwatch: not {why}: {', '.join(map(str, left))}", file=sys.stderr)
    return EX_FAILURE


def _chunks(ids: Sequence[int], size: int = 500) -> list[list[int]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]
