#!/usr/bin/env python3
"""What runwatch costs per request, per poll and per run, side by side with watchers
written with the official vi-sdk (issue 16), on one simulator, in one run.

    python3 benchmarks/bench_daemon.py [--quick] [--out benchmarks/RESULTS-daemon.md]

The simulator runs in a process of its own (`bench_polling.Host`), so the CPU measured
here is the watcher's alone. The vi-sdk (a benchmark-only dependency, in the `test` extra)
runs in this process, against the same simulator, between runwatch's rows:

- CPU and requests per steady poll, 20 active runs spread through history: runwatch's
  incremental poll (the real `Daemon.poll_cycle`: poll, diff, enrich, commit to SQLite)
  against three SDK watchers: the seed's loop over `client.runs.list()` at page size 10
  and at 100 (every page, every poll), and "page 1 + `get()` per known-active run" (page
  size 50, as runwatch's default; the hand-written cheapest loop);
- a full listing: runwatch's full resync (`poll_cycle` when `poll.full_resync` is due) and
  its decode + diff alone (the poller's page path on bytes already fetched: JSON parsing
  included), against the SDK listing every page at page size 100, in runs per CPU second;
- peak RSS (VmHWM) at 1,000 / 10,000 / 100,000 runs of the real daemon (`python -m runwatch
  run`: baseline, incremental polls, a full resync) and of an SDK watcher process (the
  seed's loop at page size 100 keeping each run's latest condition);
- exec to READY (the `READY=1` datagram on `$NOTIFY_SOCKET`) and RSS at READY of the real
  daemon with one `json://` channel, and the time of `runwatch --version`.

`--quick` (1,000 and 10,000 runs, fewer polls; RSS at 1,000 and 10,000) takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench_polling import (
    EPOCH,
    INTERVAL_S,
    PAGE_SIZE,
    FakeClock,
    Host,
    Population,
    config_text,
    machine,
    poll_once,
    quiet_in,
    start_population,
    write_config,
)
from sdk_watcher import sdk_client, sdk_list_loop, sdk_page1_get

from runwatch.config.loading import parse_config
from runwatch.core.transitions import Fold
from runwatch.logs import configure_logging
from runwatch.service.daemon import Daemon
from runwatch.state.sqlite import SqliteStore
from runwatch.vi.wire import read_page

ROOT = Path(__file__).resolve().parent.parent
SDK_WATCHER = Path(__file__).resolve().parent / "sdk_watcher.py"


@dataclass
class Row:
    who: str
    requests: int
    cpu_ms: float  # median per poll
    wall_ms: float


@dataclass
class Steady:
    label: str
    rows: list[Row] = field(default_factory=list)


async def steady(
    host: Host, runs: int, polls: int, page_size: int = PAGE_SIZE, kind: str = "incremental"
) -> Steady:
    """`kind`: what runwatch's steady polls turn out to be; a small workspace's every poll
    walks to the end of the listing, a complete listing ("full")."""
    pop = start_population(host, runs, recent=False)
    label = (
        f"{runs:,} runs, 20 active spread"
        + (f", page size {page_size}" if page_size != PAGE_SIZE else "")
        + (", a full listing every poll" if kind == "full" else "")
    )
    print(f"  steady polls: {label}", file=sys.stderr, flush=True)
    result = Steady(label)
    client = sdk_client(pop.url, pop.organization_id, pop.secret_key)
    with tempfile.TemporaryDirectory(prefix="runwatch-bench-") as tmp:
        # A full listing every poll: what a small workspace whose walk always reaches the
        # end of the listing costs (full_resync shorter than the interval).
        resync = {"full_resync": "1s"} if kind == "full" else {}
        text = config_text(
            pop,
            Path(tmp) / "state.db",
            hook="json://127.0.0.1:9/x",
            page_size=str(page_size),
            **resync,
        )
        clock = FakeClock()
        with SqliteStore.open(Path(tmp) / "state.db") as store:
            daemon = Daemon(parse_config(text), store, clock=clock)
            try:
                await poll_once(daemon, host, "baseline")
                # Interleaved: one runwatch poll, then one of each SDK watcher, so that the
                # machine's load drifts over all of them alike.
                loops = [
                    ("vi-sdk: `runs.list()` loop, page size 10", sdk_list_loop(client, 10)),
                    ("vi-sdk: `runs.list()` loop, page size 100", sdk_list_loop(client, 100)),
                    ("vi-sdk: page 1 + `get()` per known-active run", sdk_page1_get(client)),
                ]
                knowns: list[dict[str, Any]] = [{} for _ in loops]
                learn = sdk_list_loop(client, 100)
                for known in knowns:
                    learn(known)  # every run first, as runwatch's baseline does
                ours: list[tuple[float, float, int]] = []
                theirs: list[list[tuple[float, float, int]]] = [[] for _ in loops]
                for _ in range(polls):
                    clock.now += INTERVAL_S
                    sample = await poll_once(daemon, host, kind)
                    ours.append((sample.cpu, sample.wall, sample.requests))
                    for (_, loop), known, out in zip(loops, knowns, theirs, strict=True):
                        host.call("reset")
                        wall, cpu = time.perf_counter(), time.process_time()
                        loop(known)
                        took = (time.process_time() - cpu, time.perf_counter() - wall)
                        out.append((*took, sum(host.call("counts").values())))
            finally:
                await daemon.aclose()
    client = None
    gc.collect()
    for who, samples in [("runwatch poll", ours)] + [
        (name, s) for (name, _), s in zip(loops, theirs, strict=True)
    ]:
        result.rows.append(
            Row(
                who,
                round(statistics.median(r for _, _, r in samples)),
                statistics.median(c for c, _, _ in samples) * 1000,
                statistics.median(w for _, w, _ in samples) * 1000,
            )
        )
    return result


@dataclass
class Listing:
    runs: int
    resync_cpu_s: float
    resync_requests: int
    decode_diff_rate: float  # runs / CPU-s, the poller's page path on fetched bytes
    sdk_cpu_s: float  # every page through the SDK at page size 100


async def full_listing(host: Host, runs: int) -> Listing:
    pop = start_population(host, runs, recent=False)
    print(f"  full listings: {runs:,} runs", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="runwatch-bench-") as tmp:
        text = config_text(pop, Path(tmp) / "state.db", hook="json://127.0.0.1:9/x")
        config = parse_config(text)
        clock = FakeClock()
        with SqliteStore.open(Path(tmp) / "state.db") as store:
            daemon = Daemon(config, store, clock=clock)
            try:
                await poll_once(daemon, host, "baseline")
                clock.now += config.poll.full_resync
                resync = await poll_once(daemon, host, "full")
                rate = decode_diff_rate(pop, daemon)
            finally:
                await daemon.aclose()
    client = sdk_client(pop.url, pop.organization_id, pop.secret_key)
    cpu = time.process_time()
    listed = sum(len(page.items) for page in client.runs.list(pagination={"page_size": 100}))
    sdk_cpu = time.process_time() - cpu
    assert listed == runs, (listed, runs)
    gc.unfreeze()
    gc.collect()
    return Listing(runs, resync.cpu, resync.requests, rate, sdk_cpu)


def decode_diff_rate(pop: Population, daemon: Daemon) -> float:
    """Runs per CPU second of the poller's page path (msgspec decode from the bytes, the
    quiet test, the fold) over a full listing's pages, fetched beforehand."""
    bodies: list[bytes] = []
    headers = {"Authorization": f"Bearer {pop.secret_key}", "Organization-Id": pop.organization_id}
    with httpx.Client(headers=headers) as http:
        token: str | None = None
        while True:
            params = {"s": str(PAGE_SIZE), **({"p": token} if token else {})}
            response = http.get(f"{pop.url}/workspaces/{pop.organization_id}/runs", params=params)
            bodies.append(response.content)
            token = json.loads(response.content)["nextPage"]
            if not token:
                break
    index = daemon.known[pop.organization_id]
    fold = Fold(index, workspace="bench", baseline=False, now_ms=int(EPOCH * 1000))
    quiet = quiet_in(fold)
    cpu = time.process_time()
    for body in bodies:
        page = read_page(body, organization_id=pop.organization_id, quiet=quiet)
        assert page is not None
        fold.add(page.runs, page.skipped + page.quiet)
    took = time.process_time() - cpu
    assert len(fold.seen) == pop.runs and not fold.events
    return pop.runs / took


# --- processes of their own: peak RSS, start-up -----------------------------------------


def _status_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0])
    return fields


def _env() -> dict[str, str]:
    # The runwatch under test: $PYTHONPATH's if set (to compare two trees), else this one's;
    # the children run in "/" so that the current directory never shadows it.
    return dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH") or str(ROOT))


def daemon_peak_rss(host: Host, runs: int) -> tuple[float, float]:
    """VmHWM (MiB) of `runwatch run` through its baseline, a full resync and polls; then of
    the daemon restarted on that state file (every run loaded from SQLite, a full resync)."""
    pop = start_population(host, runs, recent=False)
    print(f"  peak RSS: the daemon watching {runs:,} runs", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="runwatch-bench-") as tmp:
        text = config_text(
            pop,
            Path(tmp) / "state.db",
            hook="json://127.0.0.1:9/x",
            interval="1s",
            # long enough that a full listing of 100,000 runs (several seconds) is followed
            # by incremental polls rather than by the next full listing
            full_resync="5s" if runs < 50_000 else "30s",
        )
        config = write_config(Path(tmp), text)
        return _watch_until_resynced(config), _watch_until_resynced(config)


def _watch_until_resynced(config: Path) -> float:
    process = subprocess.Popen(
        [sys.executable, "-m", "runwatch", "run", "-c", str(config), "--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd="/",
    )
    kinds: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "poll.done":
                kinds.append(event["kind"])
                if "full" in kinds and kinds[kinds.index("full") :].count("incremental") >= 2:
                    return _status_kib(process.pid)["VmHWM"] / 1024
        raise RuntimeError(f"the daemon ended after polls {kinds}")
    finally:
        process.terminate()
        process.wait(timeout=30)


def sdk_peak_rss(host: Host, runs: int) -> float:
    pop = start_population(host, runs, recent=False)
    print(f"  peak RSS: an SDK watcher of {runs:,} runs", file=sys.stderr, flush=True)
    done = subprocess.run(
        [sys.executable, str(SDK_WATCHER), pop.url, pop.organization_id, pop.secret_key],
        capture_output=True,
        text=True,
        check=True,
        env=_env(),
        cwd="/",
    )
    return float(json.loads(done.stdout)["peak_kib"]) / 1024


@dataclass
class Startup:
    ready_s: list[float]
    rss_mib: list[float]
    version_s: list[float]


# Installed here but not by runwatch: trio (nothing requires it; httpcore imports it when
# present) and rich (vi-sdk requires it; structlog imports it when present). The "without"
# trials hide both, as an install of runwatch alone would not have them.
_HIDE_OPTIONAL = 'import sys\nsys.modules["trio"] = None\nsys.modules["rich"] = None\n'


def startup(host: Host, trials: int, *, without_optional: bool = False) -> Startup:
    """exec -> READY=1 and RSS at READY of `runwatch run` with one json:// channel."""
    pop = start_population(host, 10, recent=False)
    print("  start-up: exec to READY", file=sys.stderr, flush=True)
    out = Startup([], [], [])
    for _ in range(trials):
        with tempfile.TemporaryDirectory(prefix="runwatch-bench-") as tmp:
            text = config_text(pop, Path(tmp) / "state.db", hook="json://127.0.0.1:9/x")
            config = write_config(Path(tmp), text)
            env = _env()
            if without_optional:
                (Path(tmp) / "sitecustomize.py").write_text(_HIDE_OPTIONAL)
                env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{tmp}"
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.bind(f"{tmp}/notify")
                sock.settimeout(60)
                env["NOTIFY_SOCKET"] = f"{tmp}/notify"
                started = time.perf_counter()
                process = subprocess.Popen(
                    [sys.executable, "-m", "runwatch", "run", "-c", str(config)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                    cwd="/",
                )
                try:
                    while b"READY=1" not in sock.recv(4096):
                        pass
                    out.ready_s.append(time.perf_counter() - started)
                    out.rss_mib.append(_status_kib(process.pid)["VmRSS"] / 1024)
                finally:
                    process.terminate()
                    process.wait(timeout=30)
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "runwatch", "--version"],
                check=True,
                capture_output=True,
                env=env,
                cwd="/",
            )
            out.version_s.append(time.perf_counter() - started)
    return out


# --- the report -------------------------------------------------------------------------


def report(
    command: str,
    steadies: list[Steady],
    listings: list[Listing],
    memory: list[tuple[int, tuple[float, float], float]],
    start: Startup,
    lean: Startup,
    started: datetime.datetime,
    took_s: float,
) -> str:
    lines = [
        "## Cost per request and per run, side by side with the vi-sdk (issue 16)",
        "",
        f"- command: `{command}`; {started.isoformat(timespec='seconds')} ({took_s:.0f} s)",
        f"- machine: {machine()}",
        "- one simulator process; runwatch and the vi-sdk 0.1.0b7 watchers in this process, "
        "interleaved poll by poll",
        "",
        "### CPU per steady poll (medians)",
        "",
        "| population | watcher | requests a poll | CPU ms a poll | wall ms a poll "
        "| CPU vs page 1 + get() |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for s in steadies:
        reference = s.rows[-1].cpu_ms
        for row in s.rows:
            lines.append(
                f"| {s.label} | {row.who} | {row.requests} | {row.cpu_ms:.1f} "
                f"| {row.wall_ms:.1f} | {row.cpu_ms / reference:.2f} |"
            )
    lines += [
        "",
        "### Full listings",
        "",
        "| population | runwatch full resync: requests, CPU s (runs/CPU-s) "
        "| runwatch decode + diff, JSON parsing included, runs/CPU-s "
        "| vi-sdk every page at size 100: CPU s (runs/CPU-s) |",
        "| --- | --- | ---: | --- |",
    ]
    for f in listings:
        lines.append(
            f"| {f.runs:,} runs | {f.resync_requests}, {f.resync_cpu_s:.2f} "
            f"({f.runs / f.resync_cpu_s:,.0f}) | {f.decode_diff_rate:,.0f} "
            f"| {f.sdk_cpu_s:.2f} ({f.runs / f.sdk_cpu_s:,.0f}) |"
        )
    lines += [
        "",
        "### Peak RSS (VmHWM, each watcher in a process of its own)",
        "",
        "| population | runwatch daemon MiB (fresh / restarted on its state) "
        "| vi-sdk watcher MiB | ratio (the higher runwatch figure) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for runs, (fresh, restarted), theirs in memory:
        ours = max(fresh, restarted)
        lines.append(
            f"| {runs:,} runs | {fresh:.0f} / {restarted:.0f} | {theirs:.0f} "
            f"| {ours / theirs:.2f} |"
        )
    lines += [
        "",
        "### Start-up (one json:// channel; medians)",
        "",
        "| environment | exec to READY s | RSS at READY MiB | `runwatch --version` s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, s in (
        ("this one (trio and rich installed)", start),
        ("without trio and rich (neither is a runwatch dependency)", lean),
    ):
        lines.append(
            f"| {name} | {statistics.median(s.ready_s):.3f} "
            f"| {statistics.median(s.rss_mib):.1f} | {statistics.median(s.version_s):.3f} |"
        )
    lines.append("")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> str:
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    polls = 5 if args.quick else 15
    host = Host()
    try:
        steadies = [
            await steady(host, 1_000, polls, page_size=100, kind="full"),
            await steady(host, 1_000, polls, page_size=100),
            await steady(host, 10_000, polls),
        ]
        listings = [await full_listing(host, n) for n in ((10_000,) if args.quick else (100_000,))]
        sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
        memory = [(n, daemon_peak_rss(host, n), sdk_peak_rss(host, n)) for n in sizes]
        start = startup(host, 3 if args.quick else 7)
        lean = startup(host, 3 if args.quick else 7, without_optional=True)
    finally:
        host.close()
    command = "python3 benchmarks/bench_daemon.py" + (" --quick" if args.quick else "")
    took = time.monotonic() - t0
    return report(command, steadies, listings, memory, start, lean, started, took)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument("--out", type=Path, help="also write the results (markdown) here")
    args = parser.parse_args()
    configure_logging("warning")
    text = asyncio.run(main_async(args))
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
