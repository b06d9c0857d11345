"""The operator's commands (status, runs, outbox, retry, drop, mute, mutes, unmute) through
the real entry point, against the state file of a running `runwatch run` daemon, against no
state file at all, and without the configuration's secrets."""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness import DaemonProcess, Outcome, invoke, wait_until, write_config
from receiver import Receiver

from runwatch.cli.state_access import operator
from runwatch.simulator.server import Simulator

WAIT = 20.0


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(runs=15, active=3, seed=13) as s:
        yield s


def runwatch(config: Path, *args: str) -> Outcome:
    """`runwatch COMMAND -c CONFIG ARGS...` run to completion (in this process: the daemon
    under test is a subprocess, the operator's commands need not be)."""
    command, *rest = args
    return invoke(command, "-c", str(config), *rest, "--log-format", "json")


def polls(daemon: DaemonProcess, more: int) -> None:
    """Wait until the daemon has finished `more` polls after the ones seen so far."""
    seen = len(daemon.events("poll.done"))
    daemon.wait_for_event("poll.done", WAIT, count=seen + more)


def test_it_runs_every_operator_command_on_the_state_of_a_running_daemon(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """status, runs, outbox, retry --dead, drop, mute, mutes and unmute all work while the
    daemon polls the same file, and the daemon acts on what they changed at its next poll."""
    receiver.set_mode("reject", "/dead")  # refused for good: its messages die at once
    cfg = write_config(
        tmp_path,
        sim,
        channels={"hook": receiver.apprise_url("/hook"), "dead": receiver.apprise_url("/dead")},
    )
    with DaemonProcess(cfg) as daemon:
        daemon.wait_for_event("poll.done", WAIT, kind="baseline")

        status = runwatch(cfg, "status")
        assert status.code == 0, status.stderr
        assert status.stdout.startswith("workspace prod: ok; last successful poll 20")
        assert "15 runs watched, 3 unfinished" in status.stdout

        # A failure: /hook takes it, /dead refuses it for good.
        failed = sim.active_run_ids()[0]
        sim.append_condition(failed, "Failed", status="FailedReach")
        daemon.wait_for_event("delivery.dead", WAIT, channel="dead")
        listing = runwatch(cfg, "outbox", "--dead")
        assert listing.code == 0, listing.stderr
        [row] = listing.stdout.splitlines()[1:2]
        state, channel = row.split()[1:3]
        assert (state, channel) == ("dead", "dead") and failed in row
        report = json.loads(runwatch(cfg, "status", "--json").stdout)
        assert report["outbox"]["dead"] == 1 and report["ok"] is True

        # Retried once the channel works: delivered once, and only once.
        receiver.set_mode("ok", "/dead")
        retried = runwatch(cfg, "outbox", "retry", "--dead")
        assert retried.code == 0, retried.stderr
        assert retried.stdout.startswith("1 message(s) due now")
        receiver.wait_for(1, WAIT, path="/dead")
        polls(daemon, 3)
        assert len([m for m in receiver.received if m["path"] == "/dead"]) == 1
        assert runwatch(cfg, "outbox", "--dead").stdout.startswith("no dead or uncertain")

        # Muted: the run's next change is recorded muted on both channels, sent nowhere.
        muted = runwatch(cfg, "mute", "--run", failed, "--for", "1h", "--reason", "flaky")
        assert muted.code == 0, muted.stderr
        assert muted.stdout.startswith(f"mute #1: run {failed} until 20")
        listed = runwatch(cfg, "mutes")
        header, line = listed.stdout.splitlines()[:2]
        assert header.split() == ["ID", "WHAT", "UNTIL", "LEFT", "WHO", "REASON"]
        assert line.split()[:3] == ["1", "run", failed] and line.endswith("flaky")
        before = len(receiver.received)
        sim.append_condition(failed, "Running")
        daemon.wait_for_event("poll.done", WAIT, muted=2)
        report = json.loads(runwatch(cfg, "status", "--json").stdout)
        assert report["outbox"]["muted"] == 2
        assert [m["what"] for m in report["mutes"]] == [f"run {failed}"]

        # Unmuted: its next change goes out again.
        assert runwatch(cfg, "unmute", "--all").code == 0
        sim.append_condition(failed, "Succeeded")
        receiver.wait_for(before + 2, WAIT)
        assert len(receiver.received) == before + 2

        # Dropped: a message that keeps failing is set aside, and never sent.
        receiver.set_mode("fail", "/hook")
        last = sim.active_run_ids()[0]
        sim.append_condition(last, "Failed")
        daemon.wait_for_event("delivery.failed", WAIT, channel="hook")
        pending = runwatch(cfg, "outbox", "--channel", "hook")
        [pending_row] = pending.stdout.splitlines()[1:2]
        assert pending_row.split()[1:3] == ["pending", "hook"]
        dropped = runwatch(cfg, "outbox", "drop", pending_row.split()[0])
        assert dropped.code == 0 and dropped.stdout.startswith("1 message(s) dropped")
        receiver.set_mode("ok", "/hook")
        polls(daemon, 3)
        assert json.loads(runwatch(cfg, "status", "--json").stdout)["outbox"]["dropped"] == 1

        runs = runwatch(cfg, "runs", "--limit", "2")
        assert runs.code == 0 and "15 run(s) tracked; the 2 newest shown" in runs.stdout
        assert last in runs.stdout.splitlines()[1]  # its latest change is the newest
        active = runwatch(cfg, "runs", "--active")
        assert active.stdout.rstrip().endswith("1 run(s) tracked unfinished")
        assert daemon.proc.poll() is None  # no command took its writer lock or hurt it


def test_it_reports_a_workspace_down_with_its_last_error_and_exits_1(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """A daemon that cannot poll: status names the error the daemon recorded, and exits 1."""
    cfg = write_config(tmp_path, sim, channels={"hook": receiver.apprise_url("/hook")})
    sim.set_outage(True, status=503)
    with DaemonProcess(cfg) as daemon:
        daemon.wait_for_event("poll.failed", WAIT)
        wait_until(lambda: "last error" in runwatch(cfg, "status").stdout, WAIT, "its error")
        status = runwatch(cfg, "status")
        assert status.code == 1, status.stderr
        assert status.stdout.startswith("workspace prod: DOWN; last successful poll never")
        assert "  last error (20" in status.stdout and "503" in status.stdout
        [workspace] = json.loads(runwatch(cfg, "status", "--json").stdout)["workspaces"]
        assert workspace["ok"] is False and "503" in workspace["last_error"]


def test_it_needs_no_secret_and_creates_no_state_file(tmp_path: Path, sim: Simulator) -> None:
    """Without the Vi key file and the channel's ${VAR}, and before any daemon ran: each
    command says where it looked for the state, and nothing is created."""
    cfg = write_config(
        tmp_path,
        sim,
        channels={"mail": "mailtos://a:${SMTP_PASSWORD}@smtp.example.com?to=b@example.com"},
    )
    data = yaml.safe_load(cfg.read_text())
    del data["workspaces"][0]["secret_key"]
    data["workspaces"][0]["secret_key_file"] = str(tmp_path / "missing.key")
    cfg.write_text(yaml.safe_dump(data))
    state = tmp_path / "state.db"

    status = runwatch(cfg, "status")
    assert status.code == 1, status.stderr
    assert status.stdout.startswith(f"no state file at {state} (state.path of {cfg})")
    assert "workspace prod: DOWN; last successful poll never" in status.stdout
    for command in (["runs"], ["outbox"], ["outbox", "--dead"], ["mutes"]):
        result = runwatch(cfg, *command)
        assert result.code == 0, (command, result.stderr)
        assert f"no state file at {state}" in result.stdout, command
    for command in (
        ["mute", "--workspace", "prod", "--for", "1h"],
        ["unmute", "--all"],
        ["outbox", "retry", "--dead"],
        ["outbox", "drop", "1"],
    ):
        result = runwatch(cfg, *command)
        assert result.code == 1, (command, result.stderr)
        assert f"no state file at {state}" in result.stderr and "nothing was changed" in (
            result.stderr
        ), command
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    assert runwatch(cfg, "check").code == 78  # the daemon's own commands do need them


REFUSED = [
    (["mute", "--for", "1h"], "name what to silence: --run ID"),
    (["mute", "--run", "r", "--for", "31d"], "longer than 30d, the most"),
    (["mute", "--run", "r", "--for", "soon"], "'soon' is not a duration"),
    (["mute", "--run", "r", "--for", "0s"], "--for must be longer than 0s"),
    (["mute", "--workspace", "lab", "--for", "1h"], "no workspace is named 'lab'"),
    (["mute", "--run", "r", "--for", "1h", "--channel", "x"], "no channel is named 'x'"),
    (["mute", "--run", "r"], "the following arguments are required: --for"),
    (["unmute"], "give mute ids, or --all"),
    (["unmute", "3", "--all"], "give mute ids, or --all"),
    (["outbox", "retry"], "give message ids, or --dead"),
    (["outbox", "drop"], "give the ids of the messages to drop"),
]

@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> list[Outcome]:
    """What each REFUSED command answered, against a state file that exists."""
    tmp = tmp_path_factory.mktemp("refusals")
    with Simulator(runs=2, active=0) as sim:
        cfg = write_config(tmp, sim, channels={"hook": "json://127.0.0.1:9/hook"})
        assert runwatch(cfg, "once").code == 0
    return [runwatch(cfg, *args) for args, _ in REFUSED]


@pytest.mark.parametrize(("case", "message"), enumerate(m for _, m in REFUSED))
def test_it_refuses_incomplete_or_wrong_commands_with_status_2(
    refusals: list[Outcome], case: int, message: str
) -> None:
    """A mute of nothing, without an end, for too long or on an unknown name is refused, and
    so is an unmute, retry or drop that names nothing."""
    assert refusals[case].code == 2, refusals[case]
    assert message in refusals[case].stderr


def test_it_names_the_operator_even_without_a_passwd_entry() -> None:
    """The user name; "uid N" for a uid with no passwd entry; the sudo user behind root."""
    me = os.getuid()
    assert operator({}, me) == pwd.getpwuid(me).pw_name
    unused = next(uid for uid in range(61_000, 65_000) if not _has_entry(uid))
    assert operator({}, unused) == f"uid {unused}"
    assert operator({"SUDO_USER": "alice"}, 0) == "alice (via sudo)"
    assert operator({"SUDO_USER": "alice"}, unused) == f"uid {unused}"


def _has_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
