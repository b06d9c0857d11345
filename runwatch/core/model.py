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


@dataclass(frozen=True, kw_only=True, slots=True)
class Run:
    """A run as observed in one API response, reduced to what runwatch uses."""

    organization_id: str
    run_id: str
    conditions: tuple[Condition, ...]  # oldest first, as on the wire; may be empty
    time_created: int  # epoch ms
    last_updated: int | None = None
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
    """What runwatch remembers of a run between polls (one row of the state store)."""

    organization_id: str
    run_id: str
    latest: Condition | None
    time_created: int
    last_updated: int | None = None
    flow_name: str | None = None
    training_project: str | None = None
    etag: str | None = None
    log: str | None = None
    killed_at: int | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.latest is not None and self.latest.condition in TERMINAL_CONDITIONS


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """A change worth telling someone about: a transition, a new run, or a deleted run.

    `previous` is None for a new run; `current` is None for a deleted run. `skipped` holds
    the conditions the run passed through between the two polls, oldest first, when it
    moved more than one step (e.g. Pending -> [Running] -> Failed).
    """

    kind: EventKind
    workspace: str  # the configured workspace name
    organization_id: str
    run_id: str
    previous: Condition | None
    current: Condition | None
    skipped: tuple[Condition, ...] = ()
    flow_name: str | None = None
    training_project: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    time_created: int = 0  # epoch ms
    killed_at: int | None = None
    log: str | None = None
    detected_at: int = 0  # epoch ms of the poll that found it

    @property
    def key(self) -> str:
        """Identity of the state change; the store refuses a second event with the same key."""
        c = self.current
        state = "deleted" if c is None else f"{c.condition}/{c.status}/{c.last_transition_time}"
        return f"{self.organization_id}/{self.run_id}/{self.kind}/{state}"


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxItem:
    """A message to enqueue: one event (or alert) for one channel, already rendered."""

    event_key: str
    channel: str
    title: str
    body: str
    notify_type: str
    run_key: str  # "org/run_id"
