"""The seeded organization: flows, training projects, runs and their condition histories.

Theory: the population is a pure function of the seed. `seed_runs` draws ids, times and
histories from one `random.Random(seed)` in a fixed order, counting back from a fixed epoch
(`POPULATION_EPOCH_MS`), never from the wall clock, so two simulators with the same flags
serve the same runs. A run's scenario (`plan_steps`: how an active run moves on) is drawn
from a generator seeded by the run and its generation, so it does not depend on the order in
which runs are advanced or on anything served before.

Records are compact and mutable; the workspace changes them under its owner's lock and the
wire documents are built from them per request (see documents.py).
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Container, Iterator
from dataclasses import dataclass
from typing import Any

from runwatch.core.model import (
    CANCELLED,
    ERROR,
    FAILED,
    PENDING,
    REACHED,
    RUNNING,
    SUCCEEDED,
)

# The seeded population ends here (2026-01-01T00:00:00Z, shifted by the seed): a fixed point,
# so restarts serve identical runs; wall-clock time only enters through runs created later.
POPULATION_EPOCH_MS = 1_767_225_600_000

_KEY_ALPHABET = string.ascii_letters + string.digits


def default_secret_key(seed: int) -> str:
    """A deterministic key shaped like a real one: "dtvi_" and 98 characters, 103 in all."""
    rng = random.Random(f"secret-key/{seed}")
    return "dtvi_" + "".join(rng.choice(_KEY_ALPHABET) for _ in range(98))


def etag_of(*parts: object) -> str:
    raw = "/".join(str(p) for p in parts)
    return hashlib.blake2b(raw.encode(), digest_size=10).hexdigest()


# --- flows ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Flow:
    name: str
    schema: str
    tolerations: dict[str, list[str]]
    settings: dict[str, Any]
    blocks: list[dict[str, Any]]

    @property
    def model(self) -> str:
        """The model block's architecture, e.g. "yolov8" (a Model document's `spec.kind`)."""
        for block in self.blocks:
            name = str(block.get("block", ""))
            if name.startswith("model."):
                return name.removeprefix("model.")
        return self.name

    @property
    def epochs(self) -> int:
        for block in self.blocks:
            if str(block.get("block", "")).startswith("model."):
                return max(1, int(block["settings"].get("epochs", 1)))
        return 1


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


FLOWS: tuple[Flow, ...] = (
    Flow(
        name="yolo-detector",
        schema="object-detection/v2",
        tolerations={"gpu": ["T4", "L4"]},
        settings={"checkpointEvery": 5, "mixedPrecision": True},
        blocks=_blocks("yolov8", 50),
    ),
    Flow(
        name="segformer-b2",
        schema="semantic-segmentation/v1",
        tolerations={"gpu": ["A100"], "region": ["asia-southeast1"]},
        settings={"checkpointEvery": 10, "mixedPrecision": True},
        blocks=_blocks("segformer-b2", 80),
    ),
    Flow(
        name="rtdetr-large",
        schema="object-detection/v2",
        tolerations={"gpu": ["A100", "H100"]},
        settings={"checkpointEvery": 5, "mixedPrecision": False},
        blocks=_blocks("rtdetr-l", 72),
    ),
    Flow(
        name="convnext-classifier",
        schema="classification/v1",
        tolerations={"gpu": ["T4"]},
        settings={"checkpointEvery": 1, "mixedPrecision": True},
        blocks=_blocks("convnext-tiny", 30),
    ),
    Flow(
        name="qwen-vl-finetune",
        schema="vision-language/v1",
        tolerations={"gpu": ["H100"]},
        settings={"checkpointEvery": 1, "loraRank": 16},
        blocks=_blocks("qwen2.5-vl-7b", 3),
    ),
)


def flow_named(name: str, fallback: Flow) -> Flow:
    """The catalogue's flow of that name, or one of that name shaped like `fallback`."""
    for flow in FLOWS:
        if flow.name == name:
            return flow
    return Flow(
        name=name,
        schema=fallback.schema,
        tolerations=fallback.tolerations,
        settings=fallback.settings,
        blocks=fallback.blocks,
    )


# --- training projects ----------------------------------------------------------------------

# (id, display name, description, type): the projects seeded runs belong to.
PROJECT_CATALOGUE: tuple[tuple[str, str, str, str], ...] = (
    (
        "proj_retail-shelves",
        "Retail shelves",
        "Empty facings and misplaced products on supermarket shelves",
        "phrase-grounding",
    ),
    (
        "proj_defect-inspection",
        "Defect inspection",
        "Scratches, dents and burrs on machined aluminium parts",
        "freeform",
    ),
    (
        "proj_aerial-survey",
        "Aerial survey",
        "Roofs, roads and solar panels in drone imagery",
        "vqa",
    ),
)
# What a seeded run draws its project from; None: a run outside any project.
PROJECT_CHOICES: tuple[str | None, ...] = (*(p[0] for p in PROJECT_CATALOGUE), None)


class ProjectRecord:
    """A training project's mutable state; `runs` is kept by the workspace."""

    __slots__ = (
        "description",
        "generation",
        "last_updated",
        "name",
        "project_id",
        "runs",
        "time_created",
        "type",
    )

    def __init__(
        self, *, project_id: str, name: str, description: str | None, type: str, time_created: int
    ) -> None:
        self.project_id = project_id
        self.name = name
        self.description = description
        self.type = type
        self.time_created = time_created
        self.last_updated = time_created
        self.generation = 1
        self.runs: set[str] = set()

    @property
    def key(self) -> tuple[int, str]:
        return (-self.time_created, self.project_id)

    @property
    def etag(self) -> str:
        return etag_of(self.project_id, self.generation, self.last_updated, self.name)

    def touch(self, now_ms: int) -> None:
        """Record a change: a new generation, strictly later than the previous one."""
        self.generation += 1
        self.last_updated = max(now_ms, self.last_updated + 1)


def display_name(project_id: str) -> str:
    """A readable name for a project id nobody named: "proj_traffic-cams" -> "Traffic cams"."""
    words = project_id.removeprefix("proj_").replace("_", " ").replace("-", " ").split()
    text = " ".join(words) or project_id
    return text[0].upper() + text[1:]


# --- runs -----------------------------------------------------------------------------------

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
Cond = tuple[str, str, int, str | None, str | None]
# (scenario second, condition, reason, message)
Step = tuple[float, str, str | None, str | None]


class RunRecord:
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
        "seeded",
        "time_created",
        "training_project",
    )

    def __init__(
        self,
        *,
        run_id: str,
        time_created: int,
        flow: Flow,
        training_project: str | None,
        attributes: dict[str, str],
        conditions: list[Cond],
        killed_at: int | None,
        seeded: bool = False,
    ) -> None:
        self.run_id = run_id
        self.time_created = time_created
        self.flow = flow
        self.training_project = training_project
        self.attributes = attributes
        self.conditions = conditions
        self.killed_at = killed_at
        self.seeded = seeded  # part of the seeded population, as opposed to created later
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
        self.etag = etag_of(self.run_id, self.time_created, self.generation, self.last_updated)

    def touch(self, now_ms: int) -> int:
        """Record a change: a new generation and etag, strictly later than the last one."""
        at = max(now_ms, self.last_updated + 1)
        self.generation += 1
        self.last_updated = at
        self.bump_etag()
        return at


def new_run_id(rng: random.Random, taken: Container[str]) -> str:
    while True:
        run_id = f"run_{rng.getrandbits(48):012x}"
        if run_id not in taken:
            return run_id


def seed_runs(
    rng: random.Random,
    seed: int,
    runs: int,
    active: int,
    active_recent: bool,
    taken: Container[str],
) -> Iterator[tuple[RunRecord, bool]]:
    """The seeded runs, newest first with strictly falling creation times, each with whether
    it is active (still moving: `plan_steps` applies). `taken` holds the ids yielded so far
    (the caller's index, filled as it consumes)."""
    end = POPULATION_EPOCH_MS + (seed % 1000) * 3_600_000
    # Recent: the newest runs are the active ones; else they hide anywhere in history.
    active_at = set(range(active)) if active_recent else set(rng.sample(range(runs), active))
    created = end
    for i in range(runs):
        created -= rng.randint(60, 900) * 1000  # one run every 1-15 minutes, going back
        run_id = new_run_id(rng, taken)
        flow = rng.choice(FLOWS)
        project = rng.choice(PROJECT_CHOICES)
        attributes = rng.choice(ATTRIBUTES)
        queued = created + rng.randint(5, 600) * 1000
        conditions: list[Cond] = [(PENDING, REACHED, created, None, None)]
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
        record = RunRecord(
            run_id=run_id,
            time_created=created,
            flow=flow,
            training_project=project,
            attributes=dict(attributes),
            conditions=conditions,
            killed_at=killed_at,
            seeded=True,
        )
        yield record, i in active_at


def seed_projects(seed: int, oldest_run_ms: int) -> list[ProjectRecord]:
    """The catalogue's projects, each created some days before the oldest seeded run."""
    rng = random.Random(f"{seed}/projects")
    return [
        ProjectRecord(
            project_id=project_id,
            name=name,
            description=description,
            type=kind,
            time_created=oldest_run_ms - rng.randint(1, 60) * 86_400_000,
        )
        for project_id, name, description, kind in PROJECT_CATALOGUE
    ]


def plan_steps(seed: int, record: RunRecord, elapsed: float) -> list[Step]:
    """How an active run moves on from its latest condition, in scenario seconds from now."""
    rng = random.Random(f"{seed}/{record.run_id}/{record.generation}")
    steps: list[Step] = []
    at = elapsed
    latest = record.latest
    if latest == PENDING:
        at += rng.uniform(*_QUEUE_SECONDS)
        steps.append((at, RUNNING, None, None))
    if latest in (PENDING, RUNNING):
        at += rng.uniform(*_TRAIN_SECONDS)
        outcome = rng.choices(_OUTCOME_NAMES, weights=_OUTCOME_WEIGHTS)[0]
        reason, message = rng.choice(OUTCOMES[_OUTCOME_NAMES.index(outcome)][2])
        steps.append((at, outcome, reason, message))
    return steps


def draw_new_run(
    rng: random.Random, flow: str | None, project: str | None
) -> tuple[Flow, str | None, dict[str, str]]:
    """The seeded choices for a run created later: its flow, project and attributes."""
    flow_spec = rng.choice(FLOWS)
    if flow is not None:
        flow_spec = flow_named(flow, flow_spec)
    chosen = project if project is not None else rng.choice(PROJECT_CHOICES)
    return flow_spec, chosen, dict(rng.choice(ATTRIBUTES))
