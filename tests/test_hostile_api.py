"""The daemon against an API that answers in ways no honest server would.

Each case is one class of what an independent adversarial trial found, tried with more than
the one example it reported. An in-process daemon on a FakeClock polls the real simulator
over loopback (its `rewrite` and `raw` faults shape any answer) and delivers through real
Apprise to a loopback receiver:

| class                              | tried with                                    |
| ---------------------------------- | --------------------------------------------- |
| a listing claiming runs vanished   | an empty page; page 1 claiming to be the last;|
| (no deletion, no event)            | items under another key; half the items       |
| a real deletion (each announced)   | one run; a re-created id deleted again        |
| condition times across servers     | Failed 5 ms before Running; a year back; a    |
| (every change reported once)       | day ahead then now; rewritten in place; status|
|                                    | changed at the same instant                   |
| a genuinely older document         | a lower generation showing an old condition   |
| one run that cannot be fetched     | 500s; the body of another run                 |
| a Retry-After longer than retries  | 429 with Retry-After: 600                     |
| a creation time far in the future  | one outlier, then more than a page of runs    |
| open condition values as labels    | fifty unknown conditions                      |
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from harness import FakeClock, daemon_on, write_config
from receiver import Receiver

from runwatch.core.model import FAILED, PENDING, RUNNING
from runwatch.service.daemon import Daemon
from runwatch.simulator.server import Fault, Simulator

INTERVAL_S = 30.0
TITLE = "{{ kind }} {{ run_id }} {{ condition }} {{ status }}"
YEAR_MS = 365 * 86_400_000


@contextlib.asynccontextmanager
async def watched(
    tmp_path: Path, receiver: Receiver, *, runs: int = 60, active: int = 6, **poll: Any
) -> AsyncIterator[tuple[Simulator, Daemon, FakeClock]]:
    """A simulator and an in-process daemon on it that has recorded its silent baseline."""
    with Simulator(runs=runs, active=active, seed=15) as sim:
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
            poll={"interval": f"{INTERVAL_S:g}s", "page_size": 20, "full_resync": "1h", **poll},
        )
        clock = FakeClock()
        with daemon_on(cfg, clock) as daemon:
            try:
                [report] = await daemon.poll_cycle()
                assert (report.ok, report.kind) == (True, "baseline")
                yield sim, daemon, clock
            finally:
                await daemon.aclose()


async def cycle(daemon: Daemon, clock: FakeClock) -> tuple[bool, int, str | None]:
    """One poll and one delivery pass: (ok, messages delivered, error)."""
    clock.advance(INTERVAL_S)
    [report] = await daemon.poll_cycle()
    sent = await daemon.deliver_once()
    return report.ok, sent, report.error


def titles(receiver: Receiver) -> list[str]:
    return [str(m["title"]) for m in receiver.received]


def on_list(rewrite: Callable[[dict[str, Any]], Any], count: int = 10_000) -> tuple[Fault, int]:
    return Fault(kind="rewrite", rewrite=rewrite, endpoint="list"), count


def emptied(page: dict[str, Any]) -> Any:
    return {"items": [], "nextPage": None, "prevPage": None}


def last_page(page: dict[str, Any]) -> Any:
    return {**page, "nextPage": None}


def keyed_otherwise(page: dict[str, Any]) -> Any:
    items = []
    for item in page["items"]:
        moved = dict(item)
        moved["id"] = moved.pop("runId")
        items.append(moved)
    return {**page, "items": items}


def halved(page: dict[str, Any]) -> Any:
    return {**page, "items": page["items"][::2]}


# --- a listing is no evidence that runs vanished ------------------------------------------------


@pytest.mark.parametrize(
    "rewrite",
    [emptied, last_page, keyed_otherwise, halved],
    ids=["empty-page", "page-1-claims-to-be-last", "items-under-another-key", "half-the-items"],
)
async def test_it_deletes_and_announces_nothing_from_a_listing_that_lost_runs(
    tmp_path: Path, receiver: Receiver, rewrite: Callable[[dict[str, Any]], Any]
) -> None:
    """A complete-looking listing that lacks known runs deletes none of them and announces
    nothing, however many it lacks; when the API is honest again nothing is re-announced."""
    async with watched(tmp_path, receiver, full_resync="0s") as (sim, daemon, clock):
        org = sim.organization_id
        before = daemon.store.load_runs(org)
        fault, count = on_list(rewrite)
        sim.inject(fault, count=count)
        for _ in range(3):
            await cycle(daemon, clock)
        assert daemon.store.load_runs(org).keys() == before.keys()
        assert daemon.store.load_tombstones(org) == {}
        sim.clear_faults()
        for _ in range(2):
            ok, _, error = await cycle(daemon, clock)
            assert ok, error
    assert receiver.requests == []


async def test_it_fails_the_poll_of_a_listing_missing_most_runs_and_says_why(
    tmp_path: Path, receiver: Receiver
) -> None:
    """An empty page after the baseline is a broken listing: the poll fails and says so."""
    async with watched(tmp_path, receiver, full_resync="0s") as (sim, daemon, clock):
        sim.inject(*on_list(emptied))
        ok, sent, error = await cycle(daemon, clock)
    assert (ok, sent) == (False, 0)
    assert error is not None and "a broken listing; nothing was changed" in error


async def test_it_announces_a_real_deletion_once_and_each_deletion_of_a_recreated_id(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A run really gone (its GET says 404) is deleted and announced once; an id re-created
    and deleted again is new, then deleted again: each its own message."""
    async with watched(tmp_path, receiver, full_resync="0s") as (sim, daemon, clock):
        gone = sim.run_ids()[-5]
        sim.delete_run(gone)
        await cycle(daemon, clock)
        await cycle(daemon, clock)
        sim.create_run(run_id=gone, condition=FAILED)
        await cycle(daemon, clock)
        sim.delete_run(gone)
        await cycle(daemon, clock)
    assert [t.split(" ")[:2] for t in titles(receiver)] == [
        ["deleted", gone],
        ["new", gone],
        ["deleted", gone],
    ]


# --- condition times from several servers never hide a change ------------------------------------


def condition(name: str, at: int, status: str = "Reached") -> dict[str, Any]:
    return {"condition": name, "status": status, "lastTransitionTime": at, "reason": "x"}


CASES: dict[str, Callable[[int], list[list[dict[str, Any]]]]] = {
    # each: the run's successive histories after Pending, by the time `t` of its next step
    "failed-5ms-before-running": lambda t: [
        [condition(RUNNING, t)],
        [condition(RUNNING, t), condition(FAILED, t - 5)],
    ],
    "failed-a-year-back": lambda t: [
        [condition(RUNNING, t)],
        [condition(RUNNING, t), condition(FAILED, t - YEAR_MS)],
    ],
    "running-a-day-ahead-then-failed-now": lambda t: [
        [condition(RUNNING, t + 86_400_000)],
        [condition(RUNNING, t + 86_400_000), condition(FAILED, t)],
    ],
    "rewritten-in-place": lambda t: [[condition(RUNNING, t)], [condition(FAILED, t)]],
    "status-at-the-same-instant": lambda t: [
        [condition(FAILED, t, "Waiting")],
        [condition(FAILED, t, "FailedReach")],
    ],
}


@pytest.mark.parametrize("case", list(CASES))
async def test_it_reports_every_change_whatever_its_condition_time_says(
    tmp_path: Path, receiver: Receiver, case: str
) -> None:
    """Each new version of a run with a changed latest condition is one message."""
    async with watched(tmp_path, receiver) as (sim, daemon, clock):
        run_id = sim.create_run(condition=PENDING)
        await cycle(daemon, clock)
        t = int(clock() * 1000) + 1000
        histories = CASES[case](t)
        for later in histories:
            sim.set_conditions(run_id, [condition(PENDING, t - 1000), *later])
            ok, _, error = await cycle(daemon, clock)
            assert ok, error
        await cycle(daemon, clock)  # and nothing more
    expected = [f"new {run_id} {PENDING} Reached"] + [
        f"transition {run_id} {h[-1]['condition']} {h[-1]['status']}" for h in histories
    ]
    assert titles(receiver) == expected


async def test_it_ignores_a_lagging_replica_showing_an_older_generation(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A document of a lower generation (a replica behind) changes nothing and sends nothing."""
    async with watched(tmp_path, receiver) as (sim, daemon, clock):
        run_id = sim.create_run(condition=PENDING)
        await cycle(daemon, clock)
        old = copy.deepcopy(sim.document(run_id))
        sim.append_condition(run_id, FAILED)
        await cycle(daemon, clock)

        def lagging(page: dict[str, Any]) -> Any:
            return {**page, "items": [old if i["runId"] == run_id else i for i in page["items"]]}

        sim.inject(*on_list(lagging))
        for _ in range(2):
            await cycle(daemon, clock)
        state = daemon.store.load_runs(sim.organization_id)[run_id]
    assert titles(receiver) == [
        f"new {run_id} Pending Reached",
        f"transition {run_id} Failed Reached",
    ]
    assert state.latest is not None and state.latest.condition == FAILED


# --- one run never holds back the others ----------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "another-run"])
async def test_it_commits_the_rest_of_a_poll_when_one_run_cannot_be_fetched(
    tmp_path: Path, receiver: Receiver, fault: str
) -> None:
    """A run whose GET fails is skipped for the poll (logged, counted); a new run and the other
    runs' changes go out at once, and the skipped one once it can be read."""
    async with watched(tmp_path, receiver, runs=80, active=4) as (sim, daemon, clock):
        stuck, other = sim.active_run_ids()[-2:]
        if fault == "500":
            sim.inject(Fault(kind="status", status=500, endpoint="get"), count=10_000)
        else:
            other_doc = sim.document(other)
            sim.inject(
                Fault(kind="rewrite", rewrite=lambda doc: other_doc, endpoint="get"),
                count=10_000,
            )
        sim.append_condition(stuck, FAILED)
        fresh = sim.create_run(condition=FAILED)
        ok, _, error = await cycle(daemon, clock)
        assert ok, error
        assert titles(receiver) == [f"new {fresh} Failed Reached"]
        failures = daemon.metrics.registry.get_sample_value(
            "runwatch_run_fetch_failures_total", {"workspace": "prod"}
        )
        assert failures is not None and failures > 0
        sim.clear_faults()
        await cycle(daemon, clock)
    assert titles(receiver)[-1] == f"transition {stuck} Failed Reached"


# --- a Retry-After longer than a call's retries --------------------------------------------------


async def test_it_waits_out_a_retry_after_longer_than_its_retries(
    tmp_path: Path, receiver: Receiver
) -> None:
    """After a 429 asking for 600 s, no request reaches the API for 600 s; then polls resume."""
    async with watched(tmp_path, receiver) as (sim, daemon, clock):
        sim.inject(Fault(kind="status", status=429, retry_after="600"), count=1)
        ok, _, _ = await cycle(daemon, clock)
        assert not ok
        asked = sim.request_count()
        for _ in range(int(600 / INTERVAL_S) - 1):
            ok, _, error = await cycle(daemon, clock)
            assert not ok and error is not None and "Retry-After" in error
        assert sim.request_count() == asked
        clock.advance(INTERVAL_S)
        ok, _, error = await cycle(daemon, clock)
    assert ok, error
    assert sim.request_count() > asked


# --- one outlier does not blind the steady-state poll ---------------------------------------------


async def test_it_finds_every_new_run_behind_a_run_dated_in_the_future(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A run created "next year" sorts first forever; more than a page of new runs behind it
    are all found by the next steady-state poll."""
    async with watched(tmp_path, receiver, page_size=10) as (sim, daemon, clock):
        future = sim.create_run(condition=FAILED)
        sim.set_time_created(future, int(clock() * 1000) + YEAR_MS)
        await cycle(daemon, clock)
        fresh = [sim.create_run(condition=FAILED) for _ in range(25)]
        ok, _, error = await cycle(daemon, clock)
    assert ok, error
    assert {t.split(" ")[1] for t in titles(receiver)} == {future, *fresh}


# --- open values as metric labels ---------------------------------------------------------------


async def test_it_counts_unknown_conditions_under_one_label(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Fifty runs moving to fifty never-seen conditions add one series, "other", not fifty."""
    async with watched(tmp_path, receiver) as (sim, daemon, clock):
        for i in range(50):
            sim.create_run(condition=f"Weird{i}")
        await cycle(daemon, clock)
        body = daemon.metrics.render().decode()
    lines = [line for line in body.splitlines() if line.startswith("runwatch_transitions_total{")]
    assert lines == ['runwatch_transitions_total{condition="other",workspace="prod"} 50.0']


# --- a bug in one poll is a failed poll -----------------------------------------------------------


async def test_it_counts_an_unexpected_exception_in_a_poll_as_a_failed_poll(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a poll raises fails that poll (logged with its traceback, counted); the next
    poll runs as usual and reports what changed meanwhile."""
    import runwatch.service.cycle as cycle_module

    real = cycle_module.poll_workspace
    calls = {"n": 0}

    async def broken_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug")
        return await real(*args, **kwargs)

    async with watched(tmp_path, receiver) as (sim, daemon, clock):
        monkeypatch.setattr(cycle_module, "poll_workspace", broken_once)
        run_id = sim.create_run(condition=FAILED)
        with structlog.testing.capture_logs() as logs:
            ok, _, error = await cycle(daemon, clock)
        assert not ok and error == "internal error (RuntimeError); see the log"
        assert any(e["event"] == "poll.crashed" and e.get("exc_info") for e in logs)
        failures = daemon.metrics.registry.get_sample_value(
            "runwatch_poll_failures_total", {"workspace": "prod", "reason": "internal"}
        )
        assert failures == 1
        ok, _, error = await cycle(daemon, clock)
    assert ok, error
    assert titles(receiver) == [f"new {run_id} Failed Reached"]
