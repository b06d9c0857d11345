"""One writer per state file: a second daemon is refused instead of doubling every message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import run_cli, write_config
from receiver import Receiver

from runwatch.errors import StoreError
from runwatch.simulator.server import Simulator
from runwatch.state.lock import writer_lock


def test_it_refuses_a_second_writer_and_names_the_first(tmp_path: Path) -> None:
    """While one process holds the state file, another cannot take it, and is told who has it."""
    db = tmp_path / "state.db"
    with writer_lock(db), pytest.raises(StoreError) as refused, writer_lock(db):
        pass
    assert f"pid {os.getpid()}" in str(refused.value)
    assert str(db) in str(refused.value)
    with writer_lock(db):  # released on exit: the next writer gets it
        pass


def test_it_keeps_once_out_while_a_daemon_holds_the_state_but_lets_runs_read(
    tmp_path: Path, receiver: Receiver
) -> None:
    """`once` exits 1 with a clear message while the state is held; `runs` still reads it."""
    with Simulator(runs=5, active=1, seed=2) as sim:
        cfg = write_config(tmp_path, sim, channels={"hook": receiver.apprise_url("/hook")})
        assert run_cli("once", "-c", str(cfg)).code == 0  # baseline
        with writer_lock(tmp_path / "state.db"):
            held = run_cli("once", "-c", str(cfg), "--log-format", "json")
            reading = run_cli("runs", "-c", str(cfg))
        after = run_cli("once", "-c", str(cfg))
    assert held.code == 1
    assert "already using the state file" in held.stderr and "Traceback" not in held.stderr
    assert reading.code == 0 and "5 run(s) tracked" in reading.stdout
    assert after.code == 0, after.stderr
