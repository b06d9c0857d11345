"""Enrichment: what a message says beyond the run itself, fetched between observe and compose.

Theory. For a run reaching one of `enrich.metrics`' conditions (a `transition` or `new`
event), its latest model output: epoch, runOutputId and evaluation metrics in the API's
order. For any event of a run in a training project, the project's display name. Both are
worth a better message, never a lost or late one, so:

- Bounded as a whole. Every fetch of a poll starts at once (at most `concurrency` in
  flight) under one deadline, `enrich.timeout` away: `asyncio.wait`'s timeout on the event
  loop's clock is the hard bound, and the fetches still running then are cancelled. Each
  call's retries are budgeted to the same deadline on the daemon's clock (`within=`), so a
  Retry-After or backoff longer than what is left fails the call at once instead of
  sleeping past it, whichever clock the daemon runs on.
- Never in the way. A fetch that fails (any status, any body, a timeout, no outputs, a
  bug) leaves its fields out and nothing else: the event goes on to compose as it came.
  Why is logged once per run (`enrich.incomplete`), the memory of it bounded.
- Cheap. One outputs request per run reaching a configured condition (more only when its
  checkpoints span pages); a project's name asked for at most once an hour per project,
  whatever the outcome (a 304 when unchanged), shared by every event of every poll; and
  nothing at all on a poll without events, so a quiet poll costs what it did. A failed
  refresh keeps the name read before; with none, the message shows the project's id.
- Recorded. What was fetched travels in `Event.enrichment`, which the store keeps in the
  event's payload and which is rendered into the outbox before the commit: a retry or a
  restart sends the message as promised and fetches nothing again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog

from runwatch.clock import SYSTEM_CLOCK, Clock
from runwatch.config.settings import Config, EnrichConfig
from runwatch.core.model import Enrichment, Event
from runwatch.errors import ViError
from runwatch.vi.client import ViClient
from runwatch.vi.decode_more import ModelOutput, usable_id

log = structlog.get_logger("runwatch.vi.enrich")

PROJECT_REFRESH_MS = 3_600_000  # a project's name is asked for at most once an hour
REMEMBERED = 10_000  # projects cached, and runs remembered as logged; the oldest go first
REACHING = ("transition", "new")  # the events by which a run reaches a condition
NO_OUTPUTS = "the run has saved no model outputs"

V = TypeVar("V")


@dataclass(slots=True)
class _Name:
    """A project's name as last read, and when it was last asked for."""

    name: str | None = None
    etag: str | None = None
    asked_at: int = 0  # epoch ms of the latest request
    why: str | None = None  # why the latest request failed; None when it did not


class Enricher:
    """One workspace's enrichment: its client, the project-name cache, the runs logged."""

    def __init__(
        self,
        client: ViClient,
        config: EnrichConfig,
        *,
        workspace: str,
        clock: Clock = SYSTEM_CLOCK,
        concurrency: int = 8,
        carry: Enricher | None = None,
    ) -> None:
        """`carry`: the enricher this one replaces (a reload); its cache and log memory carry
        over when it watched the same organization at the same endpoint."""
        self.client = client
        self.config = config
        self.workspace = workspace
        self._clock = clock
        self._concurrency = max(1, concurrency)
        self._names: dict[str, _Name] = {}
        self._logged: dict[str, None] = {}
        if carry is not None and (carry.client.organization_id, carry.client.endpoint) == (
            client.organization_id,
            client.endpoint,
        ):
            self._names, self._logged = carry._names, carry._logged

    def project_name(self, project_id: str) -> str | None:
        """The cached display name of a project, if one was read."""
        entry = self._names.get(project_id)
        return None if entry is None else entry.name

    def wants_metrics(self, event: Event) -> bool:
        """True when `event` is its run reaching one of `enrich.metrics`' conditions."""
        current = event.current
        return (
            event.kind in REACHING
            and current is not None
            and any(fnmatch.fnmatchcase(current.condition, p) for p in self.config.metrics)
        )

    def wants_name(self, event: Event) -> bool:
        return self.config.project_names and event.training_project is not None

    async def enrich(self, events: Sequence[Event], *, now_ms: int) -> list[Event]:
        """`events` in order, each with what could be fetched for it within enrich.timeout.

        Never raises (but CancelledError) and never loses an event: one whose fetches failed
        or were late comes back as it went in.
        """
        events = list(events)
        if not events:
            return events
        try:
            return await self._enrich(events, now_ms)
        except Exception:  # a bug here must cost the extra fields, never the messages
            log.exception(
                "enrich.crashed", workspace=self.workspace, hint="messages go out without it"
            )
            return events

    # --- fetching -------------------------------------------------------------------------

    async def _enrich(self, events: list[Event], now_ms: int) -> list[Event]:
        runs = sorted({e.run_id for e in events if self.wants_metrics(e)})
        projects = sorted({e.training_project or "" for e in events if self.wants_name(e)})
        due = [p for p in projects if self._due(p, now_ms)]
        outputs: dict[str, ModelOutput | str] = {}
        failed: dict[str, str] = {}  # project id -> why its fetch of this poll failed
        if runs or due:
            started = self._clock.monotonic()
            outputs, failed = await self._fetch(runs, due, now_ms)
            log.debug(
                "enrich.fetched",
                workspace=self.workspace,
                events=len(events),
                outputs=len(runs),
                projects=len(due),
                ms=round((self._clock.monotonic() - started) * 1000),
            )
        enriched = []
        for event in events:
            event, why = self._decorate(event, outputs, failed)
            if why:
                self._tell(event, why)
            enriched.append(event)
        return enriched

    async def _fetch(
        self, runs: list[str], projects: list[str], now_ms: int
    ) -> tuple[dict[str, ModelOutput | str], dict[str, str]]:
        timeout = self.config.timeout
        deadline = self._clock.monotonic() + timeout
        gate = asyncio.Semaphore(self._concurrency)
        outputs: dict[str, ModelOutput | str] = {}
        failed: dict[str, str] = {}
        tasks = [asyncio.ensure_future(self._output(r, gate, deadline, outputs)) for r in runs]
        tasks += [
            asyncio.ensure_future(self._project(p, gate, deadline, now_ms, failed))
            for p in projects
        ]
        try:
            await asyncio.wait(tasks, timeout=timeout)
        finally:
            for task in tasks:
                task.cancel()  # those not done by the deadline; the rest are unaffected
            await asyncio.gather(*tasks, return_exceptions=True)
        too_late = f"no answer within {timeout:g}s (enrich.timeout)"
        for run_id in runs:
            outputs.setdefault(run_id, too_late)
        for project_id in projects:
            if project_id not in failed and self.project_name(project_id) is None:
                failed[project_id] = too_late
        return outputs, failed

    def _left(self, deadline: float) -> float:
        return max(0.0, deadline - self._clock.monotonic())

    async def _output(
        self,
        run_id: str,
        gate: asyncio.Semaphore,
        deadline: float,
        found: dict[str, ModelOutput | str],
    ) -> None:
        async with gate:
            try:
                output = await self.client.latest_output(run_id, within=self._left(deadline))
            except ViError as exc:
                found[run_id] = str(exc)
                return
            except Exception as exc:  # a bug: logged with its traceback, the message goes on
                log.exception("enrich.output_crashed", workspace=self.workspace, run_id=run_id)
                found[run_id] = f"internal error ({type(exc).__name__}); see the log"
                return
        found[run_id] = NO_OUTPUTS if output is None else output

    async def _project(
        self,
        project_id: str,
        gate: asyncio.Semaphore,
        deadline: float,
        now_ms: int,
        failed: dict[str, str],
    ) -> None:
        entry = self._names.get(project_id) or _Name()
        if not usable_id(project_id):
            entry.asked_at, entry.why = now_ms, "not a training project id the Vi API accepts"
            _remember(self._names, project_id, entry)
            failed[project_id] = entry.why
            return
        async with gate:
            # Counted as asked once the request goes out, whatever comes back: at most one
            # request per project an hour, even while the API fails.
            entry.asked_at = now_ms
            _remember(self._names, project_id, entry)
            try:
                project = await self.client.training_project(
                    project_id,
                    etag=entry.etag if entry.name is not None else None,
                    within=self._left(deadline),
                )
            except asyncio.CancelledError:
                entry.why = f"no answer within {self.config.timeout:g}s (enrich.timeout)"
                raise
            except Exception as exc:
                if not isinstance(exc, ViError):
                    log.exception(
                        "enrich.project_crashed", workspace=self.workspace, project=project_id
                    )
                entry.why = str(exc) if isinstance(exc, ViError) else "internal error; see the log"
                failed[project_id] = entry.why
                if entry.name is not None:
                    log.info(
                        "enrich.name_kept",
                        workspace=self.workspace,
                        project=project_id,
                        why=entry.why,
                    )
                return
        if project is not None:  # None: 304, the name read before still holds
            entry.name, entry.etag = project.name, project.etag
        entry.why = None

    def _due(self, project_id: str, now_ms: int) -> bool:
        entry = self._names.get(project_id)
        # A clock stepped back by more than that also asks again rather than wait it out.
        return entry is None or not 0 <= now_ms - entry.asked_at < PROJECT_REFRESH_MS

    # --- decorating -----------------------------------------------------------------------

    def _decorate(
        self, event: Event, outputs: dict[str, ModelOutput | str], failed: dict[str, str]
    ) -> tuple[Event, dict[str, str]]:
        """The event with its enrichment, and why each field it wanted is missing."""
        why: dict[str, str] = {}
        name: str | None = None
        if self.wants_name(event):
            project_id = event.training_project or ""
            name = self.project_name(project_id)
            if name is None:
                entry = self._names.get(project_id)
                earlier = entry.why if entry is not None else None
                why["project_name"] = failed.get(project_id) or earlier or "not fetched"
        output: ModelOutput | None = None
        if self.wants_metrics(event):
            found = outputs.get(event.run_id)
            if isinstance(found, ModelOutput):
                output = found
            else:
                why["metrics"] = found or "not fetched"
        if name is None and output is None:
            return event, why
        enrichment = Enrichment(
            project_name=name,
            epoch=None if output is None else output.epoch,
            model_id=None if output is None else output.model_id,
            metrics=() if output is None else output.metrics,
        )
        return dataclasses.replace(event, enrichment=enrichment), why

    def _tell(self, event: Event, why: dict[str, str]) -> None:
        """Log why `event` goes without some fields; once per run."""
        if event.run_id in self._logged:
            return
        _remember(self._logged, event.run_id, None)
        # A run that saved nothing is news, not trouble; anything else is a failure.
        say = log.info if why == {"metrics": NO_OUTPUTS} else log.warning
        say(
            "enrich.incomplete",
            workspace=self.workspace,
            run_id=event.run_id,
            kind=event.kind,
            condition=None if event.current is None else event.current.condition,
            hint="the message goes out without these fields; later ones of this run unlogged",
            **why,
        )


def enrichers(
    config: Config,
    clients: Mapping[str, ViClient],
    *,
    clock: Clock = SYSTEM_CLOCK,
    carry: Mapping[str, Enricher] | None = None,
) -> dict[str, Enricher]:
    """An Enricher per configured workspace, on its client; `carry`: the ones they replace."""
    return {
        ws.name: Enricher(
            clients[ws.name],
            ws.enrich,
            workspace=ws.name,
            clock=clock,
            concurrency=config.poll.max_concurrency,
            carry=(carry or {}).get(ws.name),
        )
        for ws in config.workspaces
    }


def _remember(table: dict[str, V], key: str, value: V) -> None:
    """Put `key` last in `table` (the newest), dropping the oldest past REMEMBERED."""
    table.pop(key, None)
    table[key] = value
    while len(table) > REMEMBERED:
        del table[next(iter(table))]
