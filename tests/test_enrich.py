"""Enrichment through the real daemon: model metrics and project names, and every way the two
extra endpoints can fail without costing a message.

Each test runs an in-process daemon on a FakeClock against the simulator over loopback, with
a real SQLite state and real Apprise to a loopback receiver. Runs in a named project are
Running at the baseline; a test then gives one known outputs and makes it succeed.

| fault on outputs and project (simulator) | the Succeeded message                       |
| ---------------------------------------- | ------------------------------------------- |
| HTTP 500, every attempt                  | on time, without the fields, logged once    |
| 429 with Retry-After: 300                | the same, and no 300 s wait (FakeClock)     |
| slower than enrich.timeout (60 s)        | the same, cut at enrich.timeout: the        |
|                                          | requests are counted "cancelled", not timed |
|                                          | out by poll.request_timeout                 |
| HTTP 404                                 | the same                                    |
| dropped connection                       | the same                                    |
| 200 with an HTML body (not JSON)         | the same                                    |
| 200 with a truncated JSON body           | the same                                    |
| JSON not of the documented shape         | the same                                    |
| a JSON list instead of an object         | the same                                    |
| a body over poll.max_response_bytes,     | the same                                    |
| announced or chunked                     |                                             |
| no outputs at all (a Succeeded run with  | on time, with the project's name only;      |
| none)                                    | logged once                                 |

"Logged once per run": a later event of the same run (its deletion) under the same fault adds
no log line. "On time": the poll that sees the change queues the message, and its FakeClock
time (retry waits included) stays within enrich.timeout plus a margin.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import FakeClock, daemon_on, write_config
from receiver import Receiver
from structlog.testing import capture_logs

from runwatch.core.model import SUCCEEDED, Enrichment, Event
from runwatch.core.transitions import Diff
from runwatch.service.daemon import Daemon
from runwatch.simulator.server import Fault, Simulator
from runwatch.state.rows import event_from_payload
from runwatch.vi.poller import PollOutcome

INTERVAL_S = 30.0
TIMEOUT_S = 0.5  # enrich.timeout in the fault table: the slow fault waits this long, for real
LASTING = 10_000
PROJECT, PROJECT_NAME = "proj_retail-shelves", "Retail shelves"
OTHER, OTHER_NAME = "proj_defect-inspection", "Defect inspection"
TITLE = "{{ kind }} {{ run_id }} {{ condition }}"
# Not in alphabetical order, and of every kind of value: they must come out as sent.
METRICS: dict[str, Any] = {
    "mAP": 0.612345678,
    "loss": 0.0123456,
    "precision": 0.9,
    "epochs_run": 50,
    "note": "best so far",
    "converged": True,
    "per_class": {"car": 0.7, "bus": 0.5},
}
OUTPUTS = [
    {"runOutputId": "ro_first", "epoch": 10, "evaluationMetrics": {"mAP": 0.2}},
    {"runOutputId": "ro_final", "epoch": 50, "evaluationMetrics": METRICS},
]
ENRICHED = Enrichment(
    project_name=PROJECT_NAME,
    epoch=50,
    model_id="ro_final",
    metrics=(
        ("mAP", 0.612345678),
        ("loss", 0.0123456),
        ("precision", 0.9),
        ("epochs_run", 50),
        ("note", "best so far"),
        ("converged", True),
        ("per_class", '{"car":0.7,"bus":0.5}'),
    ),
)


# --- scaffolding ------------------------------------------------------------------------------


def config_file(
    tmp_path: Path,
    sim: Simulator,
    receiver: Receiver,
    *,
    enrich: dict[str, Any] | None = None,
    poll: dict[str, Any] | None = None,
) -> Path:
    path = write_config(
        tmp_path,
        sim,
        channels={"hook": receiver.apprise_url("/hook")},
        rules=[
            {
                "name": "all",
                "match": {"event": ["transition", "new", "deleted"]},
                "notify": ["hook"],
                "title": TITLE,
            }
        ],
        poll={"interval": f"{INTERVAL_S:g}s", "max_attempts": 2, **(poll or {})},
    )
    if enrich is not None:
        data = yaml.safe_load(path.read_text())
        data["workspaces"][0]["enrich"] = enrich
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def simulator(projects: tuple[str, ...] = (PROJECT,)) -> tuple[Simulator, list[str]]:
    """A simulator (not started) with a Running run in each of `projects`."""
    sim = Simulator(runs=15, active=3, seed=5)
    return sim, [sim.create_run(condition="Running", training_project=p) for p in projects]


async def record_baseline(sim: Simulator, daemon: Daemon, clock: FakeClock) -> None:
    [report] = await daemon.poll_cycle()
    assert (report.ok, report.kind, report.events) == (True, "baseline", 0)
    clock.advance(INTERVAL_S)
    sim.reset_counters()


@contextlib.asynccontextmanager
async def watching(
    tmp_path: Path,
    receiver: Receiver,
    *,
    projects: tuple[str, ...] = (PROJECT,),
    enrich: dict[str, Any] | None = None,
    poll: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[Simulator, Daemon, FakeClock, list[str]]]:
    """A simulator with a Running run in each of `projects`, and a daemon past its baseline."""
    sim, runs = simulator(projects)
    with sim:
        clock = FakeClock()
        cfg = config_file(tmp_path, sim, receiver, enrich=enrich, poll=poll)
        with daemon_on(cfg, clock) as daemon:
            try:
                await record_baseline(sim, daemon, clock)
                yield sim, daemon, clock, runs
            finally:
                await daemon.aclose()


def succeed(sim: Simulator, run_id: str, outputs: list[dict[str, Any]] | None = None) -> None:
    sim.set_outputs(run_id, OUTPUTS if outputs is None else outputs)
    sim.append_condition(run_id, SUCCEEDED)


def stored_events(daemon: Daemon) -> dict[str, Event]:
    """The events the store kept, by key, read back from their payloads."""
    with contextlib.closing(sqlite3.connect(daemon.store.path)) as db:
        rows = db.execute("SELECT event_key, payload FROM events ORDER BY id").fetchall()
    events = {key: event_from_payload(payload) for key, payload in rows}
    assert all(e is not None for e in events.values())
    return {k: e for k, e in events.items() if e is not None}


def outbox(daemon: Daemon) -> list[tuple[str, str, str]]:
    with contextlib.closing(sqlite3.connect(daemon.store.path)) as db:
        return db.execute("SELECT event_key, title, body FROM outbox ORDER BY id").fetchall()


def of_run(events: dict[str, Event], run_id: str) -> list[Event]:
    return [e for e in events.values() if e.run_id == run_id]


def titles(receiver: Receiver) -> list[str]:
    return [str(m["title"]) for m in receiver.received]


def served(sim: Simulator) -> tuple[int, int]:
    return sim.request_count("outputs"), sim.request_count("project")


def incomplete(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "enrich.incomplete"]


def requests_total(daemon: Daemon, endpoint: str, outcome: str) -> float:
    labels = {"workspace": "prod", "endpoint": endpoint, "outcome": outcome}
    return daemon.metrics.registry.get_sample_value("runwatch_api_requests_total", labels) or 0.0


# --- what a Succeeded message carries -------------------------------------------------------------


async def test_it_carries_the_epoch_the_metrics_in_api_order_and_the_project_name(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A Succeeded event carries the latest output's epoch, id and metrics as sent, in order."""
    async with watching(tmp_path, receiver) as (sim, daemon, _clock, [run]):
        succeed(sim, run)

        [report] = await daemon.poll_cycle()

        assert (report.ok, report.events, report.queued) == (True, 1, 1)
        [event] = of_run(stored_events(daemon), run)
        assert event.enrichment == ENRICHED
        assert served(sim) == (1, 1)
        [outputs] = [r for r in sim.requests_log() if r.endpoint == "outputs"]
        assert outputs.path == f"/workspaces/{sim.organization_id}/runs/{run}/outputs"
        assert outputs.query == {"intent": "sdkLocalDeploy", "s": "1000"}
        await daemon.deliver_once()
        assert titles(receiver) == [f"transition {run} Succeeded"]


async def test_it_finds_the_latest_output_on_the_last_page(
    tmp_path: Path, receiver: Receiver
) -> None:
    """With more checkpoints than a page (the simulator caps pages at 100), it walks to the end,
    sending p and s after the intent, with one '?'."""
    async with watching(tmp_path, receiver) as (sim, daemon, _clock, [run]):
        many = [{"epoch": n, "evaluationMetrics": {"loss": 1 / n}} for n in range(1, 251)]
        succeed(sim, run, many)

        [report] = await daemon.poll_cycle()

        assert report.ok, report.error
        [event] = of_run(stored_events(daemon), run)
        assert event.enrichment is not None
        assert (event.enrichment.epoch, event.enrichment.metrics) == (250, (("loss", 1 / 250),))
        pages = [r for r in sim.requests_log() if r.endpoint == "outputs"]
        assert [r.status for r in pages] == [200, 200, 200]
        assert [list(r.query) for r in pages] == [["intent", "s"], *[["intent", "p", "s"]] * 2]
        assert all(r.query["intent"] == "sdkLocalDeploy" for r in pages)


async def test_it_fetches_a_project_name_once_an_hour_not_once_per_event(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Events of one project share one request an hour; a rename shows after the hour."""
    projects = (PROJECT, PROJECT, PROJECT, OTHER)
    async with watching(tmp_path, receiver, projects=projects) as (sim, daemon, clock, runs):
        first, second, third, other = runs
        succeed(sim, first)
        succeed(sim, second)
        succeed(sim, other)
        [report] = await daemon.poll_cycle()
        assert (report.ok, report.events) == (True, 3)
        assert served(sim) == (3, 2)  # an outputs request per run, a project request per project

        sim.rename_project(PROJECT, "Shelves, renamed")
        clock.advance(20 * 60)
        sim.append_condition(third, "Failed")
        [report] = await daemon.poll_cycle()
        assert (report.ok, report.events) == (True, 1)
        assert served(sim) == (3, 2)  # within the hour: the cached name, no request

        clock.advance(41 * 60)
        sim.delete_run(first)
        [report] = await daemon.poll_cycle()  # a full listing by now: the deletion is found
        assert (report.ok, report.kind, report.events) == (True, "full", 1)
        assert served(sim) == (3, 3)

        events = stored_events(daemon).values()
        names = {(e.run_id, e.kind): e.enrichment and e.enrichment.project_name for e in events}
        assert names == {
            (first, "transition"): PROJECT_NAME,
            (second, "transition"): PROJECT_NAME,
            (other, "transition"): OTHER_NAME,
            (third, "transition"): PROJECT_NAME,  # the cached name, twenty minutes old
            (first, "deleted"): "Shelves, renamed",  # asked again after the hour
        }
        # Metrics only for the runs that reached Succeeded, not for the failure or the deletion.
        epochs = {(e.run_id, e.kind): e.enrichment and e.enrichment.epoch for e in events}
        assert set(epochs.values()) == {50, None}
        assert {k for k, epoch in epochs.items() if epoch} == {
            (first, "transition"),
            (second, "transition"),
            (other, "transition"),
        }


async def test_a_quiet_poll_asks_for_nothing_more(tmp_path: Path, receiver: Receiver) -> None:
    """Without events a poll makes no enrichment request: the steady state costs what it did."""
    async with watching(tmp_path, receiver) as (sim, daemon, clock, _):
        for _ in range(3):
            [report] = await daemon.poll_cycle()
            assert (report.ok, report.events) == (True, 0)
            clock.advance(INTERVAL_S)
        assert served(sim) == (0, 0)


async def test_it_turns_metrics_and_names_off(tmp_path: Path, receiver: Receiver) -> None:
    """metrics: [] and project_names: false: no extra request, no enrichment."""
    enrich = {"metrics": [], "project_names": False}
    async with watching(tmp_path, receiver, enrich=enrich) as (sim, daemon, _clock, [run]):
        succeed(sim, run)
        [report] = await daemon.poll_cycle()
        assert (report.ok, report.events) == (True, 1)
        [event] = of_run(stored_events(daemon), run)
        assert event.enrichment is None
        assert served(sim) == (0, 0)


async def test_it_fetches_metrics_on_the_conditions_configured(
    tmp_path: Path, receiver: Receiver
) -> None:
    """enrich.metrics takes globs; a condition it does not name fetches no outputs."""
    enrich = {"metrics": ["Fail*"], "project_names": False}
    projects = (PROJECT, PROJECT)
    async with watching(tmp_path, receiver, enrich=enrich, projects=projects) as scene:
        sim, daemon, _clock, [failed, succeeded] = scene
        sim.set_outputs(failed, OUTPUTS)
        sim.append_condition(failed, "Failed", status="FailedReach")
        succeed(sim, succeeded)
        [report] = await daemon.poll_cycle()
        assert (report.ok, report.events) == (True, 2)
        events = stored_events(daemon)
        [on_failure] = of_run(events, failed)
        [on_success] = of_run(events, succeeded)
        assert on_failure.enrichment == Enrichment(
            epoch=50, model_id="ro_final", metrics=ENRICHED.metrics
        )
        assert on_success.enrichment is None
        assert served(sim) == (1, 0)


async def test_an_event_whose_fetch_is_late_goes_without_and_the_others_keep_theirs(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Fetches run side by side under one deadline: the one still running then is dropped."""
    enrich = {"timeout": f"{TIMEOUT_S:g}s"}
    projects = (PROJECT, PROJECT, PROJECT)
    async with watching(tmp_path, receiver, enrich=enrich, projects=projects) as scene:
        sim, daemon, _clock, runs = scene
        sim.inject(Fault(kind="slow", delay=60.0, endpoint="outputs"))
        for run in runs:
            succeed(sim, run)

        [report] = await daemon.poll_cycle()

        assert (report.ok, report.events, report.queued) == (True, 3, 3)
        events = stored_events(daemon)
        epochs = sorted(
            str(e.enrichment.epoch) for e in events.values() if e.enrichment is not None
        )
        assert epochs == ["50", "50", "None"]  # all named; one without its metrics
        assert requests_total(daemon, "outputs", "cancelled") == 1


async def test_a_dry_run_enriches_the_same_and_writes_nothing(
    tmp_path: Path, receiver: Receiver
) -> None:
    """commit=False composes from enriched events, and the store stays as it was."""
    async with watching(tmp_path, receiver) as (sim, daemon, _clock, [run]):
        succeed(sim, run)
        [poll] = await daemon.cycle.run(commit=False)
        assert poll.outcome is not None
        [event] = poll.outcome.diff.events
        assert event.enrichment == ENRICHED
        assert len(poll.items) == 1
        assert stored_events(daemon) == {} and outbox(daemon) == []


# --- kept with the event ------------------------------------------------------------------------


async def test_a_restart_sends_the_enriched_message_once_and_fetches_nothing_again(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The store keeps the enrichment in the event's payload and the message rendered from it in
    the outbox; a daemon restarted before delivery sends exactly that, once."""
    sim, [run] = simulator()
    with sim:
        clock = FakeClock()
        cfg = config_file(tmp_path, sim, receiver)
        with daemon_on(cfg, clock) as daemon:
            try:
                await record_baseline(sim, daemon, clock)
                succeed(sim, run)
                [report] = await daemon.poll_cycle()
                assert (report.ok, report.queued) == (True, 1)
                [(key, event)] = stored_events(daemon).items()
                [row] = outbox(daemon)
                # The row is the message composed from the enriched event the store kept.
                diff = Diff(events=(event,), upserts=())
                outcome = PollOutcome(kind="full", diff=diff, runs_seen=0, pages=0, gets=0)
                [item] = daemon.cycle.compose(outcome)
            finally:
                await daemon.aclose()  # crashed, say, before delivering
        assert event.enrichment == ENRICHED
        assert row == (key, item.title, item.body)
        # The default body shows them, numbers to 4 significant digits, enrich.max_metrics (6)
        # of the 7 in the API's order.
        assert row[2].startswith(
            "Running → **Succeeded** · epoch 50 · mAP 0.6123 · loss 0.01235 · precision 0.9000"
            " · epochs_run 50 · note best so far · converged true · +1 more"
        )
        with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
            [(payload,)] = db.execute("SELECT payload FROM events").fetchall()
        assert json.loads(payload)["enrichment"]["metrics"][0] == ["mAP", 0.612345678]

        with daemon_on(cfg, clock) as restarted:
            try:
                clock.advance(INTERVAL_S)
                [report] = await restarted.poll_cycle()
                assert (report.ok, report.events) == (True, 0)
                assert await restarted.deliver_once() == 1
                assert await restarted.deliver_once() == 0
                assert outbox(restarted) == [row]
                assert stored_events(restarted) == {key: event}
            finally:
                await restarted.aclose()
        assert titles(receiver) == [f"transition {run} Succeeded"]
        assert [m["message"] for m in receiver.received] == [row[2]]
        assert served(sim) == (1, 1)


# --- the fault table ------------------------------------------------------------------------------


def _both(fault: dict[str, Any]) -> Callable[[Simulator, str], None]:
    def begin(sim: Simulator, run_id: str) -> None:
        for endpoint in ("outputs", "project"):
            sim.inject(Fault(endpoint=endpoint, **fault), count=LASTING)  # type: ignore[arg-type]

    return begin


def _no_outputs(sim: Simulator, run_id: str) -> None:
    sim.set_outputs(run_id, [])


@dataclass(frozen=True, kw_only=True)
class Case:
    name: str
    begin: Callable[[Simulator, str], None]
    outputs: list[dict[str, Any]] | None = None  # the run's outputs (None: OUTPUTS)
    named: bool = False  # the project's name still arrives
    poll: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False  # cut by enrich.timeout: counted "cancelled"


def _shape(body: Any) -> Any:
    return {"items": {"not": "a list"}, "spec": {"name": 42}, "kind": "TrainingProject"}


CASES = [
    Case(name="500", begin=_both({"kind": "status", "status": 500})),
    Case(
        name="429-retry-after-beyond-the-deadline",
        begin=_both({"kind": "status", "status": 429, "retry_after": "300"}),
    ),
    Case(
        name="slower-than-enrich-timeout",
        begin=_both({"kind": "slow", "delay": 60.0}),
        poll={"request_timeout": "30s"},  # so that only enrich.timeout can cut it
        cancelled=True,
    ),
    Case(name="404", begin=_both({"kind": "status", "status": 404})),
    Case(name="dropped", begin=_both({"kind": "drop"})),
    Case(name="garbage-json", begin=_both({"kind": "non_json"})),
    Case(name="truncated-json", begin=_both({"kind": "truncated"})),
    Case(name="not-the-documented-shape", begin=_both({"kind": "rewrite", "rewrite": _shape})),
    Case(
        name="a-list-not-an-object",
        begin=_both({"kind": "rewrite", "rewrite": lambda body: [1, 2, 3]}),
    ),
    Case(
        name="huge-announced",
        begin=_both({"kind": "huge", "size": 8 * 1024 * 1024}),
        poll={"max_response_bytes": "1MiB"},
    ),
    Case(
        name="huge-chunked",
        begin=_both({"kind": "huge", "size": 8 * 1024 * 1024, "chunked": True}),
        poll={"max_response_bytes": "1MiB"},
    ),
    Case(name="no-outputs", begin=_no_outputs, outputs=[], named=True),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
async def test_a_fault_costs_the_fields_never_the_message(
    tmp_path: Path, receiver: Receiver, case: Case
) -> None:
    """The Succeeded message goes out in the poll that saw it, without what could not be
    fetched; why is logged once for the run, not again for its later events."""
    enrich = {"timeout": f"{TIMEOUT_S:g}s"}
    poll = {"full_resync": "0s", **case.poll}  # every poll complete: the deletion is seen
    async with watching(tmp_path, receiver, enrich=enrich, poll=poll) as scene:
        sim, daemon, clock, [run] = scene
        succeed(sim, run, case.outputs)
        case.begin(sim, run)

        started = clock.monotonic()
        with capture_logs() as logs:
            [report] = await daemon.poll_cycle()

        assert (report.ok, report.events, report.queued) == (True, 1, 1), report.error
        # FakeClock time, retry waits included; the margin: two fetches' waits, concurrent
        # in real time, add up on a FakeClock.
        assert clock.monotonic() - started <= 2 * TIMEOUT_S
        [event] = of_run(stored_events(daemon), run)
        if case.named:
            assert event.enrichment == Enrichment(project_name=PROJECT_NAME)
        else:
            assert event.enrichment is None
        assert sim.request_count("outputs") >= 1
        assert sim.request_count("project") >= 1
        [told] = incomplete(logs)
        assert told["run_id"] == run and "metrics" in told
        assert ("project_name" in told) is not case.named
        if case.cancelled:
            assert requests_total(daemon, "outputs", "cancelled") == 1
            assert requests_total(daemon, "project", "cancelled") == 1
            assert requests_total(daemon, "outputs", "timeout") == 0  # not request_timeout's
        await daemon.deliver_once()
        assert titles(receiver) == [f"transition {run} Succeeded"]

        clock.advance(INTERVAL_S)
        sim.delete_run(run)
        with capture_logs() as logs:
            [report] = await daemon.poll_cycle()
        assert (report.ok, report.events, report.queued) == (True, 1, 1), report.error
        assert incomplete(logs) == []  # its deletion: the same run, not logged again
        await daemon.deliver_once()
        assert titles(receiver)[1:] == [f"deleted {run} Succeeded"]
