"""The daemon against a misbehaving Vi API: each fault, on incremental and on full polls.

Every case runs an in-process daemon on a FakeClock against the real simulator over loopback,
with a real SQLite state file and real Apprise delivering to a loopback receiver. After a
silent baseline and one quiet poll, runs change while the fault lasts (twelve new runs, more
than two pages of them and most failed at creation, so that a run an incremental poll misses
stays missed; and transitions of runs on the last pages), the daemon polls through the
fault, the fault ends, and the daemon polls on by itself.

| fault (simulator)                          | while it lasts                                  |
| ------------------------------------------ | ----------------------------------------------- |
| 429 with Retry-After: 2                    | every poll fails, having waited the 2 s asked   |
| HTTP 500                                   | every poll fails                                |
| HTTP 503                                   | every poll fails                                |
| slower than poll.request_timeout           | every poll fails (timeouts)                     |
| dropped connection                         | every poll fails                                |
| 200 with an HTML body (not JSON)           | every poll fails                                |
| 200 with a truncated JSON body             | every poll fails                                |
| a page token handed back again             | every poll fails: no part-listing is committed  |
| unknown fields at every level              | polls succeed: fields ignored, changes reported |
| an unknown condition value ("Quarantined") | polls succeed: runs moving to it are reported;  |
|                                            | a quiet run shown with it is reported moving to |
|                                            | it and back (not older: a change is a change)   |
| 401 mid-run                                | every poll fails at once, without a retry       |
| 500 on single-run GETs (incremental only)  | polls succeed: the runs that cannot be fetched  |
|                                            | are skipped, the rest is committed and sent     |
| outage of five minutes (every call 503)    | ten polls fail, runs changing in between        |

Asserted for every row and poll kind:
- the daemon keeps running: `poll_cycle` returns and reports the failure (ok=False, an error
  that health() shows too);
- no false events: after a failed poll the tracked runs, the event log, the outbox and the
  times of the baseline and last full listing are exactly as before; nothing is delivered;
  no run is "deleted" and none loses its condition;
- the fault was really served (simulator log or request metrics), so no row passes vacuously;
- recovery: within two polls after the fault ends a poll succeeds, by itself;
- exactly once: the receiver holds one message per change made during the fault, no more, no
  less (with an unknown condition also the runs the API showed in it, each once there and
  once back); a further poll sends nothing; every run the simulator has is tracked with the
  condition it shows.
Further tests: a full listing that fails on page 3 deletes nothing (and the next complete one
deletes only the run really deleted); faults shorter than the retry budget cost nothing.
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import FakeClock, daemon_on, write_config
from receiver import Receiver

from runwatch.core.model import ERROR, FAILED, PENDING, RUNNING, SUCCEEDED, RunState
from runwatch.service.daemon import Daemon
from runwatch.service.metrics import Metrics
from runwatch.simulator.server import UNKNOWN_CONDITION, Fault, Simulator

INTERVAL_S = 30.0
ATTEMPTS = 2  # poll.max_attempts: tries per HTTP call
PAGE_SIZE = 5
NEW_RUNS = 12  # created during a fault: more than two pages of them
LASTING = 10_000  # a fault "count" no poll uses up: the fault lasts until cleared
TITLE = "{{ kind }} {{ run_id }} {{ condition }}"  # what identifies a message

Key = tuple[str, str, str]  # (event kind, run id, condition)


@dataclass(frozen=True, kw_only=True)
class Case:
    """One row of the table in the module docstring."""

    name: str
    begin: Callable[[Simulator], None]
    served: Callable[[Simulator, Metrics], int]  # evidence the fault was applied: > 0
    fails: bool = True
    polls: int = 2  # polls while the fault lasts
    kinds: tuple[str, ...] = ("incremental", "full")
    poll: dict[str, Any] = field(default_factory=dict)  # config overrides
    runs: int = 30  # the simulator's population
    active: int = 8  # of which not finished
    condition: str | None = None  # what changed runs move to (None: known conditions)
    min_wait_s: float = 0.0  # fake seconds each failed poll must have waited (Retry-After)
    max_requests: int | None = None  # HTTP requests a failed poll may make (no retry: 1)


def _inject(fault: Fault) -> Callable[[Simulator], None]:
    def begin(sim: Simulator) -> None:
        sim.inject(fault, count=LASTING)

    return begin


def _outage(sim: Simulator) -> None:
    sim.set_outage(True)


def _logged(kind: str) -> Callable[[Simulator, Metrics], int]:
    def served(sim: Simulator, metrics: Metrics) -> int:
        return sum(1 for r in sim.requests_log() if r.fault == kind)

    return served


def _status(code: int) -> Callable[[Simulator, Metrics], int]:
    def served(sim: Simulator, metrics: Metrics) -> int:
        return sum(1 for r in sim.requests_log() if r.status == code)

    return served


def _outcome(outcome: str) -> Callable[[Simulator, Metrics], int]:
    def served(sim: Simulator, metrics: Metrics) -> int:
        total = 0.0
        for endpoint in ("list", "get"):
            labels = {"workspace": "prod", "endpoint": endpoint, "outcome": outcome}
            total += metrics.registry.get_sample_value("runwatch_api_requests_total", labels) or 0
        return int(total)

    return served


CASES = [
    Case(
        name="429-retry-after",
        begin=_inject(Fault(kind="status", status=429, retry_after="2")),
        served=_status(429),
        min_wait_s=2.0 * (ATTEMPTS - 1),
    ),
    Case(name="500", begin=_inject(Fault(kind="status", status=500)), served=_status(500)),
    Case(name="503", begin=_inject(Fault(kind="status", status=503)), served=_status(503)),
    Case(
        name="slower-than-timeout",
        begin=_inject(Fault(kind="slow", delay=2.0)),
        served=_outcome("timeout"),
        poll={"request_timeout": "500ms"},  # real time: each timed-out attempt costs it
    ),
    Case(name="dropped", begin=_inject(Fault(kind="drop")), served=_outcome("transport")),
    Case(name="non-json", begin=_inject(Fault(kind="non_json")), served=_logged("non_json")),
    Case(name="truncated", begin=_inject(Fault(kind="truncated")), served=_logged("truncated")),
    Case(
        name="repeated-page-token",
        begin=_inject(Fault(kind="repeat_token", endpoint="list")),
        served=_logged("repeat_token"),
    ),
    Case(
        name="unknown-fields",
        begin=_inject(Fault(kind="extra_fields")),
        served=_logged("extra_fields"),
        fails=False,
    ),
    Case(
        name="unknown-condition",
        begin=_inject(Fault(kind="unknown_condition")),
        served=_logged("unknown_condition"),
        fails=False,
        condition=UNKNOWN_CONDITION,
    ),
    Case(
        name="401-mid-run",
        begin=_inject(Fault(kind="status", status=401)),
        served=_status(401),
        max_requests=1,
    ),
    Case(
        name="500-on-get",
        begin=_inject(Fault(kind="status", status=500, endpoint="get")),
        served=_status(500),
        fails=False,
        kinds=("incremental",),
        # Few active runs deep in a long history: GETs are cheaper than listing down to them.
        runs=80,
        active=4,
    ),
    Case(name="outage-5-minutes", begin=_outage, served=_status(503), polls=10),
]

PARAMS = [
    pytest.param(case, kind, id=f"{case.name}-{kind}") for case in CASES for kind in case.kinds
]


# --- helpers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Everything a failed poll must leave as it was."""

    runs: dict[str, RunState]
    known: dict[str, int]  # fingerprints of the runs the daemon knows
    events: int
    outbox: int
    last_full_listing: int | None
    baselined_at: int | None


def snapshot(daemon: Daemon, org: str) -> Snapshot:
    meta = daemon.store.workspace(org)
    with contextlib.closing(sqlite3.connect(daemon.store.path)) as db:
        events = db.execute("SELECT count(*) FROM events").fetchone()[0]
        outbox = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    return Snapshot(
        runs=daemon.store.load_runs(org),
        known=daemon.known[org].fingerprints(),
        events=events,
        outbox=outbox,
        last_full_listing=meta.last_full_listing,
        baselined_at=meta.baselined_at,
    )


def received(receiver: Receiver) -> collections.Counter[Key]:
    keys: collections.Counter[Key] = collections.Counter()
    for message in receiver.received:
        kind, run_id, condition = str(message["title"]).split(" ")
        keys[(kind, run_id, condition)] += 1
    return keys


class Script:
    """The changes made to the simulator while a fault lasts, and the messages they owe."""

    def __init__(self, sim: Simulator, condition: str | None) -> None:
        self.sim = sim
        self.condition = condition
        # Changed runs are the oldest active ones: on the last pages, reached by GETs or by
        # listing on, never on page 1.
        self.active = list(reversed(sim.active_run_ids()))
        self.expected: collections.Counter[Key] = collections.Counter()
        self._outcomes = iter([FAILED, SUCCEEDED, RUNNING, ERROR, FAILED, SUCCEEDED])

    def change(self, *, new_runs: int, transitions: int) -> None:
        for i in range(new_runs):
            # Most fail at once (quota, a bad spec): finished runs are never looked at again
            # by an incremental poll, so one that is missed stays missed.
            first = self.condition or (PENDING if i % 3 == 2 else ERROR)
            run_id = self.sim.create_run(condition=first)
            self.expected[("new", run_id, first)] += 1
        for _ in range(transitions):
            run_id = self.active.pop(0)
            condition = self.condition or next(self._outcomes)
            self.sim.append_condition(run_id, condition, reason="Scripted", message="by the test")
            self.expected[("transition", run_id, condition)] += 1


@contextlib.asynccontextmanager
async def watched(
    tmp_path: Path,
    receiver: Receiver,
    kind: str,
    poll: dict[str, Any] | None = None,
    *,
    runs: int = 30,
    active: int = 8,
) -> AsyncIterator[tuple[Simulator, Daemon, FakeClock]]:
    """A simulator and a daemon on it that has recorded its baseline and made a quiet poll."""
    with Simulator(runs=runs, active=active, seed=11) as sim:
        cfg = write_config(
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
            poll={
                "interval": f"{INTERVAL_S:g}s",
                "page_size": PAGE_SIZE,
                "max_attempts": ATTEMPTS,
                "full_resync": "0s" if kind == "full" else "1h",
                **(poll or {}),
            },
        )
        clock = FakeClock()
        with daemon_on(cfg, clock) as daemon:
            try:
                for expected_kind in ("baseline", kind):
                    [report] = await daemon.poll_cycle()
                    assert (report.ok, report.kind, report.events) == (True, expected_kind, 0)
                    clock.advance(INTERVAL_S)
                yield sim, daemon, clock
            finally:
                await daemon.aclose()


def tracked_as_served(daemon: Daemon, sim: Simulator) -> None:
    """Every run the simulator has is tracked, each with the latest condition it shows."""
    runs = daemon.store.load_runs(sim.organization_id)
    assert sorted(runs) == sorted(sim.run_ids())
    for run_id, state in runs.items():
        assert state.latest is not None
        assert state.latest.condition == sim.latest_condition(run_id), run_id


# --- the table --------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "kind"), PARAMS)
async def test_it_rides_out_the_fault_and_delivers_each_change_made_meanwhile_once(
    tmp_path: Path, receiver: Receiver, case: Case, kind: str
) -> None:
    """Through the fault no poll invents an event; after it, every change arrives exactly once."""
    scene = watched(tmp_path, receiver, kind, case.poll, runs=case.runs, active=case.active)
    async with scene as (sim, daemon, clock):
        org = sim.organization_id
        script = Script(sim, case.condition)
        before = snapshot(daemon, org)
        case.begin(sim)
        for i in range(case.polls):
            if i == 0:
                script.change(new_runs=NEW_RUNS, transitions=2)
            if i == case.polls - 1:
                script.change(new_runs=1, transitions=2)
            requests, started = sim.request_count(), clock()
            [report] = await daemon.poll_cycle()
            assert report.kind == kind
            if case.fails:
                assert (report.ok, report.events, report.queued) == (False, 0, 0)
                assert report.error
                assert clock() - started >= case.min_wait_s
                if case.max_requests is not None:
                    assert sim.request_count() - requests <= case.max_requests
                assert snapshot(daemon, org) == before
                workspaces = daemon.health()[1]["workspaces"]
                assert isinstance(workspaces, dict)
                assert workspaces["prod"]["error"] == report.error
            else:
                assert report.ok, report.error
            await daemon.deliver_once()
            clock.advance(INTERVAL_S)
        assert case.served(sim, daemon.metrics) > 0, f"the {case.name} fault was never served"
        if case.fails:
            assert receiver.received == []

        sim.clear_faults()
        sim.set_outage(False)
        recovered = []
        for _ in range(2):
            [report] = await daemon.poll_cycle()
            clock.advance(INTERVAL_S)
            recovered.append(report.ok)
            if report.ok:
                break
        assert recovered[-1], "no successful poll within two polls after the fault ended"
        await daemon.deliver_once()
        everything = received(receiver)
        shown = collections.Counter[Key]()
        if case.condition == UNKNOWN_CONDITION:
            shown = shown_in_the_fault_and_back(everything, script, sim)
        assert everything - shown == script.expected

        [report] = await daemon.poll_cycle()
        assert (report.ok, report.events) == (True, 0)
        assert await daemon.deliver_once() == 0
        assert received(receiver) == everything
        tracked_as_served(daemon, sim)


def shown_in_the_fault_and_back(
    got: collections.Counter[Key], script: Script, sim: Simulator
) -> collections.Counter[Key]:
    """The messages of quiet runs the API showed in the unknown condition: each once there
    and once back to the condition it really has, and nothing else."""
    pairs: collections.Counter[Key] = collections.Counter()
    changed = {run_id for (_, run_id, _) in script.expected}
    for kind, run_id, condition in got:
        if condition == UNKNOWN_CONDITION and run_id not in changed:
            back = ("transition", run_id, sim.latest_condition(run_id) or "")
            assert (got[(kind, run_id, condition)], got[back]) == (1, 1), run_id
            pairs[(kind, run_id, condition)] += 1
            pairs[back] += 1
    return pairs


# --- a full listing that breaks off -------------------------------------------------------------


async def test_it_deletes_nothing_when_a_full_listing_fails_on_page_3(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Pages 1-2 of a listing are no evidence that the runs on pages 3-6 are gone."""
    async with watched(tmp_path, receiver, "full") as (sim, daemon, clock):
        org = sim.organization_id
        before = snapshot(daemon, org)
        deep = sim.run_ids()[-3]  # on the last page
        sim.delete_run(deep)
        changed = sim.active_run_ids()[-1]
        sim.append_condition(changed, FAILED)
        # Pages 1 and 2 are answered as usual (a slow fault of 0 s only marks them), then
        # page 3 drops the connection on every attempt.
        sim.inject(Fault(kind="slow", delay=0.0, endpoint="list"), count=2)
        sim.inject(Fault(kind="drop", endpoint="list"), count=ATTEMPTS)
        sim.reset_counters()

        [report] = await daemon.poll_cycle()

        assert (report.ok, report.kind) == (False, "full")
        log = [r for r in sim.requests_log() if r.endpoint == "list"]
        assert [r.fault for r in log] == ["slow", "slow"] + ["drop"] * ATTEMPTS
        assert "p" not in log[0].query and all("p" in r.query for r in log[1:])
        assert snapshot(daemon, org) == before
        assert deep in daemon.store.load_runs(org)

        clock.advance(INTERVAL_S)
        [report] = await daemon.poll_cycle()
        assert (report.ok, report.kind, report.events) == (True, "full", 2)
        await daemon.deliver_once()
        last_known = before.runs[deep].latest
        assert last_known is not None
        assert received(receiver) == {
            ("deleted", deep, last_known.condition): 1,
            ("transition", changed, FAILED): 1,
        }
        tracked_as_served(daemon, sim)


# --- faults shorter than the retries ----------------------------------------------------------

SHORT = [
    pytest.param(Fault(kind="status", status=429, retry_after="2"), 2.0, id="429-retry-after"),
    pytest.param(Fault(kind="status", status=500), 0.0, id="500"),
    pytest.param(Fault(kind="status", status=503, retry_after="3"), 3.0, id="503-retry-after"),
    pytest.param(Fault(kind="drop"), 0.0, id="dropped"),
    pytest.param(Fault(kind="non_json"), 0.0, id="non-json"),
    pytest.param(Fault(kind="truncated"), 0.0, id="truncated"),
]


@pytest.mark.parametrize(("fault", "wait_s"), SHORT)
@pytest.mark.parametrize("kind", ["incremental", "full"])
async def test_it_retries_a_fault_shorter_than_its_attempts_within_the_poll(
    tmp_path: Path, receiver: Receiver, kind: str, fault: Fault, wait_s: float
) -> None:
    """One bad answer is retried inside the poll: it succeeds and reports the change on time."""
    async with watched(tmp_path, receiver, kind) as (sim, daemon, clock):
        script = Script(sim, None)
        script.change(new_runs=1, transitions=1)
        sim.inject(fault, count=ATTEMPTS - 1)
        started = clock()

        [report] = await daemon.poll_cycle()

        assert report.ok, report.error
        assert clock() - started >= wait_s
        assert [r.fault for r in sim.requests_log()].count(fault.kind) == ATTEMPTS - 1
        await daemon.deliver_once()
        assert received(receiver) == script.expected
