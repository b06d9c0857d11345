"""Shared test scaffolding: a fake clock, a config written for a simulator, a daemon on it.

Everything here is real (simulator over loopback, SQLite file, Apprise); only time is
injected, so tests move a clock instead of waiting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
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
