"""Email for real: Apprise's mailto:// through the delivery worker to an SMTP server on loopback."""

from __future__ import annotations

import time
from pathlib import Path

from harness import FakeClock, apprise_channels
from smtp_server import Mailbox

from runwatch.config.settings import DeliveryConfig
from runwatch.core.model import Condition, Event, OutboxItem
from runwatch.delivery.worker import Deliverer
from runwatch.state.sqlite import SqliteStore
from runwatch.state.store import PollCommit

T0 = 1_760_000_000_000


def commit_failures(store: SqliteStore, runs: list[str]) -> None:
    events = [
        Event(
            kind="transition",
            workspace="prod",
            organization_id="org-1",
            run_id=run_id,
            previous=None,
            current=Condition(condition="Failed", status="Reached", last_transition_time=T0),
        )
        for run_id in runs
    ]
    store.commit_poll(
        PollCommit(
            organization_id="org-1",
            polled_at=T0,
            events=events,
            outbox=[
                OutboxItem(
                    event_key=ev.key,
                    channel="oncall",
                    title=f"Run {ev.run_id} failed",
                    body=f"Run **{ev.run_id}** failed: out of memory on node gpu-3",
                    notify_type="failure",
                    run_key=f"org-1/{ev.run_id}",
                )
                for ev in events
            ],
        )
    )


async def test_it_sends_markdown_as_a_multipart_email(
    tmp_path: Path, smtp: tuple[Mailbox, int]
) -> None:
    """The title is the subject, and the body is in both the text and the HTML part."""
    mailbox, port = smtp
    url = f"mailto://127.0.0.1:{port}?from=runwatch@example.com&to=ops@example.com"
    config = DeliveryConfig(timeout=10.0, min_interval=0.0)
    with SqliteStore.open(tmp_path / "state.db") as store:
        deliverer = Deliverer(
            store, *apprise_channels({"oncall": [url]}), config, clock=FakeClock(T0 / 1000)
        )
        commit_failures(store, ["r1"])

        assert await deliverer.deliver_due() == 1

    [envelope] = mailbox.envelopes
    assert (envelope.mail_from, envelope.rcpt_tos) == ("runwatch@example.com", ["ops@example.com"])
    [message] = mailbox.messages()
    assert message["Subject"] == "Run r1 failed"
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    assert "failed: out of memory on node gpu-3" in text.get_content()
    assert "<strong>r1</strong> failed: out of memory on node gpu-3" in html.get_content()


async def test_it_sends_emails_back_to_back_without_apprise_pacing(
    tmp_path: Path, smtp: tuple[Mailbox, int]
) -> None:
    """Apprise's 5.5 s pause between emails is off: runwatch paces channels itself."""
    mailbox, port = smtp
    url = f"mailto://127.0.0.1:{port}?from=runwatch@example.com&to=ops@example.com"
    config = DeliveryConfig(timeout=10.0, min_interval=0.0)
    with SqliteStore.open(tmp_path / "state.db") as store:
        deliverer = Deliverer(
            store, *apprise_channels({"oncall": [url]}), config, clock=FakeClock(T0 / 1000)
        )
        commit_failures(store, ["r1", "r2", "r3"])

        started = time.monotonic()
        assert await deliverer.deliver_due() == 3
        elapsed = time.monotonic() - started

    assert [m["Subject"] for m in mailbox.messages()] == [
        "Run r1 failed",
        "Run r2 failed",
        "Run r3 failed",
    ]
    assert elapsed < 5.0  # Apprise's own pacing would need at least 11 s for three
