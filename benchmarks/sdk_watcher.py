#!/usr/bin/env python3
"""The seed's vi-sdk watcher, for bench_daemon.py's memory row: every page of
`client.runs.list()` (page size 100) each poll, each run's latest condition kept in a dict.

    python3 benchmarks/sdk_watcher.py URL ORGANIZATION_ID SECRET_KEY [POLLS]

Prints {"peak_kib": VmHWM, "runs": N} after POLLS polls (default 4).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import vi


def main() -> int:
    url, org, key = sys.argv[1:4]
    polls = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    client = vi.Client(
        secret_key=key,
        organization_id=org,
        endpoint=url,
        logging_config=vi.LoggingConfig(enable_console=False, enable_file=False),
    )
    known: dict[str, Any] = {}
    for _ in range(polls):
        for page in client.runs.list(pagination={"page_size": 100}):
            for run in page.items:
                c = run.status.conditions
                known[run.run_id] = (c[-1].condition, c[-1].status) if c else None
    status = Path("/proc/self/status").read_text()
    peak = int(status.split("VmHWM:")[1].split()[0])
    print(json.dumps({"peak_kib": peak, "runs": len(known)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
