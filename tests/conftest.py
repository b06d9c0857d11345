from __future__ import annotations

from collections.abc import Iterator

import pytest
from receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A loopback HTTP receiver for Apprise json:// deliveries (see tests/receiver.py)."""
    with Receiver() as r:
        yield r
