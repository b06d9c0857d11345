"""The state store's vocabulary: what a poll commits, what the outbox hands out.

Theory: the store is the pipeline's one point of durability. Everything one poll decided
(the new run states, the events, one outbox row per event and channel) is written in ONE
transaction, and nothing is sent before that commit: a crash between seeing a transition and
sending it loses nothing, and a restart never re-detects a transition that was recorded,
because an event's key is unique and a recorded event is never enqueued again. Delivery then
works off the outbox, marking each row sent, due for a retry, or dead. These value types are
what every backend speaks; `runwatch.state.sqlite` is the embedded one,
`runwatch.state.postgres` the one several instances share (`runwatch.state.open` picks).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from runwatch.core.model import Event, OutboxItem, RunState
from runwatch.core.mutes import Mute


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkspaceMeta:
    organization_id: str
    baselined_at: int | None  # epoch ms of the baseline poll; None = never polled successfully
    last_full_listing: int | None  # epoch ms of the last complete listing
    last_success: int | None  # epoch ms of the last successful poll (any kind)
    last_failure: int | None = None  # epoch ms of the last failed poll (record_poll_failure)
    last_error: str | None = None  # its sanitized error text
    resume_at: int | None = None  # epoch ms before which the API asked not to be polled


Lane = tuple[str, str]  # (channel, target): where one row of the outbox goes


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxRow:
    """One outbox row: one message for one target of one channel."""

    id: int
    event_key: str
    channel: str
    target: str  # '' for rows written before per-target delivery: every URL of the channel
    run_key: str  # "org/run_id", or "runwatch" for self-alerts: the unit of ordering
    condition: str | None  # the event's condition, for quiet hours and digests
    title: str
    body: str
    notify_type: str
    state: str
    created_at: int  # epoch ms
    attempts: int
    uncertain_attempts: int  # attempts whose outcome was unknown
    next_attempt_at: int  # epoch ms
    last_error: str | None

    @property
    def lane(self) -> Lane:
        return (self.channel, self.target)


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxStats:
    pending: int
    dead: int
    pending_by_channel: Mapping[str, int]
    dead_by_channel: Mapping[str, int]
    oldest_pending_age: float  # seconds; 0.0 when nothing is pending
    uncertain: int = 0  # possibly delivered: gave up not knowing whether the target got it
    uncertain_by_channel: Mapping[str, int] = field(default_factory=dict)
    muted: int = 0  # recorded for muted events, never sent (kept 30 days)
    dropped: int = 0  # dropped by the operator (kept)


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


@dataclass(frozen=True, kw_only=True, slots=True)
class SlackMessage:
    """Where the native Slack channel keeps one run's message (see `core.slack_blocks`)."""

    channel: str  # the runwatch channel
    run_key: str  # "org/run_id"
    incarnation: int  # the run's time_created, epoch ms: a re-created run id is another run
    destination: str  # the Slack channel as configured (an id, or #name)
    slack_channel: str  # the channel id Slack answered with: chat.update needs it
    ts: str  # the message's timestamp, its id in that channel
    posted_at: int  # epoch ms
    updated_at: int  # epoch ms of the last post or edit


class Outbox(Protocol):
    """The outbox of a store: what delivery and the operator's commands act on."""

    def lanes(self) -> list[Lane]: ...
    def pending(self, lane: Lane, *, limit: int = 10_000) -> list[OutboxRow]: ...
    def rows(
        self,
        *,
        states: Sequence[str] = ("pending",),
        channel: str | None = None,
        ids: Sequence[int] = (),
        limit: int = 1_000,
    ) -> list[OutboxRow]: ...
    def event_payloads(self, keys: Sequence[str]) -> dict[str, str]: ...
    def mark_sent(self, ids: Sequence[int], now_ms: int) -> None: ...
    def mark_retry(
        self,
        ids: Sequence[int],
        now_ms: int,
        next_attempt_at: int,
        error: str,
        *,
        uncertain: bool = False,
    ) -> None: ...
    def mark_given_up(
        self, ids: Sequence[int], now_ms: int, error: str, *, state: str, attempted: bool
    ) -> None: ...
    def revive(self, ids: Sequence[int], now_ms: int) -> int: ...
    def drop(self, ids: Sequence[int], now_ms: int) -> int: ...
    def stats(self, now_ms: int) -> OutboxStats: ...


class Mutes(Protocol):
    """The operator's mutes (see `runwatch.core.mutes`): read at every poll, changed by the
    `mute`/`unmute` commands in short transactions of their own."""

    def add(self, mute: Mute) -> Mute: ...
    def active(self, now_ms: int) -> list[Mute]: ...
    def remove(self, ids: Sequence[int], now_ms: int) -> int: ...
    def remove_all(self, now_ms: int) -> int: ...


class StateStore(Protocol):
    """What the daemon and the commands need of a state store; every backend provides it."""

    def workspace(self, organization_id: str) -> WorkspaceMeta: ...
    def load_runs(self, organization_id: str) -> dict[str, RunState]: ...
    def load_tombstones(self, organization_id: str) -> dict[str, RunState]: ...
    def iter_runs(self, organization_id: str) -> Iterator[RunState]: ...
    def load_run_states(
        self, organization_id: str, run_ids: Sequence[str]
    ) -> dict[str, RunState]: ...
    def record_runs(self, organization_id: str, states: Sequence[RunState]) -> None: ...
    def set_resume_at(self, organization_id: str, resume_at: int | None) -> None: ...
    def record_poll_failure(self, organization_id: str, now_ms: int, error: str) -> None: ...
    def tracked_runs(self) -> list[RunState]: ...
    def commit_poll(self, commit: PollCommit) -> int: ...
    def enqueue(self, items: Sequence[OutboxItem], now_ms: int) -> int: ...
    def commit_alerts(
        self, items: Sequence[OutboxItem], *, meta: Mapping[str, str], now_ms: int
    ) -> int: ...
    def outbox_stats(self, now_ms: int) -> OutboxStats: ...
    @property
    def outbox(self) -> Outbox: ...
    @property
    def mutes(self) -> Mutes: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def slack_message(
        self, channel: str, run_key: str, incarnation: int
    ) -> SlackMessage | None: ...
    def set_slack_message(self, message: SlackMessage) -> None: ...
    def close(self) -> None: ...
