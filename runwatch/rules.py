"""Which channels hear about an event.

Theory: a rule matches an event when every criterion it names matches (criteria are ANDed,
the values of one criterion are ORed, string criteria are shell globs). An event goes to the
union of the channels of every matching rule, each channel once; when two rules send to the
same channel, the first rule in file order provides the message templates. Deletions are
only sent by rules that name `event: deleted` explicitly: a missing `event` criterion means
"transition or new".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from runwatch.model import Event, EventKind


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


@dataclass(frozen=True, kw_only=True, slots=True)
class Rule:
    name: str
    match: Match
    notify: tuple[str, ...]  # channel names, validated against `channels` at load time
    title: str | None = None  # Jinja2 template source overriding the default title
    body: str | None = None  # Jinja2 template source overriding the default body


@dataclass(frozen=True, kw_only=True, slots=True)
class Route:
    """One delivery an event needs: this channel, with the templates of this rule."""

    channel: str
    rule: Rule


def route(event: Event, rules: tuple[Rule, ...] | list[Rule]) -> list[Route]:
    """The channels `event` goes to, each once, in rule order."""
    raise NotImplementedError


def matches(match: Match, event: Event) -> bool:
    raise NotImplementedError


