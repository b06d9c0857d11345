"""Mutes: an operator's "not now" for a run, a project, a flow or a workspace. Pure.

Theory: a mute names what it silences the way a rule's match does: every criterion it names
must accept the event (criteria ANDed), the values of one criterion are alternatives (ORed);
runs and workspaces by name, projects and flows by shell glob. It may be limited to one
channel, and it holds until `until` (at most `MAX_MUTE_S` after it was made): it expires by
itself. An event a mute silences is still recorded, and its outbox row is written in state
"muted": kept and counted, never sent, and not sent when the mute ends either (a mute means
"not now", not "later"). Mutes live in the state store, and the poll cycle reads the active
ones at every poll, so `runwatch mute` takes effect in a running daemon at its next poll.
Messages queued before the mute are not touched (`runwatch outbox drop` is for those), and
runwatch's alerts about itself are never muted.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runwatch.core.model import Event, OutboxItem

MAX_MUTE_S = 30 * 86_400  # the longest a mute may last: a forgotten one must not be forever


@dataclass(frozen=True, kw_only=True, slots=True)
class Mute:
    """What to silence, where, until when, and who asked why."""

    id: int = 0  # given by the store
    runs: tuple[str, ...] = ()  # run ids
    projects: tuple[str, ...] = ()  # globs on the training project (its id or its name)
    flows: tuple[str, ...] = ()  # globs on the flow name
    workspaces: tuple[str, ...] = ()  # configured workspace names
    channel: str | None = None  # None: every channel
    created_at: int  # epoch ms
    until: int  # epoch ms; the mute is over from then on
    reason: str | None = None
    who: str = ""  # the operator's user name

    def active(self, now_ms: int) -> bool:
        return now_ms < self.until

    def what(self) -> str:
        """What it silences, in words: "run r1, r2; flow yolo-*" (and where, when limited)."""
        parts = [
            f"{label} {', '.join(values)}"
            for label, values in (
                ("run", self.runs),
                ("project", self.projects),
                ("flow", self.flows),
                ("workspace", self.workspaces),
            )
            if values
        ]
        where = f" on channel {self.channel}" if self.channel is not None else ""
        return "; ".join(parts) + where


def silences(mute: Mute, event: Event, channel: str, now_ms: int) -> bool:
    """Whether `mute` silences `event` on `channel` at `now_ms`."""
    if not mute.active(now_ms) or (mute.channel is not None and mute.channel != channel):
        return False
    if not (mute.runs or mute.projects or mute.flows or mute.workspaces):
        return False  # a mute of nothing (the store refuses one) silences nothing
    project_names = [
        name
        for name in (
            event.training_project,
            None if event.enrichment is None else event.enrichment.project_name,
        )
        if name is not None
    ]
    return (
        (not mute.runs or event.run_id in mute.runs)
        and (not mute.workspaces or event.workspace in mute.workspaces)
        and (not mute.flows or _globs(mute.flows, [event.flow_name] if event.flow_name else []))
        and (not mute.projects or _globs(mute.projects, project_names))
    )


def apply_mutes(
    items: Sequence[OutboxItem], events: Iterable[Event], mutes: Sequence[Mute], now_ms: int
) -> list[OutboxItem]:
    """`items` (the outbox rows of `events`) with those a mute silences in state "muted"."""
    active = [m for m in mutes if m.active(now_ms)]
    if not active or not items:
        return list(items)
    by_key = {event.key: event for event in events}
    result = []
    for item in items:
        event = by_key.get(item.event_key)
        if event is not None and any(silences(m, event, item.channel, now_ms) for m in active):
            item = dataclasses.replace(item, state="muted")
        result.append(item)
    return result


def _globs(patterns: Sequence[str], values: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(v, p) for p in patterns for v in values)
