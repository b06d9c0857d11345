"""The health and metrics HTTP server, queried over real loopback HTTP."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from runwatch.errors import RunwatchError
from runwatch.service.http import HealthServer
from runwatch.service.metrics import Metrics

Summary = tuple[bool, dict[str, object]]


class Health:
    """A health check whose answer the test sets."""

    def __init__(self) -> None:
        self.healthy = True
        self.summary: dict[str, object] = {"workspaces": {"prod": "ok"}, "outbox_pending": 0}

    def __call__(self) -> Summary:
        return self.healthy, self.summary


@pytest.fixture
def health() -> Health:
    return Health()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def server(health: Health, metrics: Metrics) -> Iterator[HealthServer]:
    srv = HealthServer("127.0.0.1", 0, health=health, metrics=metrics)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: HealthServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5) as c:
        yield c


def samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text body, keyed by name and label set."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def test_it_listens_on_the_port_the_system_chose(server: HealthServer) -> None:
    """With port 0 the url names the real loopback port that was bound."""
    assert server.url.startswith("http://127.0.0.1:")
    assert int(server.url.rsplit(":", 1)[1]) > 0


def test_it_answers_200_with_the_summary_when_healthy(client: httpx.Client) -> None:
    """GET /healthz is 200 with the health summary as JSON."""
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"workspaces": {"prod": "ok"}, "outbox_pending": 0}


def test_it_answers_503_with_the_summary_when_unhealthy(
    client: httpx.Client, health: Health
) -> None:
    """GET /healthz is 503 when the check says unhealthy, still with its summary."""
    health.healthy = False
    health.summary = {"workspaces": {"prod": "failing for 900s"}}
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"workspaces": {"prod": "failing for 900s"}}


def test_it_asks_the_health_check_on_every_request(client: httpx.Client, health: Health) -> None:
    """The status follows the daemon's state from one request to the next."""
    assert client.get("/healthz").status_code == 200
    health.healthy = False
    assert client.get("/healthz").status_code == 503
    health.healthy = True
    assert client.get("/healthz?verbose=1").status_code == 200


def test_it_answers_503_when_the_health_check_raises(metrics: Metrics) -> None:
    """A health check that raises makes /healthz 503 and logs a warning, not a crash."""

    def broken() -> Summary:
        raise RuntimeError("state store locked")

    srv = HealthServer("127.0.0.1", 0, health=broken, metrics=metrics)
    srv.start()
    try:
        with capture_logs() as logs:
            response = httpx.get(f"{srv.url}/healthz", timeout=5)
    finally:
        srv.stop()
    assert response.status_code == 503
    assert response.json() == {"error": "health check failed"}
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["http.health_check_failed"]


def test_it_serves_counted_values_in_prometheus_text_format(
    client: httpx.Client, metrics: Metrics
) -> None:
    """GET /metrics returns the registry in text format 0.0.4 with the values counted."""
    metrics.polls.labels(workspace="prod", kind="incremental").inc(3)
    metrics.polls.labels(workspace="prod", kind="full").inc()
    metrics.notifications.labels(channel="ml-slack", result="sent").inc(2)
    metrics.notifications.labels(channel="oncall", result="dead").inc()
    metrics.outbox_depth.set(4)
    metrics.runs_watched.labels(workspace="prod").set(5000)
    metrics.api_latency.labels(workspace="prod", endpoint="runs.list").observe(0.3)
    metrics.last_success.labels(workspace="prod").set(1_700_000_000)

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    got = samples(response.text)

    def label(**kw: str) -> frozenset[tuple[str, str]]:
        return frozenset(kw.items())

    assert got["runwatch_polls_total", label(workspace="prod", kind="incremental")] == 3
    assert got["runwatch_polls_total", label(workspace="prod", kind="full")] == 1
    assert got["runwatch_notifications_total", label(channel="ml-slack", result="sent")] == 2
    assert got["runwatch_notifications_total", label(channel="oncall", result="dead")] == 1
    assert got["runwatch_outbox_pending", label()] == 4
    assert got["runwatch_runs_watched", label(workspace="prod")] == 5000
    latency = label(workspace="prod", endpoint="runs.list")
    assert got["runwatch_api_request_seconds_count", latency] == 1
    assert got["runwatch_api_request_seconds_bucket", latency | {("le", "0.25")}] == 0
    assert got["runwatch_api_request_seconds_bucket", latency | {("le", "0.5")}] == 1
    assert (
        got["runwatch_last_successful_poll_timestamp_seconds", label(workspace="prod")]
        == 1_700_000_000
    )


def test_it_declares_every_series_even_before_counting(metrics: Metrics) -> None:
    """All of runwatch's metric families are present in a fresh registry."""
    names = {family.name for family in text_string_to_metric_families(metrics.render().decode())}
    assert names >= {
        "runwatch_polls",
        "runwatch_poll_failures",
        "runwatch_api_requests",
        "runwatch_api_request_seconds",
        "runwatch_runs_watched",
        "runwatch_transitions",
        "runwatch_notifications",
        "runwatch_outbox_pending",
        "runwatch_outbox_oldest_pending_seconds",
        "runwatch_last_successful_poll_timestamp_seconds",
    }


def test_it_keeps_each_metrics_registry_separate() -> None:
    """Two Metrics objects count independently (no shared global registry)."""
    first, second = Metrics(), Metrics()
    first.transitions.labels(workspace="prod", condition="Failed").inc()
    key = (
        "runwatch_transitions_total",
        frozenset({("workspace", "prod"), ("condition", "Failed")}),
    )
    assert samples(first.render().decode())[key] == 1
    assert key not in samples(second.render().decode())


@pytest.mark.parametrize("path", ["/", "/health", "/metrics/extra", "/healthz/"])
def test_it_answers_404_for_other_paths(client: httpx.Client, path: str) -> None:
    """Only /healthz and /metrics exist."""
    assert client.get(path).status_code == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
def test_it_answers_405_for_other_methods(client: httpx.Client, method: str) -> None:
    """Any method but GET is refused with 405 and Allow: GET."""
    response = client.request(method, "/healthz")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"


def test_it_serves_metrics_while_a_health_check_is_stuck(metrics: Metrics) -> None:
    """Requests run on their own threads: a blocked /healthz does not hold up /metrics."""
    entered, release = threading.Event(), threading.Event()

    def stuck() -> Summary:
        entered.set()
        release.wait(timeout=10)
        return True, {}

    srv = HealthServer("127.0.0.1", 0, health=stuck, metrics=metrics)
    srv.start()
    results: list[int] = []
    waiter = threading.Thread(
        target=lambda: results.append(httpx.get(f"{srv.url}/healthz", timeout=10).status_code)
    )
    try:
        waiter.start()
        assert entered.wait(timeout=5)
        assert httpx.get(f"{srv.url}/metrics", timeout=2).status_code == 200
    finally:
        release.set()
        waiter.join(timeout=10)
        srv.stop()
    assert results == [200]


def test_it_closes_the_port_on_stop(health: Health, metrics: Metrics) -> None:
    """After stop() nothing listens on the port any more; a second stop is harmless."""
    srv = HealthServer("127.0.0.1", 0, health=health, metrics=metrics)
    srv.start()
    url = srv.url
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    srv.stop()
    srv.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=5)


def test_it_explains_a_port_that_is_taken(health: Health, metrics: Metrics) -> None:
    """Starting on a port already bound raises a RunwatchError that names host and port."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        srv = HealthServer("127.0.0.1", port, health=health, metrics=metrics)
        with pytest.raises(RunwatchError, match=f"127.0.0.1:{port}.*http.port"):
            srv.start()


def test_it_has_no_url_before_start(health: Health, metrics: Metrics) -> None:
    """Asking for the url of a server not started is an error, not a wrong address."""
    srv = HealthServer("127.0.0.1", 0, health=health, metrics=metrics)
    with pytest.raises(RuntimeError):
        _ = srv.url
