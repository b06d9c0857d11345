"""Model outputs (checkpoints) of runs: seeded plans, metrics per flow, and when they appear.

Theory: a run's checkpoints come from a generator seeded by the seed and the run id alone
(`checkpoint_plan`), so its plan is the same whether it is read from the seeded population
or completed later, when the run reaches Succeeded through the drive API or the scenario.
Seeded runs' outputs are derived from their record on demand (`seeded_outputs`), never
stored: 100,000 runs cost nothing until one is read. The workspace stores a run's outputs
once they are set by hand or about to change (before a run changes, its derived list is
frozen, so checkpoints already served keep their ids, times and metrics).

What a run has: a Succeeded run all of its plan (2-5 checkpoints, the latest at the final
epoch), except a seeded fraction with none; a run still running, or one that failed, was
cancelled or errored after it started training, perhaps the first few; any other, none.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any

from runwatch.core.model import CANCELLED, ERROR, FAILED, RUNNING, SUCCEEDED
from runwatch.simulator.population import Flow, RunRecord, etag_of

_EMPTY_SUCCEEDED = 0.12  # the fraction of seeded Succeeded runs that saved no outputs
_PARTIAL = 0.5  # the fraction of unfinished or failed seeded runs that saved some


@dataclass(frozen=True, kw_only=True, slots=True)
class OutputRecord:
    """One model output as stored; its Model document is built per request."""

    output_id: str
    kind: str  # spec.kind
    epoch: int | None
    metrics: dict[str, Any] | None
    time_created: int
    last_updated: int
    generation: int = 1

    @property
    def etag(self) -> str:
        return etag_of(self.output_id, self.generation, self.last_updated)


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointPlan:
    checkpoints: tuple[tuple[int, dict[str, float]], ...]  # (epoch, metrics), oldest first
    empty_when_succeeded: bool
    partial: float | None  # for a seeded run that has not succeeded: share of the plan saved
    train_ms: int  # how long a seeded run still running trains, for its checkpoints' times


def output_id(run_id: str, epoch: int) -> str:
    return "ro_" + hashlib.blake2b(f"{run_id}/{epoch}".encode(), digest_size=6).hexdigest()


def _clamp(value: float, low: float = 0.0, high: float = 1.0) -> float:
    return round(min(high, max(low, value)), 4)


def _metrics(family: str, finals: list[float], g: float, rng: random.Random) -> dict[str, float]:
    """Metrics at training progress `g` (0 at the start, 1 at the end) towards `finals`."""

    def noise() -> float:
        return rng.gauss(0.0, 0.006)

    if family == "object-detection":
        m_ap = _clamp(finals[0] * (0.35 + 0.65 * g) + noise())
        return {
            "mAP": m_ap,
            "mAP50": _clamp(0.12 + 1.25 * m_ap, high=0.99),
            "precision": _clamp(finals[1] * (0.6 + 0.4 * g) + noise()),
            "recall": _clamp(finals[2] * (0.55 + 0.45 * g) + noise()),
        }
    if family == "classification":
        accuracy = _clamp(0.35 + (finals[0] - 0.35) * g + noise())
        return {
            "accuracy": accuracy,
            "f1": _clamp(accuracy - finals[1]),
            "loss": _clamp(finals[2] + (2.2 - finals[2]) * (1 - g) + noise(), 0.01, 10.0),
        }
    if family == "semantic-segmentation":
        return {
            "mIoU": _clamp(finals[0] * (0.3 + 0.7 * g) + noise()),
            "pixel_accuracy": _clamp(0.55 + (finals[1] - 0.55) * g + noise()),
        }
    if family == "vision-language":
        return {
            "loss": _clamp(finals[0] + (2.8 - finals[0]) * (1 - g) + noise(), 0.01, 10.0),
            "bleu": _clamp(finals[1] * (0.35 + 0.65 * g) + noise()),
            "rougeL": _clamp(finals[2] * (0.4 + 0.6 * g) + noise()),
        }
    return {"loss": _clamp(finals[0] + (2.5 - finals[0]) * (1 - g) + noise(), 0.01, 10.0)}


# Where each family's runs end up: (low, high) for each of `_metrics`' `finals`.
_FINALS: dict[str, tuple[tuple[float, float], ...]] = {
    "object-detection": ((0.38, 0.68), (0.70, 0.92), (0.62, 0.88)),
    "classification": ((0.82, 0.97), (0.005, 0.04), (0.08, 0.45)),
    "semantic-segmentation": ((0.52, 0.81), (0.88, 0.97)),
    "vision-language": ((0.55, 1.2), (0.22, 0.46), (0.38, 0.62)),
}


def checkpoint_plan(seed: int, run_id: str, flow: Flow) -> CheckpointPlan:
    """The checkpoints `run_id` saves if it trains to the end (a pure function of its args)."""
    rng = random.Random(f"{seed}/{run_id}/outputs")
    total = flow.epochs
    every = max(1, int(flow.settings.get("checkpointEvery", 1)))
    candidates = list(range(every, total + 1, every))
    if not candidates or candidates[-1] != total:
        candidates.append(total)
    n = min(rng.randint(2, 5), len(candidates))
    epochs = [candidates[round((i + 1) * len(candidates) / n) - 1] for i in range(n)]
    empty = rng.random() < _EMPTY_SUCCEEDED
    partial = rng.uniform(0.2, 0.8) if rng.random() < _PARTIAL else None
    train_ms = rng.randint(600, 6 * 3600) * 1000
    family = flow.schema.split("/")[0]
    finals = [rng.uniform(*bounds) for bounds in _FINALS.get(family, ((0.05, 0.6),))]
    scale = 1 - math.exp(-4.0)
    checkpoints = tuple(
        (epoch, _metrics(family, finals, (1 - math.exp(-4.0 * epoch / total)) / scale, rng))
        for epoch in epochs
    )
    return CheckpointPlan(
        checkpoints=checkpoints, empty_when_succeeded=empty, partial=partial, train_ms=train_ms
    )


def _spread(
    run_id: str, flow: Flow, chosen: list[tuple[int, dict[str, float]]], start: int, end: int
) -> list[OutputRecord]:
    """Outputs for `chosen`, saved at even steps after `start`, the last one at `end`."""
    outputs = []
    for i, (epoch, metrics) in enumerate(chosen):
        at = start + (end - start) * (i + 1) // len(chosen)
        outputs.append(
            OutputRecord(
                output_id=output_id(run_id, epoch),
                kind=flow.model,
                epoch=epoch,
                metrics=dict(metrics),
                time_created=at,
                last_updated=at,
            )
        )
    return outputs


def _training_start(record: RunRecord) -> int | None:
    return next((c[2] for c in record.conditions if c[0] == RUNNING), None)


def seeded_outputs(seed: int, record: RunRecord) -> list[OutputRecord]:
    """What a seeded run in its seeded state has saved (see the module docstring)."""
    start = _training_start(record)
    if not record.seeded or start is None or not record.conditions:
        return []
    plan = checkpoint_plan(seed, record.run_id, record.flow)
    latest, end = record.conditions[-1][0], record.conditions[-1][2]
    if latest == SUCCEEDED:
        if plan.empty_when_succeeded:
            return []
        return _spread(record.run_id, record.flow, list(plan.checkpoints), start, end)
    if latest not in (RUNNING, FAILED, ERROR, CANCELLED) or plan.partial is None:
        return []
    count = min(len(plan.checkpoints) - 1, int(len(plan.checkpoints) * plan.partial))
    if count < 1:
        return []
    if latest == RUNNING:
        end = start + plan.train_ms
    # Saved before the end: the run went on (or failed) after its last checkpoint.
    end = start + (end - start) * count // (count + 1)
    return _spread(record.run_id, record.flow, list(plan.checkpoints[:count]), start, end)


def completed_outputs(
    seed: int, record: RunRecord, saved: list[OutputRecord], at_ms: int
) -> list[OutputRecord]:
    """`saved` and the rest of the run's plan, the last one saved at `at_ms` (it succeeded)."""
    plan = checkpoint_plan(seed, record.run_id, record.flow)
    last_epoch = max((o.epoch or 0 for o in saved), default=0)
    rest = [c for c in plan.checkpoints if c[0] > last_epoch]
    if not rest:
        return list(saved)
    after = max([record.time_created, *(o.time_created for o in saved)])
    start = _training_start(record)
    if not saved and start is not None:
        after = start
    after = min(after, at_ms)
    return [*saved, *_spread(record.run_id, record.flow, rest, after, at_ms)]
