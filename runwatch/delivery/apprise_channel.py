"""Apprise channels: one configured channel's URLs behind one Apprise object, built once.

Apprise paces each service itself with a blocking sleep (5.5 s per email); runwatch turns
that off (`request_rate_per_sec = 0`) and paces each channel in the delivery worker instead,
without blocking the event loop. Success is decided from Apprise's per-service results,
never from its log text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import apprise

from runwatch.config.apprise_urls import (
    load_service,
    make_asset,
    mask_secrets,
    redact,
    secret_forms,
    short_form,
)
from runwatch.config.settings import ChannelConfig
from runwatch.errors import ConfigError

# Apprise stops waiting at `timeout` and reports TIMEOUT; this margin on top of it lets that
# report arrive before our own bound cancels the call.
_TIMEOUT_GRACE = 1.0


@dataclass(frozen=True, kw_only=True, slots=True)
class SendResult:
    channel: str
    ok: bool
    detail: str  # per-URL statuses, URLs in privacy form: safe to log and to store


class Channel:
    """One configured channel: its Apprise URLs behind one Apprise object, built once."""

    def __init__(self, name: str, urls: Sequence[str], *, asset: apprise.AppriseAsset) -> None:
        if isinstance(urls, str):
            raise TypeError("urls must be a sequence of URLs, not one string")
        if not urls:
            raise ConfigError([f"channels.{name}: no Apprise URL given"])
        self.name = name
        self._apprise = apprise.Apprise(asset=asset)
        # Apprise's privacy form masks passwords and most tokens but shows some verbatim
        # (json:// and form:// keep the URL path, where webhook tokens live); what a detail
        # or a privacy URL still holds of these is masked before it is logged or stored.
        self._secrets = secret_forms(urls)
        problems: list[str] = []
        for index, url in enumerate(urls):
            where = f"channels.{name}[{index}]"
            try:
                service = load_service(url, asset=asset)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            # runwatch paces each channel itself; Apprise's own pacing is a blocking sleep
            # per service instance (5.5 s per email) that would stall every send.
            service.request_rate_per_sec = 0
            self._apprise.add(service)
        if problems:
            raise ConfigError(problems)

    def __repr__(self) -> str:
        return f"Channel({self.name!r}, {self.privacy_urls()!r})"

    def privacy_urls(self) -> list[str]:
        """The channel's URLs with their secrets masked, safe to print and log."""
        # NotifyBase.url is untyped in Apprise; it returns str.
        return [
            redact(service.url(privacy=True), secrets=self._secrets)  # type: ignore[no-untyped-call]
            for service in self._apprise
        ]

    async def send(self, title: str, body: str, notify_type: str, *, timeout: float) -> SendResult:
        """Send one message to every URL of the channel; ok only if every one succeeded.

        Never raises: whatever goes wrong becomes ok=False with a detail safe to log.
        """
        try:
            result = await asyncio.wait_for(
                self._apprise.async_notify(
                    body=body,
                    title=title,
                    notify_type=notify_type,
                    body_format=apprise.NotifyFormat.MARKDOWN,
                    timeout=timeout,
                ),
                timeout + _TIMEOUT_GRACE,
            )
        except asyncio.TimeoutError:
            return SendResult(channel=self.name, ok=False, detail=f"timed out after {timeout:g}s")
        except Exception as e:  # apprise raises only on misuse; keep delivery alive regardless
            return SendResult(
                channel=self.name, ok=False, detail=f"Apprise raised {type(e).__name__}"
            )
        try:
            # Decided from the per-service statuses, never from Apprise's log text, which
            # can be dropped under load.
            services = list(result)
            success = apprise.AppriseResultStatus.SUCCESS
            ok = (
                result.status == success
                and len(services) == len(self._apprise)
                and all(s.status == success for s in services)
            )
            if services:
                detail = mask_secrets(
                    "; ".join(f"{short_form(s.url)}: {s.status.name}" for s in services),
                    self._secrets,
                )
                if any(s.status == apprise.AppriseResultStatus.TIMEOUT for s in services):
                    detail = f"timed out after {timeout:g}s: {detail}"
            else:
                detail = f"no service was notified ({result.status.name})"
        finally:
            result.close()  # releases the temporary storage of the captured logs
        return SendResult(channel=self.name, ok=ok, detail=detail)


def build_channels(channels: Mapping[str, ChannelConfig]) -> dict[str, Channel]:
    """One Channel per configured Apprise channel; raises ConfigError naming every unusable URL.

    Webhook and Slack channels are not deliverable yet and are left out (see `unsupported`).
    """
    asset = make_asset()
    built: dict[str, Channel] = {}
    problems: list[str] = []
    for name, channel in channels.items():
        if channel.kind != "apprise":
            continue
        try:
            built[name] = Channel(name, channel.urls, asset=asset)
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    return built


def unsupported(channel: ChannelConfig) -> str | None:
    """Why `channel` cannot be delivered to (yet), or None when it can."""
    if channel.kind == "apprise":
        return None
    return f"channel kind {channel.kind} is not supported yet"


def route_apprise_logging() -> None:
    """Keep Apprise's stdlib logger at WARNING or above, its records reaching the root logger.

    Below WARNING Apprise logs payloads and header secrets. If a handler of runwatch's own is
    already attached to the "apprise" logger (the logging set-up does that, with propagation
    off), it is left alone: propagating as well would print every record twice.
    """
    logger = logging.getLogger(apprise.LOGGER_NAME)
    if logger.level < logging.WARNING:  # NOTSET (0) included
        logger.setLevel(logging.WARNING)
    if not any(not isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.propagate = True
