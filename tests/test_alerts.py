"""Self-alerts: one alert when a subject goes down past its threshold, one when it recovers."""

from __future__ import annotations

from runwatch.core.alerts import AlertState, channel_alerts, workspace_alerts

MIN = 60_000


def poll(
    state: AlertState,
    *,
    ok: bool,
    at_min: int,
    last_success_min: int | None,
    error: str | None = "HTTP 503",
    auth: bool = False,
) -> list[str]:
    alerts = workspace_alerts(
        state,
        workspace="prod",
        ok=ok,
        now_ms=at_min * MIN,
        last_success_ms=None if last_success_min is None else last_success_min * MIN,
        threshold_s=600,
        error=error,
        auth_failed=auth,
    )
    return [a.notify_type for a in alerts]


def test_it_alerts_once_after_the_threshold_and_once_on_recovery() -> None:
    """Failures shorter than the threshold are silent; past it one alert, then one recovery."""
    state = AlertState()
    assert poll(state, ok=False, at_min=5, last_success_min=1) == []
    assert poll(state, ok=False, at_min=10, last_success_min=1) == []
    assert poll(state, ok=False, at_min=11, last_success_min=1) == ["failure"]
    assert poll(state, ok=False, at_min=30, last_success_min=1) == []
    assert poll(state, ok=True, at_min=31, last_success_min=1) == ["success"]
    assert poll(state, ok=True, at_min=32, last_success_min=31) == []


def test_it_measures_from_the_first_failure_when_never_successful() -> None:
    """Without any successful poll the outage is timed from the first failure runwatch saw."""
    state = AlertState()
    assert poll(state, ok=False, at_min=100, last_success_min=None) == []
    assert poll(state, ok=False, at_min=109, last_success_min=None) == []
    assert poll(state, ok=False, at_min=110, last_success_min=None) == ["failure"]


def test_it_calls_out_a_rejected_secret_key() -> None:
    """An auth failure says the secret key was rejected, and never includes the key."""
    state = AlertState()
    alerts = workspace_alerts(
        state,
        workspace="prod",
        ok=False,
        now_ms=20 * MIN,
        last_success_ms=0,
        threshold_s=600,
        error="401 from Vi",
        auth_failed=True,
    )
    assert len(alerts) == 1
    assert "secret key was rejected" in alerts[0].body


def test_it_survives_a_restart_through_its_json_state() -> None:
    """State round-trips through JSON, so a restart mid-outage neither repeats nor forgets."""
    state = AlertState()
    assert poll(state, ok=False, at_min=20, last_success_min=0) == ["failure"]
    restored = AlertState.from_json(state.to_json())
    assert poll(restored, ok=False, at_min=25, last_success_min=0) == []
    assert poll(restored, ok=True, at_min=26, last_success_min=0) == ["success"]


def test_it_alerts_about_a_failing_channel_to_the_others_only() -> None:
    """A channel failing past its threshold is reported, excluded from its own alert."""
    state = AlertState()
    kw = {"channels": ["slack", "mail"], "threshold_s": 1800}
    assert channel_alerts(state, failing={"slack": 0.0}, now_ms=29 * MIN, **kw) == []  # type: ignore[arg-type]
    [down] = channel_alerts(state, failing={"slack": 0.0}, now_ms=31 * MIN, **kw)  # type: ignore[arg-type]
    assert down.exclude_channel == "slack" and "slack" in down.title
    assert channel_alerts(state, failing={"slack": 0.0}, now_ms=60 * MIN, **kw) == []  # type: ignore[arg-type]
    [up] = channel_alerts(state, failing={}, now_ms=61 * MIN, **kw)  # type: ignore[arg-type]
    assert up.notify_type == "success"
    assert AlertState.from_json("garbage").down == {}
