"""Shared test scaffolding: a fake clock, a config written for a simulator, a daemon on it,
and `runwatch` as a subprocess (run to completion, or a `runwatch run` daemon to talk to).

Everything here is real (simulator over loopback, SQLite file, Apprise); only time is
injected, so tests move a clock instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from signal import Signals
from types import TracebackType
from typing import Any

import yaml

from runwatch.config.loading import load_config
from runwatch.config.settings import ChannelConfig, Config, DeliveryConfig
from runwatch.delivery.lanes import ChannelPolicy, build_senders, policies
from runwatch.delivery.senders import Sender
from runwatch.service.daemon import Daemon
from runwatch.simulator.server import Simulator
from runwatch.state.sqlite import SqliteStore
from runwatch.state.store import Lane, OutboxRow


class FakeClock:
    """A `runwatch.clock.Clock` whose time moves only when told to, or when waited on.

    `sleep` and `wait_any` move the time forward by what they wait for, at once (after letting
    the other tasks run one step), unless an awaited event is set first: code under test
    never waits for real time, and a loop with a 30 s interval turns as fast as its I/O.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.mono = 1_000.0
        self.sleeps: list[float] = []  # what `sleep` was asked for, in order

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)
        self.advance(max(0.0, seconds))

    async def wait_any(self, *events: asyncio.Event, timeout: float) -> None:
        await asyncio.sleep(0)
        if not any(event.is_set() for event in events):
            self.advance(max(0.0, timeout))


def write_config(
    tmp_path: Path,
    sim: Simulator,
    *,
    channels: Mapping[str, str | list[str] | dict[str, Any]],
    rules: list[dict[str, Any]] | None = None,
    name: str = "prod",
    **sections: Any,
) -> Path:
    """A config file for one workspace on `sim`; `sections` override poll/delivery/alerts/...

    Defaults suit tests: no pacing between sends, short backoff, a small page size, and no
    digests for channels given by URL (pass a channel's mapping form to have one).
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
        # Tests count messages one by one: channels given by URL get no digest unless asked.
        "channels": {
            name: {"urls": value, "digest": False} if isinstance(value, str | list) else value
            for name, value in channels.items()
        },
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


def apprise_channels(
    urls: Mapping[str, list[str]], **policy: Any
) -> tuple[dict[Lane, Sender], dict[str, ChannelPolicy]]:
    """The senders of Apprise channels, one per URL, and their policies, as a config makes
    them; `policy` sets ChannelConfig fields (digest, min_interval, quiet_hours)."""
    channels = {
        name: ChannelConfig(kind="apprise", urls=tuple(u), **policy) for name, u in urls.items()
    }
    return build_senders(channels), policies(channels, DeliveryConfig(min_interval=0.0))


@contextlib.contextmanager
def daemon_on(config_path: Path, clock: FakeClock | None = None) -> Iterator[Daemon]:
    """An in-process daemon (not started) with its store open; closed on exit."""
    config: Config = load_config(config_path)
    with SqliteStore.open(config.state.sqlite_path()) as store:
        if clock is None:
            yield Daemon(config, store)
        else:
            yield Daemon(config, store, clock=clock)


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


_invoke_lock = threading.Lock()


def invoke(*args: str, env: Mapping[str, str] | None = None) -> Outcome:
    """`runwatch ARGS` run to completion in this process: the real parser, commands and
    logging, with stdout and stderr captured and the environment replaced by `env` (default
    `cli_env()`) for the call. A subprocess costs ~0.5 s of start-up; tests of what a command
    prints and changes call this, tests of the process itself (signals, exit on a bad
    environment) keep `run_cli`. Not for `run`: it installs signal handlers."""
    from runwatch.cli.main import main
    from runwatch.logs import reset_logging

    out, err = io.StringIO(), io.StringIO()
    saved, wanted = dict(os.environ), cli_env() if env is None else dict(env)
    with _invoke_lock, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        os.environ.clear()
        os.environ.update(wanted)
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's refusals and --help
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            os.environ.clear()
            os.environ.update(saved)
            reset_logging()
    return Outcome(code, out.getvalue(), err.getvalue())


class DaemonProcess:
    """`python -m runwatch run` in a subprocess; a thread reads its stderr as JSON log events.

    Every stderr line lands in `stderr`; a JSON object with an "event" in `logs`, anything else
    in `junk`. Waiting is on a condition the reader signals at each line and at the end of the
    stream, so a wait ends as soon as the event is read or the daemon can write no more. As a
    context manager it kills a daemon still running on exit, so a failed test leaves none.
    """

    def __init__(
        self,
        config: Path,
        *extra: str,
        env: Mapping[str, str] | None = None,
        file_limit: int | None = None,
    ) -> None:
        """`file_limit`: the daemon's open-file limit, soft and hard (it cannot raise it)."""
        command = ["run", "-c", str(config), "--log-format", "json", *extra]

        def limit_files() -> None:
            if file_limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (file_limit, file_limit))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runwatch", *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(env),
            preexec_fn=limit_files if file_limit is not None else None,
        )
        self._lines: list[str] = []
        self._logs: list[dict[str, Any]] = []
        self._junk: list[str] = []
        self._ended = False  # stderr read to its end
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            with self._changed:
                self._lines.append(line)
                if isinstance(event, dict) and "event" in event:
                    self._logs.append(event)
                else:
                    self._junk.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        """All of stderr read so far."""
        with self._changed:
            return "".join(self._lines)

    @property
    def logs(self) -> list[dict[str, Any]]:
        with self._changed:
            return list(self._logs)

    @property
    def junk(self) -> list[str]:
        """The stderr lines that are not a JSON log event, newline removed."""
        with self._changed:
            return list(self._junk)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.logs if event["event"] == name]

    def _names(self) -> list[str]:
        return [event["event"] for event in self._logs]

    def wait_for_event(
        self, name: str, timeout: float = 20.0, *, count: int = 1, **fields: Any
    ) -> dict[str, Any]:
        """The `count`-th event called `name` whose fields match `fields` (a callable is a
        predicate on the field's value); fails after `timeout` seconds or once the daemon
        has exited without logging it."""

        def matching() -> list[dict[str, Any]]:
            return [
                event
                for event in self._logs
                if event["event"] == name
                and all(
                    want(event.get(key)) if callable(want) else event.get(key) == want
                    for key, want in fields.items()
                )
            ]

        with self._changed:
            if not self._changed.wait_for(lambda: len(matching()) >= count or self._ended, timeout):
                raise AssertionError(
                    f"no {name} {fields} (#{count}) within {timeout:g}s; logged: {self._names()}"
                )
            found = matching()
        if len(found) < count:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5.0)
            raise AssertionError(
                f"runwatch exited ({self.proc.returncode}) before {name} {fields} (#{count}); "
                f"logged: {self._names()}, and not as JSON: {self._junk}"
            )
        return found[count - 1]

    def peak_rss_kib(self) -> int:
        """The daemon's peak resident set size so far (VmHWM), in KiB."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc")

    def signal(self, sig: Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit status, once the daemon has exited and its stderr is read to the end."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return code

    def kill(self, timeout: float = 20.0) -> int:
        self.proc.kill()
        return self.wait(timeout)

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()  # a no-op signal for a daemon that has exited already


def next_pending(store: SqliteStore, channel: str) -> OutboxRow | None:
    """The channel's oldest pending row, whichever target it is for."""
    rows = store.outbox.rows(states=("pending",), channel=channel, limit=1)
    return rows[0] if rows else None
