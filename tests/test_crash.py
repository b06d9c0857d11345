"""SIGKILL the daemon over and over: no transition is lost, duplicates only from kills.

`runwatch run` runs as a subprocess (poll every 150 ms, a full resync every second) against a
simulator and a loopback receiver in this process. A seeded script makes runs appear and
move Pending -> Running -> Succeeded/Failed/Error/Cancelled, and kills the daemon with
SIGKILL at chosen points, restarting it each time:

| kill point   | how the moment is found                                        |
| ------------ | -------------------------------------------------------------- |
| requests     | after the n-th API request of the new process (n seeded, 1-12) |
| slow-poll    | while a listing request is held by the simulator (mid-poll)    |
| started      | as the daemon logs `daemon.started`, its first poll beginning  |
| committed    | as it logs `poll.done` with rows queued: after the commit,     |
|              | before or at the start of their delivery                       |
| in-flight-   | while the receiver holds a message (a slow service), which it  |
| kept / lost  | then accepts (the service got it: a duplicate is allowed) or   |
|              | refuses (lost on the way: it must be sent again)               |
| sent         | as it logs `delivery.sent`: between two sends of one pass      |

At the end a last daemon runs until every run's final condition has arrived, then stops on
SIGTERM (exit 0). What the receiver got is compared with what happened in the simulator:
- every run's whole history is covered: its messages, read in order, form one unbroken chain
  from "new" to its final condition (each message's `previous` is the condition of the one
  before it, `skipped` holds exactly the conditions passed in between), so no state change
  is missing and none is invented; runs the script never touched get no message;
- duplicates (the same message twice) are counted and printed; each is matched to a kill at
  which that very message was in flight (sent out by the killed process, whose messages
  carry its number, and never logged by it as sent), at most one message is in flight per
  kill, and so duplicates are at most the number of kills;
- the outbox holds nothing pending or dead, the tracked runs match the simulator, and no
  daemon wrote anything to stderr that is not a JSON log event, nor an error event.

Seeded and reproducible in what it does (the timing of a kill within its moment varies);
20 kills by default (two scenes of 10), 80 more behind RUNWATCH_LONG_TESTS=1.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import DaemonProcess, wait_until, write_config
from receiver import Receiver

from runwatch.core.model import CANCELLED, ERROR, FAILED, PENDING, RUNNING, SUCCEEDED
from runwatch.simulator.server import Fault, Simulator

# Everything a message must say to be checked: kind, run, condition, previous, skipped.
TITLE = (
    "{{ kind }} {{ run_id }} {{ condition }} {{ previous or '-' }} {{ skipped|join(',') or '-' }}"
)
ENDINGS = (SUCCEEDED, FAILED, ERROR, CANCELLED)
KILL_POINTS = (
    "requests",
    "slow-poll",
    "started",
    "committed",
    "in-flight-kept",
    "in-flight-lost",
    "sent",
)
DEADLINE_S = 20.0  # for any one thing to happen

long_only = pytest.mark.skipif(
    os.environ.get("RUNWATCH_LONG_TESTS") != "1", reason="long variant: RUNWATCH_LONG_TESTS=1"
)


class SlowReceiver(Receiver):
    """A receiver that, while `delay` > 0, holds each message that long before answering.

    A slow service: when the hold ends the message is accepted if `keep_held` (the service
    processed it, whether or not the sender is still there to hear so) or else refused (it
    was lost on the way). `arrivals` counts requests as they arrive.
    """

    def __init__(self) -> None:
        super().__init__()
        self.delay = 0.0
        self.keep_held = True
        self.arrivals = 0
        # Answering a sender that was killed is the point here, not worth a traceback.
        self._server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]

    def _record(self, message: dict[str, Any], accepted: bool) -> None:
        with self._changed:
            self.arrivals += 1
            delay, keep = self.delay, self.keep_held
        if delay > 0:
            self._closing.wait(delay)
            accepted = accepted and keep
        super()._record(message, accepted)


class Scenario:
    """The seeded stream of changes, made in the simulator; the simulator keeps the history."""

    def __init__(self, sim: Simulator, rng: random.Random) -> None:
        self.sim = sim
        self.rng = rng
        self.runs: list[str] = []  # every run the scenario created, in order
        self.open: list[str] = []  # those not finished yet

    def step(self, count: int = 1) -> None:
        for _ in range(count):
            if not self.open or self.rng.random() < 0.3:
                run_id = self.sim.create_run(condition=PENDING)
                self.runs.append(run_id)
                self.open.append(run_id)
                continue
            run_id = self.rng.choice(self.open)
            if self.sim.latest_condition(run_id) == PENDING and self.rng.random() < 0.8:
                self.sim.append_condition(run_id, RUNNING)
                continue
            ending = self.rng.choice(ENDINGS)
            self.sim.append_condition(run_id, ending, reason="Scripted", message="by the test")
            self.open.remove(run_id)

    def history(self, run_id: str) -> list[str]:
        return [c["condition"] for c in self.sim.document(run_id)["status"]["conditions"]]


Message = tuple[str, str, str, str, str]  # kind, run, condition, previous, skipped


def messages(receiver: Receiver) -> list[Message]:
    out: list[Message] = []
    for m in receiver.received:
        kind, run_id, condition, previous, skipped = str(m["title"]).split(" ")
        out.append((kind, run_id, condition, previous, skipped))
    return out


def chain_problems(history: list[str], got: list[Message]) -> list[str]:
    """What is wrong with one run's messages (duplicates removed) against its history."""
    problems: list[str] = []
    covered = -1  # index in `history` of the condition the last message reported
    for kind, run_id, condition, previous, skipped in got:
        if condition not in history:
            return [f"{run_id}: a message for {condition}, which it never had: {got}"]
        at = history.index(condition)
        expected_previous = "-" if covered < 0 else history[covered]
        expected_skipped = ",".join(history[covered + 1 : at]) or "-"
        expected_kind = "new" if covered < 0 else "transition"
        if (kind, previous, skipped) != (expected_kind, expected_previous, expected_skipped):
            problems.append(
                f"{run_id}: {kind} {previous}->{condition} skipping {skipped}, expected "
                f"{expected_kind} {expected_previous}->{condition} skipping {expected_skipped}"
            )
        covered = at
    if covered != len(history) - 1:
        problems.append(f"{run_id}: history {history}, reported only up to {covered}: {got}")
    return problems


@contextlib.contextmanager
def scene(
    tmp_path: Path, seed: int
) -> Iterator[tuple[Simulator, SlowReceiver, Callable[[int], Path]]]:
    """A simulator, a receiver, and the configuration for the n-th daemon process."""
    receiver = SlowReceiver()
    with Simulator(runs=5, active=0, seed=seed) as sim, receiver:

        def config(process: int) -> Path:
            # Apprise adds ":key=value" to the JSON it posts: each message names its sender.
            url = receiver.apprise_url("/hook") + f"?:process={process}"
            return write_config(
                tmp_path,
                sim,
                channels={"hook": url},
                rules=[{"name": "all", "match": {}, "notify": ["hook"], "title": TITLE}],
                poll={"interval": "150ms", "full_resync": "1s", "page_size": 10},
                delivery={"min_interval": "0s", "initial_backoff": "1s", "timeout": "5s"},
            )

        yield sim, receiver, config


def kill_at(
    point: str, daemon: DaemonProcess, sim: Simulator, receiver: SlowReceiver, rng: random.Random
) -> None:
    """Wait for the moment named `point` (see the module docstring) and SIGKILL the daemon."""
    if point == "requests":
        target = sim.request_count() + rng.randint(1, 12)
        wait_until(lambda: sim.request_count() >= target, what="API requests", timeout=DEADLINE_S)
    elif point == "slow-poll":
        sim.inject(Fault(kind="slow", delay=rng.uniform(0.2, 0.6), endpoint="list"))
        before = sim.request_count("list")
        wait_until(
            lambda: sim.request_count("list") > before,
            what="a held listing request",
            timeout=DEADLINE_S,
        )
    elif point == "started":
        daemon.wait_for_event("daemon.started", DEADLINE_S)
    elif point == "committed":
        daemon.wait_for_event("poll.done", DEADLINE_S, queued=lambda n: bool(n and n > 0))
    elif point in ("in-flight-kept", "in-flight-lost"):
        receiver.delay = rng.uniform(0.2, 0.5)
        receiver.keep_held = point == "in-flight-kept"
        before = receiver.arrivals
        wait_until(
            lambda: receiver.arrivals > before, what="a message arriving", timeout=DEADLINE_S
        )
    elif point == "sent":
        daemon.wait_for_event("delivery.sent", DEADLINE_S)
    else:
        raise AssertionError(point)
    daemon.kill(DEADLINE_S)
    receiver.delay = 0.0


def crash_over_and_over(tmp_path: Path, *, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    points = [KILL_POINTS[i % len(KILL_POINTS)] for i in range(kills)]
    rng.shuffle(points)
    daemons: list[DaemonProcess] = []
    with scene(tmp_path, seed) as (sim, receiver, config), contextlib.ExitStack() as running:

        def start() -> DaemonProcess:
            daemons.append(running.enter_context(DaemonProcess(config(len(daemons)))))
            return daemons[-1]

        scenario = Scenario(sim, rng)
        # Changes before the baseline is recorded belong to the baseline: start after it.
        start().wait_for_event("baseline.recorded", DEADLINE_S)
        for i, point in enumerate(points):
            if i > 0:
                scenario.step(rng.randint(0, 2))  # changes while no daemon runs
                start()
            scenario.step(rng.randint(1, 3))
            kill_at(point, daemons[-1], sim, receiver, rng)
            assert daemons[-1].proc.returncode == -signal.SIGKILL

        scenario.step(3)
        last = start()

        def finals_missing() -> list[tuple[str, str]]:
            got = {(m[1], m[2]) for m in messages(receiver)}
            finals = [(r, scenario.history(r)[-1]) for r in scenario.runs]
            return [final for final in finals if final not in got]

        try:
            wait_until(
                lambda: not finals_missing(),
                what="every run's final condition to arrive",
                timeout=DEADLINE_S,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; still missing: {finals_missing()}") from None
        last.signal(signal.SIGTERM)
        assert last.wait(DEADLINE_S) == 0
        received = messages(receiver)
        tried = [(str(r["process"]), str(r["title"])) for r in receiver.requests]
        histories = {run_id: scenario.history(run_id) for run_id in scenario.runs}
        latest = {run_id: sim.latest_condition(run_id) for run_id in sim.run_ids()}

    by_run: dict[str, list[Message]] = collections.defaultdict(list)
    for message in dict.fromkeys(received):  # first arrival of each, in arrival order
        by_run[message[1]].append(message)
    assert set(by_run) == set(histories), "a message for a run the scenario never touched"
    problems = [p for r, h in histories.items() for p in chain_problems(h, by_run[r])]
    assert problems == []

    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
        outbox = dict(db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())
        tracked = dict(db.execute("SELECT run_id, condition FROM runs").fetchall())
        title_of_row = dict(db.execute("SELECT id, title FROM outbox").fetchall())

    # In flight at a kill: a message the killed process sent out and never logged as sent.
    in_flight: list[set[str]] = []
    for process, daemon in enumerate(daemons[:-1]):
        sent_out = {title for p, title in tried if p == str(process)}
        confirmed = {title_of_row[e["row"]] for e in daemon.events("delivery.sent")}
        in_flight.append(sent_out - confirmed)
    assert all(len(titles) <= 1 for titles in in_flight), "two sends in flight on one channel"

    counts = collections.Counter(" ".join(m) for m in received)
    duplicates = {title: n - 1 for title, n in counts.items() if n > 1}
    print(
        f"\n{kills} kills at {dict(collections.Counter(points))}; {len(histories)} runs, "
        f"{sum(len(h) for h in histories.values())} conditions in {len(counts)} messages; "
        f"{sum(map(len, in_flight))} in flight at a kill; {sum(duplicates.values())} "
        f"duplicate(s): {sorted(duplicates.items())}"
    )
    for title, extra in duplicates.items():
        at_kills = sum(title in titles for titles in in_flight)
        assert extra <= at_kills, f"{title!r} came {extra + 1} times, in flight at {at_kills} kills"
    assert sum(duplicates.values()) <= kills

    assert outbox == {"sent": len(counts)}
    assert tracked == latest
    assert [line for d in daemons for line in d.junk] == []
    errors = [e for d in daemons for e in d.logs if e.get("level") in ("error", "critical")]
    assert errors == []


@pytest.mark.parametrize("seed", [20, 21])
def test_it_loses_no_transition_across_20_kills(tmp_path: Path, seed: int) -> None:
    """Killed 10 times at seeded points (every kill point at least once) in each of two
    scenes, 20 kills in all, the daemon still reports every change, repeating only deliveries
    in flight at a kill. Two scenes of 10 rather than one of 20: they run side by side."""
    crash_over_and_over(tmp_path, kills=10, seed=seed)


@pytest.mark.long
@long_only
def test_it_loses_no_transition_across_80_kills(tmp_path: Path) -> None:
    """The same with 80 kills and another seed."""
    crash_over_and_over(tmp_path, kills=80, seed=80)


def test_it_loses_nothing_when_killed_while_a_digest_is_sent(tmp_path: Path) -> None:
    """20 runs fail in one poll: a digest. Killed while the service holds it (and refuses it:
    lost on the way), the next daemon sends the same 20 runs again, as one digest, and the
    outbox ends with every row sent; nothing is lost or counted twice in the one accepted."""
    receiver = SlowReceiver()
    with Simulator(runs=25, active=20, seed=33) as sim, receiver:
        cfg = write_config(
            tmp_path,
            sim,
            channels={"hook": {"urls": receiver.apprise_url("/hook"), "digest": {"max_single": 1}}},
            poll={"interval": "150ms", "page_size": 10},
            delivery={"min_interval": "0s", "initial_backoff": "1s", "timeout": "5s"},
        )
        failed = sim.active_run_ids()
        with DaemonProcess(cfg) as first:
            first.wait_for_event("baseline.recorded", DEADLINE_S)
            receiver.delay, receiver.keep_held = 30.0, False  # held until the kill, then refused
            for run_id in failed:
                sim.append_condition(run_id, FAILED, reason="OOM")
            wait_until(lambda: receiver.arrivals > 0, what="the digest", timeout=DEADLINE_S)
            first.kill(DEADLINE_S)
        receiver.delay = 0.0
        assert receiver.received == []  # the held digest was refused: lost on the way

        with DaemonProcess(cfg) as second:
            [digest] = receiver.wait_for(1, DEADLINE_S)
            second.wait_for_event("delivery.sent", DEADLINE_S)
            second.signal(signal.SIGTERM)
            assert second.wait(DEADLINE_S) == 0
    assert str(digest["title"]).startswith(f"{len(failed)} runs changed in prod")
    assert sorted(r for r in failed if r in str(digest["message"])) == sorted(failed)
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
        outbox = dict(db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())
    assert outbox == {"sent": len(failed)}
