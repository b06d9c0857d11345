"""Prometheus metrics, in runwatch's own registry.

An own `CollectorRegistry` rather than the global one: two daemons in one test process (or a
test next to the real thing) must not count into each other's series. Label values are
configured names only (workspace, channel, endpoint path template, HTTP status), never a URL or
a secret, and each has a small bounded set of values: API condition values are capped to the
documented ones plus "other".
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from runwatch.core.model import KNOWN_CONDITIONS, Event

# Condition values are open strings from the API; as label values they would grow /metrics
# without bound, so only the documented ones are their own series and the rest are "other".
_CONDITION_LABELS = frozenset(KNOWN_CONDITIONS)

# Vi requests normally take well under a second; the top buckets show timeouts and retries
# against the default 20 s request timeout.
API_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


class Metrics:
    """Every series runwatch exports, registered in `registry`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.polls = Counter(
            "runwatch_polls_total",
            "Poll cycles completed, by workspace and kind (incremental, full, baseline).",
            ["workspace", "kind"],
            registry=r,
        )
        self.poll_failures = Counter(
            "runwatch_poll_failures_total",
            "Poll cycles that failed, by workspace and reason.",
            ["workspace", "reason"],
            registry=r,
        )
        self.api_requests = Counter(
            "runwatch_api_requests_total",
            "HTTP requests to the Vi API, by workspace, endpoint and outcome.",
            ["workspace", "endpoint", "outcome"],
            registry=r,
        )
        self.api_latency = Histogram(
            "runwatch_api_request_seconds",
            "Duration of one HTTP request to the Vi API.",
            ["workspace", "endpoint"],
            buckets=API_LATENCY_BUCKETS,
            registry=r,
        )
        self.runs_watched = Gauge(
            "runwatch_runs_watched",
            "Runs tracked in the state store, by workspace.",
            ["workspace"],
            registry=r,
        )
        self.transitions = Counter(
            "runwatch_transitions_total",
            "Events detected, by workspace and new condition (documented conditions, other, "
            "deleted, overdue).",
            ["workspace", "condition"],
            registry=r,
        )
        self.run_fetch_failures = Counter(
            "runwatch_run_fetch_failures_total",
            "Single-run GETs that failed and left that run for the next poll, by workspace.",
            ["workspace"],
            registry=r,
        )
        self.notifications = Counter(
            "runwatch_notifications_total",
            "Notification attempts, by channel and result (sent, failed, dead).",
            ["channel", "result"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "runwatch_outbox_pending",
            "Notifications waiting in the outbox.",
            registry=r,
        )
        self.oldest_pending = Gauge(
            "runwatch_outbox_oldest_pending_seconds",
            "Age of the oldest notification waiting in the outbox (0 when empty).",
            registry=r,
        )
        self.last_success = Gauge(
            "runwatch_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful poll, by workspace.",
            ["workspace"],
            registry=r,
        )

    def count_event(self, workspace: str, event: Event) -> None:
        """Count one detected event under its bounded condition label."""
        label: str
        if event.kind in ("deleted", "overdue"):
            label = event.kind
        else:
            condition = event.current.condition if event.current else None
            label = condition if condition in _CONDITION_LABELS else "other"
        self.transitions.labels(workspace, label).inc()

    def render(self) -> bytes:
        """The registry in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)
