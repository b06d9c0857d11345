"""The signed JSON webhook: the document, its event id and its signature (interim; replaced by
the messages work)."""

from __future__ import annotations

import hashlib
import hmac
import json

from runwatch.core.model import Event

SCHEMA = "runwatch.event/1"


def event_id(event_key: str) -> str:
    return "evt_" + hashlib.sha256(event_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: int, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def webhook_document(event: Event, *, console_url: str) -> bytes:
    current = event.current or event.previous
    doc = {
        "schema": SCHEMA,
        "kind": event.kind,
        "workspace": event.workspace,
        "organization_id": event.organization_id,
        "run_id": event.run_id,
        "condition": None if current is None else current.condition,
        "status": None if current is None else current.status,
        "previous": None if event.previous is None else event.previous.condition,
        "console_url": console_url,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()
