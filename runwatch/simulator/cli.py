"""`runwatch simulate`: serve a simulator until SIGINT or SIGTERM.

Theory: `runwatch --help` builds every subcommand's parser, so this module imports nothing
but argparse and the population's constants at module level; the server (http.server, ssl,
json, structlog) is imported inside `main`, when `simulate` actually runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from runwatch.simulator.defaults import SIM_ORG

if TYPE_CHECKING:
    import threading

    from runwatch.simulator.server import Simulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default=None,
        help="address to listen on (default 127.0.0.1; a non-loopback address must be given here)",
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free)")
    parser.add_argument("--runs", type=int, default=500, help="runs in the seeded population")
    parser.add_argument(
        "--active",
        type=int,
        default=None,
        help="of which not finished (default 20, at most --runs)",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the population")
    parser.add_argument("--org", default=SIM_ORG, help="organization id")
    parser.add_argument("--secret-key", default=None, help="secret key (default: from the seed)")
    parser.add_argument("--page-size-cap", type=int, default=100, help="largest page served")
    parser.add_argument(
        "--progress",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="scenario seconds to advance every real second (default 0: runs never change)",
    )
    parser.add_argument(
        "--arrival-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="with --progress, a new run every this many scenario seconds (default 300)",
    )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_snippet(sim: Simulator) -> str:
    """A runwatch configuration that watches `sim` and prints every change on the console."""
    return "\n".join(
        [
            "workspaces:",
            "  - name: sim",
            f"    organization_id: {sim.organization_id}",
            f"    secret_key: {sim.secret_key}",
            f"    endpoint: {sim.url}",
            "poll:",
            "  interval: 5s",
            "channels:",
            "  console: console://",
            "rules:",
            "  - name: everything",
            '    match: {condition: "*"}',
            "    notify: [console]",
        ]
    )


def main(args: argparse.Namespace) -> int:
    """Serve a simulator until SIGINT or SIGTERM; print how to point runwatch at it."""
    import signal
    import threading
    from types import FrameType

    import structlog

    from runwatch.simulator.server import Simulator

    log = structlog.get_logger("runwatch.simulator.server")
    # A test tool with a published key: loopback unless the operator names another address.
    host = args.host if args.host is not None else "127.0.0.1"
    if not _is_loopback(host):
        print(f"warning: serving a fake Vi API with a known secret key on {host}", file=sys.stderr)
    progress = float(args.progress)
    if progress < 0:
        print("runwatch simulate: --progress cannot be negative", file=sys.stderr)
        return 2
    arrivals = args.arrival_interval
    if arrivals is None:
        arrivals = 300.0 if progress > 0 else 0.0
    try:
        sim = Simulator(
            runs=args.runs,
            # Only an explicit --active above --runs is an error; the default shrinks to fit.
            active=args.active if args.active is not None else min(20, max(args.runs, 0)),
            seed=args.seed,
            organization_id=args.org,
            secret_key=args.secret_key,
            page_size_cap=args.page_size_cap,
            arrival_interval=arrivals,
        )
        sim.start(host, args.port)
    except (ValueError, OSError) as exc:
        print(f"runwatch simulate: {exc}", file=sys.stderr)
        return 2

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"Vi API simulator listening on {sim.url}")
        print(f"organization id: {sim.organization_id}")
        print(f"secret key:      {sim.secret_key}")
        print("runwatch configuration:\n")
        print(config_snippet(sim), flush=True)
        for changes in _ticks(done, sim, progress):
            for run_id, condition in changes:
                log.info("sim.change", run_id=run_id, condition=condition)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sim.stop()
    return 0


def _ticks(
    done: threading.Event, sim: Simulator, progress: float
) -> Iterator[list[tuple[str, str]]]:
    # Event.wait returns early when a signal handler sets `done`.
    while not done.wait(1.0):
        if progress > 0:
            yield sim.advance(progress)
