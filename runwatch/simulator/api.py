"""The Vi API over a workspace: routing, credentials, errors, the endpoints, and the path of
one request through faults and counters.

Theory: `Api.answer` runs in handler threads. Under the lock it counts the request, checks
route, method, outage and credentials, and takes the next matching fault; outside the lock
a slow fault waits (on `stopping`, so stop() is not held up); under the lock again the
answer is built from the workspace; then body-level faults apply, and the request is logged
before it is sent. Documents are serialised compactly with `ensure_ascii=True`.

Endpoints (vi-wire-format.md), each with the same credentials, errors and trace header:
- list      GET /workspaces/<org>/runs?p=&s=
- get       GET /workspaces/<org>/runs/<run id>            (ETag, If-None-Match: 304)
- outputs   GET /workspaces/<org>/runs/<run id>/outputs[/<ckpt>]?intent=sdkLocalDeploy
            [&contents=y][&p=&s=]  (a page of Model documents, latest checkpoint last;
            `<ckpt>` is a runOutputId or `epoch_<n>`; a missing or other intent is a 400)
- projects  GET /workspaces/<org>/trainingProjects?p=&s=
- project   GET /workspaces/<org>/trainingProjects/<id>    (ETag, If-None-Match: 304)
"""

from __future__ import annotations

import collections
import json
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import Message
from typing import Any, Literal, NamedTuple

from runwatch.simulator.documents import (
    HEAD_KEY,
    Key,
    deep_copy,
    encode_token,
    model_document,
    page,
    page_size,
    project_document,
    run_document,
)
from runwatch.simulator.faults import (
    Fault,
    FaultQueue,
    RewriteFailed,
    add_extra_fields,
    huge_response,
    mangle,
    raw_response,
    show_unknown_condition,
)
from runwatch.simulator.transport import Response
from runwatch.simulator.workspace import Workspace

EndpointName = Literal["list", "get", "outputs", "projects", "project"]
INTENT = "sdkLocalDeploy"


@dataclass(frozen=True, kw_only=True)
class RequestRecord:
    """One request the simulator received; status 0 means it was answered with no response."""

    method: str
    path: str
    endpoint: Literal["list", "get", "outputs", "projects", "project", "other"]
    status: int
    query: dict[str, str] = field(default_factory=dict)
    fault: str | None = None  # the kind of fault applied to it, if any


class RequestLog:
    """Counts by endpoint (on arrival) and the latest 100,000 answered requests."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.records: collections.deque[RequestRecord] = collections.deque(maxlen=100_000)

    def clear(self) -> None:
        self.counts.clear()
        self.records.clear()


class Route(NamedTuple):
    endpoint: EndpointName
    org: str
    ident: str = ""  # the run id or training project id
    ckpt: str = ""  # one checkpoint under a run's outputs


def route(path: str) -> Route | None:
    parts = path.strip("/").split("/")
    if len(parts) < 3 or parts[0] != "workspaces" or not parts[1]:
        return None
    org = urllib.parse.unquote(parts[1])
    rest = [urllib.parse.unquote(p) for p in parts[3:]]
    if parts[2] == "runs":
        if not rest:
            return Route("list", org)
        if len(rest) == 1 and rest[0]:
            return Route("get", org, rest[0])
        if 2 <= len(rest) <= 3 and rest[0] and rest[1] == "outputs" and all(rest):
            return Route("outputs", org, rest[0], rest[2] if len(rest) == 3 else "")
    elif parts[2] == "trainingProjects":
        if not rest:
            return Route("projects", org)
        if len(rest) == 1 and rest[0]:
            return Route("project", org, rest[0])
    return None


def error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps({"message": message, "code": status}).encode()
    # The trace id a real Google-fronted API sends, for clients to put in their errors.
    # (Not from the seeded rng: the number of errors served must not change later run ids.)
    trace_id = uuid.uuid4()
    trace = (("x-cloud-trace-context", f"{trace_id.hex}/{trace_id.int % 10**12};o=1"),)
    return Response(status=status, body=body, headers=trace + headers)


def _json(value: object, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    body = json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode()
    return Response(status=200, body=body, headers=headers)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    for candidate in header.split(","):
        value = candidate.strip()
        if value.startswith("W/"):
            value = value[2:]
        if value == "*" or value.strip('"') == etag:
            return True
    return False


def project_json(ws: Workspace, org: str, project_id: str) -> dict[str, Any]:
    """A project's document: its runs newest first, and every output of theirs."""
    project = ws.project(project_id)
    runs = sorted((ws.records[r] for r in project.runs), key=lambda r: r.key)
    outputs = [o.output_id for r in runs for o in ws.outputs(r.run_id)]
    return project_document(project, org, runs, outputs)


def _faulted(doc: dict[str, Any], fault: Fault | None) -> dict[str, Any]:
    """The document as a document-level fault shows it (a copy when it changes)."""
    if fault is None or fault.kind not in ("extra_fields", "unknown_condition"):
        return doc
    doc = deep_copy(doc)
    if fault.kind == "extra_fields":
        add_extra_fields(doc)
    else:
        show_unknown_condition(doc)
    return doc


class Api:
    """Answers requests for one organization's workspace (see the module docstring)."""

    def __init__(
        self,
        *,
        workspace: Workspace,
        faults: FaultQueue,
        log: RequestLog,
        lock: threading.Lock,
        stopping: threading.Event,
        org: str,
        secret_key: str,
        page_size_cap: int,
    ) -> None:
        self._ws = workspace
        self._faults = faults
        self._log = log
        self._lock = lock
        self._stopping = stopping
        self._org = org
        self._secret_key = secret_key
        self._cap = page_size_cap

    def answer(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: Message,
        send: Callable[[Response], None],
    ) -> None:
        """Work out and send the answer to one request; record it."""
        found = route(path)
        endpoint = found.endpoint if found else "other"
        fault: Fault | None = None
        response: Response | None = None
        with self._lock:
            self._log.counts["any"] += 1
            if found is not None:
                self._log.counts[endpoint] += 1
            if found is None:
                response = error(404, f"no such resource: {path}")
            elif method != "GET":
                response = error(405, f"method {method} is not allowed here")
            elif self._faults.outage is not None:
                response = error(self._faults.outage, "the service is unavailable (outage)")
            else:
                response = self._check_auth(found.org, headers)
                if response is None:
                    fault = self._faults.take(endpoint)

        if fault is not None and fault.kind == "slow" and self._stopping.wait(fault.delay):
            response = Response(status=0)  # stopping: drop instead of answering
        if fault is not None and fault.kind == "drop":
            response = Response(status=0)
        elif fault is not None and fault.kind == "status":
            extra = (("Retry-After", fault.retry_after),) if fault.retry_after else ()
            response = error(fault.status, f"injected HTTP {fault.status}", extra)
        elif fault is not None and fault.kind == "raw":
            response = raw_response(fault)
        elif fault is not None and fault.kind == "huge":
            response = huge_response(fault)

        if response is None:
            assert found is not None
            with self._lock:
                response = self._endpoint(found, query, headers, fault)
            try:
                response = mangle(response, fault)
            except RewriteFailed as exc:
                response = error(500, f"the rewrite fault's function failed: {exc}")

        with self._lock:
            self._log.records.append(
                RequestRecord(
                    method=method,
                    path=path,
                    endpoint=endpoint,
                    status=response.status,
                    query=query,
                    fault=fault.kind if fault else None,
                )
            )
        send(response)

    def _check_auth(self, path_org: str, headers: Message) -> Response | None:
        authorization = headers.get("Authorization") or ""
        header_org = headers.get("Organization-Id")
        if authorization != f"Bearer {self._secret_key}":
            # Never echo what was sent: it may be a real key.
            return error(401, "missing or invalid secret key")
        if header_org != self._org:
            return error(401, "the secret key is not valid for this organization")
        if path_org != header_org:
            return error(403, f"no access to workspace {path_org}")
        return None

    def _endpoint(
        self, found: Route, query: dict[str, str], headers: Message, fault: Fault | None
    ) -> Response:
        ws, org = self._ws, self._org
        if found.endpoint == "list":
            return self._listing(
                ws.order, query, fault, lambda k: run_document(ws.records[k[1]], org)
            )
        if found.endpoint == "get":
            record = ws.records.get(found.ident)
            if record is None:
                return error(404, f"run {found.ident} not found")
            return self._one(run_document(record, org), record.etag, headers, fault)
        if found.endpoint == "outputs":
            return self._outputs(found, query, fault)
        if found.endpoint == "projects":
            return self._listing(
                ws.project_order, query, fault, lambda k: project_json(ws, org, k[1])
            )
        project = ws.projects.get(found.ident)
        if project is None:
            return error(404, f"training project {found.ident} not found")
        return self._one(project_json(ws, org, found.ident), project.etag, headers, fault)

    def _one(
        self, doc: dict[str, Any], etag: str, headers: Message, fault: Fault | None
    ) -> Response:
        etag_header = (("ETag", f'"{etag}"'),)
        if _etag_matches(headers.get("If-None-Match"), etag):
            return Response(status=304, headers=etag_header)
        return _json(_faulted(doc, fault), etag_header)

    def _outputs(self, found: Route, query: dict[str, str], fault: Fault | None) -> Response:
        intent = query.get("intent")
        if intent != INTENT:
            hint = " (a second '?' in the query?)" if intent and "?" in intent else ""
            return error(400, f"intent must be {INTENT}, not {intent!r}{hint}")
        run_id = found.ident
        if run_id not in self._ws.records:
            return error(404, f"run {run_id} not found")
        outputs = self._ws.outputs(run_id)
        contents = query.get("contents") == "y"
        now = self._ws.now_ms()

        def build(output_index: int) -> dict[str, Any]:
            output = outputs[output_index]
            return model_document(output, run_id, self._org, contents=contents, now_ms=now)

        if found.ckpt:
            for i, output in enumerate(outputs):
                named = f"epoch_{output.epoch}" if output.epoch is not None else None
                if found.ckpt in (output.output_id, named):
                    envelope = {"nextPage": None, "prevPage": None, "items": [build(i)]}
                    return self._envelope(envelope, fault, [])
            return error(404, f"run {run_id} has no checkpoint {found.ckpt}")
        keys = [(i, output.output_id) for i, output in enumerate(outputs)]
        return self._listing(keys, query, fault, lambda k: build(k[0]))

    def _listing(
        self,
        order: Sequence[Key],
        query: dict[str, str],
        fault: Fault | None,
        build: Callable[[Key], dict[str, Any]],
    ) -> Response:
        size = page_size(query, self._cap)
        if size is None:
            return error(400, "page size s must be a positive integer")
        token = query.get("p") or None
        found = page(order, token, size)
        if found is None:
            return error(400, "invalid page token p")
        keys, next_page, prev_page = found
        armed = self._faults.repeat_armed
        if token is not None and token in armed:
            armed.discard(token)
            next_page = token
        if fault is not None and fault.kind == "repeat_token":
            if token is not None:
                next_page = token
            else:
                # Page 1 has no token to repeat: hand out one that the next page repeats.
                next_page = next_page or encode_token("n", HEAD_KEY)
                armed.add(next_page)
        items = [build(key) for key in keys]
        envelope = {"nextPage": next_page, "prevPage": prev_page, "items": items}
        return self._envelope(envelope, fault, order)

    @staticmethod
    def _envelope(envelope: dict[str, Any], fault: Fault | None, order: Sequence[Key]) -> Response:
        envelope["items"] = [_faulted(doc, fault) for doc in envelope["items"]]
        if fault is not None and fault.kind == "extra_fields":
            envelope["simExtraEnvelope"] = {"totalSize": len(order)}
        return _json(envelope)
