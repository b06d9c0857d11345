"""The `runwatch` command line: parse arguments, set up logging, run one command.

Start-up cost is part of the interface: `runwatch --version` and `--help` import nothing but
the standard library's argparse, and each command imports what it needs when it runs (the
daemon's libraries cost ~0.3 s and ~30 MiB, which `--help` should not pay).

Exit status: 0 success, 1 runtime failure, 2 usage error, 75 messages left undelivered
(`once`), 78 configuration error (EX_CONFIG, which the systemd unit lists in
RestartPreventExitStatus= so a bad config never restart-loops).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from runwatch import __version__

EX_OK, EX_FAILURE, EX_USAGE, EX_TEMPFAIL, EX_CONFIG = 0, 1, 2, 75, 78
DEFAULT_CONFIG = Path("/etc/runwatch/config.yaml")

# Commands meant for a terminal log only warnings by default; the daemon's own commands info.
_QUIET_COMMANDS = frozenset(
    {
        "demo", "check", "runs", "notify-test", "status", "outbox", "mute", "mutes", "unmute",
        "migrate-state",
    }
)  # fmt: skip
# The operator's commands: they read the state without the configuration's secrets.
_STATE_COMMANDS = {
    "status": "operator_commands",
    "outbox": "operator_commands",
    "mute": "mute_commands",
    "mutes": "mute_commands",
    "unmute": "mute_commands",
}


def _common(
    parser: argparse.ArgumentParser, *, command: str, config: bool, nested: bool = False
) -> None:
    """The options every command takes; `nested` for an action of a command (`outbox
    retry`), whose options must not overwrite those given before the action."""
    default = "warning" if command in _QUIET_COMMANDS else "info"
    unset = argparse.SUPPRESS if nested else None
    parser.add_argument(
        "--log-level",
        default=unset,
        choices=["debug", "info", "warning", "error"],
        help=f"log verbosity (default: {default})",
    )
    parser.add_argument(
        "--log-format",
        default=argparse.SUPPRESS if nested else "auto",
        choices=["auto", "json", "console"],
        help="auto (the default): JSON lines unless stderr is a terminal",
    )
    if config:
        parser.add_argument(
            "-c",
            "--config",
            type=Path,
            default=unset,
            help=f"configuration file (default: $RUNWATCH_CONFIG, else {DEFAULT_CONFIG})",
        )


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    description: str,
    *,
    config: bool = True,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=summary, description=f"{summary}.\n\n{description}")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    _common(parser, command=name, config=config)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runwatch",
        description="Watch Datature Vi training runs and notify people when they change state.",
    )
    parser.add_argument("--version", action="version", version=f"runwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _command(
        sub,
        "run",
        "the daemon: poll, diff, deliver until SIGTERM/SIGINT",
        "Polls every workspace each poll.interval, commits what changed, and delivers the\n"
        "notifications its rules ask for. SIGTERM/SIGINT stop it (a delivery in flight gets\n"
        "5 s), SIGHUP reloads the configuration. Under systemd it speaks sd_notify.",
    )
    p = _command(
        sub,
        "once",
        "one poll cycle and one delivery pass, then exit",
        "For cron and for trying a configuration: exit 0 when everything was polled and\n"
        "delivered, 1 when a workspace could not be polled, 75 when messages are left\n"
        "undelivered (they stay in the outbox for the next run).",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be sent; record and send nothing (the state file is not created)",
    )
    _command(
        sub,
        "check",
        "validate the configuration and render every template",
        "Exit 0 and a summary with every secret masked, or 78 naming each problem's key\n"
        "path and line.",
    )
    p = _command(
        sub,
        "notify-test",
        "send a test message to channels and report each result",
        "Sends one test message to each named channel (default: every channel) and prints\n"
        "each URL's result; exit 1 if any failed.",
    )
    p.add_argument("channels", nargs="*", metavar="CHANNEL", help="default: every channel")
    p = _command(
        sub,
        "runs",
        "the tracked runs and their latest condition",
        "Newest change first (the latest condition's time). Reads the state file (never\n"
        "creates it) without the configuration's secrets; safe while the daemon runs.",
    )
    p.add_argument("--active", action="store_true", help="only unfinished runs")
    p.add_argument(
        "--condition", metavar="GLOB", help="only runs whose latest condition matches, e.g. Fail*"
    )
    p.add_argument(
        "--limit", type=_count, default=50, metavar="N", help="at most N runs (default 50; 0: all)"
    )
    from runwatch.cli.operator_parser import add_operator_commands  # argparse only

    add_operator_commands(sub, command=_command, common=_common)
    p = _command(
        sub,
        "simulate",
        "a local Vi API simulator (tests, demos, benchmarks)",
        "Serves a seeded organization over the Vi wire format on 127.0.0.1 and prints its\n"
        "URL, organization id, secret key and a configuration snippet.",
        config=False,
    )
    from runwatch.simulator.cli import add_arguments as simulator_arguments

    simulator_arguments(p)
    p = _command(
        sub,
        "demo",
        "simulator + daemon + console channel: runwatch in a minute",
        "Plays a short story on a simulated organization and prints each notification the\n"
        "real daemon sends. Needs no account and writes nothing outside a temporary directory.",
        config=False,
    )
    p.add_argument("--runs", type=int, default=40, help="runs in the simulated organization")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--interval", type=float, default=1.0, help="poll interval, seconds")
    p = _command(
        sub,
        "migrate-state",
        "copy a SQLite state into PostgreSQL",
        "Copies runs, workspaces, events, undelivered messages, the self-alert state, Slack\n"
        "message ids and active mutes into an empty PostgreSQL state, in one transaction, so\n"
        "moving to several instances needs no new baseline. Stop the daemon first.",
    )
    p.add_argument("--from", dest="source", type=Path, required=True, metavar="STATE_DB")
    p.add_argument(
        "--to",
        dest="url",
        metavar="URL",
        help="postgresql://... (default: state.url of the configuration)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    from runwatch.logs import configure_logging

    default_level = "warning" if args.command in _QUIET_COMMANDS else "info"
    configure_logging(args.log_level or default_level, args.log_format)
    from runwatch.cli.errors import exit_status_of

    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return EX_FAILURE
    except Exception as exc:
        return exit_status_of(exc)


def _dispatch(args: argparse.Namespace) -> int:
    # sys.stdout is passed at call time: the commands' `out=sys.stdout` defaults were bound
    # when they were imported, and whoever calls main() may have replaced it since.
    if args.command == "simulate":
        from runwatch.simulator.cli import main as simulate

        return simulate(args)
    if args.command == "demo":
        from runwatch.cli.demo import main as demo

        return demo(args)
    if args.command == "migrate-state" and args.url is not None:
        from runwatch.cli.migrate_command import migrate_state

        return migrate_state(args.source, args.url)
    config_path = config_file(args.config, os.environ)
    if config_path is None:
        print(
            f"runwatch: no configuration: pass -c FILE, set RUNWATCH_CONFIG, or create "
            f"{DEFAULT_CONFIG}",
            file=sys.stderr,
        )
        return EX_USAGE
    if args.command in ("run", "once"):
        from runwatch.cli import daemon_commands

        config = daemon_commands.load(config_path)
        if args.command == "run":
            return daemon_commands.run(config, config_path)
        return daemon_commands.once(config, dry_run=args.dry_run, out=sys.stdout)
    if args.command == "migrate-state":
        from runwatch.cli.migrate_command import migrate_state
        from runwatch.cli.state_access import load_config

        config = load_config(config_path)
        if config.state.url is None:
            print("runwatch: migrate-state: give --to URL, or set state.url", file=sys.stderr)
            return EX_USAGE
        return migrate_state(
            args.source, config.state.url, instance=config.ha.instance, out=sys.stdout
        )
    if args.command in _STATE_COMMANDS or args.command == "runs":
        import importlib

        from runwatch.cli.state_access import load_config

        config = load_config(config_path)
        if args.command == "runs":
            from runwatch.cli.inspect_commands import runs

            return runs(
                config,
                active=args.active,
                condition=args.condition,
                limit=args.limit,
                out=sys.stdout,
            )
        module = importlib.import_module(f"runwatch.cli.{_STATE_COMMANDS[args.command]}")
        status: int = module.main(args, config, out=sys.stdout)
        return status
    from runwatch.cli import inspect_commands

    config = inspect_commands.load(config_path)
    if args.command == "check":
        return inspect_commands.check(config, out=sys.stdout)
    if args.command == "notify-test":
        return inspect_commands.notify_test(config, args.channels, out=sys.stdout)
    raise AssertionError(args.command)


def config_file(given: Path | None, environ: os._Environ[str] | dict[str, str]) -> Path | None:
    """-c, else $RUNWATCH_CONFIG, else /etc/runwatch/config.yaml when it exists."""
    if given is not None:
        return given
    value = environ.get("RUNWATCH_CONFIG")
    if value:
        return Path(value)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


if __name__ == "__main__":
    raise SystemExit(main())
