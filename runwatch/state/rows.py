"""Rows of the state database and the values they hold, both ways.

runwatch may remember 100,000 runs, so loading them is a hot path: the strings that repeat
across runs (condition, status, flow and project names) are interned and messages shared, as
decoding does, and the empty attribute set is stored as NULL.
"""

from __future__ import annotations

import functools
import gc
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from types import MappingProxyType
from typing import Any

from runwatch.core.model import Condition, Enrichment, Event, RunState
from runwatch.state.store import OutboxRow, OutboxStats, WorkspaceMeta

RUN_COLUMNS = (
    "organization_id, run_id, condition, status, last_transition_time, reason, message, "
    "time_created, last_updated, flow_name, training_project, etag, log, killed_at, attributes, "
    "generation, seen_at, changed_at, marks, deleted_at"
)
RUN_PLACEHOLDERS = ", ".join("?" * len(RUN_COLUMNS.split(",")))
# The RunState fields the runs table holds; tests compare it with the dataclass, so a field
# added to RunState without a column here fails loudly instead of being dropped on restart.
RUN_STATE_FIELDS = frozenset(
    {
        "organization_id",
        "run_id",
        "latest",
        "time_created",
        "last_updated",
        "flow_name",
        "training_project",
        "etag",
        "log",
        "killed_at",
        "attributes",
        "generation",
        "seen_at",
        "changed_at",
        "marks",
        "deleted_at",
    }
)
OUTBOX_COLUMNS = (
    "id, event_key, channel, target, run_key, condition, title, body, notify_type, state, "
    "created_at, attempts, uncertain_attempts, next_attempt_at, last_error"
)

RunRow = tuple[Any, ...]


def run_params(run: RunState) -> RunRow:
    c = run.latest
    return (
        run.organization_id,
        run.run_id,
        None if c is None else c.condition,
        None if c is None else c.status,
        None if c is None else c.last_transition_time,
        None if c is None else c.reason,
        None if c is None else c.message,
        run.time_created,
        run.last_updated,
        run.flow_name,
        run.training_project,
        run.etag,
        run.log,
        run.killed_at,
        # NULL for the common empty case: saves a json.loads per row on load.
        json.dumps(dict(run.attributes), separators=(",", ":")) if run.attributes else None,
        run.generation,
        run.seen_at,
        run.changed_at,
        json.dumps(dict(run.marks), separators=(",", ":")) if run.marks else None,
        run.deleted_at,
    )


def _interned(value: str | None) -> str | None:
    return None if value is None else sys.intern(value)


_SHARED_MESSAGES: dict[str, str] = {}  # as in decode: the first 4096 distinct ones


def _shared_message(value: str | None) -> str | None:
    if value is None:
        return None
    shared = _SHARED_MESSAGES.get(value)
    if shared is None:
        shared = value
        if len(_SHARED_MESSAGES) < 4096:
            _SHARED_MESSAGES[value] = value
    return shared


@functools.lru_cache(maxsize=4096)
def _attributes(text: str) -> Mapping[str, str]:
    # Runs with the same attribute set share one read-only mapping, as decoded ones do.
    return MappingProxyType({sys.intern(k): sys.intern(v) for k, v in json.loads(text).items()})


def run_from_row(row: RunRow) -> RunState:
    # The names that repeat across 100,000 runs (condition, status, flow, project) are
    # interned and messages shared, as decoding does: else each row brings its own copies.
    (org, run_id, cond, status, ltt, reason, message, created) = row[:8]
    (last_updated, flow, project, etag, run_log, killed_at, attributes) = row[8:15]
    (generation, seen_at, changed_at, marks, deleted_at) = row[15:]
    latest = (
        None
        if cond is None
        else Condition(
            condition=sys.intern(cond),
            status=sys.intern(status),
            last_transition_time=ltt,
            reason=_interned(reason),
            message=_shared_message(message),
        )
    )
    return RunState(
        organization_id=sys.intern(org),
        run_id=run_id,
        latest=latest,
        time_created=created,
        last_updated=ltt if last_updated == ltt else last_updated,  # one int for both
        flow_name=_interned(flow),
        training_project=_interned(project),
        etag=etag,
        log=run_log,
        killed_at=killed_at,
        attributes=_attributes(attributes) if attributes else {},
        generation=generation,
        seen_at=seen_at,
        changed_at=changed_at,
        marks=_marks(marks) if marks else {},
        deleted_at=deleted_at,
    )


def _marks(text: str) -> Mapping[str, int]:
    value = json.loads(text)
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if type(v) is int}


def outbox_row(row: tuple[Any, ...]) -> OutboxRow:
    (id_, key, channel, target, run_key, condition, title, body, notify_type, state) = row[:10]
    (created, attempts, uncertain, due, error) = row[10:]
    return OutboxRow(
        id=id_,
        event_key=key,
        channel=channel,
        target=target,
        run_key=run_key,
        condition=condition,
        title=title,
        body=body,
        notify_type=notify_type,
        state=state,
        created_at=created,
        attempts=attempts,
        uncertain_attempts=uncertain,
        next_attempt_at=due,
        last_error=error,
    )


def _plain(value: object) -> object:
    """A JSON-ready copy of an event's field values (conditions, tuples, mappings)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def event_payload(event: Event) -> str:
    """The JSON the events table keeps of an event (for the operator and for audits)."""
    return json.dumps(_plain(event), separators=(",", ":"), sort_keys=True)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects at once.

    Loading 100,000 runs makes 200,000 objects, none of them cyclic garbage; the collections
    their allocation triggers find nothing and cost about a quarter of the load time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def event_from_payload(payload: str) -> Event | None:
    """The Event an events row recorded (`event_payload`), or None if it cannot be read back."""
    try:
        doc = json.loads(payload)
        if not isinstance(doc, dict):
            return None
        enrichment = doc.get("enrichment")
        return Event(
            kind=doc["kind"],
            workspace=doc["workspace"],
            organization_id=doc["organization_id"],
            run_id=doc["run_id"],
            previous=_condition(doc.get("previous")),
            current=_condition(doc.get("current")),
            skipped=tuple(c for c in map(_condition, doc.get("skipped") or ()) if c),
            history=tuple(c for c in map(_condition, doc.get("history") or ()) if c),
            flow_name=doc.get("flow_name"),
            training_project=doc.get("training_project"),
            attributes=dict(doc.get("attributes") or {}),
            time_created=doc.get("time_created") or 0,
            killed_at=doc.get("killed_at"),
            log=doc.get("log"),
            generation=doc.get("generation"),
            detected_at=doc.get("detected_at") or 0,
            rule=doc.get("rule"),
            elapsed_s=doc.get("elapsed_s"),
            reminder=doc.get("reminder") or 0,
            enrichment=None
            if not isinstance(enrichment, dict)
            else Enrichment(
                project_name=enrichment.get("project_name"),
                epoch=enrichment.get("epoch"),
                model_id=enrichment.get("model_id"),
                metrics=tuple((str(k), v) for k, v in enrichment.get("metrics") or ()),
            ),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _condition(value: object) -> Condition | None:
    if not isinstance(value, dict):
        return None
    return Condition(
        condition=value["condition"],
        status=value["status"],
        last_transition_time=value["last_transition_time"],
        reason=value.get("reason"),
        message=value.get("message"),
    )


# -- what both backends read alike: a workspace's bookkeeping, the outbox's counts ---------

WORKSPACE_COLUMNS = (
    "baselined_at, last_full_listing, last_success, last_failure, last_error, resume_at"
)


def workspace_meta(organization_id: str, row: Sequence[Any] | None) -> WorkspaceMeta:
    """A workspaces row (WORKSPACE_COLUMNS) as WorkspaceMeta; all None for one never polled."""
    if row is None:
        return WorkspaceMeta(
            organization_id=organization_id,
            baselined_at=None,
            last_full_listing=None,
            last_success=None,
        )
    baselined, full, success, failure, error, resume = row
    return WorkspaceMeta(
        organization_id=organization_id,
        baselined_at=_int(baselined),
        last_full_listing=_int(full),
        last_success=_int(success),
        last_failure=_int(failure),
        last_error=None if error is None else str(error),
        resume_at=_int(resume),
    )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


OUTBOX_STATS_QUERY = (
    "SELECT channel, state, count(*), min(created_at) FROM outbox "
    "WHERE state IN ('pending', 'dead', 'uncertain', 'muted', 'dropped') "
    "GROUP BY channel, state"
)


def outbox_stats(rows: Iterable[Sequence[Any]], now_ms: int) -> OutboxStats:
    """The outbox's counts from OUTBOX_STATS_QUERY's rows (channel, state, count, oldest)."""
    by_state: dict[str, dict[str, int]] = {
        "pending": {}, "dead": {}, "uncertain": {}, "muted": {}, "dropped": {}
    }  # fmt: skip
    oldest: int | None = None
    for channel, state, count, created in rows:
        by_state[state][channel] = int(count)
        if state == "pending":
            oldest = created if oldest is None else min(oldest, created)
    return OutboxStats(
        pending=sum(by_state["pending"].values()),
        dead=sum(by_state["dead"].values()),
        uncertain=sum(by_state["uncertain"].values()),
        pending_by_channel=by_state["pending"],
        dead_by_channel=by_state["dead"],
        uncertain_by_channel=by_state["uncertain"],
        muted=sum(by_state["muted"].values()),
        dropped=sum(by_state["dropped"].values()),
        oldest_pending_age=0.0 if oldest is None else max(0.0, (now_ms - oldest) / 1000),
    )
