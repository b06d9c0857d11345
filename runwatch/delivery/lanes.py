"""From the configured channels to lanes: one sender per target, one policy per channel.

A lane is where one outbox row goes: (channel, target). An Apprise channel has a lane per
URL (and one for its rows from before per-target delivery, which go to every URL); a webhook
channel has one lane, "webhook"; a Slack channel one, "slack". The policy says how a
channel's lanes send: in which markup, paced how, digested or not, quiet when, and whether a
run's pending rows go as one send (Slack: one edit of the run's message shows them all; its
sender paces its own posts, so its `min_interval` is 0 unless the channel sets one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from runwatch.clock import SYSTEM_CLOCK, Clock
from runwatch.config.settings import ChannelConfig, DeliveryConfig, DigestConfig, QuietHours
from runwatch.core.render import Flavour, flavour_for
from runwatch.delivery.apprise_channel import apprise_targets, url_target
from runwatch.delivery.senders import Sender
from runwatch.delivery.slack import MessageBook, SlackSender
from runwatch.delivery.webhook import WebhookSender
from runwatch.state.store import Lane

WEBHOOK_TARGET = "webhook"
SLACK_TARGET = "slack"


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelPolicy:
    flavour: Flavour
    min_interval: float  # seconds between two messages on one lane
    digest: DigestConfig | None = None
    quiet_hours: QuietHours | None = None
    coalesce: bool = False  # a run's due rows go as one send carrying all (native Slack)


def targets_of(channel: ChannelConfig) -> tuple[str, ...]:
    """The target ids a new message for `channel` is written for, one outbox row each."""
    if channel.kind == "apprise":
        return tuple(url_target(i) for i in range(len(channel.urls)))
    if channel.kind == "webhook":
        return (WEBHOOK_TARGET,)
    return (SLACK_TARGET,)


def flavour_of(channel: ChannelConfig) -> Flavour:
    return flavour_for(list(channel.urls)) if channel.kind == "apprise" else "markdown"


def policies(
    channels: Mapping[str, ChannelConfig], delivery: DeliveryConfig
) -> dict[str, ChannelPolicy]:
    return {
        name: ChannelPolicy(
            flavour=flavour_of(channel),
            min_interval=(
                channel.min_interval
                if channel.min_interval is not None
                else 0.0
                if channel.kind == "slack"
                else delivery.min_interval
            ),
            digest=channel.digest,
            quiet_hours=channel.quiet_hours,
            coalesce=channel.kind == "slack",
        )
        for name, channel in channels.items()
    }


def build_senders(
    channels: Mapping[str, ChannelConfig],
    *,
    clock: Clock = SYSTEM_CLOCK,
    store: MessageBook | None = None,
) -> dict[Lane, Sender]:
    """Every lane's sender; raises ConfigError naming every unusable Apprise URL.

    `store` keeps where each run's Slack message is; without one (notify-test) a Slack
    sender remembers only until it is closed.
    """
    senders: dict[Lane, Sender] = dict(apprise_targets(channels))
    for name, channel in channels.items():
        if channel.kind == "webhook" and channel.webhook is not None:
            senders[(name, WEBHOOK_TARGET)] = WebhookSender(channel.webhook, clock=clock)
        if channel.kind == "slack" and channel.slack is not None:
            senders[(name, SLACK_TARGET)] = SlackSender(
                name, channel.slack, book=store, clock=clock
            )
    return senders


def unsupported(channel: ChannelConfig) -> str | None:
    """Why `channel` cannot be delivered to (yet), or None when it can."""
    if channel.kind in ("apprise", "webhook", "slack"):
        return None
    return f"channel kind {channel.kind} is not supported yet"  # a kind added to the config


async def close_senders(senders: Mapping[Lane, Sender]) -> None:
    for sender in senders.values():
        close = getattr(sender, "aclose", None)
        if close is not None:
            await close()
