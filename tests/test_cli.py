"""The `runwatch` command line against the simulator and a receiver: its process (exit statuses,
stderr, signals) as real subprocesses, what its commands do through the same entry point."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from harness import Outcome, cli_env, invoke, run_cli, write_config
from receiver import Receiver

from runwatch import __version__
from runwatch.simulator.server import Simulator

# Apprise URLs holding secrets, each of which must stay out of every output.
SLACK_TOKENS = ("T1JJ3T3L2", "A1BRTD4JD", "TIiajkdnlazkcOXrIdevi7FQ")
SMTP_PASSWORD = "Sup3r-S3cret-SMTP"
HEADER_TOKEN = "Bearer-hdr-7f3a9c21"


def runwatch(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> Outcome:
    """Run `python -m runwatch ARGS` to completion; RUNWATCH_CONFIG is unset unless in `env`."""
    return run_cli(*args, env=cli_env(env), timeout=timeout)


def here(*args: str, env: dict[str, str] | None = None) -> Outcome:
    """The same in this process, for what a command does rather than how its process
    behaves (exit statuses, tracebacks and stderr framing are tried on subprocesses above)."""
    return invoke(*args, env=cli_env(env))


def logged(stderr: str) -> list[dict[str, Any]]:
    """The JSON log events among stderr's lines (a config error adds one plain summary)."""
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def json_only(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line parsed as a JSON log event; fails on any line that is not one."""
    return [json.loads(line) for line in stderr.splitlines()]


def snapshot(db: Path) -> list[str]:
    """The state database's whole content as SQL, to compare before and after a command."""
    conn = sqlite3.connect(db)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(runs=25, active=3, seed=21) as s:
        yield s


def test_it_checks_a_good_config_showing_channels_without_their_secrets(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """`check` exits 0 and prints every channel in privacy form, no token or password."""
    cfg = write_config(
        tmp_path,
        sim,
        channels={
            "ml-slack": f"slack://{'/'.join(SLACK_TOKENS)}/#ml-runs",
            "oncall": [
                f"mailtos://alerts:{SMTP_PASSWORD}@smtp.example.com?to=oncall@example.com",
                f"json://127.0.0.1:{receiver.port}/hook?+Authorization={HEADER_TOKEN}",
            ],
        },
    )
    result = runwatch("check", "-c", str(cfg), "--log-format", "json")
    assert result.code == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert "channel ml-slack: slack://T...2/A...D/T...Q/" in result.stdout
    assert "mailtos://alerts:****@smtp.example.com" in result.stdout
    assert "Authorization=****" in result.stdout  # Apprise writes the header as %2BAuthorization
    for secret in (*SLACK_TOKENS, SMTP_PASSWORD, HEADER_TOKEN, sim.secret_key):
        assert secret not in result.stdout + result.stderr
    assert receiver.requests == []  # checking sends nothing


def test_it_rejects_a_bad_config_with_status_78_naming_each_key_path(
    tmp_path: Path, sim: Simulator
) -> None:
    """`check` on a config with two mistakes exits 78, names both key paths, shows no traceback."""
    cfg = write_config(
        tmp_path,
        sim,
        channels={"hook": "json://127.0.0.1:9/hook"},
        rules=[{"name": "all", "match": {}, "notify": ["hook", "nowhere"]}],
        poll={"interval": "soon"},
    )
    result = runwatch("check", "-c", str(cfg), "--log-format", "json")
    assert result.code == 78
    assert "Traceback" not in result.stderr
    assert "rules[0].notify[1]: unknown channel 'nowhere'" in result.stderr
    assert "poll.interval: 'soon' is not a duration" in result.stderr
    [event] = [e for e in logged(result.stderr) if e["event"] == "config.invalid"]
    assert len(event["problems"]) == 2
    assert result.stdout == ""


def test_it_exits_2_when_no_config_is_given(tmp_path: Path) -> None:
    """Without -c and without $RUNWATCH_CONFIG a command is a usage error, exit status 2."""
    result = runwatch("check", "--log-format", "json")
    assert result.code == 2
    assert "RUNWATCH_CONFIG" in result.stderr and "Traceback" not in result.stderr


def test_it_reads_the_config_path_from_the_environment(tmp_path: Path, sim: Simulator) -> None:
    """$RUNWATCH_CONFIG stands in for -c."""
    cfg = write_config(tmp_path, sim, channels={"hook": "json://127.0.0.1:9/hook"})
    result = runwatch("check", "--log-format", "json", env={"RUNWATCH_CONFIG": str(cfg)})
    assert result.code == 0, result.stderr
    assert f"state: {tmp_path / 'state.db'}" in result.stdout
    assert "configuration OK" in result.stdout


def test_it_records_a_silent_baseline_then_delivers_on_the_next_once(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """A first `once` only records; after a transition a second `once` delivers it."""
    run_id = sim.create_run(condition="Running", flow="convnext-classifier")
    cfg = write_config(tmp_path, sim, channels={"hook": receiver.apprise_url("/hook")})

    first = here("once", "-c", str(cfg), "--log-format", "json")
    assert first.code == 0, first.stderr
    assert "prod: baseline poll ok; 0 event(s)" in first.stdout
    [baseline] = [e for e in json_only(first.stderr) if e["event"] == "baseline.recorded"]
    assert baseline["runs"] == 26 and baseline["notified"] == 0

    sim.append_condition(run_id, "Error", reason="WorkerLost", message="node stopped answering")
    second = here("once", "-c", str(cfg), "--log-format", "json")
    assert second.code == 0, second.stderr
    assert "1 event(s)" in second.stdout and "delivered 1; 0 pending" in second.stdout
    [msg] = receiver.wait_for(1)
    assert run_id in msg["title"] and "WorkerLost" in msg["message"]
    assert msg["type"] == "failure"


def test_it_prints_what_a_dry_run_would_send_and_changes_nothing(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """`once --dry-run` shows the message, sends nothing, leaves the state for the real `once`."""
    run_id = sim.create_run(condition="Running")
    cfg = write_config(tmp_path, sim, channels={"hook": receiver.apprise_url("/hook")})
    assert here("once", "-c", str(cfg), "--log-format", "json").code == 0
    sim.append_condition(run_id, "Failed", reason="TrainingDiverged", message="Loss became NaN")
    before = snapshot(tmp_path / "state.db")

    dry = here("once", "-c", str(cfg), "--dry-run", "--log-format", "json")
    assert dry.code == 0, dry.stderr
    assert "1 message(s) would be sent" in dry.stdout
    assert "--> hook [failure] " in dry.stdout
    assert run_id in dry.stdout and "TrainingDiverged" in dry.stdout
    assert "nothing was recorded or sent" in dry.stdout
    assert snapshot(tmp_path / "state.db") == before
    assert receiver.requests == []

    real = here("once", "-c", str(cfg), "--log-format", "json")
    assert real.code == 0, real.stderr
    [msg] = receiver.wait_for(1)
    assert run_id in msg["title"] and "TrainingDiverged" in msg["message"]


def test_it_creates_no_state_file_for_a_dry_run_or_a_look_at_the_runs(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """Before the first real poll, `once --dry-run` shows a baseline and `runs` says there is
    nothing yet, naming where it looked; neither leaves a file (or directory) behind."""
    state = tmp_path / "state" / "nested" / "state.db"
    cfg = write_config(
        tmp_path, sim, channels={"hook": receiver.apprise_url("/hook")}, state={"path": str(state)}
    )

    dry = here("once", "-c", str(cfg), "--dry-run", "--log-format", "json")
    runs = here("runs", "-c", str(cfg), "--log-format", "json")

    assert dry.code == 0, dry.stderr
    assert "baseline poll saw" in dry.stdout and "nothing is sent" in dry.stdout
    assert runs.code == 0, runs.stderr
    assert f"no state file at {state}" in runs.stdout
    assert not (tmp_path / "state").exists()
    assert receiver.requests == []


def test_it_reports_each_channel_of_notify_test_and_exits_1_if_one_fails(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """`notify-test` prints a result per channel; one refusing channel makes the exit status 1."""
    cfg = write_config(
        tmp_path,
        sim,
        channels={"good": receiver.apprise_url("/good"), "bad": receiver.apprise_url("/bad")},
    )
    receiver.set_mode("fail", "/bad")
    failed = here("notify-test", "-c", str(cfg), "--log-format", "json")
    assert failed.code == 1, failed.stderr
    lines = failed.stdout.splitlines()
    assert any(line.startswith("good: OK") for line in lines)
    assert any(line.startswith("bad: FAILED") for line in lines)
    assert [m["path"] for m in receiver.received] == ["/good"]
    assert "runwatch test message" in receiver.received[0]["title"]

    receiver.set_mode("ok", "/bad")
    passed = here("notify-test", "-c", str(cfg), "--log-format", "json")
    assert passed.code == 0, passed.stderr
    assert sorted(line.split(":")[0] for line in passed.stdout.splitlines()) == ["bad", "good"]
    assert sorted(m["path"] for m in receiver.received) == ["/bad", "/good", "/good"]

    only = here("notify-test", "-c", str(cfg), "bad", "--log-format", "json")
    assert only.code == 0 and only.stdout.startswith("bad: OK")
    assert len(receiver.received) == 4


def test_it_lists_the_tracked_runs_as_a_table(tmp_path: Path, sim: Simulator) -> None:
    """`runs` prints workspace, run, flow, condition and since for every run in the state."""
    run_id = sim.create_run(condition="Running", flow="qwen-vl-finetune")
    cfg = write_config(tmp_path, sim, channels={"hook": "json://127.0.0.1:9/hook"}, name="lab")
    assert here("once", "-c", str(cfg), "--log-format", "json").code == 0

    result = here("runs", "-c", str(cfg), "--log-format", "json")
    assert result.code == 0, result.stderr
    header, *rows = result.stdout.split("\n\n")[0].splitlines()
    assert header.split() == ["WORKSPACE", "RUN", "FLOW", "CONDITION", "SINCE"]
    assert len(rows) == 26 and "26 run(s) tracked" in result.stdout
    assert {row.split()[1] for row in rows} == set(sim.run_ids())
    [mine] = [row.split() for row in rows if run_id in row]
    assert mine[0] == "lab" and mine[2] == "qwen-vl-finetune"
    assert mine[3:5] == ["Running", "(Reached)"]
    since_ms = sim.document(run_id)["status"]["conditions"][-1]["lastTransitionTime"]
    assert mine[5:] == time.strftime("%Y-%m-%d %H:%M", time.gmtime(since_ms / 1000)).split()


@pytest.mark.parametrize(
    ("command", "logs_debug"),
    [("check", False), ("once", True), ("runs", False), ("notify-test", True)],
)
def test_it_accepts_debug_json_logging_on_every_config_command(
    tmp_path: Path, sim: Simulator, receiver: Receiver, command: str, logs_debug: bool
) -> None:
    """`--log-level debug --log-format json` is accepted and every stderr line is JSON.

    `check` and `runs` do no I/O worth a debug line; the others must show some.
    """
    cfg = write_config(tmp_path, sim, channels={"hook": receiver.apprise_url("/hook")})
    args = ("-c", str(cfg), "--log-level", "debug", "--log-format", "json")
    result = runwatch(command, *args)
    assert result.code == 0, result.stderr
    events = json_only(result.stderr)
    assert all({"event", "level", "timestamp"} <= e.keys() for e in events)
    assert any(e["level"] == "debug" for e in events) == logs_debug


class Lines:
    """Collects a text stream's lines on a thread, for waiting on one with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        def seen() -> bool:
            return any(text in line for line in self.lines)

        with self._changed:
            self._changed.wait_for(lambda: seen() or self.closed, timeout=timeout)
            if not seen():
                raise AssertionError(f"{text!r} not seen within {timeout}s: {self.lines}")

    def finish(self) -> list[str]:
        self._thread.join(timeout=10)
        return self.lines


def interrupt(args: list[str], ready: str, sig: signal.Signals) -> tuple[int, list[str], str]:
    """Start `runwatch ARGS`, wait for `ready` on stdout, send `sig`: status, stdout, stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runwatch", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        try:
            out.wait_for(ready)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; stderr: {err.lines}") from None
        proc.send_signal(sig)
        status = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return status, out.finish(), "\n".join(err.finish())


def test_it_accepts_debug_json_logging_on_simulate_and_stops_on_sigterm() -> None:
    """`simulate --log-level debug --log-format json` serves, logs JSON, exits 0 on SIGTERM."""
    status, stdout, stderr = interrupt(
        ["simulate", "--port", "0", "--runs", "5", "--log-level", "debug", "--log-format", "json"],
        "runwatch configuration:",
        signal.SIGTERM,
    )
    assert status == 0, stderr
    assert any(
        line.startswith("Vi API simulator listening on http://127.0.0.1:") for line in stdout
    )
    events = json_only(stderr)
    assert [e["event"] for e in events if e["event"].startswith("sim.")] == [
        "sim.started",
        "sim.stopped",
    ]


def test_it_accepts_debug_json_logging_on_demo_and_stops_on_ctrl_c() -> None:
    """`demo --log-level debug --log-format json` runs its story and exits 0 on SIGINT."""
    status, stdout, stderr = interrupt(
        ["demo", "--log-level", "debug", "--log-format", "json"],
        "baseline recorded",
        signal.SIGINT,
    )
    assert status == 0, stderr
    assert stdout[-1].startswith("demo finished;")
    events = json_only(stderr)
    assert "signal.received" in [e["event"] for e in events]
    assert any(e["level"] == "debug" for e in events)


def test_it_prints_its_version() -> None:
    """`python -m runwatch --version` prints the package version and exits 0."""
    result = runwatch("--version")
    assert result.code == 0
    assert result.stdout.strip() == f"runwatch {__version__}"
