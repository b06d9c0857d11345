"""A local Vi API for tests, `runwatch demo`, `runwatch simulate` and the benchmarks.

The package, by what each module holds:
- population.py   the seeded organization: flows, projects, runs and their histories
- checkpoints.py  runs' model outputs: seeded checkpoint plans and metrics per flow
- workspace.py    the organization's mutable state and every change to it, scenario clock
- documents.py    wire documents built from records; keyset pages and page tokens
- faults.py       Fault and its kinds, the fault queue, what each fault does to an answer
- api.py          routing, credentials, errors and the endpoints; one request's path
- transport.py    the threaded stdlib HTTP server: TLS, keep-alive, streaming, stop
- server.py       Simulator: the lock, the drive API, counters, start and stop
- cli.py          `runwatch simulate`

The names below are imported on first use, so `import runwatch.simulator.cli` (which
`runwatch --help` needs) does not load the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runwatch.simulator.api import RequestRecord
    from runwatch.simulator.cli import add_arguments, config_snippet, main
    from runwatch.simulator.defaults import SIM_ORG
    from runwatch.simulator.faults import UNKNOWN_CONDITION, Fault
    from runwatch.simulator.population import POPULATION_EPOCH_MS, default_secret_key
    from runwatch.simulator.server import Simulator

_HOMES = {
    "POPULATION_EPOCH_MS": "population",
    "SIM_ORG": "defaults",
    "default_secret_key": "population",
    "Fault": "faults",
    "UNKNOWN_CONDITION": "faults",
    "RequestRecord": "api",
    "Simulator": "server",
    "add_arguments": "cli",
    "config_snippet": "cli",
    "main": "cli",
}

__all__ = [
    "POPULATION_EPOCH_MS",
    "SIM_ORG",
    "UNKNOWN_CONDITION",
    "Fault",
    "RequestRecord",
    "Simulator",
    "add_arguments",
    "config_snippet",
    "default_secret_key",
    "main",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
