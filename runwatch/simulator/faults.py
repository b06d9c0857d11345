"""Faults: how the simulator misbehaves on purpose, so tests can play a hostile API.

Theory: a `Fault` is a frozen value; `FaultQueue` holds them FIFO, each applied to the next
`count` requests its endpoint matches, after those queued before it. What a kind does:

- status: an error answer (4xx/5xx, JSON body, trace header, optional Retry-After).
- slow: answer normally after `delay` seconds (the wait happens outside the lock).
- drop: close the connection without a byte.
- non_json: a 200 with an HTML body.
- truncated: the first half of the real body, with a Content-Length to match.
- repeat_token: a listing hands back the requested page token as `nextPage` again.
- extra_fields: unknown keys in the envelope and at every level of each document.
- unknown_condition: runs show `UNKNOWN_CONDITION` as their latest condition.
- rewrite: `rewrite(body)` gets the JSON body about to be sent, decoded, and returns what to
  send instead (serialised with `ensure_ascii=True`, so a lone surrogate goes out escaped).
- raw: exactly `status`, `headers` and `body`, nothing added; the connection closes after.
- huge: a 200 of `size` bytes (a JSON-looking prefix, then spaces), streamed in 64 KiB
  chunks from one buffer, so 1 GiB costs no memory; it stops when the client hangs up.
  `chunked=True` sends it without a Content-Length.

A kind that has no meaning for the request it meets (repeat_token on a single run,
unknown_condition on a training project) is used up there and changes nothing.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

from runwatch.core.model import REACHED
from runwatch.simulator.transport import Response

FaultKind = Literal[
    "status",
    "slow",
    "drop",
    "non_json",
    "truncated",
    "repeat_token",
    "extra_fields",
    "unknown_condition",
    "rewrite",
    "raw",
    "huge",
]
FAULT_KINDS = frozenset(
    {
        "status",
        "slow",
        "drop",
        "non_json",
        "truncated",
        "repeat_token",
        "extra_fields",
        "unknown_condition",
        "rewrite",
        "raw",
        "huge",
    }
)
# "list"/"get": the runs listing and one run; "outputs": a run's model outputs;
# "projects"/"project": the training projects listing and one project.
Endpoint = Literal["any", "list", "get", "outputs", "projects", "project"]
ENDPOINTS: tuple[str, ...] = ("any", "list", "get", "outputs", "projects", "project")

UNKNOWN_CONDITION = "Quarantined"  # what an `unknown_condition` fault shows as latest condition

HUGE_CHUNK = 64 * 1024
HUGE_PREFIX = b'{"nextPage":null,"prevPage":null,"items":['


@dataclass(frozen=True, kw_only=True)
class Fault:
    """One misbehaviour, applied to the next matching request(s) (see `Simulator.inject`)."""

    kind: FaultKind
    status: int = 503  # for kind="status" and kind="raw"
    retry_after: str | None = None  # Retry-After value for status faults: "2" or an HTTP date
    delay: float = 0.0  # for kind="slow": seconds before answering normally
    endpoint: Endpoint = "any"
    rewrite: Callable[[Any], Any] | None = None  # for kind="rewrite": body -> body to send
    body: bytes = b""  # for kind="raw"
    headers: tuple[tuple[str, str], ...] = ()  # for kind="raw"
    size: int = 0  # for kind="huge": bytes in the body
    chunked: bool = False  # for kind="huge": no Content-Length, chunked transfer encoding

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(FAULT_KINDS)}")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(
                f"fault endpoint must be one of {', '.join(ENDPOINTS)}, not {self.endpoint!r}"
            )
        if self.kind == "status" and not 400 <= self.status <= 599:
            raise ValueError(f"a status fault needs a 4xx or 5xx status, not {self.status}")
        if self.kind == "raw" and not 200 <= self.status <= 599:
            raise ValueError(f"a raw fault needs a status from 200 to 599, not {self.status}")
        if self.delay < 0:
            raise ValueError("a slow fault's delay cannot be negative")
        if (self.kind == "rewrite") != (self.rewrite is not None) or (
            self.rewrite is not None and not callable(self.rewrite)
        ):
            raise ValueError("a rewrite function goes with kind='rewrite', and it needs one")
        if self.kind != "raw" and (self.body or self.headers):
            raise ValueError("body and headers go with kind='raw' only")
        for name, value in self.headers:
            if not name or any(c in f"{name}{value}" for c in "\r\n"):
                raise ValueError(f"a raw fault's header cannot be empty or span lines: {name!r}")
        if self.kind == "huge" and self.size < 1:
            raise ValueError("a huge fault needs size >= 1 (bytes)")
        if self.kind != "huge" and (self.size or self.chunked):
            raise ValueError("size and chunked go with kind='huge' only")


class FaultQueue:
    """Queued faults, the outage switch and armed repeat tokens; the caller holds the lock."""

    def __init__(self) -> None:
        self._entries: collections.deque[list[Any]] = collections.deque()  # [Fault, remaining]
        self.outage: int | None = None
        self.repeat_armed: set[str] = set()

    def inject(self, fault: Fault, count: int) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        self._entries.append([fault, count])

    def take(self, endpoint: str) -> Fault | None:
        for entry in self._entries:
            fault: Fault = entry[0]
            if fault.endpoint in ("any", endpoint):
                entry[1] -= 1
                if entry[1] == 0:
                    self._entries.remove(entry)
                return fault
        return None

    def clear(self) -> None:
        self._entries.clear()
        self.repeat_armed.clear()
        self.outage = None


# --- documents ------------------------------------------------------------------------------


def add_extra_fields(doc: dict[str, Any]) -> None:
    """Unknown keys at every level of a document, as a newer API version would send."""
    doc["simExtraTop"] = {"introducedIn": "v9", "flags": [1, 2]}
    doc["metadata"]["simExtraMetadata"] = True
    if isinstance(doc.get("spec"), dict):
        doc["spec"]["simExtraSpec"] = "spec-extra"
    status = doc.get("status")
    if isinstance(status, dict):
        status["simExtraStatus"] = ["a", "b"]
        for cond in status.get("conditions", []):
            cond["simExtraCondition"] = {"severity": "info"}
        contents = status.get("contents")
        if isinstance(contents, dict):
            contents["simExtraContents"] = 7
            contents["downloadUrl"]["simExtraDownloadUrl"] = "x"
    if doc.get("kind") == "Run":
        doc["spec"]["flow"]["simExtraFlow"] = 42
        for block in doc["spec"]["flow"]["blocks"]:
            block["simExtraBlock"] = None


def show_unknown_condition(doc: dict[str, Any]) -> None:
    """Make a Run document's latest condition one no client has heard of."""
    if doc.get("kind") != "Run":
        return
    conds = doc["status"]["conditions"]
    if conds:
        conds[-1]["condition"] = UNKNOWN_CONDITION
    else:
        conds.append(
            {
                "condition": UNKNOWN_CONDITION,
                "status": REACHED,
                "lastTransitionTime": doc["metadata"]["timeCreated"],
                "reason": None,
                "message": None,
            }
        )


# --- responses ------------------------------------------------------------------------------


class RewriteFailed(Exception):
    """A rewrite fault's function raised, or returned something that is not JSON."""


def mangle(response: Response, fault: Fault | None) -> Response:
    """The response a body-level fault makes of the one the simulator was about to send."""
    if fault is None:
        return response
    if fault.kind == "non_json":
        body = b"<html><body><h1>502 Bad Gateway</h1><p>upstream error</p></body></html>"
        return Response(status=200, body=body, content_type="text/html; charset=utf-8")
    if fault.kind == "truncated":
        full = response.body or b'{"message": "nothing to truncate"}'
        return Response(status=200, body=full[: len(full) // 2])
    if fault.kind == "rewrite" and fault.rewrite is not None and response.body:
        try:
            rewritten = fault.rewrite(json.loads(response.body))
            body = json.dumps(rewritten, ensure_ascii=True, separators=(",", ":")).encode()
        except Exception as exc:  # a test's function: report whatever it raised
            raise RewriteFailed(f"{type(exc).__name__}: {exc}") from exc
        return replace(response, body=body)
    return response


def raw_response(fault: Fault) -> Response:
    return Response(status=fault.status, body=fault.body, headers=fault.headers, raw=True)


def huge_response(fault: Fault) -> Response:
    size = fault.size

    def chunks() -> Iterator[bytes]:
        head = HUGE_PREFIX[:size]
        yield head
        remaining = size - len(head)
        padding = b" " * HUGE_CHUNK  # one buffer, sent again and again
        while remaining >= HUGE_CHUNK:
            yield padding
            remaining -= HUGE_CHUNK
        if remaining:
            yield padding[:remaining]

    return Response(status=200, stream=chunks, length=None if fault.chunked else size)
