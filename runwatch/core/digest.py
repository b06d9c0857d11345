"""Digests: several messages of one lane as one (interim; replaced by the messages work)."""

from __future__ import annotations

import collections
from collections.abc import Sequence

from runwatch.core.model import Event
from runwatch.core.render import Flavour, Message


def compose_digest(
    events: Sequence[Event],
    *,
    others: Sequence[str] = (),
    flavour: Flavour = "markdown",
    max_lines: int = 50,
) -> Message:
    runs = {e.run_id for e in events}
    counts = collections.Counter(
        (e.current.condition if e.current else e.kind) for e in events
    )
    what = ", ".join(f"{n} {c}" for c, n in counts.most_common())
    title = f"{len(runs)} runs changed: {what}" if runs else f"{len(others)} messages"
    lines = [
        f"{e.run_id}: {e.previous.condition if e.previous else 'new'} → "
        f"{e.current.condition if e.current else e.kind}"
        for e in events
    ] + list(others)
    body = "\n".join(lines[:max_lines])
    if len(lines) > max_lines:
        body += f"\nand {len(lines) - max_lines} more"
    failed = any(e.current and e.current.condition in ("Failed", "Error") for e in events)
    return Message(title=title, body=body, notify_type="failure" if failed else "info")
