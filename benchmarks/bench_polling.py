#!/usr/bin/env python3
"""Benchmark runwatch's incremental polling against a naive full listing of the same runs.

    python3 benchmarks/bench_polling.py [--quick] [--out benchmarks/RESULTS.md]

One run measures, against the Vi API simulator serving a seeded population over loopback:

1. requests (every endpoint: listing, single runs, and the model outputs and training
   projects enrichment asks for), wall time and CPU time per steady-state poll, runwatch's
   incremental poll (the real `Daemon.poll_cycle`: poll, diff, enrich, commit to SQLite,
   with enrichment on as by default) against a naive full
   listing (every page through `ViClient.list_runs`, decoded: what a script looping over
   `client.runs.list()` does, minus any diffing, so the naive figure is a lower bound),
   for 1,000 / 10,000 / 100,000 runs with 20 active runs spread through history, and with
   the 20 active runs the newest; then, at 10,000 runs spread, the poll in which 5 runs
   succeed (the enrichment requests it adds) and the poll after it;
2. a full resync of 100,000 runs (wall and CPU) and the throughput of decoding and diffing
   its pages (JSON parse included) in runs per CPU second;
3. the time from a transition in the simulator to its delivery at a loopback receiver,
   through the real daemon (`python -m runwatch run`, poll interval 1 s, real Apprise);
   each transition is made right after a poll ends, the worst moment, so its latency is
   the interval plus what runwatch adds, and the figure reported is that latency minus
   the interval;
4. the peak RSS of the real daemon watching 100,000 runs through its baseline, a full
   resync and incremental polls (VmHWM of that process, which runs nothing else).

The simulator and the receiver run in a separate process, so the CPU and memory measured
are runwatch's alone. `--quick` (a smoke run: 1,000 and 10,000 runs, fewer polls and
transitions, RSS at 10,000 runs) takes about a minute; the full run about four.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from runwatch.config.loading import parse_config
from runwatch.config.settings import Config
from runwatch.core.model import RUNNING, SUCCEEDED
from runwatch.core.transitions import Fold  # the poller's own page-by-page diff
from runwatch.logs import configure_logging
from runwatch.service.daemon import Daemon
from runwatch.simulator.server import Simulator
from runwatch.state.sqlite import SqliteStore as Store
from runwatch.vi.client import ViClient
from runwatch.vi.wire import read_page

PAGE_SIZE = 50  # poll.page_size's default
ACTIVE = 20
SEED = 3
INTERVAL_S = 30.0  # steady-state polls are this far apart on the fake clock
LATENCY_INTERVAL_S = 1.0
EPOCH = 1_800_000_000.0


# --- the simulator and receiver process ---------------------------------------------------


class _Receiver(ThreadingHTTPServer):
    daemon_threads = True
    arrivals: list[tuple[float, str]]  # (time.monotonic() at arrival, message title)


class _ReceiverHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        arrived = time.monotonic()  # CLOCK_MONOTONIC is system-wide: comparable across processes
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        title = str(json.loads(body or b"{}").get("title", ""))
        server: Any = self.server
        server.arrivals.append((arrived, title))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HostError(Exception):
    """A command failed in the simulator process; the message says which and why."""


class _Served:
    """What the simulator process holds; each public method is a command of the benchmark."""

    def __init__(self) -> None:
        self.sim: Simulator | None = None
        self.receiver: _Receiver | None = None

    def _simulator(self) -> Simulator:
        if self.sim is None:
            raise RuntimeError("no simulator started")
        return self.sim

    def start(self, **population: Any) -> tuple[str, str, str, list[str]]:
        if self.sim is not None:
            self.sim.stop()
            self.sim = None
            gc.collect()
        sim = self.sim = Simulator(**population)
        sim.start("127.0.0.1", 0)
        return sim.url, sim.organization_id, sim.secret_key, sim.active_run_ids()

    def reset(self) -> None:
        self._simulator().reset_counters()

    def counts(self) -> dict[str, int]:
        sim = self._simulator()
        return {e: sim.request_count(e) for e in ("list", "get", "outputs", "project")}

    def succeed(self, run_ids: list[str]) -> list[str | None]:
        """Make these runs succeed; return their training projects."""
        sim = self._simulator()
        for run_id in run_ids:
            sim.append_condition(run_id, SUCCEEDED)
        return [sim.document(r)["spec"]["trainingProject"] for r in run_ids]

    def append(self, run_id: str, condition: str) -> float:
        self._simulator().append_condition(run_id, condition)
        return time.monotonic()

    def receiver_port(self) -> int:
        receiver = self.receiver = _Receiver(("127.0.0.1", 0), _ReceiverHandler)
        receiver.arrivals = []
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        return int(receiver.server_address[1])

    def arrivals(self) -> list[tuple[float, str]]:
        return list(self.receiver.arrivals) if self.receiver else []

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop()
        if self.receiver is not None:
            self.receiver.shutdown()


def _host(conn: multiprocessing.connection.Connection) -> None:
    """The simulator (and receiver) process: carries out the benchmark's commands."""
    configure_logging("warning")
    served = _Served()
    while True:
        command, args = conn.recv()
        try:
            conn.send(getattr(served, command)(**args))
        except Exception as exc:  # sent back: the benchmark raises it
            conn.send(_HostError(f"{command}: {exc!r}"))
        if command == "stop":
            return


class Host:
    """The benchmark's handle on the simulator process."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_host, args=(child,), daemon=True)
        self._process.start()

    def call(self, command: str, **args: Any) -> Any:
        self._conn.send((command, args))
        answer = self._conn.recv()
        if isinstance(answer, _HostError):
            raise answer
        return answer

    def close(self) -> None:
        if self._process.is_alive():
            self.call("stop")
        self._process.join(timeout=10)


@dataclass
class Population:
    runs: int
    recent: bool
    url: str
    organization_id: str
    secret_key: str
    active: list[str]

    @property
    def label(self) -> str:
        return f"{self.runs:,} runs, 20 active {'all recent' if self.recent else 'spread'}"


def start_population(host: Host, runs: int, recent: bool) -> Population:
    url, org, key, active = host.call(
        "start",
        runs=runs,
        active=min(ACTIVE, runs),
        seed=SEED,
        active_recent=recent,
        page_size_cap=100,
    )
    return Population(runs, recent, url, org, key, active)


# --- configuration --------------------------------------------------------------------------


def config_text(pop: Population, state: Path, *, hook: str, **poll: str) -> str:
    poll_items = {"page_size": str(PAGE_SIZE), "max_pages": "100000", **poll}
    return "\n".join(
        [
            "workspaces:",
            "  - name: bench",
            f"    organization_id: {pop.organization_id}",
            f"    secret_key: {pop.secret_key}",
            f"    endpoint: {pop.url}",
            "poll: {" + ", ".join(f"{k}: {v}" for k, v in poll_items.items()) + "}",
            f"state: {{path: {state}}}",
            # One message per change: the latency is measured per message, never a digest.
            f"channels: {{hook: {{urls: '{hook}', digest: false}}}}",
            "rules:",
            "  - {name: all, match: {}, notify: [hook], title: '{{ run_id }} {{ condition }}'}",
            "delivery: {min_interval: 0s, initial_backoff: 1s}",
            "",
        ]
    )


class FakeClock:
    """A runwatch Clock whose wall time moves only when told to: polls stay incremental, and
    waits return at once (the monotonic clock is the real one, for the timings)."""

    def __init__(self) -> None:
        self.now = EPOCH

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        self.now += seconds

    async def wait_any(self, *events: asyncio.Event, timeout: float) -> None:
        self.now += timeout


@dataclass
class Sample:
    requests: int  # every endpoint
    wall: float
    cpu: float
    enrich: int = 0  # of `requests`: model outputs and training projects (issue 13)


def median(samples: list[Sample]) -> Sample:
    return Sample(
        requests=round(statistics.median(s.requests for s in samples)),
        wall=statistics.median(s.wall for s in samples),
        cpu=statistics.median(s.cpu for s in samples),
        enrich=max(s.enrich for s in samples),  # any enrichment request at all shows
    )


@dataclass
class Finishing:
    """The poll in which `runs` runs succeed, and the poll after it."""

    runs: int
    projects: int  # distinct training projects among them
    outputs: int  # outputs requests of that poll
    project: int  # project requests of that poll
    events: int
    after: Sample  # the next poll


@contextlib.contextmanager
def measured() -> Iterator[Callable[[], tuple[float, float]]]:
    wall, cpu = time.perf_counter(), time.process_time()
    result: list[float] = []
    yield lambda: (result[0], result[1])
    result[:] = [time.perf_counter() - wall, time.process_time() - cpu]


# --- 1 and 2: incremental poll against the full listing --------------------------------------


@dataclass
class Comparison:
    label: str
    runs: int
    recent: bool
    incremental: Sample
    naive: Sample
    baseline: Sample
    resync: Sample | None = None
    decode_diff_rate: float | None = None  # runs per CPU second, JSON parse included
    decode_diff_rate_no_json: float | None = None  # json.loads alone, for reference
    finishing: Finishing | None = None


async def naive_listing(pop: Population, host: Host) -> Sample:
    """Every page, decoded: a script watching runs by listing them all on every poll."""
    host.call("reset")
    with measured() as took:
        async with ViClient(
            endpoint=pop.url, organization_id=pop.organization_id, secret_key=pop.secret_key
        ) as client:
            runs = 0
            async for page in client.list_runs(PAGE_SIZE, max_pages=100_000):
                runs += len(page.runs)
    wall, cpu = took()
    assert runs == pop.runs, (runs, pop.runs)
    counts = host.call("counts")
    return Sample(requests=sum(counts.values()), wall=wall, cpu=cpu)


async def poll_once(daemon: Daemon, host: Host, kind: str, events: int = 0) -> Sample:
    host.call("reset")
    with measured() as took:
        [report] = await daemon.poll_cycle()
    wall, cpu = took()
    assert report.ok and report.kind == kind and report.events == events, report
    counts = host.call("counts")
    enrich = counts["outputs"] + counts["project"]
    return Sample(requests=sum(counts.values()), wall=wall, cpu=cpu, enrich=enrich)


async def finishing(daemon: Daemon, host: Host, clock: FakeClock, pop: Population) -> Finishing:
    """5 runs succeed between two polls: what enrichment asks for, then and after."""
    finished = pop.active[:5]
    projects = host.call("succeed", run_ids=finished)
    clock.now += INTERVAL_S
    host.call("reset")
    [report] = await daemon.poll_cycle()
    assert report.ok and report.events == len(finished), report
    counts = host.call("counts")
    clock.now += INTERVAL_S
    after = await poll_once(daemon, host, "incremental")
    return Finishing(
        runs=len(finished),
        projects=len({p for p in projects if p is not None}),
        outputs=counts["outputs"],
        project=counts["project"],
        events=report.events,
        after=after,
    )


def decode_diff_rate(pop: Population, daemon: Daemon) -> tuple[float, float]:
    """Runs per CPU second through JSON parse, decode and diff of a full listing's pages."""
    bodies: list[bytes] = []
    headers = {"Authorization": f"Bearer {pop.secret_key}", "Organization-Id": pop.organization_id}
    url = f"{pop.url}/workspaces/{pop.organization_id}/runs"
    with httpx.Client(headers=headers) as http:
        token: str | None = None
        while True:
            params = {"s": str(PAGE_SIZE), **({"p": token} if token else {})}
            response = http.get(url, params=params)
            bodies.append(response.content)
            token = response.json()["nextPage"]
            if not token:
                break
    index = daemon.known[pop.organization_id]
    acc = Fold(index, workspace="bench", baseline=False, now_ms=int(EPOCH * 1000))
    parse_s = decode_s = 0.0
    for body in bodies:
        # The poller's own path: msgspec decoding straight from the bytes (JSON parse and
        # decode in one step, so "without JSON parse" is that step minus a json.loads).
        t0 = time.process_time()
        json.loads(body)
        t1 = time.process_time()
        page = read_page(body, organization_id=pop.organization_id, quiet=quiet_in(acc))
        assert page is not None
        acc.add(page.runs, page.skipped + page.quiet)
        t2 = time.process_time()
        parse_s += t1 - t0  # json.loads alone: what a stdlib-JSON reader pays to parse
        decode_s += t2 - t1
    assert len(acc.seen) == pop.runs and not acc.events
    return pop.runs / decode_s, pop.runs / parse_s


def quiet_in(fold: Fold) -> Callable[[str], int | None]:
    """The poller's `quiet`: the fingerprint of a finished run a listing may skip."""
    index = fold.index

    def quiet(run_id: str) -> int | None:
        fp = index.finished_fingerprint(run_id)
        if fp is None or run_id in fold.loaded or run_id in fold.view.changes:
            return None
        return fp

    return quiet


async def compare(host: Host, runs: int, recent: bool, polls: int, resync: bool) -> Comparison:
    pop = start_population(host, runs, recent)
    print(f"  {pop.label}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="runwatch-bench-") as tmp:
        state = Path(tmp) / "state.db"
        config: Config = parse_config(config_text(pop, state, hook="json://127.0.0.1:9/unused"))
        clock = FakeClock()
        with Store.open(state) as store:
            daemon = Daemon(config, store, clock=clock)
            try:
                baseline = await poll_once(daemon, host, "baseline")
                steady: list[Sample] = []
                for _ in range(polls):
                    clock.now += INTERVAL_S
                    steady.append(await poll_once(daemon, host, "incremental"))
                naive = median([await naive_listing(pop, host) for _ in range(max(1, polls // 3))])
                result = Comparison(
                    label=pop.label,
                    runs=runs,
                    recent=recent,
                    incremental=median(steady),
                    naive=naive,
                    baseline=baseline,
                )
                if runs == 10_000 and not recent:
                    result.finishing = await finishing(daemon, host, clock, pop)
                if resync:
                    clock.now += config.poll.full_resync
                    result.resync = await poll_once(daemon, host, "full")
                    rates = decode_diff_rate(pop, daemon)
                    result.decode_diff_rate, result.decode_diff_rate_no_json = rates
            finally:
                await daemon.aclose()
            del daemon
    gc.unfreeze()
    gc.collect()
    return result


# --- 3 and 4: the real daemon, in its own process -----------------------------------------------


class DaemonProcess:
    """`python -m runwatch run` on a config; its poll.done log lines arrive on a queue."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runwatch", "run", "-c", str(config), "--log-format", "json"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.polls: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "poll.done":
                    self.polls.put(event)

    def next_poll(self, timeout: float = 120.0) -> dict[str, Any]:
        return self.polls.get(timeout=timeout)

    def memory_kib(self) -> tuple[int, int]:
        """(VmHWM, VmRSS) of the daemon process, in KiB."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                fields[name] = int(value.split()[0])
        return fields["VmHWM"], fields["VmRSS"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def write_config(tmp: Path, text: str) -> Path:
    path = tmp / "config.yaml"
    path.write_text(text)
    path.chmod(0o600)
    return path


@dataclass
class Latency:
    label: str
    transitions: int
    latencies: list[float]  # seconds from the change to its arrival at the receiver

    def beyond(self) -> list[float]:
        return [latency - LATENCY_INTERVAL_S for latency in self.latencies]


def latency_run(host: Host, runs: int, transitions: int) -> Latency:
    pop = start_population(host, runs, recent=False)
    port = host.call("receiver_port")
    print(f"  latency: {transitions} transitions on {pop.label}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="runwatch-bench-") as tmp:
        text = config_text(
            pop,
            Path(tmp) / "state.db",
            hook=f"json://127.0.0.1:{port}/hook",
            interval=f"{LATENCY_INTERVAL_S:g}s",
        )
        daemon = DaemonProcess(write_config(Path(tmp), text))
        try:
            assert daemon.next_poll()["kind"] == "baseline"
            changes: list[tuple[str, float]] = []
            for k in range(transitions):
                daemon.next_poll()  # a poll just ended: the worst moment for a change
                run_id = pop.active[k % len(pop.active)]
                changes.append((run_id, host.call("append", run_id=run_id, condition=RUNNING)))
            deadline = time.monotonic() + 30
            while len(host.call("arrivals")) < transitions and time.monotonic() < deadline:
                time.sleep(0.05)
            arrivals = host.call("arrivals")
        finally:
            daemon.stop()
    assert len(arrivals) == transitions, f"{len(arrivals)} of {transitions} delivered"
    latencies = []
    pending = list(arrivals)
    for run_id, changed_at in changes:
        # Each run changes again only 20 polls later: its first unmatched message is this one.
        match = next(a for a in pending if a[1] == f"{run_id} {RUNNING}")
        pending.remove(match)
        latencies.append(match[0] - changed_at)
    return Latency(pop.label, transitions, latencies)


@dataclass
class Memory:
    label: str
    runs: int
    fresh_kib: tuple[int, int]  # (peak, at the end): baseline, a full resync, incremental polls
    restarted_kib: tuple[int, int]  # the same, restarted on that state file
    idle_peak_kib: int
    polls: list[tuple[str, int, int, int]]  # the fresh daemon's (kind, pages, gets, ms)

    @property
    def peak_kib(self) -> int:
        return max(self.fresh_kib[0], self.restarted_kib[0])


def memory_run(host: Host, runs: int) -> Memory:
    """Peak RSS of the daemon through a baseline, a full resync and incremental polls, and
    of the daemon restarted on that state (it loads every run from SQLite)."""
    print(f"  memory: the daemon watching {runs:,} runs", file=sys.stderr, flush=True)
    idle = idle_memory(host)
    pop = start_population(host, runs, recent=False)
    with tempfile.TemporaryDirectory(prefix="runwatch-bench-") as tmp:
        text = config_text(
            pop,
            Path(tmp) / "state.db",
            hook="json://127.0.0.1:9/unused",
            interval="2s",
            full_resync="20s",
        )
        config = write_config(Path(tmp), text)
        fresh, polls = watch_until_resynced(config)
        restarted, _ = watch_until_resynced(config)
    return Memory(pop.label, runs, fresh, restarted, idle, polls)


def watch_until_resynced(config: Path) -> tuple[tuple[int, int], list[tuple[str, int, int, int]]]:
    """Run the daemon until it has made a full listing and 3 incremental polls after it."""
    daemon = DaemonProcess(config)
    polls: list[tuple[str, int, int, int]] = []
    try:
        while True:
            event = daemon.next_poll()
            polls.append((event["kind"], event["pages"], event["gets"], event["ms"]))
            kinds = [p[0] for p in polls]
            if "full" in kinds and kinds[kinds.index("full") :].count("incremental") >= 3:
                return daemon.memory_kib(), polls
    finally:
        daemon.stop()


def idle_memory(host: Host) -> int:
    """Peak RSS of the daemon watching 10 runs: the fixed cost (interpreter, Apprise, ...)."""
    pop = start_population(host, 10, recent=False)
    with tempfile.TemporaryDirectory(prefix="runwatch-bench-") as tmp:
        text = config_text(pop, Path(tmp) / "state.db", hook="json://127.0.0.1:9/x", interval="1s")
        daemon = DaemonProcess(write_config(Path(tmp), text))
        try:
            for _ in range(3):
                daemon.next_poll()
            return daemon.memory_kib()[0]
        finally:
            daemon.stop()


# --- the report ----------------------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; load average at the end {load}"
    )


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if a / b < 10 else f"{a / b:.0f}x"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def report(
    command: str,
    comparisons: list[Comparison],
    latency: Latency,
    memory: Memory,
    started: datetime.datetime,
    took_s: float,
) -> str:
    lines = [
        "# Benchmark: incremental polling",
        "",
        "Written by `benchmarks/bench_polling.py` (see `benchmarks/README.md`); figures from one",
        "run on a shared machine, so wall-clock figures carry its noise.",
        "",
        *targets(comparisons, latency, memory),
        "## Results",
        "",
        f"- command: `{command}`",
        f"- date: {started.isoformat(timespec='seconds')} ({took_s:.0f} s)",
        f"- machine: {machine()}",
        f"- page size {PAGE_SIZE}; simulator seed {SEED}; the simulator runs in its own process",
        "",
        "### Steady-state poll: runwatch incremental vs a full listing",
        "",
        "Medians over the steady-state polls. runwatch: `Daemon.poll_cycle()` (poll, diff, "
        "enrich, commit; its requests are those of every endpoint, and of them the model "
        "outputs and training projects asked for by enrichment, on as by default). Full "
        "listing: every page through `ViClient.list_runs`, decoded, no diff.",
        "",
        "| population | runwatch requests | of them enrichment | full listing requests "
        "| requests ratio | runwatch wall ms | full listing wall ms | wall ratio "
        "| runwatch CPU ms | full listing CPU ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in comparisons:
        i, n = c.incremental, c.naive
        lines.append(
            f"| {c.label} | {i.requests} | {i.enrich} | {n.requests} "
            f"| {ratio(n.requests, i.requests)} "
            f"| {i.wall * 1000:.1f} | {n.wall * 1000:.0f} | {ratio(n.wall, i.wall)} "
            f"| {i.cpu * 1000:.1f} | {n.cpu * 1000:.0f} |"
        )
    lines += [
        "",
        "### Full listings by runwatch",
        "",
        "| population | kind | requests | wall s | CPU s | decode+diff runs/CPU-s "
        "| (json.loads alone, runs/CPU-s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in comparisons:
        lines.append(
            f"| {c.label} | baseline (+ first commit) | {c.baseline.requests} "
            f"| {c.baseline.wall:.2f} | {c.baseline.cpu:.2f} | | |"
        )
        if c.resync is not None:
            rate = c.decode_diff_rate or 0.0
            rate_nj = c.decode_diff_rate_no_json or 0.0
            lines.append(
                f"| {c.label} | full resync | {c.resync.requests} | {c.resync.wall:.2f} "
                f"| {c.resync.cpu:.2f} | {rate:,.0f} | {rate_nj:,.0f} |"
            )
    for c in comparisons:
        f = c.finishing
        if f is None:
            continue
        lines += [
            "",
            "### Enrichment when runs finish",
            "",
            f"On {c.label}: {f.runs} runs succeed between two polls ({f.projects} distinct "
            f"training projects among them). That poll reports {f.events} events and asks for "
            f"{f.outputs} model outputs and {f.project} training projects on top of its "
            f"listing; the poll after it makes {f.after.requests} requests, "
            f"{f.after.enrich} of them for enrichment (the steady state made "
            f"{c.incremental.requests}; {f.runs} runs fewer to refresh now that they are "
            "finished).",
        ]
    beyond = latency.beyond()
    lines += [
        "",
        "### Transition to delivery (real daemon, poll interval 1 s, real Apprise)",
        "",
        f"{latency.transitions} transitions on {latency.label}, each made right after a poll "
        "ended; latency = from the change in the simulator to the message at the receiver.",
        "",
        "| | median | p95 | max |",
        "| --- | ---: | ---: | ---: |",
        f"| latency, s | {statistics.median(latency.latencies):.3f} "
        f"| {pct(latency.latencies, 0.95):.3f} | {max(latency.latencies):.3f} |",
        f"| beyond the poll interval, s | {statistics.median(beyond):.3f} "
        f"| {pct(beyond, 0.95):.3f} | {max(beyond):.3f} |",
        "",
        "### Memory of the daemon (`python -m runwatch run`, its own process)",
        "",
        f"- watching {memory.label}: peak RSS (VmHWM) **{memory.fresh_kib[0] / 1024:.0f} MiB**"
        f" (RSS at the end {memory.fresh_kib[1] / 1024:.0f} MiB); restarted on its state "
        f"file (every run loaded from SQLite, then a full resync): "
        f"**{memory.restarted_kib[0] / 1024:.0f} MiB** "
        f"(at the end {memory.restarted_kib[1] / 1024:.0f} MiB)",
        f"- the same daemon watching 10 runs: peak RSS {memory.idle_peak_kib / 1024:.0f} MiB "
        "(interpreter, libraries, Apprise's plugins)",
        "- its polls: "
        + ", ".join(f"{kind} {pages}p+{gets}g {ms} ms" for kind, pages, gets, ms in memory.polls),
        "",
    ]
    return "\n".join(lines)


def targets(comparisons: list[Comparison], latency: Latency, memory: Memory) -> list[str]:
    """The issue's targets, each with the figure measured and whether it is met."""
    rows: list[tuple[str, str, bool]] = []
    for c in comparisons:
        if c.runs != 10_000:
            continue
        i, n = c.incremental, c.naive
        if c.recent:
            rows.append((f"{c.label}: 1 request a poll", f"{i.requests}", i.requests == 1))
        else:
            rows += [
                (f"{c.label}: at most 1 + 20 requests a poll", f"{i.requests}", i.requests <= 21),
                (
                    f"{c.label}: at least 8x fewer requests than a full listing",
                    f"{n.requests / i.requests:.1f}x",
                    n.requests >= 8 * i.requests,
                ),
                (
                    f"{c.label}: at least 5x less wall time than a full listing",
                    f"{n.wall / i.wall:.1f}x",
                    n.wall >= 5 * i.wall,
                ),
            ]
    worst = max(comparisons, key=lambda c: c.incremental.requests / c.naive.requests)
    rows.append(
        (
            "a poll never costs more requests than a full listing (worst case measured)",
            f"{worst.incremental.requests} vs {worst.naive.requests} ({worst.label})",
            all(c.incremental.requests <= c.naive.requests for c in comparisons),
        )
    )
    for c in comparisons:
        if c.decode_diff_rate is not None:
            rows.append(
                (
                    f"full resync of {c.runs:,} runs: decode+diff at least 50,000 runs/CPU-s",
                    f"{c.decode_diff_rate:,.0f} runs/CPU-s (JSON parse included)",
                    c.decode_diff_rate >= 50_000,
                )
            )
    rows.append(
        (
            f"peak RSS of the daemon watching {memory.runs:,} runs under 150 MiB",
            f"{memory.peak_kib / 1024:.0f} MiB (the higher of fresh and restarted)",
            memory.peak_kib < 150 * 1024,
        )
    )
    p95 = pct(latency.beyond(), 0.95)
    rows.append(
        ("transition to delivery: p95 under 1 s beyond the poll interval", f"{p95:.3f} s", p95 < 1)
    )
    lines = ["## Targets (issue 5)", "", "| target | measured | met |", "| --- | --- | --- |"]
    lines += [f"| {what} | {got} | {'yes' if ok else '**no**'} |" for what, got, ok in rows]
    lines += ["", *enrichment_targets(comparisons)]
    return [*lines, ""]


def enrichment_targets(comparisons: list[Comparison]) -> list[str]:
    """Issue 13: enrichment costs nothing while nothing finishes, and little when runs do."""
    quiet = all(c.incremental.enrich == 0 for c in comparisons)
    spread = next(c for c in comparisons if c.runs == 10_000 and not c.recent)
    rows = [
        (
            "steady state, nothing finishing: the request count is unchanged "
            "(no model-output or project request)",
            f"{spread.incremental.requests} requests a poll on {spread.label}, "
            f"{spread.incremental.enrich} for enrichment; "
            + ", ".join(f"{c.incremental.enrich}" for c in comparisons)
            + " on every population",
            quiet,
        )
    ]
    f = spread.finishing
    if f is not None:
        rows.append(
            (
                "runs reaching Succeeded: at most one outputs request each and one project "
                "request per project; nothing the poll after",
                f"{f.runs} runs: {f.outputs} outputs + {f.project} project requests "
                f"({f.projects} projects); the next poll {f.after.enrich}",
                f.outputs <= f.runs and f.project <= f.projects and f.after.enrich == 0,
            )
        )
    lines = ["## Targets (issue 13)", "", "| target | measured | met |", "| --- | --- | --- |"]
    lines += [f"| {what} | {got} | {'yes' if ok else '**no**'} |" for what, got, ok in rows]
    return lines


async def main_async(args: argparse.Namespace) -> str:
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    sizes = (1_000, 10_000) if args.quick else (1_000, 10_000, 100_000)
    polls = 3 if args.quick else 9
    host = Host()
    try:
        print("comparing incremental polls with full listings", file=sys.stderr, flush=True)
        comparisons = []
        for runs in sizes:
            for recent in (False, True):
                resync = runs == sizes[-1] and not recent
                comparisons.append(await compare(host, runs, recent, polls, resync))
        latency = latency_run(host, 10_000, 15 if args.quick else 60)
        memory = memory_run(host, sizes[-1])
    finally:
        host.close()
    command = "python3 benchmarks/bench_polling.py" + (" --quick" if args.quick else "")
    return report(command, comparisons, latency, memory, started, time.monotonic() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument("--out", type=Path, help="also write the results (markdown) here")
    args = parser.parse_args()
    configure_logging("warning")
    text = asyncio.run(main_async(args))
    print(text)
    if args.out:
        args.out.write_text(text)
    print(
        f"benchmark peak RSS (this process, not the daemon): "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
