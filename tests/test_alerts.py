"""Self-alerts: one alert when a subject goes down past its threshold, one when it recovers."""

from __future__ import annotations

from collections.abc import Mapping

from runwatch.core.alerts import (
    Alert,
    AlertState,
    StoreOutage,
    Thresholds,
    WorkspaceHealth,
    decide,
    decide_store,
)

MIN = 60_000
THRESHOLDS = Thresholds(api_down_after=600, channel_failing_after=1800)


class Subject:
    """One workspace (or channel set) followed through decisions, keeping the state it returns."""

    def __init__(self, state: AlertState | None = None) -> None:
        self.state = state or AlertState()

    def poll(
        self,
        *,
        ok: bool,
        at_min: int,
        last_success_min: int | None,
        error: str | None = "HTTP 503",
        auth: bool = False,
    ) -> list[Alert]:
        health = WorkspaceHealth(
            workspace="prod",
            ok=ok,
            last_success_ms=None if last_success_min is None else last_success_min * MIN,
            error=error,
            auth_failed=auth,
        )
        alerts, self.state = decide(
            self.state,
            workspaces=[health],
            failing_channels={},
            channels=[],
            now_ms=at_min * MIN,
            thresholds=THRESHOLDS,
        )
        return alerts

    def kinds(self, **kw: object) -> list[str]:
        return [a.notify_type for a in self.poll(**kw)]  # type: ignore[arg-type]

    def channels(self, failing: Mapping[str, float], at_min: int) -> list[Alert]:
        alerts, self.state = decide(
            self.state,
            workspaces=[],
            failing_channels=failing,
            channels=["slack", "mail"],
            now_ms=at_min * MIN,
            thresholds=THRESHOLDS,
        )
        return alerts


def test_it_alerts_once_after_the_threshold_and_once_on_recovery() -> None:
    """Failures shorter than the threshold are silent; past it one alert, then one recovery."""
    ws = Subject()
    assert ws.kinds(ok=False, at_min=5, last_success_min=1) == []
    assert ws.kinds(ok=False, at_min=10, last_success_min=1) == []
    assert ws.kinds(ok=False, at_min=11, last_success_min=1) == ["failure"]
    assert ws.kinds(ok=False, at_min=30, last_success_min=1) == []
    assert ws.kinds(ok=True, at_min=31, last_success_min=1) == ["success"]
    assert ws.kinds(ok=True, at_min=32, last_success_min=31) == []


def test_it_measures_from_the_first_failure_when_never_successful() -> None:
    """Without any successful poll the outage is timed from the first failure runwatch saw."""
    ws = Subject()
    assert ws.kinds(ok=False, at_min=100, last_success_min=None) == []
    assert ws.kinds(ok=False, at_min=109, last_success_min=None) == []
    assert ws.kinds(ok=False, at_min=110, last_success_min=None) == ["failure"]


def test_it_calls_out_a_rejected_secret_key() -> None:
    """An auth failure says the secret key was rejected, and never includes the key."""
    [alert] = Subject().poll(ok=False, at_min=20, last_success_min=0, error="401", auth=True)
    assert "secret key was rejected" in alert.body


def test_it_leaves_the_state_it_was_given_unchanged() -> None:
    """A decision returns a new state: a caller whose commit failed can decide again."""
    before = AlertState()
    health = WorkspaceHealth(workspace="prod", ok=False, last_success_ms=0)
    first, after = decide(
        before, workspaces=[health], failing_channels={}, channels=[], now_ms=20 * MIN,
        thresholds=THRESHOLDS,
    )  # fmt: skip
    again, _ = decide(
        before, workspaces=[health], failing_channels={}, channels=[], now_ms=20 * MIN,
        thresholds=THRESHOLDS,
    )  # fmt: skip
    assert before == AlertState() and after.down == {"workspace:prod": 20 * MIN}
    assert [a.key for a in first] == [a.key for a in again]


def test_it_survives_a_restart_through_its_json_state() -> None:
    """State round-trips through JSON, so a restart mid-outage neither repeats nor forgets."""
    ws = Subject()
    assert ws.kinds(ok=False, at_min=20, last_success_min=0) == ["failure"]
    restored = Subject(AlertState.from_json(ws.state.to_json()))
    assert restored.kinds(ok=False, at_min=25, last_success_min=0) == []
    assert restored.kinds(ok=True, at_min=26, last_success_min=0) == ["success"]


def test_it_alerts_about_a_failing_channel_to_the_others_only() -> None:
    """A channel failing past its threshold is reported, excluded from its own alert."""
    subject = Subject()
    assert subject.channels({"slack": 0.0}, at_min=29) == []
    [down] = subject.channels({"slack": 0.0}, at_min=31)
    assert down.exclude_channel == "slack" and "slack" in down.title
    assert subject.channels({"slack": 0.0}, at_min=60) == []
    [up] = subject.channels({}, at_min=61)
    assert up.notify_type == "success"
    assert AlertState.from_json("garbage").down == {}


def test_it_tells_a_failing_store_once_after_the_threshold_and_its_recovery_once() -> None:
    """The state store failing: nothing before api_down_after, one alert at it, none while it
    lasts, one recovery; a store that recovers before the threshold is never mentioned."""
    outage, told = StoreOutage(), []
    for now_ms, failing in [(0, True), (30_000, True), (60_000, True), (90_000, True),
                            (120_000, False), (150_000, False)]:  # fmt: skip
        alert, outage = decide_store(
            outage, failing=failing, error="disk full", now_ms=now_ms, threshold_s=60.0
        )
        if alert is not None:
            told.append((now_ms, alert.notify_type, alert.title))
    assert told == [
        (60_000, "failure", "🚨 runwatch cannot use its state database"),
        (120_000, "success", "✅ runwatch: its state database works again"),
    ]
    brief = StoreOutage()
    for now_ms, failing in [(0, True), (30_000, False), (40_000, True), (90_000, False)]:
        alert, brief = decide_store(
            brief, failing=failing, error=None, now_ms=now_ms, threshold_s=60.0
        )
        assert alert is None
