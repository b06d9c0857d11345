"""A `console://` Apprise channel that prints notifications to the terminal (demo, debugging).

Registered process-wide with Apprise's decorator before any configuration is validated, so
`console://` is a channel URL like any other.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

_console_stream: list[TextIO] = [sys.stdout]


def register_console_schema(stream: TextIO | None = None) -> None:
    """Register `console://` with Apprise once per process; messages print to `stream`."""
    _console_stream[0] = stream or sys.stdout
    if getattr(register_console_schema, "done", False):
        return
    from apprise.decorators import notify

    from runwatch.config.apprise_plugins import start_empty

    start_empty()  # else registering a schema makes Apprise import every plugin first

    @notify(on="console", name="runwatch console")  # type: ignore[untyped-decorator,no-untyped-call]
    def _console(body: str, title: str, notify_type: str, *args: Any, **kwargs: Any) -> bool:
        out = _console_stream[0]
        rule = "─" * 60
        out.write(f"\n{rule}\n{title}\n{rule}\n{body.strip()}\n")
        out.flush()
        return True

    register_console_schema.done = True  # type: ignore[attr-defined]
