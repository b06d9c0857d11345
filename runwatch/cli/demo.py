"""`runwatch demo`: the simulator, the daemon and a console channel, in under a minute.

A short scripted story plays on a simulated organization (some runs succeed, one fails
with a reason, one is cancelled, a new run appears and finishes) while the real daemon
polls the simulator over loopback and delivers through real Apprise to a `console://`
channel that prints to the terminal. State lives in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

from runwatch.cli.signals import install_signal_handlers
from runwatch.config.loading import parse_config
from runwatch.delivery.apprise_channel import route_apprise_logging
from runwatch.delivery.console import register_console_schema
from runwatch.logs import register_secrets
from runwatch.service.daemon import Daemon
from runwatch.simulator.server import Simulator
from runwatch.state.sqlite import SqliteStore

CONFIG = """
workspaces:
  - name: demo
    organization_id: {org}
    secret_key: {key}
    endpoint: {url}
    enrich: {{metrics: [Succeeded], project_names: true}}   # the defaults, shown
poll: {{interval: {interval}s, page_size: 5, request_timeout: 5s, full_resync: 1m}}
state: {{path: {state}}}
channels:
  console: {{urls: "console://", digest: false}}
rules:
  - name: everything
    match: {{}}
    notify: [console]
delivery: {{min_interval: 0s, initial_backoff: 1s}}
"""


Step = tuple[float, str, Callable[[], object]]


def _story(sim: Simulator) -> list[Step]:
    """(seconds after the baseline, what happens, action): the demo's script.

    Its runs are created just before the baseline, so they are part of history, and their
    durations read like real training runs rather than the seeded population's age. Each is
    in a training project of its own (the new run's is one the simulator names after its
    id), and those that succeed save checkpoints on the way (the simulator's plan for their
    flow): messages name the project, and a success shows the latest model's metrics.
    """
    started = [
        sim.create_run(condition="Running", flow=flow, training_project=project)
        for flow, project in (
            ("segformer-b2", "proj_defect-inspection"),
            ("convnext-classifier", "proj_retail-shelves"),
            ("qwen-vl-finetune", "proj_aerial-survey"),
        )
    ]
    ok, failing, cancelled = started
    created: list[str] = []

    def new_run() -> None:
        run_id = sim.create_run(
            condition="Pending", flow="yolo-detector", training_project="proj_traffic-cams"
        )
        created.append(run_id)

    return [
        (2, "a run succeeds", lambda: sim.append_condition(ok, "Succeeded")),
        (
            4,
            "a run fails",
            lambda: sim.append_condition(
                failing,
                "Failed",
                status="FailedReach",
                reason="OutOfMemory",
                message="CUDA out of memory while allocating 2.1 GiB at epoch 14",
            ),
        ),
        (6, "a new run appears", new_run),
        (8, "the new run starts", lambda: sim.append_condition(created[0], "Running")),
        (
            10,
            "a run is cancelled",
            lambda: sim.append_condition(
                cancelled, "Cancelled", reason="KilledByUser", message="Stopped from the console"
            ),
        ),
        (13, "the new run succeeds", lambda: sim.append_condition(created[0], "Succeeded")),
    ]


def main(args: argparse.Namespace) -> int:
    return asyncio.run(play(runs=args.runs, seed=args.seed, interval=args.interval))


async def play(
    *,
    runs: int = 40,
    seed: int = 7,
    interval: float = 1.0,
    speed: float = 1.0,
    out: TextIO = sys.stdout,
) -> int:
    """Play the story and print its notifications to `out`; return the exit status.

    `speed` > 1 plays faster: the story's times and the poll interval are divided by it (the
    CLI plays at 1.0, a test at 4.0).
    """
    if speed <= 0:
        raise ValueError("the demo's speed must be positive")
    register_console_schema(out)
    route_apprise_logging()
    with (
        Simulator(runs=runs, active=4, seed=seed) as sim,
        tempfile.TemporaryDirectory(prefix="runwatch-demo-") as tmp,
    ):
        config = parse_config(
            CONFIG.format(
                org=sim.organization_id,
                key=sim.secret_key,
                url=sim.url,
                interval=interval / speed,
                state=Path(tmp) / "state.db",
            ),
            source="<demo>",
        )
        register_secrets(config.secrets)
        out.write(
            f"runwatch demo: a simulated Vi organization with {runs} runs at {sim.url}\n"
            "The first poll records every run silently (the baseline); then the story plays\n"
            "and each change arrives below as a notification. Ctrl-C stops it.\n"
        )
        out.flush()
        stop = asyncio.Event()
        install_signal_handlers(asyncio.get_running_loop(), stop, None)
        with SqliteStore.open(config.state.sqlite_path()) as store:
            daemon = Daemon(config, store)
            story = _story(sim)
            task = asyncio.create_task(daemon.run(stop))
            await _play_story(story, daemon, stop, out, speed=speed)
            stop.set()
            await task
            pending = store.outbox_stats(daemon.now_ms()).pending
        out.write(f"\ndemo finished; {pending} notification(s) left undelivered.\n")
        out.flush()
    return 0


async def _play_story(
    story: list[Step], daemon: Daemon, stop: asyncio.Event, out: TextIO, *, speed: float
) -> None:
    # Wait for the baseline, so the story's changes are transitions, not part of history.
    if not await _until(daemon.wait_cycles(1), stop, timeout=30):
        return
    runs = sum(len(k) for k in daemon.known.values())
    out.write(f"baseline recorded: {runs} runs, nothing sent\n")
    out.flush()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for at, what, action in story:
        delay = start + at / speed - loop.time()
        if delay > 0 and not await _until(stop.wait(), stop, timeout=delay, expect_timeout=True):
            return
        action()
        out.write(f"\n· simulator: {what}\n")
        out.flush()
    # Two more cycles: the first may have started before the last change.
    await _until(daemon.wait_cycles(daemon.cycles + 2), stop, timeout=10)
    await _until(_drained(daemon), stop, timeout=10)


async def _drained(daemon: Daemon) -> None:
    while daemon.store.outbox_stats(daemon.now_ms()).pending:
        await daemon.wait_cycles(daemon.cycles + 1)


async def _until(
    aw: Awaitable[object], stop: asyncio.Event, *, timeout: float, expect_timeout: bool = False
) -> bool:
    """Await `aw` for at most `timeout` s; False if stopped (or, unless expected, timed out)."""
    try:
        await asyncio.wait_for(aw, timeout=timeout)
    except asyncio.TimeoutError:
        return expect_timeout and not stop.is_set()
    return not stop.is_set() and not expect_timeout
