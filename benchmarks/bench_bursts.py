"""Bursts: what a channel receives when many runs change in one poll (issue 10).

For bursts of 10, 100, 1,000 and 10,000 transitions to one channel, a real `runwatch run`
process (poll interval 1 s, the channel's digest at its defaults: 3 messages a minute)
watches the simulator; every active run fails at once, right after a poll; a loopback
receiver counts what arrives. Reported per burst: messages received, the time from the
poll that committed the burst (its `poll.done` log line) to the last message, the size of
the largest message, and the daemon's peak RSS (VmHWM).

    python3 benchmarks/bench_bursts.py [--out FILE] [--quick]   # results: benchmarks/RESULTS.md

No account, no network: the simulator and the receiver run in this process, on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from runwatch.core.model import FAILED
from runwatch.logs import configure_logging
from runwatch.simulator.server import Simulator

BURSTS = (10, 100, 1_000, 10_000)
QUIET_S = 3.0  # no new message for this long after the burst: it is over


class Counter:
    """A loopback json:// receiver remembering when each message arrived and its size."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, int, str]] = []
        self.lock = threading.Lock()
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                title = str(json.loads(body).get("title", ""))
                with counter.lock:
                    counter.arrivals.append((time.monotonic(), len(body), title))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]


@dataclass
class Row:
    burst: int
    messages: int
    seconds: float
    largest: int
    peak_kib: int
    first_title: str
    commits: int


def run_burst(burst: int) -> Row:
    counter = Counter()
    with (
        Simulator(runs=burst + 200, active=burst, seed=10, active_recent=True) as sim,
        tempfile.TemporaryDirectory(prefix="runwatch-bursts-") as tmp,
    ):
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(
            "workspaces:\n"
            f"  - {{name: prod, organization_id: {sim.organization_id}, "
            f"secret_key: {sim.secret_key}, endpoint: '{sim.url}'}}\n"
            "poll: {interval: 1s, page_size: 100, full_resync: 1h}\n"
            f"state: {{path: {tmp}/state.db}}\n"
            f"channels: {{ops: 'json://127.0.0.1:{counter.port}/ops'}}\n"
            "rules: [{name: all, match: {}, notify: [ops]}]\n"
            "delivery: {min_interval: 0s}\n"
        )
        cfg.chmod(0o600)
        proc = subprocess.Popen(
            [sys.executable, "-m", "runwatch", "run", "-c", str(cfg), "--log-format", "json"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stderr is not None
        committed: list[float] = []
        polls_after_baseline: list[float] = []
        baselined = threading.Event()

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if '"baseline.recorded"' in line:
                    baselined.set()
                elif '"poll.done"' in line:
                    if baselined.is_set():
                        polls_after_baseline.append(time.monotonic())
                    if json.loads(line).get("queued"):
                        committed.append(time.monotonic())

        threading.Thread(target=read, daemon=True).start()
        try:
            # Changes made before the baseline is committed belong to it (and are told to no
            # one): the burst starts after the baseline and one incremental poll.
            deadline = time.monotonic() + 300
            while not polls_after_baseline and time.monotonic() < deadline:
                time.sleep(0.1)
            for run_id in sim.active_run_ids():
                sim.append_condition(run_id, FAILED, reason="Burst", message="sweep ended")
            # Over when every run of the burst has been told (a digest counts its runs) and
            # nothing more came for QUIET_S: a burst caught by two polls is two commits.
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                time.sleep(0.2)
                with counter.lock:
                    last = counter.arrivals[-1][0] if counter.arrivals else None
                    told = sum(_runs_in(title) for _, _, title in counter.arrivals)
                quiet = last is not None and time.monotonic() - last > QUIET_S
                if committed and told >= burst and quiet:
                    break
            peak = _peak_kib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
            counter.server.shutdown()
    with counter.lock:
        arrivals = list(counter.arrivals)
    return Row(
        burst=burst,
        messages=len(arrivals),
        seconds=arrivals[-1][0] - committed[0],
        largest=max(size for _, size, _ in arrivals),
        peak_kib=peak,
        first_title=arrivals[0][2],
        commits=len(committed),
    )


def _runs_in(title: str) -> int:
    """How many runs a message tells of: "N runs changed in ..." for a digest, else one."""
    first = title.split(" ", 1)[0]
    return int(first) if first.isdigit() and " runs changed" in title else 1


def _peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def report(rows: list[Row], started: str, seconds: float) -> str:
    lines = [
        "# Benchmark: bursts to one channel",
        "",
        "Written by `benchmarks/bench_bursts.py`; one run on a shared machine.",
        "",
        "- command: `python3 benchmarks/bench_bursts.py`",
        f"- date: {started} ({seconds:.0f} s)",
        f"- machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}; load average at the end "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "- the channel: one json:// URL, digest at its defaults (3 messages a minute, 50 lines)",
        "",
        "| burst | polls that committed it | messages received | first commit to last delivery, s "
        "| largest message, bytes | daemon peak RSS, MiB | first message |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.burst:,} | {r.commits} | {r.messages} | {r.seconds:.2f} | {r.largest:,} "
            f"| {r.peak_kib / 1024:.0f} | {r.first_title[:60]} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="bursts of 10 and 100 only")
    args = parser.parse_args()
    configure_logging("warning")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    began = time.monotonic()
    rows = [run_burst(n) for n in (BURSTS[:2] if args.quick else BURSTS)]
    text = report(rows, started, time.monotonic() - began)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
