"""The state store's vocabulary: what a poll commits, what the outbox hands out.

Theory: the store is the pipeline's one point of durability. Everything one poll decided
(the new run states, the events, one outbox row per event and channel) is written in ONE
transaction, and nothing is sent before that commit: a crash between seeing a transition and
sending it loses nothing, and a restart never re-detects a transition that was recorded,
because an event's key is unique and a recorded event is never enqueued again. Delivery then
works off the outbox, marking each row sent, due for a retry, or dead. These value types are
what every backend speaks; `runwatch.state.sqlite` is the embedded one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from runwatch.core.model import Event, OutboxItem, RunState


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkspaceMeta:
    organization_id: str
    baselined_at: int | None  # epoch ms of the baseline poll; None = never polled successfully
    last_full_listing: int | None  # epoch ms of the last complete listing
    last_success: int | None  # epoch ms of the last successful poll (any kind)
    last_failure: int | None = None  # epoch ms of the last failed poll (record_poll_failure)
    last_error: str | None = None  # its sanitized error text
    resume_at: int | None = None  # epoch ms before which the API asked not to be polled


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxRow:
    """A pending outbox row."""

    id: int
    event_key: str
    channel: str
    title: str
    body: str
    notify_type: str
    run_key: str
    created_at: int  # epoch ms
    attempts: int
    next_attempt_at: int  # epoch ms
    last_error: str | None


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxStats:
    pending: int
    dead: int
    pending_by_channel: Mapping[str, int]
    dead_by_channel: Mapping[str, int]
    oldest_pending_age: float  # seconds; 0.0 when nothing is pending


@dataclass(frozen=True, kw_only=True, slots=True)
class PollCommit:
    """Everything one poll of one workspace decided, written by `Store.commit_poll` at once."""

    organization_id: str
    polled_at: int  # epoch ms
    upserts: Sequence[RunState] = ()  # tombstones (deleted_at set) included
    events: Sequence[Event] = ()
    outbox: Sequence[OutboxItem] = ()
    full_listing: bool = False  # sets last_full_listing = polled_at
    baseline: bool = False  # sets baselined_at = polled_at


class StateStore(Protocol):
    """What the daemon and the commands need of a state store; every backend provides it."""

    def workspace(self, organization_id: str) -> WorkspaceMeta: ...
    def load_runs(self, organization_id: str) -> dict[str, RunState]: ...
    def load_tombstones(self, organization_id: str) -> dict[str, RunState]: ...
    def set_resume_at(self, organization_id: str, resume_at: int | None) -> None: ...
    def tracked_runs(self) -> list[RunState]: ...
    def commit_poll(self, commit: PollCommit) -> int: ...
    def enqueue(self, items: Sequence[OutboxItem], now_ms: int) -> int: ...
    def commit_alerts(
        self, items: Sequence[OutboxItem], *, meta: Mapping[str, str], now_ms: int
    ) -> int: ...
    def next_pending(self, channel: str) -> OutboxRow | None: ...
    def pending_channels(self) -> list[str]: ...
    def mark_sent(self, row_id: int, now_ms: int) -> None: ...
    def mark_retry(self, row_id: int, now_ms: int, next_attempt_at: int, error: str) -> None: ...
    def mark_dead(
        self, row_id: int, now_ms: int, error: str, *, attempted: bool = False
    ) -> None: ...
    def outbox_stats(self, now_ms: int) -> OutboxStats: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def close(self) -> None: ...
