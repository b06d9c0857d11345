"""How the operator's commands reach the state a daemon is using, and say what they found.

Theory: the operator's commands (`status`, `runs`, `outbox`, `mute`, ...) run beside a
daemon, often as another user, so they read the configuration without its secrets
(`need_secrets=False`: no Vi key, no Apprise URL secrets needed), find the state the same
way the daemon does (`state.path`, or `state.url` for PostgreSQL: `state.open`), take no
writer lock, and never create a state: a command that only looks opens it read-only; one
that changes mutes or outbox rows opens it for short transactions. When there is no state
they say where they looked and how the service's file is found. (A PostgreSQL URL's password
is a secret of the configuration all the same: the operator needs it to connect, and it is
never printed.)
"""

from __future__ import annotations

import os
import pwd
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from runwatch.cli.startup import load
from runwatch.config.settings import Config
from runwatch.state.open import AnyStore, open_existing, open_reader, where

# Where the unit of systemd/README.md keeps the state (StateDirectory=runwatch).
SERVICE_STATE = Path("/var/lib/runwatch/state.db")


def load_config(path: Path) -> Config:
    """The configuration at `path`, without needing any of its secrets."""
    return load(path, need_secrets=False)


def now_ms() -> int:
    return int(time.time() * 1000)


def read(config: Config, out: TextIO = sys.stdout) -> AnyStore | None:
    """The state for reading, or None after saying where none was found."""
    store = open_reader(config)
    if store is None:
        print(no_state(config), file=out)
    return store


def write(config: Config, err: TextIO | None = None) -> AnyStore | None:
    """The state for the operator's short writes, or None after saying none was found."""
    store = open_existing(config)
    if store is None:
        print(f"runwatch: {no_state(config)}; nothing was changed", file=err or sys.stderr)
    return store


def no_state(config: Config) -> str:
    key = "state.path" if config.state.url is None else "state.url"
    source = f"{key} of {config.source}" if config.source else key
    if config.state.url is not None:
        return (
            f"no runwatch state in {where(config)} ({source}): runwatch has not run with "
            "this configuration yet"
        )
    path = config.state.sqlite_path()
    text = f"no state file at {path} ({source}): runwatch has not run with this configuration yet"
    if path != SERVICE_STATE and SERVICE_STATE.exists():
        text += (
            f". The systemd service keeps its state in {SERVICE_STATE}: set state.path to it "
            "in the configuration (see systemd/README.md)"
        )
    return text


def operator(environ: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """Who is acting: the user name, "uid N" without a passwd entry (a DynamicUser=), and the
    user behind sudo when root runs the command through it."""
    env = os.environ if environ is None else environ
    uid = os.getuid() if uid is None else uid
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    sudo = env.get("SUDO_USER")
    if uid == 0 and sudo and sudo != "root":
        return f"{sudo} (via sudo)"
    return name


def iso(ms: int | None) -> str:
    if ms is None:
        return "never"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(ms: int | None, now: int) -> str:
    """How long before `now` `ms` was, as `span` writes it ("never" for None)."""
    return "never" if ms is None else span(max(0, now - ms) // 1000)


def span(seconds: int) -> str:
    """A duration in two units at most: "45s", "3m", "2h 5m", "4d 1h"."""
    for unit, size, smaller, small in (("d", 86_400, "h", 3_600), ("h", 3_600, "m", 60)):
        if seconds >= size:
            big, rest = divmod(seconds, size)
            return f"{big}{unit} {rest // small}{smaller}" if rest // small else f"{big}{unit}"
    return f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"


def cut(text: str | None, width: int) -> str:
    """One line of at most `width` characters ("-" for nothing)."""
    if not text:
        return "-"
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Rows as aligned columns, the first row being the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
