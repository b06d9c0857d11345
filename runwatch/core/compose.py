"""From events to outbox rows: route each event, render its message once per channel.

Rendering happens here, before the commit, so the outbox holds the exact text to send: a
reload of templates never changes a message already promised, and delivery needs nothing
but the row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from runwatch.core.model import Event, OutboxItem
from runwatch.core.render import Flavour, render
from runwatch.core.rules import Rule, Templates, route


def outbox_items(
    events: Iterable[Event],
    *,
    rules: Sequence[Rule],
    templates: Templates,
    flavours: Mapping[str, Flavour],
) -> list[OutboxItem]:
    items: list[OutboxItem] = []
    for event in events:
        for r in route(event, tuple(rules)):
            message = render(
                event,
                title=r.rule.title or templates.title,
                body=r.rule.body or templates.body,
                flavour=flavours.get(r.channel, "markdown"),
            )
            items.append(
                OutboxItem(
                    event_key=event.key,
                    channel=r.channel,
                    title=message.title,
                    body=message.body,
                    notify_type=message.notify_type,
                    run_key=f"{event.organization_id}/{event.run_id}",
                )
            )
    return items
