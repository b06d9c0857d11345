"""What the daemon tells the world about itself: /healthz, the STATUS= line, the gauges.

Theory: one `StatusBoard` remembers what the poll cycles reported (the last success and the
last error of each workspace, when the last cycle ended) and derives the three views from
it and from what it is handed (runs watched, failing channels, the outbox), so they can never
disagree. `health()` runs on the HTTP server's threads: it only reads plain dicts that the
event loop replaces whole, and the store, whose calls are serialised by its own lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from runwatch.clock import Clock
from runwatch.errors import StoreError
from runwatch.service.metrics import Metrics
from runwatch.state.store import StateStore

MIN_STALE_AFTER_S = 60.0  # /healthz tolerates at least this long without a successful poll


@dataclass(frozen=True, kw_only=True, slots=True)
class PollReport:
    """How the poll of one workspace went."""

    workspace: str
    ok: bool
    kind: str
    events: int = 0
    queued: int = 0
    error: str | None = None
    auth_failed: bool = False  # the API rejected the secret key (401/403)
    store_failed: bool = False  # the API answered; the state store could not record it


class StatusBoard:
    def __init__(self, *, clock: Clock, store: StateStore, metrics: Metrics) -> None:
        self._clock = clock
        self._store = store
        self._metrics = metrics
        self.last_success: dict[str, int] = {}  # workspace name -> epoch ms
        self.last_error: dict[str, str] = {}
        self.last_poll_at: int | None = None
        # Set while the last reload was rejected: STATUS= says so until a good one.
        self.reload_rejected: str | None = None

    def now_ms(self) -> int:
        return int(self._clock.time() * 1000)

    def remember_success(self, workspace: str, at_ms: int) -> None:
        """A success known from before (the store), unless a newer one is known already
        (another instance's, for a workspace taken over, may be newer than this one's)."""
        known = self.last_success.get(workspace)
        if known is None or at_ms > known:
            self.last_success[workspace] = at_ms

    def reload_done(self, problems: Sequence[str] | None, at_ms: int) -> None:
        """Remember how the last reload went: None for accepted, else its problems."""
        if problems is None:
            self.reload_rejected = None
        else:
            self.reload_rejected = (
                f"reload rejected at {iso(at_ms)} ({len(problems)} problem(s), see "
                "config.reload_rejected in the log): the previous configuration is running"
            )

    def record(self, reports: Sequence[PollReport], at_ms: int) -> None:
        for report in reports:
            if report.ok:
                self.last_success[report.workspace] = at_ms
                self.last_error.pop(report.workspace, None)
            elif report.error is not None:
                self.last_error[report.workspace] = report.error
        self.last_poll_at = at_ms

    def health(
        self, workspaces: Sequence[str], *, interval_s: float, failing: Iterable[str]
    ) -> tuple[bool, dict[str, object]]:
        """Healthy while every workspace's last successful poll is recent."""
        now_ms = self.now_ms()
        stale_after_ms = max(3 * interval_s, MIN_STALE_AFTER_S) * 1000
        summary: dict[str, object] = {}
        healthy = True
        for name in workspaces:
            last = self.last_success.get(name)
            ok = last is not None and now_ms - last <= stale_after_ms
            healthy = healthy and ok
            summary[name] = {
                "ok": ok,
                "last_success": iso(last) if last is not None else None,
                "error": self.last_error.get(name),
            }
        return healthy, {
            "status": "ok" if healthy else "unhealthy",
            "workspaces": summary,
            "failing_channels": sorted(failing),
        }

    def status_line(
        self, workspaces: Sequence[str], *, runs_watched: int, failing: Iterable[str]
    ) -> str:
        ok = sum(1 for name in workspaces if name not in self.last_error)
        last = iso(self.last_poll_at) if self.last_poll_at else "never"
        failing_text = ", ".join(sorted(failing)) or "none"
        pending = self._store.outbox_stats(self.now_ms()).pending
        line = (
            f"watching {runs_watched} runs in {ok}/{len(workspaces)} workspaces ok; "
            f"last poll {last}; outbox {pending} pending; failing channels: {failing_text}"
        )
        return line if self.reload_rejected is None else f"{line}; {self.reload_rejected}"

    def refresh_gauges(self, runs_by_workspace: Mapping[str, int]) -> None:
        for name, runs in runs_by_workspace.items():
            self._metrics.runs_watched.labels(name).set(runs)
            if name in self.last_success:
                self._metrics.last_success.labels(name).set(self.last_success[name] / 1000)
        try:
            stats = self._store.outbox_stats(self.now_ms())
        except StoreError:  # a database out of reach: the gauges keep their last values
            return
        self._metrics.outbox_depth.set(stats.pending)
        self._metrics.oldest_pending.set(stats.oldest_pending_age)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")
