"""An SMTP server on loopback for tests: aiosmtpd keeping every message it accepts."""

from __future__ import annotations

import asyncio
import email
from email import policy
from email.message import EmailMessage
from typing import Any, cast

from aiosmtpd.controller import Controller


class Mailbox:
    """An aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def messages(self) -> list[EmailMessage]:
        return [email.message_from_bytes(e.content, policy=policy.default) for e in self.envelopes]


class LoopbackController(Controller):
    """aiosmtpd's Controller on 127.0.0.1 with a free port (port 0, then the one it got)."""

    def _trigger_server(self) -> None:
        # Called once the server listens, before the start-up probe connects to self.port.
        server = cast(asyncio.Server, self.server)
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]
