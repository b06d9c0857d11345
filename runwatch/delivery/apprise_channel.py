"""Apprise targets: one sender per URL of a channel, each with its own Apprise object.

One object per URL, because delivery is tracked per target: when a channel's webhook fails
and its email succeeds, the retry goes to the webhook only. Apprise paces each service
itself with a blocking sleep (5.5 s per email); runwatch turns that off
(`request_rate_per_sec = 0`) and paces in the delivery worker, without blocking the loop.

Whether a send succeeded is decided from Apprise's per-service status, never from its log
text. How a failure is retried is read from what Apprise captured of that attempt (at DEBUG,
kept in the result, never logged): an HTTP 4xx other than 408/429 is permanent; a request
that went out without an answer (a read timeout, the connection closed mid-answer) is of
unknown outcome; anything else, a refused connection included, is retried.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Mapping, Sequence

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
from runwatch.delivery.senders import Outgoing, SendOutcome, Verdict
from runwatch.errors import ConfigError

# Apprise stops waiting at `timeout` and reports TIMEOUT; this margin on top of it lets that
# report arrive before our own bound cancels the call.
_TIMEOUT_GRACE = 1.0
_HTTP_ERROR = re.compile(r"error=(\d{3})\b")
# What requests/urllib3/http.client say when a request was sent and no answer came back.
_NO_ANSWER = re.compile(
    r"Read timed out|RemoteDisconnected|Connection aborted|IncompleteRead|"
    r"ChunkedEncodingError|Connection broken|ProtocolError",
    re.IGNORECASE,
)
ALL_URLS = ""  # the target of rows written before per-target delivery: every URL


def url_target(index: int) -> str:
    """The target name of the URL at `index` (0-based) of a channel: its position, "1", "2"...

    By position, not by the URL: a token rotated in place keeps its pending rows (a digest of
    the URL would orphan them), and the state store holds nothing of a URL. Reordering a
    channel's URLs while rows are pending sends them to the URL now at their position.
    """
    return str(index + 1)


class AppriseTarget:
    """One or more Apprise URLs behind one Apprise object: a target of a channel."""

    def __init__(
        self, channel: str, urls: Sequence[str], *, asset: apprise.AppriseAsset, first: int = 0
    ) -> None:
        if isinstance(urls, str):
            raise TypeError("urls must be a sequence of URLs, not one string")
        self.channel = channel
        self._apprise = apprise.Apprise(asset=asset)
        # Apprise's privacy form masks passwords and most tokens but shows some verbatim
        # (json:// and form:// keep the URL path, where webhook tokens live); what a detail
        # or a privacy URL still holds of these is masked before it is logged or stored.
        self._secrets = secret_forms(urls)
        problems: list[str] = []
        for index, url in enumerate(urls, start=first):
            try:
                service = load_service(url, asset=asset)
            except ValueError as exc:
                problems.append(f"channels.{channel}[{index}]: {exc}")
                continue
            # runwatch paces itself; Apprise's own pacing is a blocking sleep per service.
            service.request_rate_per_sec = 0
            self._apprise.add(service)
        if problems:
            raise ConfigError(problems)

    def __repr__(self) -> str:
        return f"AppriseTarget({self.channel!r}, {self.describe()!r})"

    def describe(self) -> str:
        """The target's URLs with their secrets masked, safe to print and log."""
        return ", ".join(self.privacy_urls())

    def privacy_urls(self) -> list[str]:
        # NotifyBase.url is untyped in Apprise; it returns str.
        return [
            redact(service.url(privacy=True), secrets=self._secrets)  # type: ignore[no-untyped-call]
            for service in self._apprise
        ]

    async def send(self, message: Outgoing, *, timeout: float) -> SendOutcome:
        """Send to every URL of this target; never raises (see the module docstring)."""
        try:
            result = await asyncio.wait_for(
                self._apprise.async_notify(
                    body=message.body,
                    title=message.title,
                    notify_type=message.notify_type,
                    body_format=apprise.NotifyFormat.MARKDOWN,
                    timeout=timeout,
                    log_level=logging.DEBUG,
                ),
                timeout + _TIMEOUT_GRACE,
            )
        except asyncio.TimeoutError:
            return SendOutcome(verdict="unknown", detail=f"timed out after {timeout:g}s")
        except Exception as e:  # apprise raises only on misuse; keep delivery alive regardless
            return SendOutcome(verdict="retry", detail=f"Apprise raised {type(e).__name__}")
        try:
            return self._outcome(result, timeout)
        finally:
            result.close()  # releases the temporary storage of the captured logs

    def _outcome(self, result: apprise.AppriseResult, timeout: float) -> SendOutcome:
        services = list(result)
        success = apprise.AppriseResultStatus.SUCCESS
        if not services:
            return SendOutcome(
                verdict="retry", detail=f"no service was notified ({result.status.name})"
            )
        verdicts: list[Verdict] = []
        for service in services:
            if service.status == success:
                verdicts.append("ok")
            elif service.status == apprise.AppriseResultStatus.TIMEOUT:
                verdicts.append("unknown")
            else:
                verdicts.append(_failure_verdict(e.message for e in service.logs()))
        detail = mask_secrets(
            "; ".join(f"{short_form(s.url)}: {s.status.name}" for s in services), self._secrets
        )
        if "unknown" in verdicts and "timed out" not in detail:
            detail = f"no answer within {timeout:g}s: {detail}"
        if all(v == "ok" for v in verdicts) and len(services) == len(self._apprise):
            return SendOutcome(verdict="ok", detail=detail)
        # Several URLs (rows from before per-target delivery): the weakest outcome counts.
        for verdict in ("retry", "unknown", "permanent"):
            if verdict in verdicts:
                return SendOutcome(verdict=verdict, detail=detail)
        return SendOutcome(verdict="retry", detail=detail)


def _failure_verdict(messages: Iterable[str]) -> Verdict:
    text = " ".join(messages)
    code = _HTTP_ERROR.search(text)
    if code is not None:
        status = int(code.group(1))
        return "permanent" if 400 <= status < 500 and status not in (408, 429) else "retry"
    return "unknown" if _NO_ANSWER.search(text) else "retry"


def apprise_targets(channels: Mapping[str, ChannelConfig]) -> dict[tuple[str, str], AppriseTarget]:
    """One target per URL of every Apprise channel, by (channel, target id), and one per
    channel for its rows from before per-target delivery; raises ConfigError naming every
    unusable URL."""
    route_apprise_logging()  # the sends read their own DEBUG records to classify failures
    asset = make_asset()
    built: dict[tuple[str, str], AppriseTarget] = {}
    problems: list[str] = []
    for name, channel in channels.items():
        if channel.kind != "apprise":
            continue
        try:
            for index, url in enumerate(channel.urls):
                built[(name, url_target(index))] = AppriseTarget(
                    name, [url], asset=asset, first=index
                )
            built[(name, ALL_URLS)] = AppriseTarget(name, channel.urls, asset=asset)
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    return built


class _ToRoot(logging.Handler):
    """Hands Apprise's records of WARNING and above to the root logger's handlers."""

    runwatch_forwarder = True  # the logging set-up replaces it with a handler of its own

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger().handle(record)


def route_apprise_logging() -> None:
    """Let Apprise's records reach its per-send capture at DEBUG, and nowhere else below WARNING.

    Below WARNING Apprise logs payloads and header secrets; the delivery worker reads them
    from the result of a send (to tell a refused connection from a request left unanswered)
    and never logs them. So the "apprise" logger is at DEBUG, does not propagate, and every
    handler on it writes WARNING and above only: the logging set-up's own, or one that hands
    those records to the root logger. A handler someone else attached at a lower level keeps
    the logger at WARNING (the captures then see WARNING only). Calling it again is harmless.
    """
    logger = logging.getLogger(apprise.LOGGER_NAME)
    handlers = [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]
    if any(h.level < logging.WARNING for h in handlers):
        if logger.level < logging.WARNING:  # NOTSET (0) included
            logger.setLevel(logging.WARNING)
        return
    if not handlers:
        logger.addHandler(_ToRoot())
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
