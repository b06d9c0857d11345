"""What delivery asks of a target, and what a target answers.

Theory: a `Sender` delivers one message to one target (one Apprise URL, one webhook, one
Slack channel) and never raises: every outcome is a `SendOutcome`, decided at the edge where
the transport's own errors are understood, like `ViError.permanent` on the API side:

    ok          the target accepted the message
    retry       it did not, and may later (5xx, 429, a connection refused, a timeout before
                the request was sent); `retry_after` when the target said when
    permanent   it never will (a 4xx other than 408/429, a bad token): dead at once
    unknown     the request went out and no answer came back (a timeout after sending, the
                connection lost mid-answer): the target may have it. Retried much later and
                only a few times, then recorded as "possibly delivered", never as dead

`detail` is safe to log and to store: no secret, no URL token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Verdict = Literal["ok", "retry", "permanent", "unknown"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Outgoing:
    """One message as a sender gets it: a row's text, or a digest of several rows."""

    title: str
    body: str
    notify_type: str
    event_keys: Sequence[str] = field(default_factory=tuple)  # the rows it carries
    # The bodies of the rows it carries, oldest first, when a channel coalesces a run's
    # pending rows into one send (the native Slack channel: only the latest state is shown,
    # but each failure among them still gets its thread reply).
    parts: Sequence[str] = field(default_factory=tuple)
    titles: Sequence[str] = field(default_factory=tuple)  # and their titles, likewise


@dataclass(frozen=True, kw_only=True, slots=True)
class SendOutcome:
    verdict: Verdict
    detail: str = ""
    retry_after: float | None = None  # seconds the target asked to wait (Retry-After)

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


class Sender(Protocol):
    """One target; `describe()` names it safely (a URL in privacy form)."""

    def describe(self) -> str: ...

    async def send(self, message: Outgoing, *, timeout: float) -> SendOutcome: ...
