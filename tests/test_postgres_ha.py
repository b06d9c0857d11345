"""Two and three real `runwatch run` daemons on one PostgreSQL, against simulators.

Each workspace is its own simulator, so what each one was asked is counted where it was
asked; each daemon's JSON log says what it polled, leased and sent; the receiver counts the
messages. Leases are 3 s (renewed every second), so a takeover takes a few seconds; every
wait is on a condition with a deadline, none on the passing of time.
"""

from __future__ import annotations

import collections
import contextlib
import re
import signal
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from harness import DaemonProcess, wait_until, write_config
from pg import fresh_schema, query
from receiver import Receiver

from runwatch.simulator.server import Simulator

LEASE_S = 3.0
RUN_ID = re.compile(r"run_[0-9a-f]{12}")


@contextlib.contextmanager
def simulators(count: int) -> Iterator[list[Simulator]]:
    sims = [Simulator(runs=4, active=2, seed=i, organization_id=f"org-{i}") for i in range(count)]
    with contextlib.ExitStack() as stack:
        for sim in sims:
            stack.enter_context(sim)
        yield sims


def ha_config(tmp_path: Path, name: str, sims: Sequence[Simulator], receiver: Receiver,
              url: str) -> Path:  # fmt: skip
    """The configuration of daemon `name`: every simulator a workspace, one channel."""
    home = tmp_path / name
    home.mkdir()
    path = write_config(home, sims[0], channels={"ops": receiver.apprise_url("/ops")})
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    data["workspaces"] = [
        {"name": f"ws{i}", "organization_id": sim.organization_id,
         "secret_key": sim.secret_key, "endpoint": sim.url}
        for i, sim in enumerate(sims)
    ]  # fmt: skip
    data["state"] = {"url": url}
    data["ha"] = {"lease": f"{LEASE_S:g}s", "instance": name}
    data["rules"] = [
        {"name": "all", "match": {}, "notify": ["ops"], "title": "{{ run_id }} {{ condition }}"}
    ]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def holders(url: str) -> dict[str, str]:
    """Workspace -> the instance name holding a valid lease on it (none before the schema)."""
    if not query(url, "SELECT 1 FROM pg_tables WHERE tablename = 'leases' "
                      "AND schemaname = current_schema()"):  # fmt: skip
        return {}
    rows = query(url, "SELECT workspace, holder FROM leases WHERE expires_at > now() "
                      "AND holder <> ''")  # fmt: skip
    return {str(w): str(h).rpartition("/")[0] for w, h in rows}


def tally(receiver: Receiver) -> collections.Counter[str]:
    found = (RUN_ID.search(m["title"]) for m in receiver.received)
    return collections.Counter(m.group(0) for m in found if m)


def delivered(receiver: Receiver, runs: Sequence[str]) -> bool:
    counts = tally(receiver)
    return all(counts[r] >= 1 for r in runs)


def polled(daemon: DaemonProcess, since: int = 0) -> set[str]:
    return {e["workspace"] for e in daemon.logs[since:] if e["event"] == "poll.done"}


def test_two_daemons_share_the_workspaces_and_a_paused_one_commits_and_sends_nothing_it_lost(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Two daemons share three workspaces 2 + 1, never poll one twice and send everything
    once; SIGSTOP one past its lease: the other takes its workspaces over and sends what
    happened meanwhile, and after SIGCONT the paused one commits and sends nothing of it."""
    with fresh_schema() as url, simulators(3) as sims:
        a_cfg, b_cfg = (ha_config(tmp_path, n, sims, receiver, url) for n in ("a", "b"))
        with DaemonProcess(a_cfg) as a:
            a.wait_for_event("lease.acquired")
            with DaemonProcess(b_cfg) as b:
                daemons = {"a": a, "b": b}
                wait_until(
                    lambda: len(holders(url)) == 3 and set(holders(url).values()) == {"a", "b"},
                    what="the three workspaces spread over both daemons",
                )
                # Settled: from here each workspace belongs to one daemon.
                marks = len(a.logs), len(b.logs)
                for sim in sims:
                    sim.reset_counters()
                runs = [sim.create_run(condition="Failed", status="FailedReach") for sim in sims]
                runs += [sim.run_ids()[0] for sim in sims]
                for sim in sims:
                    sim.append_condition(sim.run_ids()[0], "Killed")
                wait_until(lambda: delivered(receiver, runs), 30, "every message delivered")
                # One more poll of each workspace, so a duplicate would have had its chance.
                counts = {d: len(d.events("poll.done")) for d in (a, b)}
                for d in (a, b):
                    d.wait_for_event("poll.done", count=counts[d] + 2)
                mine = {name: polled(d, since) for name, d, since in (("a", a, marks[0]),
                                                                      ("b", b, marks[1]))}
                held = holders(url)
                lists = [sim.request_count("list") for sim in sims]
                polls = [
                    sum(1 for d, since in ((a, marks[0]), (b, marks[1]))
                        for e in d.logs[since:]
                        if e["event"] == "poll.done" and e["workspace"] == f"ws{i}")
                    for i in range(len(sims))
                ]  # fmt: skip

                name = held["org-0"]
                paused, other = daemons[name], daemons["b" if name == "a" else "a"]
                other_name = "b" if name == "a" else "a"
                paused.signal(signal.SIGSTOP)
                try:
                    wait_until(lambda: holders(url).get("org-0") == other_name, 30, "takeover")
                    during = sims[0].create_run(condition="Failed")
                    wait_until(lambda: delivered(receiver, [during]), 30, "the paused message")
                    mark = len(paused.logs)
                finally:
                    paused.signal(signal.SIGCONT)
                lost = paused.wait_for_event("lease.lost", workspaces=lambda w: "org-0" in w)
                # Its next cycles (whatever it holds now) come and go.
                paused.wait_for_event("poll.done", count=len(paused.events("poll.done")) + 2)
                after_cont = paused.logs[mark:]
                other.wait_for_event("poll.done", count=len(other.events("poll.done")) + 1)

    assert mine["a"].isdisjoint(mine["b"]), mine
    assert mine["a"] | mine["b"] == {"ws0", "ws1", "ws2"}
    assert sorted(collections.Counter(held.values()).values()) == [1, 2]
    for i, (listed, polled_) in enumerate(zip(lists, polls, strict=True)):
        # One listing per poll, by one daemon (and one more in flight at most).
        assert listed <= polled_ + 1, (i, listed, polled_)

    assert lost["instance"].startswith(f"{name}/")
    reacquired = [
        i for i, e in enumerate(after_cont)
        if e["event"] == "lease.acquired" and "org-0" in e["workspaces"]
    ]  # fmt: skip
    until = reacquired[0] if reacquired else len(after_cont)
    polls = [e for e in after_cont[:until] if e["event"] == "poll.done"]
    # A poll committed just before SIGSTOP (the lease still its own) may be logged just after
    # SIGCONT: that one at most. One started later would recur every cycle; one in flight
    # would be refused by the commit's fence (tests/test_postgres_store.py proves that).
    late = [e for e in polls if e["workspace"] == "ws0"]
    assert len(late) <= 1, [(e["event"], e.get("workspace")) for e in after_cont]
    assert not [e for e in after_cont if e["event"] == "delivery.sent"
                and e["run"].endswith(during)]  # fmt: skip
    assert tally(receiver) == {r: 1 for r in [*runs, during]}


def test_it_takes_a_killed_daemons_workspace_over_within_two_leases_and_loses_nothing(
    tmp_path: Path, receiver: Receiver
) -> None:
    """SIGKILL the holder of a workspace among three daemons: another holds it within two
    leases (on the database's clock) and every message arrives, at most one of them twice."""
    with fresh_schema() as url, simulators(3) as sims:
        cfgs = [ha_config(tmp_path, n, sims, receiver, url) for n in ("a", "b", "c")]
        with DaemonProcess(cfgs[0]) as a, DaemonProcess(cfgs[1]) as b, \
                DaemonProcess(cfgs[2]) as c:  # fmt: skip
            daemons = {"a": a, "b": b, "c": c}
            wait_until(lambda: len(set(holders(url).values())) == 3, what="one workspace each")
            victim = holders(url)["org-0"]
            before = [sims[0].create_run(condition="Failed") for _ in range(3)]
            wait_until(lambda: delivered(receiver, before[:1]), 30, "a first message sent")
            daemons[victim].kill()
            [(renewed_until,)] = query(url, "SELECT expires_at FROM leases "
                                            "WHERE workspace = 'org-0'")  # fmt: skip
            after = [sims[0].create_run(condition="Failed") for _ in range(2)]
            wait_until(lambda: holders(url).get("org-0", victim) != victim, 30, "a takeover")
            [(taken_at,)] = query(url, "SELECT acquired_at FROM leases "
                                       "WHERE workspace = 'org-0'")  # fmt: skip
            wait_until(lambda: delivered(receiver, before + after), 30, "every message")
    assert isinstance(renewed_until, type(taken_at))
    # The killed daemon's last renewal was at renewed_until - lease at the latest.
    assert taken_at - renewed_until <= timedelta(seconds=LEASE_S)  # type: ignore[operator]
    counts = tally(receiver)
    assert all(counts[r] >= 1 for r in before + after)
    assert sum(counts[r] - 1 for r in before + after) <= 1, counts
