#!/usr/bin/env python3
"""Watchers written with the official vi-sdk (0.1.0b7, a benchmark-only dependency), the
reference rows of bench_daemon.py. Each poll function takes the watcher's memory (run id ->
latest (condition, status)) and brings it up to date:

- `sdk_list_loop(client, page_size)`: the seed's loop, every page of `client.runs.list()`;
- `sdk_page1_get(client)`: page 1 (new runs), then `client.runs.get()` for each run known
  to be unfinished that page 1 did not show: the cheapest hand-written loop.

As a script, the seed's loop in a process of its own, for the memory row:

    python3 benchmarks/sdk_watcher.py URL ORGANIZATION_ID SECRET_KEY [POLLS]

prints {"peak_kib": VmHWM, "runs": N} after POLLS polls (default 4) at page size 100.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runwatch.core.model import TERMINAL_CONDITIONS

PAGE_SIZE = 50  # page 1's size: runwatch's default poll.page_size, so both read the same page

Poll = Callable[[dict[str, Any]], None]


def sdk_client(url: str, organization_id: str, secret_key: str) -> Any:
    import vi  # benchmark-only: never imported by runwatch itself

    return vi.Client(
        secret_key=secret_key,
        organization_id=organization_id,
        endpoint=url,
        logging_config=vi.LoggingConfig(enable_console=False, enable_file=False),
    )


def _latest(run: Any) -> tuple[str, str] | None:
    c = run.status.conditions
    return (str(c[-1].condition.value), str(c[-1].status.value)) if c else None


def sdk_list_loop(client: Any, page_size: int) -> Poll:
    """The seed's watcher: every page of `client.runs.list()` each poll, diffed in a dict."""

    def poll(known: dict[str, Any]) -> None:
        for page in client.runs.list(pagination={"page_size": page_size}):
            for run in page.items:
                state = _latest(run)
                if known.get(run.run_id) != state:
                    known[run.run_id] = state

    return poll


def sdk_page1_get(client: Any) -> Poll:
    """Page 1 (new runs), then `get()` each known-active run page 1 did not show."""

    def poll(known: dict[str, Any]) -> None:
        page = client.runs.list(pagination={"page_size": PAGE_SIZE})  # the first page only
        shown = set()
        for run in page.items:
            shown.add(run.run_id)
            known[run.run_id] = _latest(run)
        for run_id, state in list(known.items()):
            if run_id in shown or (state is not None and state[0] in TERMINAL_CONDITIONS):
                continue
            known[run_id] = _latest(client.runs.get(run_id=run_id))

    return poll


def main() -> int:
    url, org, key = sys.argv[1:4]
    polls = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    poll = sdk_list_loop(sdk_client(url, org, key), 100)
    known: dict[str, Any] = {}
    for _ in range(polls):
        poll(known)
    status = Path("/proc/self/status").read_text()
    peak = int(status.split("VmHWM:")[1].split()[0])
    print(json.dumps({"peak_kib": peak, "runs": len(known)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
