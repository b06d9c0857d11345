"""Alerts about runwatch itself: a workspace that cannot be polled, a channel that fails.

Theory: each subject (a workspace, a channel) is either healthy or down. It goes down when
it has been failing for longer than its threshold, measured from its last success (or from
the first failure seen, when it never succeeded since start-up); going down sends one
alert, coming back sends one recovery, and nothing is sent in between however long the
outage lasts.

`decide` is a function: (state, what the cycle saw, now) -> (alerts, new state). It never
changes its argument, so the shell can commit the alerts' outbox rows and the new state in
one transaction and, should that fail (a full disk), decide again next cycle from the state
it still has: an alert is never marked sent without being enqueued. The state is plain data
the store keeps, so a restart during an outage neither repeats the alert nor forgets to send
the recovery.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone


@dataclass(frozen=True, kw_only=True, slots=True)
class Alert:
    key: str  # unique per alert, so the outbox records it once
    title: str
    body: str
    notify_type: str  # "failure" for down, "success" for recovered
    exclude_channel: str | None = None  # a failing channel is not told about itself


@dataclass(frozen=True, kw_only=True, slots=True)
class AlertState:
    down: Mapping[str, int] = field(default_factory=dict)  # subject -> epoch ms alerted
    failing_since: Mapping[str, int] = field(default_factory=dict)  # subject -> first failure

    def to_json(self) -> dict[str, dict[str, int]]:
        return {"down": dict(self.down), "failing_since": dict(self.failing_since)}

    @classmethod
    def from_json(cls, data: object) -> AlertState:
        """The state stored as JSON; anything unreadable reads as "nothing is down"."""
        parts: dict[str, dict[str, int]] = {"down": {}, "failing_since": {}}
        if isinstance(data, dict):
            for name, target in parts.items():
                part = data.get(name)
                if isinstance(part, dict):
                    target.update({str(k): v for k, v in part.items() if type(v) is int})
        return cls(down=parts["down"], failing_since=parts["failing_since"])


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkspaceHealth:
    """What one cycle learnt of a workspace's API."""

    workspace: str
    ok: bool
    last_success_ms: int | None = None
    error: str | None = None
    auth_failed: bool = False  # the API rejected the secret key


@dataclass(frozen=True, kw_only=True, slots=True)
class Thresholds:
    api_down_after: float = 600.0  # seconds
    channel_failing_after: float = 1_800.0


def decide(
    state: AlertState,
    *,
    workspaces: Sequence[WorkspaceHealth],
    failing_channels: Mapping[str, float],  # channel -> epoch s since it fails
    channels: Sequence[str],
    now_ms: int,
    thresholds: Thresholds,
) -> tuple[list[Alert], AlertState]:
    """The alerts due now and the state that goes with them; `state` is left as it was."""
    down = dict(state.down)
    failing_since = dict(state.failing_since)
    alerts: list[Alert] = []
    for health in workspaces:
        alerts += _workspace(down, failing_since, health, now_ms, thresholds.api_down_after)
    for channel in channels:
        alerts += _channel(
            down, channel, failing_channels.get(channel), now_ms, thresholds.channel_failing_after
        )
    return alerts, AlertState(down=down, failing_since=failing_since)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _minutes(ms: int) -> str:
    minutes = max(0, ms) // 60_000
    return f"{minutes // 60}h {minutes % 60}m" if minutes >= 60 else f"{minutes}m"


def _workspace(
    down: dict[str, int],
    failing_since: dict[str, int],
    health: WorkspaceHealth,
    now_ms: int,
    threshold_s: float,
) -> list[Alert]:
    workspace = health.workspace
    subject = f"workspace:{workspace}"
    if health.ok:
        failing_since.pop(subject, None)
        if down.pop(subject, None) is None:
            return []
        return [
            Alert(
                key=f"alert/{subject}/recovered/{now_ms}",
                title=f"✅ runwatch: Vi API reachable again for {workspace}",
                body=f"Polling workspace {workspace} works again (since {_iso(now_ms)}).",
                notify_type="success",
            )
        ]
    first = failing_since.setdefault(subject, now_ms)
    last_success = health.last_success_ms
    start = last_success if last_success is not None else first
    if subject in down or now_ms - start < threshold_s * 1000:
        return []
    down[subject] = now_ms
    why = (
        "the secret key was rejected (check secret_key / secret_key_file)"
        if health.auth_failed
        else (health.error or "unknown error")
    )
    last = _iso(last_success) if last_success is not None else "never since start"
    return [
        Alert(
            key=f"alert/{subject}/down/{now_ms}",
            title=f"🚨 runwatch cannot poll Vi for {workspace}",
            body=(
                f"Workspace {workspace} has not been polled for {_minutes(now_ms - start)}.\n"
                f"Reason: {why}\nLast successful poll: {last}\n"
                "Run transitions are not being watched until this recovers."
            ),
            notify_type="failure",
        )
    ]


def _channel(
    down: dict[str, int], channel: str, since_s: float | None, now_ms: int, threshold_s: float
) -> list[Alert]:
    subject = f"channel:{channel}"
    if since_s is None:
        if down.pop(subject, None) is None:
            return []
        return [
            Alert(
                key=f"alert/{subject}/recovered/{now_ms}",
                title=f"✅ runwatch: channel {channel} delivers again",
                body=f"Notifications to {channel} are being delivered again.",
                notify_type="success",
            )
        ]
    since_ms = int(since_s * 1000)
    if subject in down or now_ms - since_ms < threshold_s * 1000:
        return []
    down[subject] = now_ms
    return [
        Alert(
            key=f"alert/{subject}/down/{now_ms}",
            title=f"🚨 runwatch: channel {channel} is failing",
            body=(
                f"Deliveries to {channel} have failed for {_minutes(now_ms - since_ms)}. "
                "Its messages are kept and retried until delivery.max_age."
            ),
            notify_type="failure",
            exclude_channel=channel,
        )
    ]


@dataclass(frozen=True, kw_only=True, slots=True)
class StoreOutage:
    """The state store failing, as this process saw it. Kept in memory only: the store is
    what fails, so its alert cannot go through the outbox and its state cannot be stored (a
    restart in the middle of an outage tells it once more)."""

    failing_since_ms: int | None = None
    alerted_ms: int | None = None


def decide_store(
    outage: StoreOutage, *, failing: bool, error: str | None, now_ms: int, threshold_s: float
) -> tuple[Alert | None, StoreOutage]:
    """One alert when the store has failed for `threshold_s`, one when it works again."""
    if not failing:
        if outage.alerted_ms is None:
            return None, StoreOutage()
        return (
            Alert(
                key=f"alert/state/recovered/{now_ms}",
                title="✅ runwatch: its state database works again",
                body=f"Polls are committed again (since {_iso(now_ms)}); what changed "
                "meanwhile is told now.",
                notify_type="success",
            ),
            StoreOutage(),
        )
    since = now_ms if outage.failing_since_ms is None else outage.failing_since_ms
    if outage.alerted_ms is not None or now_ms - since < threshold_s * 1000:
        return None, StoreOutage(failing_since_ms=since, alerted_ms=outage.alerted_ms)
    return (
        Alert(
            key=f"alert/state/down/{now_ms}",
            title="🚨 runwatch cannot use its state database",
            body=(
                f"No poll could be committed for {_minutes(now_ms - since)}.\n"
                f"Reason: {error or 'unknown error'}\n"
                "Run transitions are not recorded or sent until it works again; none is "
                "lost: the first poll that commits tells them."
            ),
            notify_type="failure",
        ),
        StoreOutage(failing_since_ms=since, alerted_ms=now_ms),
    )
