"""Senders that send only while this instance holds their lane (several instances).

Theory: on a PostgreSQL state one instance at a time sends a lane's rows (see
`state.postgres_outbox`). The rows of a pass are read, claimed, then sent one after the
other, which may take a while; an instance paused or cut off in the middle of a pass must
not go on sending rows another instance has taken over since. So each send first asks the
lane fence, which answers from this host's monotonic clock alone (no round trip): from two
thirds of a claim after its last renewal, no. A refused send is reported as a retry that
sent nothing; the row stays pending for whoever holds the lane. What cannot be fenced is a
send already under way when the pause came: that one message may arrive twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from runwatch.delivery.senders import Outgoing, Sender, SendOutcome
from runwatch.state.store import Lane

NOT_HELD = "not sent: this instance's claim on the channel lapsed (another instance sends it)"


class LaneFence(Protocol):
    def holds_lane(self, lane: Lane) -> bool: ...


class FencedSender:
    """A sender that sends only while `fence` says this instance holds `lane`."""

    def __init__(self, lane: Lane, sender: Sender, fence: LaneFence) -> None:
        self.lane = lane
        self.inner = sender
        self._fence = fence

    def describe(self) -> str:
        return self.inner.describe()

    async def send(self, message: Outgoing, *, timeout: float) -> SendOutcome:
        if not self._fence.holds_lane(self.lane):
            return SendOutcome(verdict="retry", detail=NOT_HELD)
        return await self.inner.send(message, timeout=timeout)

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()


def fenced(senders: Mapping[Lane, Sender], fence: LaneFence) -> dict[Lane, Sender]:
    return {lane: FencedSender(lane, sender, fence) for lane, sender in senders.items()}
