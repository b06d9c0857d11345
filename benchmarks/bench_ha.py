#!/usr/bin/env python3
"""Benchmark several runwatch daemons on one PostgreSQL (issue 14).

    python3 benchmarks/bench_ha.py [--workspaces 30] [--runs 1000] [--out benchmarks/RESULTS.md]

Against 30 simulated workspaces of 1,000 runs each (20 active), on a schema of its own in
the PostgreSQL at $RUNWATCH_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test,
dropped at the end), with real `python -m runwatch run` daemons, it measures:

1. API requests per poll interval with one daemon, then with three (each workspace must be
   polled by exactly one: the figure should not grow), and how the workspaces spread;
2. transition-to-delivery latency (p50, p95, max) with three daemons: transitions made at
   random moments, so the latency includes waiting for the next poll (up to one interval);
3. failover: SIGKILL one of the three; the time until every workspace it held is held by
   another daemon, and until a transition made in one of them right after the kill arrives.

The simulators and the loopback receiver run in this process; the daemons in their own.
Wall-clock figures depend on the machine and its load; with --out the report is appended
to that file as a section.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import yaml

from runwatch.simulator.server import Simulator

SERVER = os.environ.get("RUNWATCH_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
RUN_ID = re.compile(r"run_[0-9a-f]{12}")


class Arrivals:
    """A loopback json:// receiver that notes when each run's first message arrived."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self._lock = threading.Lock()
        arrivals = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                now = time.monotonic()
                found = RUN_ID.search(json.loads(body or b"{}").get("title", ""))
                if found:
                    with arrivals._lock:
                        arrivals.first.setdefault(found.group(0), now)
                        arrivals.count[found.group(0)] = arrivals.count.get(found.group(0), 0) + 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()


class Daemon:
    """`python -m runwatch run` with its JSON log events read by a thread."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runwatch", "run", "-c", str(config), "--log-format", "json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        self.logs: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        RUNNING.append(self)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "(not json)", "line": line.strip()}
            with self._lock:
                self.logs.append(event)

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.logs if e.get("event") == name]

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


RUNNING: list[Daemon] = []  # a daemon that exits ends the benchmark with its last words


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        for d in RUNNING:
            if d.proc.poll() is not None and d.proc.returncode != -signal.SIGKILL:
                raise SystemExit(f"bench_ha: a daemon exited ({d.proc.returncode}): {d.logs[-3:]}")
        if time.monotonic() - started > timeout:
            raise SystemExit(f"bench_ha: timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


@contextlib.contextmanager
def schema() -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {name}")
        try:
            yield f"{SERVER}?options=-csearch_path%3D{name}"
        finally:
            admin.execute(f"DROP SCHEMA {name} CASCADE")


def holders(url: str) -> dict[str, str]:
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('leases')").fetchone() == (None,):
            return {}
        rows = conn.execute(
            "SELECT workspace, holder FROM leases WHERE expires_at > now() AND holder <> ''"
        ).fetchall()
    return {str(w): str(h).rpartition("/")[0] for w, h in rows}


def requests(sims: list[Simulator]) -> int:
    return sum(sim.request_count("any") for sim in sims)


def window(sims: list[Simulator], seconds: float) -> float:
    """Requests per second over a window of `seconds` (the window is time passing)."""
    for sim in sims:
        sim.reset_counters()
    started = time.monotonic()
    time.sleep(seconds)
    return requests(sims) / (time.monotonic() - started)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=30)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=5.0, help="poll interval, seconds")
    parser.add_argument("--lease", type=float, default=9.0, help="ha.lease, seconds")
    parser.add_argument("--intervals", type=int, default=5, help="intervals per window")
    parser.add_argument("--transitions", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    began = time.monotonic()
    rng = random.Random(14)
    tmp = Path(tempfile.mkdtemp(prefix="bench_ha_"))
    arrivals = Arrivals()
    sims = [
        Simulator(runs=args.runs, active=20, seed=i, organization_id=f"org-{i:02d}")
        for i in range(args.workspaces)
    ]
    daemons: list[Daemon] = []
    with contextlib.ExitStack() as stack, schema() as url:
        for sim in sims:
            stack.enter_context(sim)

        def config(name: str) -> Path:
            data = {
                "workspaces": [
                    {"name": f"ws{i:02d}", "organization_id": s.organization_id,
                     "secret_key": s.secret_key, "endpoint": s.url}
                    for i, s in enumerate(sims)
                ],
                "poll": {"interval": f"{args.interval:g}s", "page_size": 50},
                "state": {"url": url},
                "ha": {"lease": f"{args.lease:g}s", "instance": name},
                "channels": {"ops": {"urls": arrivals.url, "digest": False}},
                "rules": [{"name": "all", "match": {}, "notify": ["ops"],
                           "title": "{{ run_id }} {{ condition }}"}],
                "delivery": {"min_interval": "0s"},
            }  # fmt: skip
            path = tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump(data))
            path.chmod(0o600)
            return path

        try:
            # 1. One daemon: its baselines, then its steady state.
            daemons.append(Daemon(config("d1")))
            baseline_s = wait_until(
                lambda: len({e["workspace"] for e in daemons[0].events("baseline.recorded")})
                == args.workspaces,
                600, "the first daemon's baselines",
            )  # fmt: skip
            mark = len(daemons[0].events("poll.done"))
            one_rate = window(sims, args.interval * args.intervals)
            one = one_rate * args.interval
            one_per_poll = requests(sims) / max(1, len(daemons[0].events("poll.done")) - mark)

            # 2. Three daemons.
            daemons += [Daemon(config("d2")), Daemon(config("d3"))]
            fair = -(-args.workspaces // 3)
            spread_s = wait_until(
                lambda: len(holders(url)) == args.workspaces
                and sorted(list(holders(url).values()).count(d) for d in ("d1", "d2", "d3"))
                >= [args.workspaces // 3] * 3
                and max(list(holders(url).values()).count(d) for d in ("d1", "d2", "d3")) <= fair,
                120, "the workspaces spread over three daemons",
            )  # fmt: skip
            marks = [len(d.logs) for d in daemons]
            cpu0 = [d.cpu_s() for d in daemons]
            window_started = time.monotonic()
            three = window(sims, args.interval * args.intervals) * args.interval
            cpu = [
                (d.cpu_s() - c) / (time.monotonic() - window_started) * 100
                for d, c in zip(daemons, cpu0, strict=True)
            ]
            polled_by: dict[str, set[int]] = {}
            polls = 0
            for n, (d, since) in enumerate(zip(daemons, marks, strict=True)):
                for e in d.logs[since:]:
                    if e.get("event") == "poll.done":
                        polled_by.setdefault(e["workspace"], set()).add(n)
                        polls += 1
            three_per_poll = requests(sims) / max(1, polls)
            doubled = sorted(ws for ws, who in polled_by.items() if len(who) > 1)
            share = sorted(collections.Counter(holders(url).values()).values())

            # 3. Latency through three daemons.
            made: dict[str, float] = {}
            for k in range(args.transitions):
                sim = sims[k % len(sims)]
                made[sim.create_run(condition="Failed", status="FailedReach")] = time.monotonic()
                # One every interval/4 on average: a steady trickle, not one burst on a lane.
                time.sleep(rng.uniform(0, args.interval / 2))
            wait_until(lambda: all(r in arrivals.first for r in made), 120, "every delivery")
            latencies = [arrivals.first[r] - t for r, t in made.items()]
            duplicates = sum(arrivals.count[r] - 1 for r in made)

            # 4. Failover.
            held = holders(url)
            victim = daemons[2]
            lost = sorted(ws for ws, h in held.items() if h == "d3")
            victim.stop(signal.SIGKILL)
            killed = time.monotonic()
            after = sims[int(lost[0].removeprefix("org-"))].create_run(condition="Failed")
            failover_s = wait_until(
                lambda: all(holders(url).get(ws, "d3") != "d3" for ws in lost), 120,
                "the takeover of the killed daemon's workspaces",
            )  # fmt: skip
            wait_until(lambda: after in arrivals.first, 120, "the delivery after the kill")
            delivered_after_s = arrivals.first[after] - killed
        finally:
            for d in daemons:
                with contextlib.suppress(Exception):
                    d.stop()
            arrivals.close()

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    report = f"""
## Several instances on PostgreSQL (issue 14)

Written by `benchmarks/bench_ha.py`: {args.workspaces} simulated workspaces of {args.runs:,}
runs each (20 active), real `runwatch run` daemons on one PostgreSQL 15 (loopback), poll
interval {args.interval:g} s, `ha.lease` {args.lease:g} s, enrichment as by default, one json://
channel.

- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")} \
({time.monotonic() - began:.0f} s)
- machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python \
{platform.python_version()}; load average at the end {load}

| measure | value |
| --- | ---: |
| first daemon's baselines of all {args.workspaces} workspaces | {baseline_s:.1f} s |
| API requests per poll interval, one daemon | {one:.1f} ({one_per_poll:.1f} per workspace poll) |
| API requests per poll interval, three daemons | {three:.1f} ({three / one:.2f}x one daemon's; \
{three_per_poll:.1f} per workspace poll) |
| workspaces polled by two daemons in the same window | {len(doubled)} {doubled or ''} |
| workspaces held per daemon once spread | {" / ".join(map(str, share))} \
(spread in {spread_s:.1f} s) |
| CPU per daemon while three share the work | {" / ".join(f"{c:.1f} %" for c in cpu)} |
| transition to delivery, p50 / p95 / max ({len(latencies)} transitions) | \
{percentile(latencies, 0.5):.2f} / {percentile(latencies, 0.95):.2f} / {max(latencies):.2f} s |
| duplicates among those deliveries | {duplicates} |
| failover: SIGKILL to all {len(lost)} of its workspaces held by the others | {failover_s:.1f} s \
(lease {args.lease:g} s; bound 2 x lease = {2 * args.lease:g} s) |
| failover: SIGKILL to the delivery of a transition made right after it | \
{delivered_after_s:.1f} s |

Requests per interval count every request the simulators answered in a window of
{args.intervals} intervals (listing pages and GETs of the unfinished runs not on them); with
one daemon polling all {args.workspaces} workspaces its cycles can outlast the interval, so
"per workspace poll" is the figure to compare. Latency includes the wait for the next poll
(transitions are made at random moments, one every interval/4 on average). A failover
waits for the killed daemon's leases to expire (at most one lease after its last renewal)
and for another daemon's next renewal (every lease/3).
"""
    print(report)
    if args.out is not None:
        with args.out.open("a") as f:
            f.write(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
