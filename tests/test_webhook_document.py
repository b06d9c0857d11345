"""The signed JSON webhook document: every field of the event, a stable id, and a signature a
receiver checks with the recipe the module documents."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import textwrap
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from http.server import HTTPServer
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runwatch.core import webhook
from runwatch.core.model import Condition, Event
from runwatch.core.render import sample_events
from runwatch.core.webhook import event_id, sign, verify, webhook_document

TRANSITION, NEW, DELETED, OVERDUE = sample_events()
ORG = TRANSITION.organization_id


def document(event: Event, **kwargs: Any) -> dict[str, Any]:
    return json.loads(webhook_document(event, **kwargs))  # type: ignore[no-any-return]


def test_it_writes_every_field_of_an_event() -> None:
    """The document holds the event whole, times as ISO 8601 UTC and as epoch ms."""
    assert document(TRANSITION) == {
        "schema": "runwatch.event/1",
        "id": event_id(TRANSITION.key),
        "kind": "transition",
        "workspace": "prod",
        "organization_id": ORG,
        "run_id": "run_ab12",
        "flow": "yolo-detector",
        "training_project": "traffic-signs",
        "project_name": None,
        "attributes": {"team": "vision"},
        "condition": "Failed",
        "status": "Reached",
        "reason": "OutOfMemory",
        "message": "Container exceeded its memory limit",
        "transition_time": "2024-06-01T11:13:00Z",
        "transition_time_ms": 1_717_240_380_000,
        "previous": {
            "condition": "Pending",
            "status": "Reached",
            "reason": None,
            "message": None,
            "time": "2024-06-01T10:00:02Z",
            "time_ms": 1_717_236_002_000,
        },
        "skipped": [
            {
                "condition": "Running",
                "status": "Reached",
                "reason": None,
                "message": None,
                "time": "2024-06-01T10:01:00Z",
                "time_ms": 1_717_236_060_000,
            }
        ],
        "history": [
            {
                "condition": "Pending",
                "status": "Reached",
                "reason": None,
                "message": None,
                "time": "2024-06-01T10:00:02Z",
                "time_ms": 1_717_236_002_000,
            },
            {
                "condition": "Running",
                "status": "Reached",
                "reason": None,
                "message": None,
                "time": "2024-06-01T10:01:00Z",
                "time_ms": 1_717_236_060_000,
            },
            {
                "condition": "Failed",
                "status": "Reached",
                "reason": "OutOfMemory",
                "message": "Container exceeded its memory limit",
                "time": "2024-06-01T11:13:00Z",
                "time_ms": 1_717_240_380_000,
            },
        ],
        "time_created": "2024-06-01T10:00:00Z",
        "time_created_ms": 1_717_236_000_000,
        "killed_at": "2024-06-01T11:11:40Z",
        "killed_at_ms": 1_717_240_300_000,
        "log": "https://logs.vi.datature.com/run_ab12",
        "generation": 4,
        "console_url": f"https://vi.datature.com/org/{ORG}",
        "detected_at": "2024-06-01T11:13:20Z",
        "detected_at_ms": 1_717_240_400_000,
    }


def test_it_is_compact_json_with_the_schema_first() -> None:
    """No whitespace between tokens; a receiver can dispatch on the schema at once."""
    body = webhook_document(TRANSITION)

    assert body.startswith(b'{"schema":"runwatch.event/1","id":"evt_')
    assert b'", "' not in body and b": " not in body


def test_it_adds_the_overdue_fields_and_the_enrichment_when_present() -> None:
    """An overdue event says which rule, how long and which notice; enrichment is included."""
    overdue, new = document(OVERDUE), document(NEW)

    assert overdue["overdue"] == {"rule": "stuck-pending", "elapsed_s": 9_060, "reminder": 2}
    assert "enrichment" not in overdue and "overdue" not in new
    assert new["project_name"] == "Traffic Signs"
    assert new["enrichment"] == {
        "project_name": "Traffic Signs",
        "epoch": 40,
        "model_id": "out_7f3a",
        "metrics": {
            "mAP": 0.71318,
            "precision": 0.80112,
            "recall": 0.662,
            "images": 1200,
            "converged": True,
            "best": "epoch_38",
            "lr": None,
            "loss": 0.0123456,
        },
    }
    assert list(new["enrichment"]["metrics"]) == [name for name, _ in NEW.enrichment.metrics]  # type: ignore[union-attr]


def test_it_describes_a_deleted_run_by_its_last_known_condition() -> None:
    """A deleted run has no current condition; the document holds the last one known."""
    deleted = document(DELETED)

    assert (deleted["kind"], deleted["condition"], deleted["previous"]["condition"]) == (
        "deleted",
        "Running",
        "Running",
    )


def test_it_links_to_the_run_through_the_workspace_console_template() -> None:
    """`console_url` is formatted like a message's."""
    assert document(TRANSITION, console_url="https://vi.example.com/{run_id}")["console_url"] == (
        "https://vi.example.com/run_ab12"
    )


def test_it_gives_each_event_a_stable_opaque_id() -> None:
    """`evt_` and 32 hex digits of the key's SHA-256: the same on every retry, different per
    event."""
    ids = {event_id(event.key) for event in sample_events()}

    assert len(ids) == 4
    assert all(re.fullmatch("evt_[0-9a-f]{32}", i) for i in ids)
    assert event_id(TRANSITION.key) == event_id(TRANSITION.key)
    assert (
        event_id(TRANSITION.key)
        == "evt_" + hashlib.sha256(TRANSITION.key.encode()).hexdigest()[:32]
    )
    assert ORG not in event_id(TRANSITION.key)


def test_it_signs_the_timestamp_and_the_body_with_hmac_sha256() -> None:
    """The signature is what the documented recipe computes."""
    body = webhook_document(TRANSITION)
    mac = hmac.new(b"s3cret", b"1717240400." + body, hashlib.sha256).hexdigest()

    assert sign("s3cret", 1_717_240_400, body) == f"sha256={mac}"


@pytest.mark.parametrize(
    ("secret", "timestamp", "body", "signature"),
    [
        ("other", 1_700_000_000, b"{}", None),
        ("s3cret", 1_700_000_001, b"{}", None),
        ("s3cret", 1_700_000_000, b"{} ", None),
        ("s3cret", 1_700_000_000, b"{}", "sha256=" + "0" * 64),
        ("s3cret", 1_700_000_000, b"{}", ""),
        ("s3cret", 1_700_000_000, b"{}", "sha256=é\ud800"),
    ],
    ids=["secret", "timestamp", "body", "zeros", "empty", "not-ascii"],
)
def test_it_verifies_only_the_exact_signature(
    secret: str, timestamp: int, body: bytes, signature: str | None
) -> None:
    """A different secret, time or body, or a forged signature, is refused without error."""
    good = sign("s3cret", 1_700_000_000, b"{}")

    assert verify("s3cret", 1_700_000_000, b"{}", good)
    assert not verify(secret, timestamp, body, good if signature is None else signature)


def test_it_survives_lone_surrogates_and_numbers_json_cannot_hold() -> None:
    """Encoding never fails: surrogates become U+FFFD, NaN and infinities strings."""
    assert NEW.enrichment is not None and NEW.current is not None
    event = replace(
        NEW,
        attributes={"k\ud800": "v\udfff"},
        current=replace(NEW.current, message="bad \ud83d half"),
        enrichment=replace(NEW.enrichment, metrics=(("nan", float("nan")), ("inf", float("inf")))),
    )

    doc = json.loads(webhook_document(event).decode("utf-8", "strict"))

    assert doc["attributes"] == {"k\ufffd": "v\ufffd"}
    assert doc["message"] == "bad \ufffd half"
    assert doc["enrichment"]["metrics"] == {"nan": "nan", "inf": "inf"}


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_it_carries_any_text_exactly(text: str) -> None:
    """Whatever the API sent, the document is valid UTF-8 JSON holding that text."""
    assert TRANSITION.current is not None
    event = replace(
        TRANSITION,
        flow_name=text,
        attributes={text: text},
        current=replace(TRANSITION.current, reason=text, condition=text),
    )

    doc = json.loads(webhook_document(event).decode("utf-8", "strict"))

    expected = re.sub("[\ud800-\udfff]", "\ufffd", text)
    assert (doc["flow"], doc["reason"], doc["condition"]) == (expected,) * 3
    assert doc["attributes"] == {expected: expected}


def receiver_from_the_docstring() -> type:
    """The receiver of webhook.py's docstring, as documented, with a known secret."""
    docs = webhook.__doc__ or ""
    code = textwrap.dedent(docs.split("event id::\n", 1)[1])
    namespace: dict[str, Any] = {}
    code = "\n".join(line for line in code.splitlines() if "serve_forever" not in line)
    exec(code.replace("the channel's secret", "s3cret"), namespace)
    return namespace["Hook"]  # type: ignore[no-any-return]


def test_it_documents_a_receiver_that_accepts_only_signed_deliveries() -> None:
    """The docstring's ten-line receiver, run on loopback, accepts a signed POST and refuses
    a tampered one, a stale one and a forged one."""
    server = HTTPServer(("127.0.0.1", 0), receiver_from_the_docstring())
    server.RequestHandlerClass.log_message = lambda *args: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    body = webhook_document(TRANSITION)
    now = int(time.time())

    def post(data: bytes, stamp: int, signature: str) -> int:
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.server_address[1]}/hook",
            data=data,
            headers={
                webhook.EVENT_ID_HEADER: event_id(TRANSITION.key),
                webhook.TIMESTAMP_HEADER: str(stamp),
                webhook.SIGNATURE_HEADER: signature,
                "Content-Type": webhook.CONTENT_TYPE,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as refused:
            return refused.code

    try:
        assert post(body, now, sign("s3cret", now, body)) == 204
        assert post(body + b" ", now, sign("s3cret", now, body)) == 401
        assert post(body, now - 600, sign("s3cret", now - 600, body)) == 401
        assert post(body, now, sign("guess", now, body)) == 401
    finally:
        server.shutdown()
        server.server_close()


async def test_it_documents_the_recipe_the_webhook_sender_follows() -> None:
    """runwatch's own webhook sender, POSTing a composed row, is accepted by the documented
    receiver: the recipe and the sender agree on headers, timestamp and signature."""
    from runwatch.config.settings import WebhookConfig
    from runwatch.delivery.senders import Outgoing
    from runwatch.delivery.webhook import WebhookSender

    server = HTTPServer(("127.0.0.1", 0), receiver_from_the_docstring())
    server.RequestHandlerClass.log_message = lambda *args: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    body = webhook_document(TRANSITION).decode()
    outcomes = []
    try:
        for secret in ("s3cret", "another"):
            sender = WebhookSender(WebhookConfig(url=url, secret=secret))
            message = Outgoing(
                title="", body=body, notify_type="failure", event_keys=[TRANSITION.key]
            )
            outcomes.append(await sender.send(message, timeout=10))
            await sender.aclose()
    finally:
        server.shutdown()
        server.server_close()

    assert [o.verdict for o in outcomes] == ["ok", "permanent"]
    assert "HTTP 401" in outcomes[1].detail


def test_it_keeps_the_condition_in_the_document_as_the_api_sent_it() -> None:
    """Data, not a message: no escaping beyond JSON's, no cut."""
    condition = Condition(
        condition="<b>New</b> *x*", status="Reached", last_transition_time=1, message="m" * 50_000
    )
    doc = document(replace(TRANSITION, current=condition))

    assert (doc["condition"], doc["message"]) == ("<b>New</b> *x*", "m" * 50_000)
