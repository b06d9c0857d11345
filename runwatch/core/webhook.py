"""The signed JSON webhook: the document runwatch POSTs for an event, its id and signature.

Theory: the document is data, not a message: every field of the event, as the API sent
it, under a versioned schema (`"schema": "runwatch.event/1"`; a field is only ever added
within a version). It is safe by construction: JSON's own escaping is all it needs, lone
surrogates become U+FFFD (they cannot be encoded as UTF-8) and non-finite numbers strings
(JSON has none), so encoding never fails. The id is derived from the event's key, so a
retried delivery carries the same id and a receiver can drop duplicates.

How a receiver checks a delivery (the README quotes this):

Every POST carries the headers `X-Runwatch-Event-Id` (`evt_` and 32 hex digits, the same
on every retry of one event), `X-Runwatch-Timestamp` (Unix seconds when it was signed) and
`X-Runwatch-Signature` (`sha256=` and the hex HMAC-SHA256, keyed with the channel's
`secret`, of the bytes `f"{timestamp}."` followed by the raw body). A receiver recomputes
the HMAC over the raw body, before parsing it, compares in constant time, refuses a
timestamp more than five minutes from its own clock (a replay), and deduplicates on the
event id::

    import hashlib, hmac, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    SECRET = b"the channel's secret"

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            stamp = self.headers.get("X-Runwatch-Timestamp", "")
            mac = hmac.new(SECRET, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
            given = self.headers.get("X-Runwatch-Signature", "").encode()
            good = hmac.compare_digest(f"sha256={mac}".encode(), given)
            fresh = stamp.isdigit() and abs(time.time() - int(stamp)) < 300
            self.send_response(204 if good and fresh else 401)
            self.end_headers()

    HTTPServer(("127.0.0.1", 8080), Hook).serve_forever()
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re

from runwatch.core.links import console_link
from runwatch.core.model import Condition, Event
from runwatch.core.timing import iso

SCHEMA = "runwatch.event/1"
# The headers delivery/webhook.py sends.
EVENT_ID_HEADER = "X-Runwatch-Event-Id"
TIMESTAMP_HEADER = "X-Runwatch-Timestamp"
SIGNATURE_HEADER = "X-Runwatch-Signature"
CONTENT_TYPE = "application/json"

_SURROGATES = re.compile("[\ud800-\udfff]")


def event_id(event_key: str) -> str:
    """A stable, opaque id for the event with key `event_key`: `evt_` and 32 hex digits."""
    digest = hashlib.sha256(event_key.encode("utf-8", "surrogatepass")).hexdigest()
    return "evt_" + digest[:32]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=` and the hex HMAC-SHA256 of `f"{timestamp}."` + `body`, keyed with `secret`."""
    message = f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: int, body: bytes, signature: str) -> bool:
    """True when `signature` is `sign(secret, timestamp, body)`, compared in constant time.

    The timestamp's freshness is the receiver's to check, against its own clock.
    """
    expected = sign(secret, timestamp, body).encode()
    return hmac.compare_digest(expected, signature.encode("utf-8", "replace"))


def webhook_document(event: Event, *, console_url: str | None = None) -> bytes:
    """The compact JSON document for `event`; `console_url` is the workspace's console link
    template (or a plain URL), None for the default.

    For a deleted run, condition, status, reason, message and transition_time are those last
    known (as in templates).
    """
    last = event.current if event.current is not None else event.previous
    doc: dict[str, object] = {
        "schema": SCHEMA,
        "id": event_id(event.key),
        "kind": event.kind,
        "workspace": event.workspace,
        "organization_id": event.organization_id,
        "run_id": event.run_id,
        "flow": event.flow_name,
        "training_project": event.training_project,
        "project_name": None if event.enrichment is None else event.enrichment.project_name,
        "attributes": dict(event.attributes),
        "condition": None if last is None else last.condition,
        "status": None if last is None else last.status,
        "reason": None if last is None else last.reason,
        "message": None if last is None else last.message,
        **_time("transition_time", None if last is None else last.last_transition_time),
        "previous": None if event.previous is None else _condition(event.previous),
        "skipped": [_condition(c) for c in event.skipped],
        "history": [_condition(c) for c in event.history],
        **_time("time_created", event.time_created or None),
        **_time("killed_at", event.killed_at),
        "log": event.log,
        "generation": event.generation,
        "console_url": console_link(
            console_url, organization_id=event.organization_id, run_id=event.run_id
        ),
        **_time("detected_at", event.detected_at or None),
    }
    if event.kind == "overdue":
        doc["overdue"] = {
            "rule": event.rule,
            "elapsed_s": event.elapsed_s,
            "reminder": event.reminder,
        }
    if event.enrichment is not None:
        e = event.enrichment
        doc["enrichment"] = {
            "project_name": e.project_name,
            "epoch": e.epoch,
            "model_id": e.model_id,
            "metrics": {name: _number(value) for name, value in e.metrics},
        }
    text = json.dumps(_safe(doc), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def _key(secret: str) -> bytes:
    return secret.encode("utf-8", "surrogatepass")


def _time(name: str, epoch_ms: int | None) -> dict[str, object]:
    """`name` as ISO 8601 UTC and `name_ms` as epoch milliseconds."""
    return {name: iso(epoch_ms), f"{name}_ms": epoch_ms}


def _condition(c: Condition) -> dict[str, object]:
    return {
        "condition": c.condition,
        "status": c.status,
        "reason": c.reason,
        "message": c.message,
        **_time("time", c.last_transition_time),
    }


def _number(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": JSON has no such numbers
    return value


def _safe(value: object) -> object:
    """`value` with every string (keys included) encodable as UTF-8."""
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_safe(k): _safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_safe(v) for v in value]
    return value
