"""A local Vi API: a real HTTP server on loopback speaking the wire format.

Used by the tests, by `runwatch demo`, `runwatch simulate` and the benchmarks (up to 100,000
runs), so it answers exactly as `vi-wire-format.md` describes and a real client (runwatch's,
or the official vi-sdk) cannot tell it from the service, faults included.

Theory: `Simulator` owns one lock and, behind it, the organization's `Workspace` (runs,
outputs, projects, scenario clock: workspace.py), the `FaultQueue` (faults.py) and the
`RequestLog`. Its drive API takes the lock and changes the workspace; the `Api` (api.py)
takes the same lock to answer each request from handler threads of the `Listener`
(transport.py). The seeded population is a pure function of the constructor's flags
(population.py): two simulators with the same flags serve the same runs, projects and
checkpoints; runs created later take their times from the injected clock.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

import structlog

from runwatch.core.model import PENDING, REACHED, TERMINAL_CONDITIONS
from runwatch.simulator.api import Api, RequestLog, RequestRecord, project_json
from runwatch.simulator.defaults import SIM_ORG
from runwatch.simulator.documents import deep_copy, model_document, run_document
from runwatch.simulator.faults import UNKNOWN_CONDITION, Endpoint, Fault, FaultQueue
from runwatch.simulator.population import POPULATION_EPOCH_MS, default_secret_key
from runwatch.simulator.transport import Listener
from runwatch.simulator.workspace import Workspace

__all__ = [
    "POPULATION_EPOCH_MS",
    "SIM_ORG",
    "UNKNOWN_CONDITION",
    "Fault",
    "RequestRecord",
    "Simulator",
    "default_secret_key",
]

log = structlog.get_logger("runwatch.simulator.server")


class Simulator:
    """The Vi API for one organization, on a real HTTP server (see the module docstring)."""

    def __init__(
        self,
        *,
        runs: int = 50,
        active: int = 5,
        seed: int = 7,
        organization_id: str = SIM_ORG,
        secret_key: str | None = None,
        page_size_cap: int = 100,
        active_recent: bool = False,
        clock: Callable[[], float] = time.time,
        arrival_interval: float = 0.0,
    ) -> None:
        """`arrival_interval` > 0 makes `advance` also create a new Pending run every that many
        scenario seconds (the demo stays lively); 0, the default, creates none."""
        if runs < 0 or not 0 <= active <= runs:
            raise ValueError("need runs >= 0 and 0 <= active <= runs")
        if page_size_cap < 1:
            raise ValueError("page_size_cap must be at least 1")
        if arrival_interval < 0:
            raise ValueError("arrival_interval cannot be negative")
        self.organization_id = organization_id
        self.secret_key = secret_key if secret_key is not None else default_secret_key(seed)
        self.page_size_cap = page_size_cap
        self._lock = threading.Lock()
        self._ws = Workspace(
            runs=runs,
            active=active,
            seed=seed,
            active_recent=active_recent,
            clock=clock,
            arrival_interval=arrival_interval,
        )
        self._faults = FaultQueue()
        self._log = RequestLog()
        self._stopping = threading.Event()
        self._listener: Listener | None = None
        self._url: str | None = None

    # --- driving runs ---

    def now_ms(self) -> int:
        return self._ws.now_ms()

    def create_run(
        self,
        *,
        condition: str | None = PENDING,
        status: str = REACHED,
        flow: str | None = None,
        training_project: str | None = None,
        reason: str | None = None,
        message: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Create the newest run, its only condition `condition` (None: no conditions yet).

        `flow`/`training_project` default to a seeded choice; a project id the simulator
        does not know yet becomes a project named after it. Returns the run id.
        """
        with self._lock:
            return self._ws.create_run(
                condition=condition,
                status=status,
                flow=flow,
                training_project=training_project,
                reason=reason,
                message=message,
                run_id=run_id,
            )

    def append_condition(
        self,
        run_id: str,
        condition: str,
        *,
        status: str = REACHED,
        reason: str | None = None,
        message: str | None = None,
    ) -> None:
        """Append a condition (the new latest); bumps etag, lastUpdated and generation."""
        with self._lock:
            self._ws.append_condition(run_id, condition, status, reason, message)

    def set_conditions(self, run_id: str, conditions: Sequence[Mapping[str, Any]]) -> None:
        """Replace the run's condition history with exactly these wire-format dicts
        (condition, status, lastTransitionTime; reason and message optional), in this order,
        whatever their times; bumps etag, lastUpdated and generation."""
        with self._lock:
            self._ws.set_conditions(run_id, conditions)

    def set_time_created(self, run_id: str, ms: int) -> None:
        """Give the run another `metadata.timeCreated` (epoch ms); the listing re-sorts."""
        with self._lock:
            self._ws.set_time_created(run_id, ms)

    def delete_run(self, run_id: str) -> None:
        with self._lock:
            self._ws.delete_run(run_id)

    def run_ids(self) -> list[str]:
        """Every run id, newest first (the listing's order)."""
        with self._lock:
            return [run_id for _, run_id in self._ws.order]

    def document(self, run_id: str) -> dict[str, Any]:
        """The exact JSON document `GET /workspaces/<org>/runs/<run_id>` returns now."""
        with self._lock:
            doc = run_document(self._ws.run(run_id), self.organization_id)
            return cast(dict[str, Any], deep_copy(doc))

    def latest_condition(self, run_id: str) -> str | None:
        with self._lock:
            return self._ws.run(run_id).latest

    def active_run_ids(self) -> list[str]:
        """Runs whose latest condition is not terminal, newest first."""
        with self._lock:
            records = self._ws.records
            return [
                run_id
                for _, run_id in self._ws.order
                if records[run_id].latest not in TERMINAL_CONDITIONS
            ]

    def advance(self, seconds: float) -> list[tuple[str, str]]:
        """Move scenario time on: active runs progress along their seeded plans.

        Returns the changes made, in the order they happened: (run id, new condition).
        """
        with self._lock:
            return self._ws.advance(seconds)

    # --- driving outputs and projects ---

    def outputs(self, run_id: str, *, contents: bool = False) -> list[dict[str, Any]]:
        """The Model documents the run's outputs listing serves now, latest checkpoint last
        (with `contents`, the download URLs are made at this moment)."""
        with self._lock:
            self._ws.run(run_id)  # KeyError for an unknown run
            now, org = self._ws.now_ms(), self.organization_id
            return [
                model_document(o, run_id, org, contents=contents, now_ms=now)
                for o in self._ws.outputs(run_id)
            ]

    def set_outputs(self, run_id: str, outputs: Sequence[Mapping[str, Any]]) -> None:
        """Make these the run's outputs, in this order ([]: a run with none), for good:
        reaching Succeeded later adds none. Each mapping may hold "epoch" (int or None),
        "evaluationMetrics", "runOutputId", "kind" (spec.kind) and "timeCreated"; an output
        that keeps its runOutputId gets a new generation."""
        with self._lock:
            self._ws.set_outputs(run_id, outputs)

    def project_ids(self) -> list[str]:
        """Every training project id, newest first (the listing's order)."""
        with self._lock:
            return [project_id for _, project_id in self._ws.project_order]

    def project_document(self, project_id: str) -> dict[str, Any]:
        """The exact JSON document `GET /workspaces/<org>/trainingProjects/<id>` returns now."""
        with self._lock:
            return project_json(self._ws, self.organization_id, project_id)

    def rename_project(self, project_id: str, name: str) -> None:
        """Change the project's `spec.name`; bumps etag, lastUpdated and generation."""
        with self._lock:
            self._ws.rename_project(project_id, name)

    # --- faults ---

    def inject(self, fault: Fault, count: int = 1) -> None:
        """Apply `fault` to the next `count` requests it matches, after faults queued before."""
        with self._lock:
            self._faults.inject(fault, count)

    def set_outage(self, down: bool, status: int = 503) -> None:
        """While down, every request is answered with `status`."""
        with self._lock:
            self._faults.outage = status if down else None

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # --- counters ---

    def request_count(self, endpoint: Endpoint = "any") -> int:
        """Requests received so far (counted on arrival, failed and faulted ones included)."""
        with self._lock:
            return self._log.counts[endpoint]

    def requests_log(self) -> list[RequestRecord]:
        """The requests answered so far (the latest 100,000), oldest first."""
        with self._lock:
            return list(self._log.records)

    def reset_counters(self) -> None:
        with self._lock:
            self._log.clear()

    def open_connections(self) -> int:
        """Client connections open now (each holds a handler thread)."""
        return self._listener.open_connections() if self._listener is not None else 0

    # --- serving ---

    @property
    def url(self) -> str:
        """The base URL, e.g. "http://127.0.0.1:54321" (no trailing slash)."""
        if self._url is None:
            raise RuntimeError("the simulator is not started; call start() first")
        return self._url

    def _api(self) -> Api:
        return Api(
            workspace=self._ws,
            faults=self._faults,
            log=self._log,
            lock=self._lock,
            stopping=self._stopping,
            org=self.organization_id,
            secret_key=self.secret_key,
            page_size_cap=self.page_size_cap,
        )

    def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Listen on host:port (0: any free port); returns once connections are accepted.

        With `ssl_context` (a server-side context holding a certificate) it serves HTTPS.
        """
        if self._listener is not None:
            raise RuntimeError("the simulator is already started")
        self._stopping.clear()
        self._listener = Listener(self._api(), host, port, ssl_context, self._stopping)
        self._url = self._listener.url
        log.info(
            "sim.started",
            url=self._url,
            organization_id=self.organization_id,
            runs=len(self._ws.records),
        )

    def stop(self) -> None:
        """Stop serving; returns promptly even with slow requests in flight."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.stop()
        log.info("sim.stopped", url=self._url)

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
