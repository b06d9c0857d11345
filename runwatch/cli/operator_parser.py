"""The command line of the operator's commands: status, outbox (retry, drop), mute, mutes,
unmute. Parsing only: like `runwatch.cli.main` this imports nothing but argparse, and each
command's module is imported when it runs (`operator_commands`, `mute_commands`).
"""

from __future__ import annotations

import argparse
from typing import Protocol


class Command(Protocol):
    def __call__(
        self,
        sub: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        summary: str,
        description: str,
        *,
        config: bool = True,
    ) -> argparse.ArgumentParser: ...


class Common(Protocol):
    def __call__(
        self, parser: argparse.ArgumentParser, *, command: str, config: bool, nested: bool = False
    ) -> None: ...


def add_operator_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    command: Command,
    common: Common,
) -> None:
    """Add status, outbox (retry, drop), mute, mutes and unmute to `sub`, with `command` and
    `common` of `runwatch.cli.main` (so every command takes the same options)."""
    beside = (
        "Works while the daemon runs (no writer lock), needs none of the configuration's\n"
        "secrets, and never creates a state file. On the systemd service: run it as root with\n"
        "-c /etc/runwatch/config.yaml (the default), see systemd/README.md."
    )
    p = command(
        sub,
        "status",
        "workspaces, last polls, outbox, failing channels and mutes",
        "Exit 0 when every workspace was polled recently, 1 when one is down.\n" + beside,
    )
    p.add_argument("--json", action="store_true", help="the same as one JSON document")
    p = command(
        sub,
        "outbox",
        "messages not delivered yet; retry or drop them",
        "Lists pending messages (--dead: dead and uncertain ones), oldest first.\n"
        "`outbox retry ID...|--dead` makes them due now (sent after the daemon's next poll);\n"
        "`outbox drop ID...` marks them dropped: kept, counted, never sent.\n" + beside,
    )
    p.add_argument("--dead", action="store_true", help="dead and uncertain messages instead")
    p.add_argument("--channel", metavar="NAME", help="only this channel's messages")
    actions = p.add_subparsers(dest="outbox_action", metavar="ACTION")
    for name, summary in (
        ("retry", "make messages due now: the ids given, or --dead for every dead one"),
        ("drop", "mark messages dropped: kept and counted, never sent"),
    ):
        a = actions.add_parser(name, help=summary, description=f"{summary}.")
        common(a, command="outbox", config=True, nested=True)
        a.add_argument("ids", nargs="*", type=int, metavar="ID", help="message ids (outbox)")
        if name == "retry":
            a.add_argument(
                "--dead", action="store_true", default=argparse.SUPPRESS,
                help="every dead and uncertain message (of --channel, if given)",
            )  # fmt: skip
            a.add_argument("--channel", metavar="NAME", default=argparse.SUPPRESS)
    p = command(
        sub,
        "mute",
        "silence a run, project, flow or workspace for a while",
        "Events it matches (every option given must match; repeat one for alternatives) are\n"
        "recorded as muted, not sent, from the daemon's next poll until the mute ends.\n" + beside,
    )
    p.add_argument("--run", dest="runs", action="append", metavar="ID", help="a run id")
    p.add_argument("--project", dest="projects", action="append", metavar="GLOB")
    p.add_argument("--flow", dest="flows", action="append", metavar="GLOB")
    p.add_argument("--workspace", dest="workspaces", action="append", metavar="NAME")
    p.add_argument(
        "--for", dest="duration", required=True, metavar="DURATION", help="e.g. 2h; at most 30d"
    )
    p.add_argument("--channel", metavar="NAME", help="only on this channel (default: all)")
    p.add_argument("--reason", metavar="TEXT", help="shown by `runwatch mutes`")
    command(sub, "mutes", "the active mutes", "Id, what, until when, who and why.\n" + beside)
    p = command(sub, "unmute", "end mutes now", "Give mute ids, or --all.\n" + beside)
    p.add_argument("ids", nargs="*", type=int, metavar="ID", help="mute ids (runwatch mutes)")
    p.add_argument("--all", action="store_true", help="end every active mute")
