"""The values that flow through runwatch's pipeline.

Runs come in from the Vi API as `Run` observations (full condition history, transient);
runwatch remembers each run as a `RunState` (only what the next diff needs, so 100,000
tracked runs stay small); a difference between the two is an `Event`.

Condition values are open strings: the API adds values over time, and an unknown value is a
legitimate state, never an error. The known ones are named here as constants only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

# Condition values documented for runs; the API may send others.
PENDING = "Pending"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
ERROR = "Error"
CANCELLED = "Cancelled"
KNOWN_CONDITIONS = (PENDING, RUNNING, SUCCEEDED, FAILED, ERROR, CANCELLED)

# Conditions after which a run does not change again (a full resync still checks them).
# `poll.terminal_conditions` in the configuration extends this set.
TERMINAL_CONDITIONS = frozenset({SUCCEEDED, FAILED, ERROR, CANCELLED})

# ResourceCondition.status values seen on the wire; also open.
WAITING = "Waiting"
REACHED = "Reached"
FAILED_REACH = "FailedReach"

EventKind = Literal["transition", "new", "deleted", "overdue"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Condition:
    """One element of a run's `status.conditions`."""

    condition: str
    status: str
    last_transition_time: int  # epoch milliseconds
    reason: str | None = None
    message: str | None = None

    def same_state(self, other: Condition | None) -> bool:
        """True when `other` describes the same state: condition, status and time agree."""
        return (
            other is not None
            and self.condition == other.condition
            and self.status == other.status
            and self.last_transition_time == other.last_transition_time
        )

    def same_value(self, other: Condition | None) -> bool:
        """True when `other` has the same condition and status, whatever its time."""
        return (
            other is not None and self.condition == other.condition and self.status == other.status
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Run:
    """A run as observed in one API response, reduced to what runwatch uses."""

    organization_id: str
    run_id: str
    conditions: tuple[Condition, ...]  # oldest first, as on the wire; may be empty
    time_created: int  # epoch ms
    last_updated: int | None = None
    generation: int | None = None  # metadata.generation: the document's version
    flow_name: str | None = None
    training_project: str | None = None
    etag: str | None = None
    log: str | None = None
    killed_at: int | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def latest(self) -> Condition | None:
        return self.conditions[-1] if self.conditions else None


@dataclass(frozen=True, kw_only=True, slots=True)
class RunState:
    """What runwatch remembers of a run between polls (one row of the state store).

    Besides what the API said (the latest condition and the document's version), runwatch's
    own observations: `seen_at`, when it first saw the current latest condition, and
    `changed_at`, when it last saw the document change (both on runwatch's clock, for the
    time-in-state rules); `marks`, how often each time rule has fired for the current
    condition; `deleted_at`, set on a tombstone (a run confirmed deleted, kept for a while
    so that a run reappearing is compared with what was known, never announced as new).
    """

    organization_id: str
    run_id: str
    latest: Condition | None
    time_created: int
    last_updated: int | None = None
    generation: int | None = None
    flow_name: str | None = None
    training_project: str | None = None
    etag: str | None = None
    log: str | None = None
    killed_at: int | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    seen_at: int | None = None  # epoch ms
    changed_at: int | None = None  # epoch ms
    marks: Mapping[str, int] = field(default_factory=dict)  # time rule -> times fired
    deleted_at: int | None = None  # epoch ms; set on tombstones only


@dataclass(frozen=True, kw_only=True, slots=True)
class Enrichment:
    """What runwatch fetched beyond the run itself to make a message worth reading."""

    project_name: str | None = None  # the training project's display name
    epoch: int | None = None  # of the latest model output
    model_id: str | None = None  # its runOutputId
    # Evaluation metrics in the API's order, values as sent (numbers, strings, booleans).
    metrics: tuple[tuple[str, float | int | str | bool | None], ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """A change worth telling someone about: a transition, a new run, a deleted run, or a run
    that has held its condition too long (overdue).

    `previous` is None for a new run; `current` is None for a deleted run. `skipped` holds
    the conditions the run passed through between the two polls, oldest first, when it
    moved more than one step (e.g. Pending -> [Running] -> Failed); `history` the run's
    whole condition history as last observed (empty when not observed this poll).
    An overdue event names its `rule`, how long the condition has held (`elapsed_s`) and
    which notice it is (`reminder`: 0 for the first, then 1, 2, ...).
    """

    kind: EventKind
    workspace: str  # the configured workspace name
    organization_id: str
    run_id: str
    previous: Condition | None
    current: Condition | None
    skipped: tuple[Condition, ...] = ()
    history: tuple[Condition, ...] = ()
    flow_name: str | None = None
    training_project: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    time_created: int = 0  # epoch ms
    killed_at: int | None = None
    log: str | None = None
    generation: int | None = None
    detected_at: int = 0  # epoch ms of the poll that found it
    rule: str | None = None  # overdue: the time rule that fired
    elapsed_s: int | None = None  # overdue: seconds the condition has held
    reminder: int = 0  # overdue: 0 for the first notice, then 1, 2, ...
    enrichment: Enrichment | None = None

    @property
    def key(self) -> str:
        """Identity of the state change; the store refuses a second event with the same key.

        Unique per occurrence: a change carries the document's generation (a run that comes
        back to a state it had before is a new change), a deletion the time it was found
        (a re-created id deleted again is announced again), an overdue notice its rule, the
        moment its condition was entered, its number and the poll that found it due (a run
        that stalls, moves its document without changing condition, and stalls again is
        told twice; the marks committed with the notice, not the key, keep it from repeating).
        """
        base = f"{self.organization_id}/{self.run_id}/{self.kind}"
        c = self.current
        if self.kind == "deleted" or c is None:
            return f"{base}/{self.time_created}/{self.detected_at}"
        state = f"{c.condition}/{c.status}/{c.last_transition_time}"
        if self.kind == "overdue":
            return f"{base}/{self.rule}/{state}/{self.reminder}/{self.detected_at}"
        return f"{base}/{state}" + ("" if self.generation is None else f"/g{self.generation}")


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxItem:
    """A message to enqueue: one event (or alert) for one target of one channel, rendered."""

    event_key: str
    channel: str
    title: str
    body: str
    notify_type: str
    run_key: str  # "org/run_id"
    target: str = ""  # the channel's target: an Apprise URL's position ("1"...), "webhook"
    condition: str | None = None  # the event's condition (quiet hours, digests)
    state: Literal["pending", "muted"] = "pending"  # muted: recorded, never sent
