"""Which channels hear about an event.

Theory: a rule matches an event when every criterion it names matches (criteria are ANDed,
the values of one criterion are ORed, string criteria are shell globs). An event goes to the
union of the channels of every matching rule, each channel once; when two rules send to the
same channel, the first rule in file order provides the message templates. Deletions are
only sent by rules that name `event: deleted` explicitly: a missing `event` criterion means
"transition or new". A time-in-state rule (`for` / `stalled_for`) never matches a
transition, new or deleted event: it is about time passing, and hears only of `overdue`
(without an `event` criterion too); an overdue event is routed only by the rule that fired
it (`Event.rule`), so two time rules on one condition (30m to Slack, 2h to the pager) each
page at their own time.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from runwatch.core.model import Event, EventKind

# Deletions are opt-in: a rule without an `event` criterion hears of these kinds only.
_DEFAULT_KINDS: tuple[EventKind, ...] = ("transition", "new")
_TIMED_KINDS: tuple[EventKind, ...] = ("overdue",)  # ... and a time-in-state rule of these


@dataclass(frozen=True, kw_only=True, slots=True)
class Match:
    """Criteria of a rule; an empty tuple/mapping means "any"."""

    condition: tuple[str, ...] = ()  # globs on the current condition (or last known, deleted)
    status: tuple[str, ...] = ()  # globs on the current condition's status
    previous: tuple[str, ...] = ()  # globs on the previous condition ("" never matches None)
    workspace: tuple[str, ...] = ()  # globs on the workspace name
    flow: tuple[str, ...] = ()  # globs on the flow name
    training_project: tuple[str, ...] = ()  # globs on the training project
    attributes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    event: tuple[EventKind, ...] = ()  # () means ("transition", "new")
    for_: float | None = None  # seconds in the current condition before an overdue event
    stalled_for: float | None = None  # seconds without any change before an overdue event

    @property
    def timed(self) -> bool:
        """True for a time-in-state rule: it only ever matches overdue events."""
        return self.for_ is not None or self.stalled_for is not None


@dataclass(frozen=True, kw_only=True, slots=True)
class Rule:
    name: str
    match: Match
    notify: tuple[str, ...]  # channel names, validated against `channels` at load time
    title: str | None = None  # Jinja2 template source overriding the default title
    body: str | None = None  # Jinja2 template source overriding the default body
    repeat: float | None = None  # seconds between reminders while a timed rule still holds


@dataclass(frozen=True, kw_only=True, slots=True)
class Templates:
    title: str | None = None  # the default title template of every rule
    body: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Route:
    """One delivery an event needs: this channel, with the templates of this rule."""

    channel: str
    rule: Rule


def route(event: Event, rules: tuple[Rule, ...] | list[Rule]) -> list[Route]:
    """The channels `event` goes to, each once, in rule order."""
    routes: dict[str, Route] = {}
    for rule in rules:
        if event.kind == "overdue" and rule.name != event.rule:
            continue  # another time rule's threshold: not this rule's business
        if matches(rule.match, event):
            for channel in rule.notify:
                # setdefault: the first matching rule that names a channel gives its templates
                routes.setdefault(channel, Route(channel=channel, rule=rule))
    return list(routes.values())


def matches(match: Match, event: Event) -> bool:
    """True when every criterion `match` names accepts `event`."""
    if match.timed and event.kind != "overdue":
        return False  # a time-in-state rule is about time passing, never about a change
    if event.kind not in (match.event or (_TIMED_KINDS if match.timed else _DEFAULT_KINDS)):
        return False
    # A deleted run has no current condition; its criteria look at the last one known.
    last = event.current if event.current is not None else event.previous
    previous = event.previous
    return (
        _accepts(match.condition, None if last is None else last.condition)
        and _accepts(match.status, None if last is None else last.status)
        and (
            not match.previous
            or (previous is not None and _globs(match.previous, previous.condition))
        )
        and _accepts(match.workspace, event.workspace)
        and _accepts(match.flow, event.flow_name)
        and _accepts(match.training_project, event.training_project)
        and all(
            key in event.attributes and _globs(patterns, event.attributes[key])
            for key, patterns in match.attributes.items()
        )
    )


def _accepts(patterns: tuple[str, ...], value: str | None) -> bool:
    """An empty criterion accepts anything; a missing value only the pattern "*"."""
    if not patterns:
        return True
    if value is None:
        return "*" in patterns
    return _globs(patterns, value)


def _globs(patterns: tuple[str, ...], value: str) -> bool:
    return any(_compiled(p)(value) is not None for p in patterns)


@functools.lru_cache(maxsize=1024)
def _compiled(pattern: str) -> Callable[[str], re.Match[str] | None]:
    # fnmatch.fnmatchcase's own semantics (case-sensitive, whole string), compiled once:
    # route() runs for every event against every rule.
    return re.compile(fnmatch.translate(pattern)).match
