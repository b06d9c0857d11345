"""The `runwatch` command line: parse arguments, set up logging, run one command.

Exit status: 0 success, 1 runtime failure, 2 usage error, 78 configuration error (EX_CONFIG,
which the systemd unit lists in RestartPreventExitStatus= so a bad config never restart-loops).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import structlog

from runwatch import __version__
from runwatch.errors import ConfigError, RunwatchError, StoreError

EX_OK, EX_FAILURE, EX_USAGE, EX_CONFIG = 0, 1, 2, 78

log = structlog.get_logger("runwatch.cli.main")


def _common(parser: argparse.ArgumentParser, *, config: bool) -> None:
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="log verbosity (default: info)",
    )
    parser.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "json", "console"],
        help="auto: JSON lines unless stderr is a terminal",
    )
    if config:
        parser.add_argument(
            "-c",
            "--config",
            type=Path,
            default=None,
            help="configuration file (default: $RUNWATCH_CONFIG)",
        )


def build_parser() -> argparse.ArgumentParser:
    from runwatch.cli import demo
    from runwatch.simulator import cli as simulator

    parser = argparse.ArgumentParser(
        prog="runwatch",
        description="Watch Datature Vi training runs and notify people when they change state.",
    )
    parser.add_argument("--version", action="version", version=f"runwatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="the daemon: poll, diff, deliver until SIGTERM/SIGINT")
    _common(p, config=True)

    p = sub.add_parser("once", help="one poll cycle and one delivery pass, then exit")
    _common(p, config=True)
    p.add_argument(
        "--dry-run", action="store_true", help="print what would be sent; change nothing"
    )

    p = sub.add_parser("check", help="validate the configuration and render every template")
    _common(p, config=True)

    p = sub.add_parser("notify-test", help="send a test message to channels and report each result")
    _common(p, config=True)
    p.add_argument("channels", nargs="*", metavar="CHANNEL", help="default: every channel")

    p = sub.add_parser("runs", help="the tracked runs and their latest condition")
    _common(p, config=True)

    p = sub.add_parser("simulate", help="a local Vi API simulator (tests, demos, benchmarks)")
    _common(p, config=False)
    simulator.add_arguments(p)

    p = sub.add_parser("demo", help="simulator + daemon + console channel: runwatch in a minute")
    _common(p, config=False)
    demo.add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from runwatch.logs import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    default_level = (
        "warning" if args.command in ("demo", "check", "runs", "notify-test") else "info"
    )
    configure_logging(args.log_level or default_level, args.log_format)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        _print_config_error(exc, sys.stderr)
        return EX_CONFIG
    except StoreError as exc:
        log.error("state.unusable", error=str(exc))
        print(f"runwatch: {exc}", file=sys.stderr)
        return EX_FAILURE
    except RunwatchError as exc:
        log.error("runwatch.failed", error=str(exc))
        return EX_FAILURE
    except KeyboardInterrupt:
        return EX_FAILURE


def _dispatch(args: argparse.Namespace) -> int:
    from runwatch.cli import commands, demo
    from runwatch.simulator import cli as simulator

    if args.command == "simulate":
        return simulator.main(args)
    if args.command == "demo":
        return demo.main(args)
    config_path = args.config or _env_config()
    if config_path is None:
        print("runwatch: no configuration: pass -c FILE or set RUNWATCH_CONFIG", file=sys.stderr)
        return EX_USAGE
    config = commands.load(config_path)
    if args.command == "run":
        return commands.run(config, config_path)
    if args.command == "once":
        return commands.once(config, dry_run=args.dry_run)
    if args.command == "check":
        return commands.check(config)
    if args.command == "notify-test":
        return commands.notify_test(config, args.channels)
    if args.command == "runs":
        return commands.runs(config)
    raise AssertionError(args.command)


def _env_config() -> Path | None:
    value = os.environ.get("RUNWATCH_CONFIG")
    return Path(value) if value else None


def _print_config_error(exc: ConfigError, stream: TextIO) -> None:
    log.error("config.invalid", source=exc.source, problems=exc.problems)
    print(f"runwatch: {exc}", file=stream)


def install_signal_handlers(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, reload: asyncio.Event | None
) -> None:
    """SIGTERM/SIGINT stop gracefully; a second one exits at once. SIGHUP asks for a reload."""

    def on_stop(signame: str) -> None:
        if stop.is_set():
            log.warning("daemon.killed", signal=signame)
            os._exit(EX_FAILURE)
        log.info("signal.received", signal=signame)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig.name)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reload.set)


if __name__ == "__main__":
    raise SystemExit(main())
