"""Disk and state: an unusable state database is refused loudly and never reset.

Unusable state, through every command that opens it (once, once --dry-run, run, runs):

    read-only directory   `chattr +i` on the state directory
    read-only file        `chattr +i` on state.db
    garbage file          state.db overwritten with text
    damaged page          one 4 KiB page inside a real state.db overwritten
    newer schema          PRAGMA user_version above this runwatch's

each gives exit 1, no traceback, a message that names the file and says what to do; the
database byte for byte as it was; the API not even polled. After the operator's fix
(writable again, backup restored), the change made meanwhile is delivered exactly once and
nothing is re-baselined.

A full disk, during a daemon's commit (SqliteStore.open's max_pages cap, and a real full tmpfs
under `runwatch run`): the poll fails naming the full disk, nothing of it is written, the
daemon keeps going, and once space is freed the transition is delivered exactly once and
nothing delivered before is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from harness import DaemonProcess, FakeClock, Outcome, invoke, run_cli, write_config
from receiver import Receiver

from runwatch.config.loading import load_config
from runwatch.service.daemon import Daemon
from runwatch.simulator.server import Simulator
from runwatch.state.sqlite import SqliteStore
from runwatch.state.sqlite_schema import SCHEMA_VERSION

COMMANDS: tuple[tuple[str, ...], ...] = (("once",), ("once", "--dry-run"), ("run",), ("runs",))
READERS = {("once", "--dry-run"), ("runs",)}  # open the state read-only
HUGE_MESSAGE = "out of memory; " + "x" * 120_000  # ~30 overflow pages in each of three tables


def runwatch(config: Path, *args: str, timeout: float = 60.0) -> Outcome:
    """Run `python -m runwatch ARGS -c CONFIG --log-format json` to completion."""
    return run_cli(*args, "-c", str(config), "--log-format", "json", timeout=timeout)


def here(config: Path, *args: str) -> Outcome:
    """The same, in this process: for the set-up and the checks after a repair, where what is
    tried is not the process itself (a subprocess costs ~0.5 s of start-up)."""
    return invoke(*args, "-c", str(config), "--log-format", "json")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`chattr +i path` (root ignores permission bits); skip the test where that is impossible."""
    chattr = shutil.which("chattr")
    if os.geteuid() != 0 or chattr is None:
        pytest.skip("needs root and chattr to make a path read-only for root")
    if subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip(f"this filesystem does not support chattr +i ({path})")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


# --- how each case breaks the state, and how the operator repairs it -----------------------


@contextlib.contextmanager
def replaced_by(db: Path, damage: Callable[[bytes], bytes]) -> Iterator[None]:
    """The file damaged; afterwards restored from the operator's backup of it."""
    backup = db.read_bytes()
    db.write_bytes(damage(backup))
    try:
        yield
    finally:
        db.write_bytes(backup)


def garbage(_: bytes) -> bytes:
    return b"this is not an SQLite database; someone copied a log over it\n" * 300


def damaged_page(data: bytes) -> bytes:
    page = 4096
    assert len(data) > 6 * page, "the state must span more than six pages to damage one inside"
    return data[: 5 * page] + b"\x5a" * page + data[6 * page :]


@contextlib.contextmanager
def newer_schema(db: Path) -> Iterator[None]:
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    yield  # no repair: the operator upgrades runwatch; this one must not touch the file


CASES: dict[str, tuple[Callable[[Path], contextlib.AbstractContextManager[None]], str, bool]] = {
    # case: (break the state at state.db, text the error must contain, repairable here)
    "read-only-directory": (
        lambda db: immutable(db.parent),
        "writable by the user runwatch runs as",
        True,
    ),
    "read-only-file": (lambda db: immutable(db), "is read-only", True),
    "garbage-file": (
        lambda db: replaced_by(db, garbage),
        "corrupt or not a runwatch database",
        True,
    ),
    "damaged-page": (
        lambda db: replaced_by(db, damaged_page),
        "Restore it from a backup, or move it aside",
        True,
    ),
    "newer-schema": (newer_schema, "written by a newer runwatch", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_it_refuses_an_unusable_state_in_every_command_and_never_resets_it(
    tmp_path: Path, receiver: Receiver, case: str
) -> None:
    """Each command exits 1 saying what to do, leaves the files alone, and loses no change."""
    breaks, expected, repairable = CASES[case]
    db = tmp_path / "state" / "state.db"
    with Simulator(runs=400, active=3, seed=11) as sim:
        cfg = write_config(
            tmp_path,
            sim,
            channels={"hook": receiver.apprise_url("/hook")},
            state={"path": str(db)},
            poll={"page_size": 100},
        )
        baseline = here(cfg, "once")
        assert baseline.code == 0, baseline.stderr
        assert baseline.events("baseline.recorded")[0]["runs"] == 400
        failed = sim.active_run_ids()[0]
        sim.append_condition(failed, "Failed", status="FailedReach", reason="OOM")
        sim.reset_counters()

        with breaks(db):
            before = snapshot(db.parent)
            with ThreadPoolExecutor(max_workers=len(COMMANDS)) as pool:
                outcomes = list(pool.map(lambda args: runwatch(cfg, *args), COMMANDS))
            after = snapshot(db.parent)

        for args, out in zip(COMMANDS, outcomes, strict=True):
            command = " ".join(args)
            if case == "read-only-file" and args in READERS:
                # Reading needs no write access: the commands that only look still work.
                assert out.code == 0, f"{command}: {out.code}\n{out.stderr}"
                continue
            assert out.code == 1, f"{command}: {out.code}\n{out.stderr}"
            assert "Traceback" not in out.stdout + out.stderr, command
            [unusable] = out.events("state.unusable")
            assert expected in unusable["error"], command
            assert str(db) in unusable["error"], command
            assert f"runwatch: {unusable['error']}" in out.stderr, command
        # Not a byte of the database written; at most SQLite's empty side files were created.
        assert after.pop("state.db") == before.pop("state.db")
        assert set(after) - set(before) <= {"state.db-wal", "state.db-shm"}
        assert after.get("state.db-wal", b"") == before.get("state.db-wal", b"")
        # Refused before polling; only a dry run that could read polled (and sent nothing).
        assert (sim.request_count() > 0) == (case == "read-only-file")
        assert receiver.requests == []

        if not repairable:
            return
        # The operator fixed it: the change made meanwhile is detected and sent, once.
        first = here(cfg, "once")
        assert first.code == 0, first.stderr
        assert first.events("baseline.recorded") == []
        assert "1 event(s)" in first.stdout and "delivered 1; 0 pending" in first.stdout
        again = here(cfg, "once")
        assert again.code == 0 and "0 event(s)" in again.stdout and "delivered 0" in again.stdout
    [message] = receiver.received
    assert failed in message["message"] and "OOM" in message["message"]


async def test_it_keeps_state_through_a_commit_that_fills_the_disk(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A poll whose commit hits a full disk writes nothing, the daemon keeps going without
    calling it an API outage (its admins may hear of the state, never of the API), and once
    space is freed the transition is detected and delivered exactly once, none re-sent."""
    db = tmp_path / "state.db"
    with Simulator(runs=40, active=4, seed=5) as sim:
        cfg = write_config(
            tmp_path,
            sim,
            channels={"hook": receiver.apprise_url("/hook"), "admins": receiver.apprise_url("/ad")},
            rules=[{"name": "all", "match": {}, "notify": ["hook"]}],
            poll={"interval": "20ms"},
            alerts={"notify": ["admins"], "api_down_after": "1m"},
        )
        config = load_config(cfg)
        first, second = sim.active_run_ids()[:2]
        # Before: a baseline and one transition, delivered.
        with SqliteStore.open(db) as store:
            daemon = Daemon(config, store)
            await daemon.poll_cycle()
            sim.append_condition(first, "Failed", reason="early")
            await daemon.poll_cycle()
            assert await daemon.deliver_once() == 1
            await daemon.aclose()
        pages = _query(db, "PRAGMA page_count")[0][0]
        sim.append_condition(second, "Failed", reason="OOM", message=HUGE_MESSAGE)

        # The "disk" now holds exactly what is there: the big transition cannot be written.
        before = _dump(db)
        with SqliteStore.open(db, max_pages=pages) as store:
            # An hour after the last recorded poll: long past alerts.api_down_after.
            daemon = Daemon(config, store, clock=FakeClock(time.time() + 3600))
            [report] = await daemon.poll_cycle()
            assert not report.ok and report.error is not None
            assert "is full" in report.error and "free some space" in report.error
            assert daemon.board.last_error["prod"] == report.error
            assert await daemon.deliver_once() == 0  # the earlier message is not re-sent
            # The loop rides it out: several cycles fail the same way, none ends the daemon.
            stop = asyncio.Event()
            loop = asyncio.create_task(daemon.run(stop))
            await asyncio.wait_for(daemon.wait_cycles(daemon.cycles + 3), timeout=10)
            assert not loop.done()
            stop.set()
            await asyncio.wait_for(loop, timeout=10)
        assert _dump(db) == before  # not one row of the failed polls was written

        # Space freed (the cap lifted): the transition is still there to be found, once.
        with SqliteStore.open(db) as store:
            daemon = Daemon(config, store)
            [report] = await daemon.poll_cycle()
            assert report.ok and report.events == 1
            assert await daemon.deliver_once() == 1
            await daemon.poll_cycle()
            assert await daemon.deliver_once() == 0
            await daemon.aclose()
    early, late = [m for m in receiver.received if m["path"] == "/hook"]
    # The admins may hear that the state cannot be written (the loop ran on an injected
    # clock long past api_down_after), never that the Vi API is down.
    admins = [str(m["title"]) for m in receiver.received if m["path"] == "/ad"]
    assert set(admins) <= {"🚨 runwatch cannot use its state database"}
    assert first in early["message"] and "early" in early["message"]
    assert second in late["message"] and "OOM" in late["message"]


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path`; skip the test where mounting is not permitted."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Write a file into `directory` until its filesystem has no space left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                os.write(fd, b"\0" * 65536)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 512)
    finally:
        os.close(fd)
    return filler


def test_it_exits_1_from_once_on_a_full_filesystem_and_sends_later(
    tmp_path: Path, receiver: Receiver
) -> None:
    """`runwatch once` on a full filesystem exits 1 saying to free space, with no traceback;
    after space is freed the next `once` delivers the transition, once."""
    with small_filesystem(tmp_path / "disk", "2m") as disk, Simulator(runs=30, seed=9) as sim:
        db = disk / "state.db"
        cfg = write_config(
            tmp_path, sim, channels={"hook": receiver.apprise_url("/hook")}, state={"path": str(db)}
        )
        assert here(cfg, "once").code == 0
        before = _dump(db)
        filler = fill(disk)
        run_id = sim.active_run_ids()[0]
        sim.append_condition(run_id, "Failed", reason="OOM", message=HUGE_MESSAGE)

        # Opening already needs space (SQLite's -shm and -wal files): refused there, or at
        # the commit if they exist; either way exit 1 with what to do.
        full = runwatch(cfg, "once")
        printed = full.stdout + full.stderr
        assert full.code == 1 and "Traceback" not in printed
        assert f"the disk holding the state database {db} is full" in printed
        assert "free some space" in printed
        assert receiver.requests == []

        filler.unlink()
        assert _dump(db) == before
        freed = here(cfg, "once")
        assert freed.code == 0 and "1 event(s)" in freed.stdout and "delivered 1" in freed.stdout
        again = here(cfg, "once")
        assert again.code == 0 and "0 event(s)" in again.stdout and "delivered 0" in again.stdout
    [message] = receiver.received
    assert run_id in message["message"]


def test_it_rides_out_a_full_filesystem_under_the_daemon(
    tmp_path: Path, receiver: Receiver
) -> None:
    """`runwatch run` on a filesystem that fills keeps going, logs what to do, tells the
    admins once that its state cannot be written (straight, not through the outbox on that
    disk) and once that it can again, never that the API is down, and delivers the
    transition exactly once after space is freed."""
    with small_filesystem(tmp_path / "disk", "2m") as disk, Simulator(runs=30, seed=9) as sim:
        db = disk / "state.db"
        cfg = write_config(
            tmp_path,
            sim,
            channels={"hook": receiver.apprise_url("/hook"), "admins": receiver.apprise_url("/ad")},
            rules=[{"name": "all", "match": {}, "notify": ["hook"]}],
            state={"path": str(db)},
            poll={"interval": "100ms"},
            # Self-alerts on: they write to the store every cycle, and a full disk is no reason
            # to tell the admins that the API is down.
            alerts={"notify": ["admins"], "api_down_after": "200ms"},
        )
        with DaemonProcess(cfg) as daemon:
            daemon.wait_for_event("baseline.recorded")
            filler = fill(disk)
            run_id = sim.active_run_ids()[0]
            sim.append_condition(run_id, "Failed", reason="OOM", message=HUGE_MESSAGE)
            daemon.wait_for_event("poll.failed", count=6, error=_says_full)
            down = receiver.wait_for(1, timeout=20)[0]
            filler.unlink()
            receiver.wait_for(3, timeout=20)
            sent_polls = len(daemon.events("poll.done"))
            daemon.wait_for_event("poll.done", count=sent_polls + 3)
            daemon.signal(signal.SIGTERM)
            code = daemon.wait(timeout=20)
    assert code == 0
    assert "Traceback" not in daemon.stderr
    [message] = [m for m in receiver.received if m["path"] == "/hook"]
    assert run_id in message["message"] and "OOM" in message["message"]
    admins = [m for m in receiver.received if m["path"] == "/ad"]
    assert [m["title"] for m in admins] == [
        "🚨 runwatch cannot use its state database",
        "✅ runwatch: its state database works again",
    ]
    assert down == admins[0] and "is full" in str(down["message"])
    assert not any("Vi API" in str(m["title"]) for m in admins)
    full = daemon.wait_for_event("poll.failed", timeout=0, error=_says_full)
    assert str(db) in full["error"] and "free some space" in full["error"]


def _says_full(error: object) -> bool:
    """Whether a poll.failed event's error is the full disk."""
    return "is full" in str(error or "")


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _dump(db: Path) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """Every row of every table, read as an operator would (the WAL included)."""
    tables = [r[0] for r in _query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")]
    return [(t, _query(db, f"SELECT * FROM {t} ORDER BY 1")) for t in sorted(tables)]
