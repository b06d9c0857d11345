from __future__ import annotations

from collections.abc import Iterator

import pytest
from receiver import Receiver
from smtp_server import LoopbackController, Mailbox


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A loopback HTTP receiver for Apprise json:// deliveries (see tests/receiver.py)."""
    with Receiver() as r:
        yield r


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    """An SMTP server on loopback (see tests/smtp_server.py): its mailbox and its port."""
    mailbox = Mailbox()
    controller = LoopbackController(mailbox, hostname="127.0.0.1", port=0)
    controller.start()
    try:
        yield mailbox, controller.port
    finally:
        controller.stop()
