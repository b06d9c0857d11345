"""From events to outbox rows: route each event, render its message once per channel, one
row per target.

Rendering happens here, before the commit, so the outbox holds the exact text to send: a
reload of templates never changes a message already promised, and delivery needs nothing
but the row. A Slack channel's row holds its message as Block Kit JSON (a fixed layout:
templates set its title, which listings show, not its blocks). A channel with several
targets (an Apprise channel's URLs) gets one row per target, all with the same text, so
each target's delivery is tracked on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from runwatch.core.links import console_link
from runwatch.core.model import Event, OutboxItem
from runwatch.core.render import Flavour, render
from runwatch.core.rules import Rule, Templates, route
from runwatch.core.slack_blocks import slack_row
from runwatch.core.webhook import webhook_document


@dataclass(frozen=True, kw_only=True, slots=True)
class Destination:
    """How a channel's rows are written: in which markup (or as a webhook's JSON document,
    or as a Slack message's blocks: `core.slack_blocks`), and for which targets."""

    flavour: Flavour | Literal["webhook", "slack"]
    targets: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkspaceStyle:
    """What a workspace's configuration says about its messages."""

    console_url: str | None = None  # a template with {organization_id} and {run_id}
    max_metrics: int = 6  # model metrics shown in a default message


def outbox_items(
    events: Iterable[Event],
    *,
    rules: Sequence[Rule],
    templates: Templates,
    destinations: Mapping[str, Destination],
    workspaces: Mapping[str, WorkspaceStyle] | None = None,  # by workspace name
) -> list[OutboxItem]:
    items: list[OutboxItem] = []
    for event in events:
        style = (workspaces or {}).get(event.workspace) or WorkspaceStyle()
        link = console_link(
            style.console_url, organization_id=event.organization_id, run_id=event.run_id
        )
        last = event.current if event.current is not None else event.previous
        for r in route(event, tuple(rules)):
            destination = destinations.get(r.channel)
            if destination is None or not destination.targets:
                continue
            flavour = destination.flavour
            message = render(
                event,
                title=r.rule.title or templates.title,
                body=r.rule.body or templates.body,
                flavour="markdown" if flavour == "webhook" or flavour == "slack" else flavour,
                console_url=style.console_url,
                max_metrics=style.max_metrics,
            )
            body = message.body
            if flavour == "webhook":
                body = webhook_document(event, console_url=link).decode()
            elif flavour == "slack":  # the title stays the rendered one: listings show it
                body = slack_row(event, console_url=link)
            for target in destination.targets:
                items.append(
                    OutboxItem(
                        event_key=event.key,
                        channel=r.channel,
                        target=target,
                        title=message.title,
                        body=body,
                        notify_type=message.notify_type,
                        run_key=f"{event.organization_id}/{event.run_id}",
                        condition=None if last is None else last.condition,
                    )
                )
    return items
