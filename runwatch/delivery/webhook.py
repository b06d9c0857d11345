"""The signed JSON webhook: one POST per event, for machines.

Theory: the row's body is the event's JSON document, built before the commit, so every retry
sends the same bytes with the same `X-Runwatch-Event-Id`: a receiver that remembers ids turns
at-least-once into effectively-once. Each attempt carries its own `X-Runwatch-Timestamp` and
`X-Runwatch-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body>` (see
`core.webhook.verify`), so a receiver can refuse replays older than it likes.

Outcomes, read from HTTP itself: 2xx accepted; 429 and 5xx retried (Retry-After honoured);
any other 4xx permanent (the same request is refused again: dead at once, logged with the
status); a connection that could not be made, retried; a request that was sent but not
answered (a read timeout, the connection dropped mid-answer) of unknown outcome. Redirects
are not followed: the body and its signature are for the configured URL only.
"""

from __future__ import annotations

import httpx

from runwatch import __version__
from runwatch.clock import SYSTEM_CLOCK, Clock
from runwatch.config.settings import WebhookConfig
from runwatch.core.webhook import event_id, sign
from runwatch.delivery.senders import Outgoing, SendOutcome
from runwatch.redaction import Redactor, cut
from runwatch.vi.retry import parse_retry_after

_QUOTED = 200  # characters of a receiver's answer quoted in a detail


class WebhookSender:
    """POSTs a row's JSON document, signed, to one URL."""

    def __init__(
        self,
        config: WebhookConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = config.url
        self._secret = config.secret
        self._clock = clock
        self._redact = Redactor([config.secret])
        self._shown = _display(config.url)
        self._http = httpx.AsyncClient(
            headers={"User-Agent": f"runwatch/{__version__}"},
            follow_redirects=False,
            transport=transport,
        )

    def describe(self) -> str:
        return self._shown

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send(self, message: Outgoing, *, timeout: float) -> SendOutcome:
        if len(message.event_keys) != 1:
            return SendOutcome(verdict="permanent", detail="a webhook carries exactly one event")
        body = message.body.encode("utf-8", "replace")
        timestamp = int(self._clock.time())
        headers = {
            "Content-Type": "application/json",
            "X-Runwatch-Event-Id": event_id(message.event_keys[0]),
            "X-Runwatch-Timestamp": str(timestamp),
            "X-Runwatch-Signature": sign(self._secret, timestamp, body),
        }
        try:
            response = await self._http.post(
                self._url, content=body, headers=headers, timeout=httpx.Timeout(timeout)
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            return SendOutcome(verdict="retry", detail=f"{self._shown}: {_name(exc)}")
        except httpx.TransportError as exc:
            # Sent (or partly sent) and no answer: the receiver may have the event.
            return SendOutcome(verdict="unknown", detail=f"{self._shown}: {_name(exc)}")
        except Exception as exc:  # a bug or an odd transport: retried, never the worker's end
            return SendOutcome(verdict="retry", detail=f"{self._shown}: {type(exc).__name__}")
        status = response.status_code
        detail = f"{self._shown}: HTTP {status}"
        text = cut(response.text, _QUOTED, self._redact) if response.content else ""
        if 200 <= status < 300:
            return SendOutcome(verdict="ok", detail=detail)
        if text:
            detail += f" ({text})"
        if status == 429 or status >= 500:
            wait = parse_retry_after(response.headers.get("retry-after"), now=self._clock.time())
            return SendOutcome(verdict="retry", detail=detail, retry_after=wait)
        if status == 408:
            return SendOutcome(verdict="retry", detail=detail)
        return SendOutcome(verdict="permanent", detail=detail)


def _name(exc: BaseException) -> str:
    return type(exc).__name__


def _display(url: str) -> str:
    """The URL without its query, user or password: the path may still hold a token, so only
    its first segment is shown."""
    parsed = httpx.URL(url)
    first = parsed.path.strip("/").split("/")[0]
    path = f"/{first}/…" if first and parsed.path.strip("/") != first else parsed.path
    return f"{parsed.scheme}://{parsed.host}{':' + str(parsed.port) if parsed.port else ''}{path}"
