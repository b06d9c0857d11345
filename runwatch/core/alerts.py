"""Alerts about runwatch itself: a workspace that cannot be polled, a channel that fails.

Theory: each subject (a workspace, a channel) is either healthy or down. It goes down when
it has been failing for longer than its threshold, measured from its last success (or from
the first failure seen, when it never succeeded since start-up); going down sends one
alert, coming back sends one recovery, and nothing is sent in between however long the
outage lasts. The state is plain data the daemon persists, so a restart during an outage
neither repeats the alert nor forgets to send the recovery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone


@dataclass(frozen=True, kw_only=True, slots=True)
class Alert:
    key: str  # unique per alert, so the outbox records it once
    title: str
    body: str
    notify_type: str  # "failure" for down, "success" for recovered
    exclude_channel: str | None = None  # a failing channel is not told about itself


@dataclass(kw_only=True, slots=True)
class AlertState:
    down: dict[str, int] = field(default_factory=dict)  # subject -> epoch ms the alert went out
    failing_since: dict[str, int] = field(default_factory=dict)  # subject -> first failure seen

    def to_json(self) -> dict[str, dict[str, int]]:
        return {"down": dict(self.down), "failing_since": dict(self.failing_since)}

    @classmethod
    def from_json(cls, data: object) -> AlertState:
        state = cls()
        if isinstance(data, dict):
            for name, target in (("down", state.down), ("failing_since", state.failing_since)):
                part = data.get(name)
                if isinstance(part, dict):
                    target.update({str(k): int(v) for k, v in part.items() if isinstance(v, int)})
        return state


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _minutes(ms: int) -> str:
    minutes = max(0, ms) // 60_000
    return f"{minutes // 60}h {minutes % 60}m" if minutes >= 60 else f"{minutes}m"


def workspace_alerts(
    state: AlertState,
    *,
    workspace: str,
    ok: bool,
    now_ms: int,
    last_success_ms: int | None,
    threshold_s: float,
    error: str | None = None,
    auth_failed: bool = False,
) -> list[Alert]:
    """Alerts for one poll result of `workspace`; updates `state` in place."""
    subject = f"workspace:{workspace}"
    if ok:
        state.failing_since.pop(subject, None)
        since = state.down.pop(subject, None)
        if since is None:
            return []
        return [
            Alert(
                key=f"alert/{subject}/recovered/{now_ms}",
                title=f"✅ runwatch: Vi API reachable again for {workspace}",
                body=f"Polling workspace {workspace} works again (since {_iso(now_ms)}).",
                notify_type="success",
            )
        ]
    first = state.failing_since.setdefault(subject, now_ms)
    start = last_success_ms if last_success_ms is not None else first
    if subject in state.down or now_ms - start < threshold_s * 1000:
        return []
    state.down[subject] = now_ms
    why = (
        "the secret key was rejected (check secret_key / secret_key_file)"
        if auth_failed
        else (error or "unknown error")
    )
    last = _iso(last_success_ms) if last_success_ms is not None else "never since start"
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


def channel_alerts(
    state: AlertState,
    *,
    failing: dict[str, float],
    channels: list[str],
    now_ms: int,
    threshold_s: float,
) -> list[Alert]:
    """Alerts for channels failing continuously (channel -> epoch s since) longer than threshold."""
    alerts: list[Alert] = []
    for channel in channels:
        subject = f"channel:{channel}"
        since_s = failing.get(channel)
        if since_s is None:
            if state.down.pop(subject, None) is not None:
                alerts.append(
                    Alert(
                        key=f"alert/{subject}/recovered/{now_ms}",
                        title=f"✅ runwatch: channel {channel} delivers again",
                        body=f"Notifications to {channel} are being delivered again.",
                        notify_type="success",
                        exclude_channel=None,
                    )
                )
            continue
        since_ms = int(since_s * 1000)
        if subject in state.down or now_ms - since_ms < threshold_s * 1000:
            continue
        state.down[subject] = now_ms
        alerts.append(
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
        )
    return alerts
