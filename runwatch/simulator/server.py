"""A local Vi Runs API: a real HTTP server on loopback speaking the wire format.

Used by the tests, by `runwatch demo`, `runwatch simulate` and the benchmarks (up to 100,000
runs), so it answers exactly as `vi-wire-format.md` describes and a real client (runwatch's,
or the official vi-sdk) cannot tell it from the service, faults included.

Theory of operation:
- Runs live in `_RunRecord`s (compact, mutable, guarded by one lock). JSON documents are built
  per request from a record, never stored, so 100,000 runs cost records, not documents.
- `_order` is the index the listing walks: keys `(-timeCreated, runId)` kept sorted, i.e. newest
  first with ties by run id. A page token names the key of the item it continues from (keyset
  pagination), so a page is one bisect plus a slice, and a run created at the head while a
  client walks the pages never shifts what the next page holds.
- The seeded population is a pure function of the constructor's flags: ids, times and
  histories come from `random.Random(seed)` and a fixed epoch (`POPULATION_EPOCH_MS`), never
  from the wall clock, so two simulators with the same flags serve the same runs. Runs created
  later (`create_run`, `advance`) take their times from the injected clock.
- Faults are queued FIFO and each consumed by the next matching request. Slow faults sleep
  outside the lock on an event that `stop()` sets, so they block neither other requests nor
  shutdown.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import collections
import contextlib
import hashlib
import heapq
import ipaddress
import itertools
import json
import random
import signal
import socket
import ssl
import string
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, Literal, cast

import structlog

from runwatch.core.model import (
    CANCELLED,
    ERROR,
    FAILED,
    PENDING,
    REACHED,
    RUNNING,
    SUCCEEDED,
    TERMINAL_CONDITIONS,
)

log = structlog.get_logger("runwatch.simulator.server")

SIM_ORG = "org-sim"

# The seeded population ends here (2026-01-01T00:00:00Z, shifted by the seed): a fixed point,
# so restarts serve identical runs; wall-clock time only enters through runs created later.
POPULATION_EPOCH_MS = 1_767_225_600_000

FaultKind = Literal[
    "status",
    "slow",
    "drop",
    "non_json",
    "truncated",
    "repeat_token",
    "extra_fields",
    "unknown_condition",
]
Endpoint = Literal["any", "list", "get"]
_FAULT_KINDS = frozenset(
    {
        "status",
        "slow",
        "drop",
        "non_json",
        "truncated",
        "repeat_token",
        "extra_fields",
        "unknown_condition",
    }
)
UNKNOWN_CONDITION = "Quarantined"  # what an `unknown_condition` fault shows as latest condition

_KEY_ALPHABET = string.ascii_letters + string.digits


def default_secret_key(seed: int) -> str:
    """A deterministic key shaped like a real one: "dtvi_" and 98 characters, 103 in all."""
    rng = random.Random(f"secret-key/{seed}")
    return "dtvi_" + "".join(rng.choice(_KEY_ALPHABET) for _ in range(98))


@dataclass(frozen=True, kw_only=True)
class Fault:
    """One misbehaviour, applied to the next matching request(s) (see `Simulator.inject`)."""

    kind: FaultKind
    status: int = 503  # for kind="status"
    retry_after: str | None = None  # Retry-After value for status faults: "2" or an HTTP date
    delay: float = 0.0  # for kind="slow": seconds before answering normally
    endpoint: Endpoint = "any"

    def __post_init__(self) -> None:
        if self.kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(_FAULT_KINDS)}")
        if self.endpoint not in ("any", "list", "get"):
            raise ValueError(f"fault endpoint must be any, list or get, not {self.endpoint!r}")
        if self.kind == "status" and not 400 <= self.status <= 599:
            raise ValueError(f"a status fault needs a 4xx or 5xx status, not {self.status}")
        if self.delay < 0:
            raise ValueError("a slow fault's delay cannot be negative")


@dataclass(frozen=True, kw_only=True)
class RequestRecord:
    """One request the simulator received; status 0 means it was answered with no response."""

    method: str
    path: str
    endpoint: Literal["list", "get", "other"]
    status: int
    query: dict[str, str] = field(default_factory=dict)
    fault: str | None = None  # the kind of fault applied to it, if any


# --- what the runs look like ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Flow:
    name: str
    schema: str
    tolerations: dict[str, list[str]]
    settings: dict[str, Any]
    blocks: list[dict[str, Any]]


def _blocks(model: str, epochs: int) -> list[dict[str, Any]]:
    return [
        {
            "block": "dataset",
            "settings": {"split": {"train": 0.8, "validation": 0.2}, "shuffle": True},
            "style": {"x": 0, "y": 0},
        },
        {
            "block": "augmentation",
            "settings": {"flip": "horizontal", "rotate": 15},
            "style": {"x": 240, "y": 0},
        },
        {
            "block": f"model.{model}",
            "settings": {"epochs": epochs, "batchSize": 16, "learningRate": 0.0005},
            "style": {"x": 480, "y": 0},
        },
    ]


FLOWS: tuple[_Flow, ...] = (
    _Flow(
        name="yolo-detector",
        schema="object-detection/v2",
        tolerations={"gpu": ["T4", "L4"]},
        settings={"checkpointEvery": 5, "mixedPrecision": True},
        blocks=_blocks("yolov8", 50),
    ),
    _Flow(
        name="segformer-b2",
        schema="semantic-segmentation/v1",
        tolerations={"gpu": ["A100"], "region": ["asia-southeast1"]},
        settings={"checkpointEvery": 10, "mixedPrecision": True},
        blocks=_blocks("segformer-b2", 80),
    ),
    _Flow(
        name="rtdetr-large",
        schema="object-detection/v2",
        tolerations={"gpu": ["A100", "H100"]},
        settings={"checkpointEvery": 5, "mixedPrecision": False},
        blocks=_blocks("rtdetr-l", 72),
    ),
    _Flow(
        name="convnext-classifier",
        schema="classification/v1",
        tolerations={"gpu": ["T4"]},
        settings={"checkpointEvery": 1, "mixedPrecision": True},
        blocks=_blocks("convnext-tiny", 30),
    ),
    _Flow(
        name="qwen-vl-finetune",
        schema="vision-language/v1",
        tolerations={"gpu": ["H100"]},
        settings={"checkpointEvery": 1, "loraRank": 16},
        blocks=_blocks("qwen2.5-vl-7b", 3),
    ),
)
PROJECTS = ("proj_retail-shelves", "proj_defect-inspection", "proj_aerial-survey", None)
ATTRIBUTES: tuple[dict[str, str], ...] = (
    {},
    {"team": "vision", "owner": "alice"},
    {"team": "platform", "owner": "bob", "priority": "high"},
    {"team": "research"},
)
# (condition, weight, [(reason, message), ...]) for how finished runs end.
OUTCOMES: tuple[tuple[str, int, tuple[tuple[str | None, str | None], ...]], ...] = (
    (SUCCEEDED, 70, ((None, None), ("Completed", "Training completed; model saved"))),
    (
        FAILED,
        15,
        (
            ("OutOfMemory", "CUDA out of memory while allocating 2.3 GiB"),
            ("TrainingDiverged", "Loss became NaN at epoch 12"),
            ("DatasetEmpty", "No annotated assets in the training split"),
        ),
    ),
    (
        ERROR,
        8,
        (
            ("WorkerLost", "The training node stopped responding"),
            ("QuotaExceeded", "GPU quota exhausted for this organization"),
        ),
    ),
    (CANCELLED, 7, (("CancelledByUser", "Run killed by a user"),)),
)
_OUTCOME_NAMES = [o[0] for o in OUTCOMES]
_OUTCOME_WEIGHTS = [o[1] for o in OUTCOMES]

# Scenario durations, in seconds of scenario time (`advance`).
_QUEUE_SECONDS = (20.0, 300.0)  # Pending -> Running
_TRAIN_SECONDS = (60.0, 1_200.0)  # Running -> terminal


# (condition, status, lastTransitionTime ms, reason, message)
_Cond = tuple[str, str, int, str | None, str | None]


class _RunRecord:
    """A run's mutable state; documents are built from it per request."""

    __slots__ = (
        "attributes",
        "conditions",
        "etag",
        "flow",
        "generation",
        "killed_at",
        "last_updated",
        "run_id",
        "time_created",
        "training_project",
    )

    def __init__(
        self,
        *,
        run_id: str,
        time_created: int,
        flow: _Flow,
        training_project: str | None,
        attributes: dict[str, str],
        conditions: list[_Cond],
        killed_at: int | None,
    ) -> None:
        self.run_id = run_id
        self.time_created = time_created
        self.flow = flow
        self.training_project = training_project
        self.attributes = attributes
        self.conditions = conditions
        self.killed_at = killed_at
        # One generation per recorded change: creation, each later condition, the kill.
        self.generation = max(1, len(conditions)) + (1 if killed_at is not None else 0)
        self.last_updated = max([time_created, killed_at or 0, *(c[2] for c in conditions)])
        self.etag = ""
        self.bump_etag()

    @property
    def key(self) -> tuple[int, str]:
        return (-self.time_created, self.run_id)

    @property
    def latest(self) -> str | None:
        return self.conditions[-1][0] if self.conditions else None

    def bump_etag(self) -> None:
        raw = f"{self.run_id}/{self.time_created}/{self.generation}/{self.last_updated}"
        self.etag = hashlib.blake2b(raw.encode(), digest_size=10).hexdigest()


def _document(rec: _RunRecord, org: str) -> dict[str, Any]:
    """The Run as the API returns it. Nested flow parts are shared: copy before mutating."""
    flow = rec.flow
    return {
        "kind": "Run",
        "workspaceId": org,
        "runId": rec.run_id,
        "spec": {
            "flow": {
                "name": flow.name,
                "schema": flow.schema,
                "tolerations": flow.tolerations,
                "settings": flow.settings,
                "blocks": flow.blocks,
                "trainingProject": rec.training_project,
            },
            "killedAt": rec.killed_at,
            "trainingProject": rec.training_project,
        },
        "status": {
            "log": f"https://vi.datature.com/org/{org}/runs/{rec.run_id}/logs",
            "observedGeneration": rec.generation,
            "conditions": [
                {
                    "condition": c[0],
                    "status": c[1],
                    "lastTransitionTime": c[2],
                    "reason": c[3],
                    "message": c[4],
                }
                for c in rec.conditions
            ],
        },
        "metadata": {
            "timeCreated": rec.time_created,
            "lastUpdated": rec.last_updated,
            "generation": rec.generation,
            "attributes": dict(rec.attributes),
        },
        "selfLink": f"/workspaces/{org}/runs/{rec.run_id}",
        "etag": rec.etag,
    }


def _deep_copy(value: Any) -> Any:
    """Copy JSON-shaped data (much faster than copy.deepcopy for dicts of lists of scalars)."""
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _add_extra_fields(doc: dict[str, Any]) -> None:
    """Unknown keys at every level of a Run document, as a newer API version would send."""
    doc["simExtraTop"] = {"introducedIn": "v9", "flags": [1, 2]}
    doc["spec"]["simExtraSpec"] = "spec-extra"
    doc["spec"]["flow"]["simExtraFlow"] = 42
    for block in doc["spec"]["flow"]["blocks"]:
        block["simExtraBlock"] = None
    doc["status"]["simExtraStatus"] = ["a", "b"]
    for cond in doc["status"]["conditions"]:
        cond["simExtraCondition"] = {"severity": "info"}
    doc["metadata"]["simExtraMetadata"] = True


def _show_unknown_condition(doc: dict[str, Any]) -> None:
    conds = doc["status"]["conditions"]
    if conds:
        conds[-1]["condition"] = UNKNOWN_CONDITION
    else:
        conds.append(
            {
                "condition": UNKNOWN_CONDITION,
                "status": REACHED,
                "lastTransitionTime": doc["metadata"]["timeCreated"],
                "reason": None,
                "message": None,
            }
        )


# --- page tokens ----------------------------------------------------------------------------

# A token before every key: listing from it is page 1 again (used by repeat_token on page 1).
_HEAD_KEY = (-(2**62), "")


def _encode_token(direction: Literal["n", "p"], key: tuple[int, str]) -> str:
    raw = f"{direction}:{-key[0]}:{key[1]}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_token(token: str) -> tuple[Literal["n", "p"], tuple[int, str]] | None:
    """The (direction, key) a token names, or None when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        direction, created, run_id = raw.split(":", 2)
        key = (-int(created), run_id)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if direction not in ("n", "p"):
        return None
    parsed: Literal["n", "p"] = "n" if direction == "n" else "p"
    # Reject strings that decode by accident: a real token re-encodes to itself.
    if _encode_token(parsed, key) != token:
        return None
    return parsed, key


# --- the simulator --------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow handler must not keep stop() (or the process) waiting
    allow_reuse_address = True
    sim: Simulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request (a timeout, a killed daemon) is routine for a
        # test server, not a traceback on stderr; anything else still gets one.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class Simulator:
    """The Vi Runs API for one organization, on a real HTTP server (see the module docstring)."""

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
        self._seed = seed
        self._clock = clock
        self._arrival_interval = arrival_interval
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._records: dict[str, _RunRecord] = {}
        self._order: list[tuple[int, str]] = []
        # Scenario state: seconds advanced so far, and a heap of (due, seq, run_id, plan id).
        self._elapsed = 0.0
        self._plans: dict[str, tuple[int, list[tuple[float, str, str | None, str | None]]]] = {}
        self._due: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._next_arrival = arrival_interval
        # Faults and counters.
        self._faults: collections.deque[list[Any]] = collections.deque()  # [Fault, remaining]
        self._outage: int | None = None
        self._repeat_armed: set[str] = set()
        self._counts: collections.Counter[str] = collections.Counter()
        self._log: collections.deque[RequestRecord] = collections.deque(maxlen=100_000)
        # Serving.
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._url: str | None = None
        self._populate(runs, active, active_recent)

    # --- population ---

    def _new_run_id(self) -> str:
        while True:
            run_id = f"run_{self._rng.getrandbits(48):012x}"
            if run_id not in self._records:
                return run_id

    def _populate(self, runs: int, active: int, active_recent: bool) -> None:
        rng = self._rng
        end = POPULATION_EPOCH_MS + (self._seed % 1000) * 3_600_000
        # Recent: the newest runs are the active ones; else they hide anywhere in history.
        active_at = set(range(active)) if active_recent else set(rng.sample(range(runs), active))
        created = end
        for i in range(runs):
            created -= rng.randint(60, 900) * 1000  # one run every 1-15 minutes, going back
            run_id = self._new_run_id()
            flow = rng.choice(FLOWS)
            project = rng.choice(PROJECTS)
            attributes = rng.choice(ATTRIBUTES)
            queued = created + rng.randint(5, 600) * 1000
            conditions: list[_Cond] = [(PENDING, REACHED, created, None, None)]
            killed_at: int | None = None
            if i in active_at:
                if rng.random() < 0.5:
                    conditions.append((RUNNING, REACHED, queued, None, None))
            else:
                outcome = rng.choices(_OUTCOME_NAMES, weights=_OUTCOME_WEIGHTS)[0]
                reason, message = rng.choice(OUTCOMES[_OUTCOME_NAMES.index(outcome)][2])
                ended = queued + rng.randint(120, 6 * 3600) * 1000
                # A few failures happen before training starts.
                if outcome == SUCCEEDED or rng.random() < 0.9:
                    conditions.append((RUNNING, REACHED, queued, None, None))
                if outcome == CANCELLED:
                    killed_at = ended - rng.randint(1, 30) * 1000
                conditions.append((outcome, REACHED, ended, reason, message))
            rec = _RunRecord(
                run_id=run_id,
                time_created=created,
                flow=flow,
                training_project=project,
                attributes=dict(attributes),
                conditions=conditions,
                killed_at=killed_at,
            )
            self._records[run_id] = rec
            self._order.append(rec.key)  # generated newest first with strictly falling times
            if i in active_at:
                self._plan(rec)

    # --- scenario plans ---

    def _plan(self, rec: _RunRecord) -> None:
        """Schedule how an active run moves on from its latest condition (seeded per run)."""
        rng = random.Random(f"{self._seed}/{rec.run_id}/{rec.generation}")
        steps: list[tuple[float, str, str | None, str | None]] = []
        at = self._elapsed
        latest = rec.latest
        if latest == PENDING:
            at += rng.uniform(*_QUEUE_SECONDS)
            steps.append((at, RUNNING, None, None))
        if latest in (PENDING, RUNNING):
            at += rng.uniform(*_TRAIN_SECONDS)
            outcome = rng.choices(_OUTCOME_NAMES, weights=_OUTCOME_WEIGHTS)[0]
            reason, message = rng.choice(OUTCOMES[_OUTCOME_NAMES.index(outcome)][2])
            steps.append((at, outcome, reason, message))
        plan_id = next(self._seq)
        if steps:
            self._plans[rec.run_id] = (plan_id, steps)
            heapq.heappush(self._due, (steps[0][0], plan_id, rec.run_id, plan_id))
        else:
            self._plans.pop(rec.run_id, None)

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _append(
        self, rec: _RunRecord, condition: str, status: str, reason: str | None, msg: str | None
    ) -> None:
        # Strictly after the previous transition, so every change is visible to a differ.
        at = max(self.now_ms(), rec.last_updated + 1)
        rec.conditions.append((condition, status, at, reason, msg))
        if condition == CANCELLED and rec.killed_at is None:
            rec.killed_at = at
        rec.generation += 1
        rec.last_updated = at
        rec.bump_etag()

    def _insert(self, rec: _RunRecord) -> None:
        self._records[rec.run_id] = rec
        bisect.insort(self._order, rec.key)

    def _create(
        self,
        *,
        condition: str | None,
        status: str,
        flow: str | None,
        training_project: str | None,
        reason: str | None,
        message: str | None,
        run_id: str | None,
    ) -> str:
        if run_id is None:
            run_id = self._new_run_id()
        elif run_id in self._records:
            raise ValueError(f"run {run_id} already exists")
        rng = self._rng
        flow_spec = rng.choice(FLOWS)
        if flow is not None:
            known = {f.name: f for f in FLOWS}
            flow_spec = known.get(flow) or _Flow(
                name=flow,
                schema=flow_spec.schema,
                tolerations=flow_spec.tolerations,
                settings=flow_spec.settings,
                blocks=flow_spec.blocks,
            )
        project = training_project if training_project is not None else rng.choice(PROJECTS)
        attributes = dict(rng.choice(ATTRIBUTES))
        # Newest means newest: never older than the head, whatever the clock says.
        newest = -self._order[0][0] if self._order else 0
        created = max(self.now_ms(), newest + 1)
        conditions: list[_Cond] = []
        if condition is not None:
            conditions.append((condition, status, created, reason, message))
        killed_at = created if condition == CANCELLED else None
        rec = _RunRecord(
            run_id=run_id,
            time_created=created,
            flow=flow_spec,
            training_project=project,
            attributes=attributes,
            conditions=conditions,
            killed_at=killed_at,
        )
        self._insert(rec)
        self._plan(rec)
        return run_id

    def _get(self, run_id: str) -> _RunRecord:
        try:
            return self._records[run_id]
        except KeyError:
            raise KeyError(f"no run {run_id!r} in the simulator") from None

    # --- driving it ---

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

        `flow`/`training_project` default to a seeded choice. Returns the run id.
        """
        with self._lock:
            return self._create(
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
            rec = self._get(run_id)
            self._append(rec, condition, status, reason, message)
            self._plan(rec)

    def delete_run(self, run_id: str) -> None:
        with self._lock:
            rec = self._get(run_id)
            del self._records[run_id]
            i = bisect.bisect_left(self._order, rec.key)
            del self._order[i]
            self._plans.pop(run_id, None)

    def run_ids(self) -> list[str]:
        """Every run id, newest first (the listing's order)."""
        with self._lock:
            return [run_id for _, run_id in self._order]

    def document(self, run_id: str) -> dict[str, Any]:
        """The exact JSON document `GET /workspaces/<org>/runs/<run_id>` returns now."""
        with self._lock:
            return cast(dict[str, Any], _deep_copy(_document(self._get(run_id), self._org)))

    def latest_condition(self, run_id: str) -> str | None:
        with self._lock:
            return self._get(run_id).latest

    def active_run_ids(self) -> list[str]:
        """Runs whose latest condition is not terminal, newest first."""
        with self._lock:
            return [
                run_id
                for _, run_id in self._order
                if self._records[run_id].latest not in TERMINAL_CONDITIONS
            ]

    def advance(self, seconds: float) -> list[tuple[str, str]]:
        """Move scenario time on: active runs progress along their seeded plans.

        Returns the changes made, in the order they happened: (run id, new condition).
        """
        if seconds < 0:
            raise ValueError("the scenario clock only moves forward")
        changes: list[tuple[str, str]] = []
        with self._lock:
            target = self._elapsed + seconds
            while True:
                next_step = self._due[0][0] if self._due else None
                arrival = self._next_arrival if self._arrival_interval > 0 else None
                if (
                    arrival is not None
                    and arrival <= target
                    and (next_step is None or arrival <= next_step)
                ):
                    self._elapsed = arrival
                    self._next_arrival += self._arrival_interval
                    run_id = self._create(
                        condition=PENDING,
                        status=REACHED,
                        flow=None,
                        training_project=None,
                        reason=None,
                        message=None,
                        run_id=None,
                    )
                    changes.append((run_id, PENDING))
                    continue
                if next_step is None or next_step > target:
                    break
                due, _, run_id, plan_id = heapq.heappop(self._due)
                plan = self._plans.get(run_id)
                if plan is None or plan[0] != plan_id:
                    continue  # superseded by a manual change, or the run was deleted
                self._elapsed = due
                _, condition, reason, message = plan[1].pop(0)
                rec = self._records[run_id]
                self._append(rec, condition, REACHED, reason, message)
                changes.append((run_id, condition))
                if plan[1]:
                    heapq.heappush(self._due, (plan[1][0][0], next(self._seq), run_id, plan_id))
                else:
                    del self._plans[run_id]
            self._elapsed = target
        return changes

    # --- faults ---

    def inject(self, fault: Fault, count: int = 1) -> None:
        """Apply `fault` to the next `count` requests it matches, after faults queued before."""
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._faults.append([fault, count])

    def set_outage(self, down: bool, status: int = 503) -> None:
        """While down, every request is answered with `status`."""
        with self._lock:
            self._outage = status if down else None

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._repeat_armed.clear()
            self._outage = None

    def _take_fault(self, endpoint: str) -> Fault | None:
        for entry in self._faults:
            fault: Fault = entry[0]
            if fault.endpoint in ("any", endpoint):
                entry[1] -= 1
                if entry[1] == 0:
                    self._faults.remove(entry)
                return fault
        return None

    # --- counters ---

    def request_count(self, endpoint: Endpoint = "any") -> int:
        """Requests received so far (counted on arrival, failed and faulted ones included)."""
        with self._lock:
            return self._counts[endpoint]

    def requests_log(self) -> list[RequestRecord]:
        """The requests answered so far (the latest 100,000), oldest first."""
        with self._lock:
            return list(self._log)

    def reset_counters(self) -> None:
        with self._lock:
            self._counts.clear()
            self._log.clear()

    # --- serving ---

    @property
    def _org(self) -> str:
        return self.organization_id

    @property
    def url(self) -> str:
        """The base URL, e.g. "http://127.0.0.1:54321" (no trailing slash)."""
        if self._url is None:
            raise RuntimeError("the simulator is not started; call start() first")
        return self._url

    def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Listen on host:port (0: any free port); returns once connections are accepted.

        With `ssl_context` (a server-side context holding a certificate) it serves HTTPS.
        """
        if self._server is not None:
            raise RuntimeError("the simulator is already started")
        server_class: type[_Server] = _Server
        if ":" in host:

            class _Server6(_Server):
                address_family = socket.AF_INET6

            server_class = _Server6
        server = server_class((host, port), _Handler)  # binds and listens
        server.sim = self
        if ssl_context is not None:
            # The handshake happens in the handler's thread (see _Handler.handle): done on
            # accept, one client that never finishes it would stall every other.
            server.socket = ssl_context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._stopping.clear()
        self._server = server
        bound_port = server.server_address[1]
        scheme = "http" if ssl_context is None else "https"
        self._url = (
            f"{scheme}://[{host}]:{bound_port}"
            if ":" in host
            else f"{scheme}://{host}:{bound_port}"
        )
        # A short poll interval: shutdown() waits for serve_forever's next look at the flag.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="runwatch-simulator",
            daemon=True,
        )
        self._thread.start()
        log.info("sim.started", url=self._url, organization_id=self._org, runs=len(self._records))

    def stop(self) -> None:
        """Stop serving; returns promptly even with slow requests in flight."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # wakes slow faults, which then drop their connection
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        # Idle keep-alive connections would hold their handler threads until the client left.
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by its client
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
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

    # --- answering requests (called from handler threads) ---

    def _error(
        self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> _Response:
        body = json.dumps({"message": message, "code": status}).encode()
        # The trace id a real Google-fronted API sends, for clients to put in their errors.
        # (Not from the seeded rng: the number of errors served must not change later run ids.)
        trace_id = uuid.uuid4()
        trace = (("x-cloud-trace-context", f"{trace_id.hex}/{trace_id.int % 10**12};o=1"),)
        return _Response(status=status, body=body, headers=trace + headers)

    def _answer(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: Message,
        send: Callable[[_Response], None],
    ) -> None:
        """Work out and send the answer to one request; record it."""
        route = self._route(path)
        endpoint: Literal["list", "get", "other"] = route[0] if route else "other"
        with self._lock:
            self._counts["any"] += 1
            if endpoint != "other":
                self._counts[endpoint] += 1
            fault: Fault | None = None
            response: _Response | None = None
            if route is None:
                response = self._error(404, f"no such resource: {path}")
            elif method != "GET":
                response = self._error(405, f"method {method} is not allowed here")
            elif self._outage is not None:
                response = self._error(self._outage, "the service is unavailable (outage)")
            else:
                response = self._check_auth(route[1], headers)
                if response is None:
                    fault = self._take_fault(endpoint)

        if fault is not None and fault.kind == "slow" and self._stopping.wait(fault.delay):
            response = _Response(status=0)  # stopping: drop instead of answering
        if fault is not None and fault.kind == "drop":
            response = _Response(status=0)
        elif fault is not None and fault.kind == "status":
            extra = (("Retry-After", fault.retry_after),) if fault.retry_after else ()
            response = self._error(fault.status, f"injected HTTP {fault.status}", extra)

        if response is None:
            assert route is not None
            with self._lock:
                if endpoint == "list":
                    response = self._list(route[1], query, fault)
                else:
                    response = self._get_one(route[2], headers, fault)
            response = self._mangle(response, fault)

        with self._lock:
            self._log.append(
                RequestRecord(
                    method=method,
                    path=path,
                    endpoint=endpoint,
                    status=response.status,
                    query=query,
                    fault=fault.kind if fault else None,
                )
            )
        send(response)

    @staticmethod
    def _route(path: str) -> tuple[Literal["list", "get"], str, str] | None:
        parts = path.strip("/").split("/")
        if len(parts) < 3 or parts[0] != "workspaces" or parts[2] != "runs" or not parts[1]:
            return None
        org = urllib.parse.unquote(parts[1])
        if len(parts) == 3:
            return ("list", org, "")
        if len(parts) == 4 and parts[3]:
            return ("get", org, urllib.parse.unquote(parts[3]))
        return None

    def _check_auth(self, path_org: str, headers: Message) -> _Response | None:
        authorization = headers.get("Authorization") or ""
        header_org = headers.get("Organization-Id")
        if authorization != f"Bearer {self.secret_key}":
            # Never echo what was sent: it may be a real key.
            return self._error(401, "missing or invalid secret key")
        if header_org != self._org:
            return self._error(401, "the secret key is not valid for this organization")
        if path_org != header_org:
            return self._error(403, f"no access to workspace {path_org}")
        return None

    def _list(self, org: str, query: dict[str, str], fault: Fault | None) -> _Response:
        raw_size = query.get("s", "10")
        try:
            size = int(raw_size)
        except ValueError:
            size = 0
        if size < 1:
            return self._error(400, "page size s must be a positive integer")
        size = min(size, self.page_size_cap)
        token = query.get("p") or None
        order = self._order
        if token is None:
            start, end = 0, min(size, len(order))
        else:
            decoded = _decode_token(token)
            if decoded is None:
                return self._error(400, "invalid page token p")
            direction, key = decoded
            if direction == "n":
                start = bisect.bisect_right(order, key)
                end = min(start + size, len(order))
            else:
                end = bisect.bisect_left(order, key)
                start = max(0, end - size)
        page = order[start:end]
        next_page = _encode_token("n", page[-1]) if page and end < len(order) else None
        prev_page = _encode_token("p", page[0]) if page and start > 0 else None
        mutate = fault is not None and fault.kind in ("extra_fields", "unknown_condition")
        items = []
        for _, run_id in page:
            doc = _document(self._records[run_id], org)
            if mutate:
                doc = _deep_copy(doc)
                if fault is not None and fault.kind == "extra_fields":
                    _add_extra_fields(doc)
                else:
                    _show_unknown_condition(doc)
            items.append(doc)
        if token is not None and token in self._repeat_armed:
            self._repeat_armed.discard(token)
            next_page = token
        if fault is not None and fault.kind == "repeat_token":
            if token is not None:
                next_page = token
            else:
                # Page 1 has no token to repeat: hand out one that the next page repeats.
                next_page = next_page or _encode_token("n", _HEAD_KEY)
                self._repeat_armed.add(next_page)
        envelope: dict[str, Any] = {"nextPage": next_page, "prevPage": prev_page, "items": items}
        if fault is not None and fault.kind == "extra_fields":
            envelope["simExtraEnvelope"] = {"totalSize": len(order)}
        return _Response(status=200, body=json.dumps(envelope, separators=(",", ":")).encode())

    def _get_one(self, run_id: str, headers: Message, fault: Fault | None) -> _Response:
        rec = self._records.get(run_id)
        if rec is None:
            return self._error(404, f"run {run_id} not found")
        etag_header = (("ETag", f'"{rec.etag}"'),)
        if _etag_matches(headers.get("If-None-Match"), rec.etag):
            return _Response(status=304, headers=etag_header)
        doc = _document(rec, self._org)
        if fault is not None and fault.kind == "extra_fields":
            doc = _deep_copy(doc)
            _add_extra_fields(doc)
        elif fault is not None and fault.kind == "unknown_condition":
            doc = _deep_copy(doc)
            _show_unknown_condition(doc)
        body = json.dumps(doc, separators=(",", ":")).encode()
        return _Response(status=200, body=body, headers=etag_header)

    @staticmethod
    def _mangle(response: _Response, fault: Fault | None) -> _Response:
        if fault is None:
            return response
        if fault.kind == "non_json":
            body = b"<html><body><h1>502 Bad Gateway</h1><p>upstream error</p></body></html>"
            return _Response(status=200, body=body, content_type="text/html; charset=utf-8")
        if fault.kind == "truncated":
            full = response.body or b'{"message": "nothing to truncate"}'
            return _Response(status=200, body=full[: len(full) // 2])
        return response

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    for candidate in header.split(","):
        value = candidate.strip()
        if value.startswith("W/"):
            value = value[2:]
        if value == "*" or value.strip('"') == etag:
            return True
    return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients walk many pages on one connection
    server_version = "vi-simulator"
    timeout = 60  # an idle keep-alive connection frees its thread after a minute
    # Headers and body go out in two writes; with Nagle, the second waits for a delayed ACK
    # (40 ms on Linux) and a 1,000-page listing would take a minute.
    disable_nagle_algorithm = True

    @property
    def _sim(self) -> Simulator:
        return cast(_Server, self.server).sim

    def setup(self) -> None:
        super().setup()
        self._sim._track(self.connection, True)

    def finish(self) -> None:
        self._sim._track(self.connection, False)
        super().finish()

    def handle(self) -> None:
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except OSError:  # ssl.SSLError too: a client that does not trust the certificate
                return
        super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's stderr access log; requests_log() has the same facts."""

    def _serve(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        if self.command != "GET":
            self.close_connection = True  # a request body we do not read would desync
        self._sim._answer(self.command, split.path, query, self.headers, self._send)

    def _send(self, response: _Response) -> None:
        if response.status == 0:
            self.close_connection = True  # close without a byte: the client sees a dropped line
            return
        try:
            self.send_response(response.status)
            for name, value in response.headers:
                self.send_header(name, value)
            if response.status != 304:
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if response.status != 304 and self.command != "HEAD":
                self.wfile.write(response.body)
        except OSError:
            self.close_connection = True  # the client gave up (e.g. timed out on a slow fault)

    do_GET = _serve
    do_HEAD = _serve
    do_POST = _serve
    do_PUT = _serve
    do_PATCH = _serve
    do_DELETE = _serve


# --- `runwatch simulate` ----------------------------------------------------------------------


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
