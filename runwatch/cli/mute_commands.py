"""`runwatch mute`, `mutes` and `unmute`: silence a run, project, flow or workspace for a
while, see what is silenced, and end it — on the state a running daemon uses.

A mute is one row of the state store (see `runwatch.core.mutes` for what it silences); the
daemon reads the active ones at every poll, so a change here takes effect at its next poll.
`--for` is required and at most 30 days: a mute always ends by itself.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from runwatch.cli.state_access import iso, now_ms, operator, read, span, table, write
from runwatch.config.durations import format_duration, parse_duration
from runwatch.config.settings import Config
from runwatch.core.mutes import MAX_MUTE_S, Mute

EX_OK, EX_FAILURE, EX_USAGE = 0, 1, 2


def main(args: argparse.Namespace, config: Config, out: TextIO = sys.stdout) -> int:
    if args.command == "mute":
        return mute(config, args, out=out)
    if args.command == "unmute":
        return unmute(config, args.ids, every=args.all, out=out)
    return mutes(config, out=out)


def mute(config: Config, args: argparse.Namespace, *, out: TextIO = sys.stdout) -> int:
    """Record a mute of what the arguments name, for `--for`, on one channel or all."""
    problem = _problem(config, args)
    if problem is not None:
        print(f"runwatch: mute: {problem}", file=sys.stderr)
        return EX_USAGE
    seconds = parse_duration(args.duration)
    store = write(config)
    if store is None:
        return EX_FAILURE
    now = now_ms()
    with store:
        made = store.mutes.add(
            Mute(
                runs=tuple(args.runs or ()),
                projects=tuple(args.projects or ()),
                flows=tuple(args.flows or ()),
                workspaces=tuple(args.workspaces or ()),
                channel=args.channel,
                created_at=now,
                until=now + int(seconds * 1000),
                reason=args.reason,
                who=operator(),
            )
        )
    print(
        f"mute #{made.id}: {made.what()} until {iso(made.until)} ({span(int(seconds))}); "
        "the daemon applies it from its next poll",
        file=out,
    )
    return EX_OK


def _problem(config: Config, args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments of `mute`, or None."""
    if not (args.runs or args.projects or args.flows or args.workspaces):
        return "name what to silence: --run ID, --project GLOB, --flow GLOB or --workspace NAME"
    try:
        seconds = parse_duration(args.duration)
    except ValueError:
        return f"--for {args.duration!r} is not a duration; write e.g. 30m, 2h, 1d"
    if seconds <= 0:
        return "--for must be longer than 0s"
    if seconds > MAX_MUTE_S:
        return f"--for {args.duration} is longer than {format_duration(MAX_MUTE_S)}, the most"
    names = [ws.name for ws in config.workspaces]
    unknown = [name for name in args.workspaces or () if name not in names]
    if unknown:
        return f"no workspace is named {unknown[0]!r}; workspaces are: {', '.join(names)}"
    if args.channel is not None and args.channel not in config.channels:
        return f"no channel is named {args.channel!r}; channels are: {', '.join(config.channels)}"
    return None


def mutes(config: Config, *, out: TextIO = sys.stdout) -> int:
    """The active mutes, oldest first."""
    store = read(config, out=out)
    if store is None:
        return EX_OK
    now = now_ms()
    with store:
        active = store.mutes.active(now)
    if not active:
        print("no active mutes", file=out)
        return EX_OK
    rows = [("ID", "WHAT", "UNTIL", "LEFT", "WHO", "REASON")]
    for m in active:
        left = span(max(0, m.until - now) // 1000)
        rows.append((str(m.id), m.what(), iso(m.until), left, m.who or "-", m.reason or "-"))
    table(rows, out)
    print(f"\n{len(active)} active mute(s); end one with: runwatch unmute ID", file=out)
    return EX_OK


def unmute(config: Config, ids: list[int], *, every: bool = False, out: TextIO = sys.stdout) -> int:
    """End the given mutes (or, with `every`, all of them) now."""
    if bool(ids) == every:
        print("runwatch: unmute: give mute ids, or --all (not both)", file=sys.stderr)
        return EX_USAGE
    store = write(config)
    if store is None:
        return EX_FAILURE
    with store:
        ended = store.mutes.remove_all(now_ms()) if every else store.mutes.remove(ids, now_ms())
    print(f"{ended} mute(s) ended; the daemon hears of it again from its next poll", file=out)
    if not every and ended < len(set(ids)):
        print("runwatch: unmute: some ids name no active mute (ended already?)", file=sys.stderr)
        return EX_FAILURE
    return EX_OK
