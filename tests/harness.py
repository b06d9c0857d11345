"""Shared test scaffolding: a fake clock, a config written for a simulator, a daemon on it.

Everything here is real (simulator over loopback, SQLite file, Apprise); only time is
injected, so tests move a clock instead of waiting.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from runwatch.config import Config, load_config
from runwatch.daemon import Daemon
from runwatch.simulator import Simulator
from runwatch.store import Store


class FakeClock:
    """Wall-clock seconds that move only when told to; also usable as an async sleep."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def write_config(
    tmp_path: Path,
    sim: Simulator,
    *,
    channels: Mapping[str, str | list[str]],
    rules: list[dict[str, Any]] | None = None,
    name: str = "prod",
    **sections: Any,
) -> Path:
    """A config file for one workspace on `sim`; `sections` override poll/delivery/alerts/...

    Defaults suit tests: no pacing between sends, short backoff, a small page size.
    """
    data: dict[str, Any] = {
        "workspaces": [
            {
                "name": name,
                "organization_id": sim.organization_id,
                "secret_key": sim.secret_key,
                "endpoint": sim.url,
            }
        ],
        "poll": {
            "interval": "1s",
            "page_size": 10,
            "request_timeout": "2s",
            "max_attempts": 2,
            "max_retry_time": "5s",
        },
        "state": {"path": str(tmp_path / "state.db")},
        "channels": dict(channels),
        "rules": rules or [{"name": "all", "match": {}, "notify": sorted(channels)}],
        "delivery": {"min_interval": "0s", "initial_backoff": "1s", "max_backoff": "1m"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def daemon_on(config_path: Path, clock: FakeClock | None = None) -> Iterator[Daemon]:
    """An in-process daemon (not started) with its store open; closed on exit."""
    config: Config = load_config(config_path)
    with Store.open(config.state.path) as store:
        if clock is None:
            yield Daemon(config, store)
        else:
            yield Daemon(config, store, clock=clock, sleep=clock.sleep)


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    """Poll `predicate` every 20 ms until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or predicate}")
        time.sleep(0.02)


@dataclass(frozen=True)
class Outcome:
    """What a `runwatch` subprocess left behind."""

    code: int
    stdout: str
    stderr: str

    @property
    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines of stderr (a config error adds one plain line for the operator)."""
        return [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.logs if line.get("event") == name]


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without what would steer runwatch behind a test's back."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNWATCH_", "NOTIFY_"))}
    for name in ("STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0) -> Outcome:
    """Run `python -m runwatch ARGS` to completion (`env`: the whole environment)."""
    proc = subprocess.run(
        [sys.executable, "-m", "runwatch", *args],
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else cli_env(),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)
