"""One organization's state: its runs in listing order, their model outputs, its training
projects, and the scenario clock that moves active runs on.

Theory of operation:
- Not thread-safe: the Simulator holds its one lock around every call, including the reads
  that build a response.
- `order` is the index the runs listing walks: keys `(-timeCreated, runId)` kept sorted, i.e.
  newest first with ties by run id. A page token names the key of the item it continues
  from (keyset pagination), so a page is one bisect plus a slice, and a run created at the
  head while a client walks the pages never shifts what the next page holds.
  `project_order` does the same for training projects.
- Every change to a run goes through `_changing` (before) and `_changed` (after): before, a
  seeded run's derived outputs are frozen so they stay as served; after, a run that has just
  reached Succeeded gets the rest of its checkpoints, unless `set_outputs` pinned its list.
- Each change makes a new generation, etag and a strictly later `lastUpdated`, so every change
  is visible to a client that compares documents.
- Scenario: `_plans` holds each active run's next steps and `_due` a heap of (due, seq,
  run id, plan id); a manual change replans the run, and a stale heap entry (its plan id no
  longer current) is skipped when it comes up.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runwatch.core.model import CANCELLED, PENDING, REACHED, SUCCEEDED
from runwatch.simulator.checkpoints import (
    OutputRecord,
    completed_outputs,
    output_id,
    seeded_outputs,
)
from runwatch.simulator.population import (
    POPULATION_EPOCH_MS,
    Cond,
    ProjectRecord,
    RunRecord,
    Step,
    display_name,
    draw_new_run,
    new_run_id,
    plan_steps,
    seed_projects,
    seed_runs,
)

_CONDITION_KEYS = ("condition", "status", "lastTransitionTime", "reason", "message")
_OUTPUT_KEYS = frozenset({"runOutputId", "kind", "epoch", "evaluationMetrics", "timeCreated"})


class Workspace:
    """The runs, outputs and projects of one organization (see the module docstring)."""

    def __init__(
        self,
        *,
        runs: int,
        active: int,
        seed: int,
        active_recent: bool,
        clock: Callable[[], float],
        arrival_interval: float,
    ) -> None:
        self.seed = seed
        self._clock = clock
        self._rng = random.Random(seed)
        self.records: dict[str, RunRecord] = {}
        self.order: list[tuple[int, str]] = []
        self.projects: dict[str, ProjectRecord] = {}
        self.project_order: list[tuple[int, str]] = []
        # Outputs stored once set by hand or frozen before a change; others are derived.
        self._outputs: dict[str, list[OutputRecord]] = {}
        self._pinned: set[str] = set()  # set by hand: reaching Succeeded adds nothing
        self._elapsed = 0.0
        self._plans: dict[str, tuple[int, list[Step]]] = {}
        self._due: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._arrival_interval = arrival_interval
        self._next_arrival = arrival_interval
        active_runs = []
        for record, is_active in seed_runs(
            self._rng, seed, runs, active, active_recent, self.records
        ):
            self.records[record.run_id] = record
            self.order.append(record.key)  # seeded newest first with strictly falling times
            if is_active:
                active_runs.append(record)
        oldest = -self.order[-1][0] if self.order else POPULATION_EPOCH_MS
        for project in seed_projects(seed, oldest):
            self._add_project(project)
        for record in self.records.values():
            if record.training_project is not None:
                self.projects[record.training_project].runs.add(record.run_id)
        for record in active_runs:
            self._plan(record)

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- reading ---

    def run(self, run_id: str) -> RunRecord:
        try:
            return self.records[run_id]
        except KeyError:
            raise KeyError(f"no run {run_id!r} in the simulator") from None

    def project(self, project_id: str) -> ProjectRecord:
        try:
            return self.projects[project_id]
        except KeyError:
            raise KeyError(f"no training project {project_id!r} in the simulator") from None

    def outputs(self, run_id: str) -> list[OutputRecord]:
        """The run's outputs as the listing serves them, oldest checkpoint first."""
        stored = self._outputs.get(run_id)
        if stored is not None:
            return stored
        return seeded_outputs(self.seed, self.run(run_id))

    # --- changing runs ---

    def create_run(
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
            run_id = new_run_id(self._rng, self.records)
        elif run_id in self.records:
            raise ValueError(f"run {run_id} already exists")
        flow_spec, project, attributes = draw_new_run(self._rng, flow, training_project)
        # Newest means newest: never older than the head, whatever the clock says.
        newest = -self.order[0][0] if self.order else 0
        created = max(self.now_ms(), newest + 1)
        conditions: list[Cond] = []
        if condition is not None:
            conditions.append((condition, status, created, reason, message))
        record = RunRecord(
            run_id=run_id,
            time_created=created,
            flow=flow_spec,
            training_project=project,
            attributes=attributes,
            conditions=conditions,
            killed_at=created if condition == CANCELLED else None,
        )
        self.records[run_id] = record
        bisect.insort(self.order, record.key)
        if project is not None:
            self._join_project(run_id, project)
        self._changed(record, None, created)
        self._plan(record)
        return run_id

    def append_condition(
        self, run_id: str, condition: str, status: str, reason: str | None, message: str | None
    ) -> None:
        record = self.run(run_id)
        self._append(record, condition, status, reason, message)
        self._plan(record)

    def set_conditions(self, run_id: str, conditions: Sequence[Mapping[str, Any]]) -> None:
        parsed = [_condition(raw, i) for i, raw in enumerate(conditions)]
        record = self.run(run_id)
        before = self._changing(record)
        record.conditions = parsed
        self._changed(record, before, record.touch(self.now_ms()))
        self._plan(record)

    def set_time_created(self, run_id: str, ms: int) -> None:
        if isinstance(ms, bool) or not isinstance(ms, int):
            raise ValueError(f"timeCreated must be epoch milliseconds, not {ms!r}")
        record = self.run(run_id)
        before = self._changing(record)
        del self.order[bisect.bisect_left(self.order, record.key)]
        record.time_created = ms
        bisect.insort(self.order, record.key)
        self._changed(record, before, record.touch(self.now_ms()))

    def delete_run(self, run_id: str) -> None:
        record = self.run(run_id)
        del self.records[run_id]
        del self.order[bisect.bisect_left(self.order, record.key)]
        self._plans.pop(run_id, None)
        self._outputs.pop(run_id, None)
        self._pinned.discard(run_id)
        project = self.projects.get(record.training_project or "")
        if project is not None:
            project.runs.discard(run_id)
            project.touch(self.now_ms())

    def set_outputs(self, run_id: str, outputs: Sequence[Mapping[str, Any]]) -> None:
        record = self.run(run_id)
        now = self.now_ms()
        previous = {o.output_id: o for o in self.outputs(run_id)}
        stored: list[OutputRecord] = []
        for i, raw in enumerate(outputs):
            unknown = set(raw) - _OUTPUT_KEYS
            if unknown:
                raise ValueError(
                    f"output {i}: unknown keys {sorted(unknown)}; use {sorted(_OUTPUT_KEYS)}"
                )
            epoch = raw.get("epoch")
            if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
                raise ValueError(f"output {i}: epoch must be an int or None, not {epoch!r}")
            metrics = raw.get("evaluationMetrics")
            if metrics is not None and not isinstance(metrics, Mapping):
                raise ValueError(f"output {i}: evaluationMetrics must be a mapping or None")
            oid = str(
                raw.get("runOutputId") or output_id(run_id, epoch if epoch is not None else -i)
            )
            if any(o.output_id == oid for o in stored):
                raise ValueError(f"output {i}: runOutputId {oid} appears twice")
            old = previous.get(oid)
            created = int(raw.get("timeCreated", old.time_created if old else now))
            stored.append(
                OutputRecord(
                    output_id=oid,
                    kind=str(raw.get("kind", record.flow.model)),
                    epoch=epoch,
                    metrics=dict(metrics) if metrics is not None else None,
                    time_created=created,
                    last_updated=max(now, old.last_updated + 1) if old else max(now, created),
                    generation=old.generation + 1 if old else 1,
                )
            )
        self._outputs[run_id] = stored
        self._pinned.add(run_id)

    # --- changing projects ---

    def rename_project(self, project_id: str, name: str) -> None:
        if not name:
            raise ValueError("a training project needs a non-empty name")
        project = self.project(project_id)
        project.name = name
        project.touch(self.now_ms())

    # --- the scenario clock ---

    def advance(self, seconds: float) -> list[tuple[str, str]]:
        if seconds < 0:
            raise ValueError("the scenario clock only moves forward")
        changes: list[tuple[str, str]] = []
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
                run_id = self.create_run(
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
            self._append(self.records[run_id], condition, REACHED, reason, message)
            changes.append((run_id, condition))
            if plan[1]:
                heapq.heappush(self._due, (plan[1][0][0], next(self._seq), run_id, plan_id))
            else:
                del self._plans[run_id]
        self._elapsed = target
        return changes

    # --- internals ---

    def _plan(self, record: RunRecord) -> None:
        """Schedule how an active run moves on from its latest condition (seeded per run)."""
        steps = plan_steps(self.seed, record, self._elapsed)
        plan_id = next(self._seq)
        if steps:
            self._plans[record.run_id] = (plan_id, steps)
            heapq.heappush(self._due, (steps[0][0], plan_id, record.run_id, plan_id))
        else:
            self._plans.pop(record.run_id, None)

    def _append(
        self, record: RunRecord, condition: str, status: str, reason: str | None, msg: str | None
    ) -> None:
        before = self._changing(record)
        # Strictly after the previous transition, so every change is visible to a differ.
        at = record.touch(self.now_ms())
        record.conditions.append((condition, status, at, reason, msg))
        if condition == CANCELLED and record.killed_at is None:
            record.killed_at = at
        self._changed(record, before, at)

    def _changing(self, record: RunRecord) -> str | None:
        if record.seeded and record.run_id not in self._outputs:
            self._outputs[record.run_id] = seeded_outputs(self.seed, record)
        return record.latest

    def _changed(self, record: RunRecord, before: str | None, at: int) -> None:
        run_id = record.run_id
        if record.latest == SUCCEEDED and before != SUCCEEDED and run_id not in self._pinned:
            saved = self._outputs.get(run_id, [])
            self._outputs[run_id] = completed_outputs(self.seed, record, saved, at)

    def _add_project(self, project: ProjectRecord) -> None:
        self.projects[project.project_id] = project
        bisect.insort(self.project_order, project.key)

    def _join_project(self, run_id: str, project_id: str) -> None:
        project = self.projects.get(project_id)
        if project is None:
            # A run names a project nobody made: make it, so every reference resolves.
            self._add_project(
                ProjectRecord(
                    project_id=project_id,
                    name=display_name(project_id),
                    description=None,
                    type="freeform",
                    time_created=self.now_ms(),
                )
            )
            project = self.projects[project_id]
        else:
            project.touch(self.now_ms())
        project.runs.add(run_id)


def _condition(raw: Mapping[str, Any], i: int) -> Cond:
    """A condition dict of the wire format as a record's tuple; ValueError if it is not one."""
    unknown = set(raw) - set(_CONDITION_KEYS)
    missing = {"condition", "status", "lastTransitionTime"} - set(raw)
    if unknown or missing:
        raise ValueError(
            f"condition {i}: unknown keys {sorted(unknown)}, missing {sorted(missing)};"
            f" a condition has {', '.join(_CONDITION_KEYS)}"
        )
    condition, status, at = raw["condition"], raw["status"], raw["lastTransitionTime"]
    reason, message = raw.get("reason"), raw.get("message")
    if not isinstance(condition, str) or not isinstance(status, str):
        raise ValueError(f"condition {i}: condition and status must be strings")
    if isinstance(at, bool) or not isinstance(at, int):
        raise ValueError(f"condition {i}: lastTransitionTime must be epoch milliseconds")
    if not all(v is None or isinstance(v, str) for v in (reason, message)):
        raise ValueError(f"condition {i}: reason and message must be strings or None")
    return (condition, status, at, reason, message)
