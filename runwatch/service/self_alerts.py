"""The shell around `core.alerts.decide`: gather what a cycle saw, commit what it decided.

Theory: the decision is pure; this module feeds it (poll reports, the channels failing
since when, the stored state) and writes its outcome — the alerts' outbox rows and the new
alert state — in ONE store transaction. When that transaction fails (a full disk), the state
in memory is not advanced either, so the same alerts are decided again next cycle instead of
being marked sent and lost.

Several instances (PostgreSQL): each decides from what it sees (the workspaces it polls,
the channels it sends), so each keeps its own alert state, under `instance_key` of its
configured name (stable across restarts): one instance's state never overwrites another's.
An instance without one yet starts from the state of a single-instance past (migrated by
`runwatch migrate-state`), so an outage alerted before the move is still recovered once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import structlog

from runwatch.core.alerts import (
    AlertState,
    StoreOutage,
    Thresholds,
    WorkspaceHealth,
    decide,
    decide_store,
)
from runwatch.core.model import OutboxItem
from runwatch.delivery.fence import FencedSender
from runwatch.delivery.senders import Outgoing, Sender
from runwatch.errors import StoreError
from runwatch.service.status import PollReport
from runwatch.state.store import Lane, StateStore

log = structlog.get_logger("runwatch.service.self_alerts")

ALERTS_META_KEY = "alerts.state"
ALERT_RUN_KEY = "runwatch"  # the outbox's run key of self-alerts: their own ordering lane


def instance_key(instance: str) -> str:
    """The meta key of one instance's alert state (several instances on PostgreSQL)."""
    return f"{ALERTS_META_KEY}/{instance}"


class SelfAlerts:
    def __init__(self, store: StateStore, *, key: str = ALERTS_META_KEY) -> None:
        self._store = store
        self._key = key
        text = store.get_meta(key)
        if text is None and key != ALERTS_META_KEY:
            text = store.get_meta(ALERTS_META_KEY)
        self.state = AlertState.from_json(_load_json(text))

    def evaluate(
        self,
        reports: Sequence[PollReport],
        *,
        last_success: Mapping[str, int],
        failing_channels: Mapping[str, float],
        channels: Sequence[str],
        notify: Sequence[str],
        targets: Mapping[str, Sequence[str]],
        thresholds: Thresholds,
        now_ms: int,
    ) -> int:
        """Decide and commit the alerts due now; return how many outbox rows were queued."""
        if not notify:
            return 0
        workspaces = [
            WorkspaceHealth(
                workspace=r.workspace,
                ok=r.ok or r.store_failed,  # a full disk is no API outage
                last_success_ms=last_success.get(r.workspace),
                error=r.error,
                auth_failed=r.auth_failed,
            )
            for r in reports
        ]
        alerts, state = decide(
            self.state,
            workspaces=workspaces,
            failing_channels=failing_channels,
            channels=channels,
            now_ms=now_ms,
            thresholds=thresholds,
        )
        if state == self.state:
            return 0
        items = [
            OutboxItem(
                event_key=alert.key,
                channel=channel,
                target=target,
                title=alert.title,
                body=alert.body,
                notify_type=alert.notify_type,
                run_key=ALERT_RUN_KEY,
            )
            for alert in alerts
            for channel in notify
            if channel != alert.exclude_channel
            for target in targets.get(channel, ())
        ]
        try:
            queued = self._store.commit_alerts(
                items, meta={self._key: json.dumps(state.to_json())}, now_ms=now_ms
            )
        except StoreError as exc:
            log.error("alerts.not_recorded", error=str(exc))
            return 0
        self.state = state
        for alert in alerts:
            log.warning("alert.sent", title=alert.title)
        return queued


class StoreOutageAlerts:
    """The state store's own outage, told straight to the alert channels' Apprise URLs.

    Every other alert goes through the outbox, which lives in the store; this one cannot.
    So it is sent at once, once (a failed send is logged, not retried: at most once), and
    only to Apprise channels, whose senders need nothing from the store (a native Slack
    channel keeps its message ids there; a webhook's document is made with the outbox row).
    """

    def __init__(self) -> None:
        self.outage = StoreOutage()

    async def evaluate(
        self,
        *,
        failing: bool,
        error: str | None,
        now_ms: int,
        threshold_s: float,
        senders: Mapping[Lane, Sender],
        notify: Sequence[str],
        apprise_channels: Sequence[str],
        targets: Mapping[str, Sequence[str]],
        timeout: float,
    ) -> None:
        if not notify:
            return
        alert, self.outage = decide_store(
            self.outage, failing=failing, error=error, now_ms=now_ms, threshold_s=threshold_s
        )
        if alert is None:
            return
        message = Outgoing(
            title=alert.title,
            body=alert.body,
            notify_type=alert.notify_type,
            event_keys=(alert.key,),
        )
        lanes = [
            (channel, target)
            for channel in notify
            if channel in apprise_channels
            for target in targets.get(channel, ())
        ]
        for channel, target in lanes:
            sender = senders.get((channel, target))
            if sender is None:
                continue
            # Past the lane fence of several instances: no lane is claimed without a store.
            direct = sender.inner if isinstance(sender, FencedSender) else sender
            try:
                outcome = await direct.send(message, timeout=timeout)
            except Exception as exc:  # a bug in a sender: logged, the others still told
                log.error("alert.not_sent", channel=channel, error=type(exc).__name__)
                continue
            if outcome.verdict == "ok":
                log.warning("alert.sent", title=alert.title, channel=channel, direct=True)
            else:
                log.error("alert.not_sent", channel=channel, target=target, detail=outcome.detail)


def _load_json(text: str | None) -> object:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
