"""One poll cycle: plan, observe, compose, commit — for every workspace at once.

Theory: a cycle is the unit of work of the daemon. For each workspace it plans (what kind of
poll is due, from the store), observes (the poller walks the API and folds what it sees into
events, against the runs known in memory; the time rules add the overdue notices due, from
the same runs, with no request of their own), composes (routes and renders each event into
outbox rows, those an active mute silences written "muted") and commits state, events and
rows in ONE store transaction. Nothing is sent before that commit: a crash between the two
can neither lose a notification nor, after a restart, detect the same transition again.

With `commit=False` a cycle computes exactly the same, and writes nothing: not the store,
not the runs known in memory. `runwatch once --dry-run` is that mode, so what it prints is
what the daemon would do.

A workspace whose poll fails (any `ViError`, a `StoreError` of its commit, or a bug) fails
alone: its report says why and the other workspaces commit as usual.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog

from runwatch.clock import Clock
from runwatch.config.settings import ChannelConfig, Config, WorkspaceConfig
from runwatch.core.compose import Destination, WorkspaceStyle, outbox_items
from runwatch.core.model import OutboxItem, RunState
from runwatch.core.mutes import apply_mutes
from runwatch.core.overdue import with_overdue
from runwatch.core.run_index import RunIndex
from runwatch.core.transitions import choose_kind, terminal_conditions
from runwatch.delivery.lanes import flavour_of, targets_of
from runwatch.errors import (
    LeaseLostError,
    StoreError,
    ViAuthError,
    ViError,
    ViRateLimitedError,
    ViServerError,
)
from runwatch.logs import redactor
from runwatch.service.metrics import Metrics
from runwatch.service.status import PollReport, iso
from runwatch.state.store import PollCommit, StateStore, WorkspaceMeta
from runwatch.vi.client import ViClient
from runwatch.vi.enrich import enrichers
from runwatch.vi.poller import PollOutcome, PollPlan, poll_workspace
from runwatch.vi.retry import RetryPolicy

log = structlog.get_logger("runwatch.service.cycle")

MAX_DEFERRAL_S = 3_600.0  # the longest Retry-After honoured across polls


class LeaseView(Protocol):
    """Which workspaces this instance may poll (several instances on PostgreSQL)."""

    def holds(self, organization_id: str) -> bool: ...
    def epoch(self, organization_id: str) -> int: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkspacePoll:
    """One workspace's part of a cycle: its report and, when it was observed, what it found."""

    report: PollReport
    outcome: PollOutcome | None = None
    items: Sequence[OutboxItem] = field(default_factory=tuple)  # composed outbox rows


class PollCycle:
    """Polls the configured workspaces; `known` holds each one's runs between cycles."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        *,
        clock: Clock,
        metrics: Metrics,
        on_progress: Callable[[], None] = lambda: None,
        leases: LeaseView | None = None,
    ) -> None:
        self._store = store
        # With several instances: only the workspaces whose lease this one holds are polled.
        self._leases = leases
        self._epochs: dict[str, int] = {}  # organization id -> lease epoch its index was read at
        self._clock = clock
        self._metrics = metrics
        self._on_progress = on_progress  # every request and retry wait: the watchdog's sign
        self.known: dict[str, RunIndex] = {}  # organization id -> its runs
        self.clients: dict[str, ViClient] = {}
        self.configure(config)

    def configure(self, config: Config) -> list[ViClient]:
        """Use `config` from the next poll on; return the clients it replaced (to close)."""
        self.config = config
        terminal = terminal_conditions(config.poll.terminal_conditions)
        if terminal != getattr(self, "terminal", terminal):
            self.known.clear()  # indexed by what is finished: re-read under the new set
        self.terminal = terminal
        self.destinations = destinations(config.channels)
        old = list(self.clients.values())
        self.clients = {ws.name: self._client(ws) for ws in config.workspaces}
        carry = getattr(self, "enrichers", {})
        self.enrichers = enrichers(config, self.clients, clock=self._clock, carry=carry)
        return old

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()

    def now_ms(self) -> int:
        return int(self._clock.time() * 1000)

    # -- the cycle -----------------------------------------------------------------------

    async def run(self, *, commit: bool = True) -> list[WorkspacePoll]:
        """Poll every workspace (this instance holds) concurrently; each commits (or fails)
        on its own."""
        return list(
            await asyncio.gather(*(self.poll(ws, commit=commit) for ws in self.polled()))
        )

    def polled(self) -> list[WorkspaceConfig]:
        """The workspaces this instance polls now: all, or those it holds the lease on."""
        leases = self._leases
        if leases is None:
            return list(self.config.workspaces)
        return [ws for ws in self.config.workspaces if leases.holds(ws.organization_id)]

    def plan(self, meta: WorkspaceMeta, now_ms: int) -> PollPlan:
        """What kind of poll a workspace is due for (baseline, full or incremental)."""
        poll = self.config.poll
        return PollPlan(
            kind=choose_kind(
                baselined_at=meta.baselined_at,
                last_full_listing=meta.last_full_listing,
                now_ms=now_ms,
                full_resync_s=poll.full_resync,
            ),
            page_size=poll.page_size,
            max_pages=poll.max_pages,
            max_concurrency=poll.max_concurrency,
        )

    def time_rules(
        self, ws: WorkspaceConfig, known: RunIndex, outcome: PollOutcome, now_ms: int
    ) -> PollOutcome:
        """`outcome` with the overdue notices due now added (none on a baseline, which tells
        nothing: a run already overdue then is told at the next poll; see core.timing)."""
        if outcome.kind == "baseline":
            return outcome
        diff = with_overdue(
            outcome.diff,
            known.unfinished(),
            self.config.rules,
            workspace=ws.name,
            now_ms=now_ms,
            terminal=self.terminal,
        )
        return outcome if diff is outcome.diff else dataclasses.replace(outcome, diff=diff)

    def compose(self, outcome: PollOutcome) -> list[OutboxItem]:
        """The outbox rows the events of `outcome` make under the current rules."""
        return outbox_items(
            outcome.diff.events,
            rules=self.config.rules,
            templates=self.config.templates,
            destinations=self.destinations,
            workspaces=styles(self.config),
        )

    async def poll(self, ws: WorkspaceConfig, *, commit: bool = True) -> WorkspacePoll:
        now_ms = self.now_ms()
        started = self._clock.monotonic()
        kind = "unknown"
        try:
            meta = self._store.workspace(ws.organization_id)
            if meta.resume_at is not None and now_ms < meta.resume_at:
                return WorkspacePoll(report=self._deferred(ws, meta.resume_at))
            plan = self.plan(meta, now_ms)
            kind = plan.kind
            known = self._known(ws.organization_id)
            org = ws.organization_id
            outcome = await poll_workspace(
                self.clients[ws.name],
                known,
                workspace=ws.name,
                plan=plan,
                now_ms=now_ms,
                load=lambda run_ids: self._store.load_run_states(org, run_ids),
                flush=self._baseline_part(known, org) if commit else _discard,
            )
            outcome = self.time_rules(ws, known, outcome, now_ms)
            # Between observe and compose: the fetched fields are rendered, then committed.
            events = await self.enrichers[ws.name].enrich(outcome.diff.events, now_ms=now_ms)
            outcome = replace(outcome, diff=replace(outcome.diff, events=tuple(events)))
            # Mutes are read at every poll: `runwatch mute` takes effect at the next one.
            mutes = self._store.mutes.active(now_ms)
            items = apply_mutes(self.compose(outcome), outcome.diff.events, mutes, now_ms)
            queued = self._commit(ws, outcome, items, now_ms) if commit else 0
        except (ViError, StoreError) as exc:
            # A StoreError rolled the commit back whole and `known` is untouched: the next
            # poll sees the same changes again, so a full disk delays notifications but
            # loses none.
            if commit and isinstance(exc, ViRateLimitedError | ViServerError):
                self._wait_out(ws, exc.retry_after, now_ms)
            return WorkspacePoll(report=self._failed(ws, kind, exc, now_ms if commit else None))
        except Exception as exc:  # a bug must fail this poll, never the daemon
            log.exception("poll.crashed", workspace=ws.name, kind=kind)
            return WorkspacePoll(report=self._failed(ws, kind, exc, now_ms if commit else None))
        ms = round((self._clock.monotonic() - started) * 1000)
        if commit:
            if meta.resume_at is not None:
                self._wait_out(ws, None, now_ms)
            self._metrics.polls.labels(ws.name, kind).inc()
            if kind == "baseline":
                log.info("baseline.recorded", workspace=ws.name, runs=len(known), notified=0)
            log.info(
                "poll.done",
                workspace=ws.name,
                kind=kind,
                runs=len(known),
                seen=outcome.runs_seen,
                events=len(outcome.diff.events),
                queued=queued,
                muted=sum(1 for item in items if item.state == "muted"),
                pages=outcome.pages,
                gets=outcome.gets,
                ms=ms,
            )
        report = PollReport(
            workspace=ws.name, ok=True, kind=kind, events=len(outcome.diff.events), queued=queued
        )
        return WorkspacePoll(report=report, outcome=outcome, items=items)

    # -- the shell's side of a poll --------------------------------------------------------

    def _known(self, organization_id: str) -> RunIndex:
        index = self.known.get(organization_id)
        if self._leases is not None:
            # A lease (re)acquired: another instance may have moved the runs on meanwhile.
            epoch = self._leases.epoch(organization_id)
            if self._epochs.get(organization_id) != epoch:
                self._epochs[organization_id] = epoch
                index = None
        if index is None:
            index = self.known[organization_id] = RunIndex(
                self._store.iter_runs(organization_id),
                terminal=self.terminal,
                tombstones=self._store.load_tombstones(organization_id),
            )
            if len(index) >= SETTLE_AFTER_RUNS:
                settle_heap()
        return index

    def _commit(
        self, ws: WorkspaceConfig, outcome: PollOutcome, items: Sequence[OutboxItem], now_ms: int
    ) -> int:
        diff = outcome.diff
        queued = self._store.commit_poll(
            PollCommit(
                organization_id=ws.organization_id,
                polled_at=now_ms,
                upserts=diff.upserts,
                events=diff.events,
                outbox=items,
                full_listing=outcome.listed_whole,
                baseline=outcome.kind == "baseline",
            )
        )
        # No await between the commit and this update: cancellation cannot split them.
        known = self._known(ws.organization_id)
        for state in diff.upserts:
            known.record(state)
        if outcome.kind != "incremental" and len(known) >= SETTLE_AFTER_RUNS:
            settle_heap()  # a baseline or a full listing of a big workspace
        for event in diff.events:
            self._metrics.count_event(ws.name, event)
        if outcome.unfetched:
            self._metrics.run_fetch_failures.labels(ws.name).inc(len(outcome.unfetched))
        return queued

    def _wait_out(self, ws: WorkspaceConfig, retry_after: float | None, now_ms: int) -> None:
        """Remember a Retry-After the call's retries could not wait out (or forget it)."""
        resume_at = None
        if retry_after is not None and retry_after > 0:
            resume_at = now_ms + int(min(retry_after, MAX_DEFERRAL_S) * 1000)
        try:
            self._store.set_resume_at(ws.organization_id, resume_at)
        except StoreError as exc:
            log.warning("poll.resume_not_recorded", workspace=ws.name, error=str(exc))
        if resume_at is not None:
            log.warning(
                "poll.deferred", workspace=ws.name, until=iso(resume_at), retry_after=retry_after
            )

    def _deferred(self, ws: WorkspaceConfig, resume_at: int) -> PollReport:
        error = (
            f"the Vi API asked runwatch (Retry-After) not to call before {iso(resume_at)}; "
            "polling resumes then"
        )
        return PollReport(workspace=ws.name, ok=False, kind="deferred", error=error)

    def _baseline_part(self, known: RunIndex, org: str) -> Callable[[Sequence[RunState]], None]:
        def flush(states: Sequence[RunState]) -> None:
            # A part of a baseline, recorded silently; if the baseline fails later, the next
            # poll is a baseline again and these rows are simply recorded once more.
            self._store.record_runs(org, states)
            for state in states:
                known.record(state)

        return flush

    def _failed(
        self, ws: WorkspaceConfig, kind: str, exc: Exception, now_ms: int | None = None
    ) -> PollReport:
        if isinstance(exc, ViError | StoreError):
            reason = type(exc).__name__.removeprefix("Vi").removesuffix("Error").lower()
            error = str(exc)
        else:
            reason, error = "internal", f"internal error ({type(exc).__name__}); see the log"
        if now_ms is not None and not isinstance(exc, StoreError):
            # (A store that failed is left alone: a full disk gets not one row more.)
            self._record_failure(ws, now_ms, error)
        self._metrics.poll_failures.labels(ws.name, reason or "error").inc()
        # The API's faults pass by themselves; the state store's and runwatch's own need the
        # operator (a bug was logged with its traceback where it was caught).
        if isinstance(exc, LeaseLostError):
            log.warning("poll.fenced", workspace=ws.name, kind=kind, error=error)
        elif isinstance(exc, ViError):
            log.warning("poll.failed", workspace=ws.name, kind=kind, reason=reason, error=error)
        else:
            log.error("poll.failed", workspace=ws.name, kind=kind, reason=reason, error=error)
        return PollReport(
            workspace=ws.name,
            ok=False,
            kind=kind,
            error=error,
            auth_failed=isinstance(exc, ViAuthError),
            store_failed=isinstance(exc, StoreError),
        )

    def _record_failure(self, ws: WorkspaceConfig, now_ms: int, error: str) -> None:
        """Keep the failure in the store, for `runwatch status` in another process."""
        try:
            self._store.record_poll_failure(ws.organization_id, now_ms, redactor()(error))
        except StoreError as exc:  # the failure is logged and reported all the same
            log.debug("poll.failure_not_recorded", workspace=ws.name, error=str(exc))

    def _client(self, ws: WorkspaceConfig) -> ViClient:
        poll, tls = self.config.poll, self.config.tls
        verify: bool | str = str(tls.ca_bundle) if tls.ca_bundle and tls.verify else tls.verify
        metrics = self._metrics

        def on_request(endpoint: str, outcome: str, seconds: float) -> None:
            self._on_progress()
            metrics.api_requests.labels(ws.name, endpoint, outcome).inc()
            metrics.api_latency.labels(ws.name, endpoint).observe(seconds)

        async def sleep(seconds: float) -> None:
            self._on_progress()
            await self._clock.sleep(seconds)

        return ViClient(
            endpoint=ws.endpoint,
            organization_id=ws.organization_id,
            secret_key=ws.secret_key,
            timeout=poll.request_timeout,
            retry=RetryPolicy(
                max_attempts=poll.max_attempts,
                max_retry_time=poll.max_retry_time,
                max_retry_after=poll.max_retry_after,
                sleep=sleep,
                clock=self._clock.time,
            ),
            verify=verify,
            max_connections=max(2, poll.max_concurrency),
            on_request=on_request,
            max_requests_per_second=poll.max_requests_per_second,
            max_response_bytes=poll.max_response_bytes,
        )

    def runs_by_workspace(self) -> Mapping[str, int]:
        return {
            ws.name: len(self.known.get(ws.organization_id, {})) for ws in self.config.workspaces
        }


def styles(config: Config) -> dict[str, WorkspaceStyle]:
    """What each workspace's configuration says about its messages."""
    return {
        ws.name: WorkspaceStyle(console_url=ws.console_url, max_metrics=ws.enrich.max_metrics)
        for ws in config.workspaces
    }


def _discard(states: Sequence[RunState]) -> None:
    """A dry run's baseline parts: nothing is recorded, and nothing needs to be kept."""


def destinations(channels: Mapping[str, ChannelConfig]) -> dict[str, Destination]:
    """How each channel's rows are written, and for which of its targets."""
    return {
        name: Destination(
            flavour=channel.kind if channel.kind in ("webhook", "slack") else flavour_of(channel),
            targets=targets_of(channel),
        )
        for name, channel in channels.items()
    }


# A full collection costs ~30-40 ms whatever the workspace's size: worth it after listing
# 10,000 runs or more, not after every poll of a small workspace whose walks all reach the
# end of the listing (there it was most of each poll's CPU).
SETTLE_AFTER_RUNS = 10_000


def settle_heap() -> None:
    """Take the known runs out of the cyclic garbage collector's way.

    100,000 known runs are some 300,000 long-lived objects that are never cyclic garbage,
    yet every full collection traverses them all, and the allocations of a full listing
    trigger dozens of those: a third of its CPU. So after the state is loaded and after each
    full listing, collect once and freeze what survives (the collector skips frozen objects;
    reference counting still frees them). Unfreezing first lets that collection reclaim any
    cyclic garbage frozen the time before, so nothing leaks across months of resyncs.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
