"""The simulator playing a hostile API: every fault kind on the outputs and training-project
endpoints, and the rewrite, raw and huge faults, over real loopback HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from harness import FakeClock, wait_until

from runwatch.core.model import SUCCEEDED
from runwatch.simulator import Fault, Simulator
from runwatch.simulator.faults import HUGE_PREFIX

MiB = 1024 * 1024
GiB = 1024 * MiB


def client_for(sim: Simulator, **kw: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {sim.secret_key}", "Organization-Id": sim.organization_id}
    return httpx.Client(base_url=sim.url, headers=headers, **kw)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(runs=80, active=4, seed=7, clock=FakeClock()) as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with client_for(sim) as c:
        yield c


def path_for(sim: Simulator, endpoint: str) -> str:
    org = sim.organization_id
    run_id = next(
        r for r in sim.run_ids() if sim.latest_condition(r) == SUCCEEDED and sim.outputs(r)
    )
    return {
        "list": f"/workspaces/{org}/runs?s=5",
        "get": f"/workspaces/{org}/runs/{run_id}",
        "outputs": f"/workspaces/{org}/runs/{run_id}/outputs?intent=sdkLocalDeploy&contents=y",
        "projects": f"/workspaces/{org}/trainingProjects",
        "project": f"/workspaces/{org}/trainingProjects/{sim.project_ids()[0]}",
    }[endpoint]


NEW_ENDPOINTS = ["outputs", "projects", "project"]


def strip_extras(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_extras(v) for k, v in value.items() if not k.startswith("simExtra")}
    if isinstance(value, list):
        return [strip_extras(v) for v in value]
    return value


def objects_of(doc: Any) -> Iterator[dict[str, Any]]:
    """Every struct-like object of a document (not free-form maps such as metrics)."""
    if isinstance(doc, list):
        for item in doc:
            yield from objects_of(item)
        return
    if not isinstance(doc, dict):
        return
    yield doc
    for key, value in doc.items():
        free = ("attributes", "evaluationMetrics", "tolerations", "settings", "style")
        if key not in free and not key.startswith("simExtra"):
            yield from objects_of(value)


# --- the existing kinds on the new endpoints ------------------------------------------------


@pytest.mark.parametrize("endpoint", NEW_ENDPOINTS)
def test_it_fails_only_the_faults_endpoint(
    sim: Simulator, client: httpx.Client, endpoint: str
) -> None:
    """A status fault for a new endpoint leaves the runs listing alone and hits that endpoint."""
    sim.inject(Fault(kind="status", status=429, retry_after="3", endpoint=endpoint))  # type: ignore[arg-type]
    assert client.get(path_for(sim, "list")).status_code == 200
    failed = client.get(path_for(sim, endpoint))
    assert failed.status_code == 429 and failed.headers["Retry-After"] == "3"
    assert failed.json()["message"] and failed.headers["x-cloud-trace-context"]
    assert client.get(path_for(sim, endpoint)).status_code == 200
    assert [r.fault for r in sim.requests_log()] == [None, "status", None]


@pytest.mark.parametrize("endpoint", NEW_ENDPOINTS)
def test_it_mangles_the_new_endpoints_bodies(
    sim: Simulator, client: httpx.Client, endpoint: str
) -> None:
    """drop, non_json, truncated and slow work on the new endpoints as on the runs ones."""
    url = path_for(sim, endpoint)
    full = client.get(url).content
    sim.inject(Fault(kind="drop", endpoint=endpoint))  # type: ignore[arg-type]
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(url)
    sim.inject(Fault(kind="non_json"))
    html = client.get(url)
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    sim.inject(Fault(kind="slow", delay=0.01))
    assert client.get(url).status_code == 200
    sim.inject(Fault(kind="truncated"))
    cut = client.get(url).content
    assert cut == full[: len(full) // 2]
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut)
    faults = [r.fault for r in sim.requests_log()]
    assert faults == [None, "drop", "non_json", "slow", "truncated"]


@pytest.mark.parametrize("endpoint", NEW_ENDPOINTS)
def test_it_adds_unknown_fields_to_every_level_of_the_new_documents(
    sim: Simulator, client: httpx.Client, endpoint: str
) -> None:
    """extra_fields puts unknown keys in every object of Model and TrainingProject documents."""
    url = path_for(sim, endpoint)
    sim.inject(Fault(kind="extra_fields"))
    odd = client.get(url).json()
    normal = client.get(url).json()
    for obj in objects_of(odd):
        assert any(k.startswith("simExtra") for k in obj), obj
    assert strip_extras(odd) == normal


def test_it_leaves_documents_without_conditions_alone_on_unknown_condition(
    sim: Simulator, client: httpx.Client
) -> None:
    """unknown_condition is used up by a project request and changes nothing there."""
    url = path_for(sim, "project")
    normal = client.get(url).json()
    sim.inject(Fault(kind="unknown_condition"))
    assert client.get(url).json() == normal
    assert sim.requests_log()[-1].fault == "unknown_condition"


@pytest.mark.parametrize("endpoint", ["outputs", "projects"])
def test_it_repeats_page_tokens_of_the_new_listings(sim: Simulator, endpoint: str) -> None:
    """repeat_token makes the outputs and projects listings hand back the same token."""
    run_id = sim.run_ids()[0]
    sim.set_outputs(run_id, [{"epoch": e} for e in range(1, 6)])
    org = sim.organization_id
    url, params = (
        (f"/workspaces/{org}/runs/{run_id}/outputs", {"intent": "sdkLocalDeploy", "s": 2})
        if endpoint == "outputs"
        else (f"/workspaces/{org}/trainingProjects", {"s": 1})
    )
    with client_for(sim) as client:
        token = client.get(url, params=params).json()["nextPage"]
        sim.inject(Fault(kind="repeat_token"))
        assert client.get(url, params={**params, "p": token}).json()["nextPage"] == token


# --- rewrite --------------------------------------------------------------------------------


def test_it_sends_what_a_rewrite_returns(sim: Simulator, client: httpx.Client) -> None:
    """rewrite can empty a page, move a key and lower a generation, once each."""
    run_url = path_for(sim, "get")
    sim.inject(Fault(kind="rewrite", rewrite=lambda body: {"items": [], "nextPage": None}))
    assert client.get(path_for(sim, "list")).json() == {"items": [], "nextPage": None}

    def move_run_id(doc: Any) -> Any:
        doc["id"] = doc.pop("runId")
        return doc

    sim.inject(Fault(kind="rewrite", rewrite=move_run_id, endpoint="get"))
    moved = client.get(run_url).json()
    assert "runId" not in moved and moved["id"] == run_url.rsplit("/", 1)[1]

    def older(page: Any) -> Any:
        for doc in page["items"]:
            doc["metadata"]["generation"] -= 1
        return page

    sim.inject(Fault(kind="rewrite", rewrite=older, endpoint="outputs"))
    lowered = client.get(path_for(sim, "outputs")).json()["items"]
    normal = client.get(path_for(sim, "outputs")).json()["items"]
    assert [d["metadata"]["generation"] for d in lowered] == [
        d["metadata"]["generation"] - 1 for d in normal
    ]
    assert client.get(path_for(sim, "list")).json()["items"]


def test_it_sends_a_lone_surrogate_as_a_json_escape(sim: Simulator, client: httpx.Client) -> None:
    """A lone surrogate put in a message goes out as the ASCII escape \\ud83d: valid JSON."""

    def surrogate(doc: Any) -> Any:
        doc["status"]["conditions"][-1]["message"] = "half an emoji: \ud83d"
        return doc

    sim.inject(Fault(kind="rewrite", rewrite=surrogate))
    response = client.get(path_for(sim, "get"))
    assert b"half an emoji: \\ud83d" in response.content
    response.content.decode("ascii")
    assert response.json()["status"]["conditions"][-1]["message"] == "half an emoji: \ud83d"


def test_it_rewrites_error_bodies_and_reports_a_failing_rewrite(
    sim: Simulator, client: httpx.Client
) -> None:
    """An error body is rewritten too; a rewrite that raises is a 500 naming the error."""
    org = sim.organization_id
    sim.inject(Fault(kind="rewrite", rewrite=lambda body: {"detail": body["message"].upper()}))
    gone = client.get(f"/workspaces/{org}/trainingProjects/proj_gone")
    assert gone.status_code == 404 and gone.json() == {
        "detail": "TRAINING PROJECT PROJ_GONE NOT FOUND"
    }

    def broken(body: Any) -> Any:
        raise KeyError("nextPage")

    sim.inject(Fault(kind="rewrite", rewrite=broken))
    failed = client.get(path_for(sim, "projects"))
    assert failed.status_code == 500 and "KeyError" in failed.json()["message"]
    sim.inject(Fault(kind="rewrite", rewrite=lambda body: {1j}))
    assert client.get(path_for(sim, "projects")).status_code == 500


# --- raw ------------------------------------------------------------------------------------


def raw_exchange(sim: Simulator, path: str) -> bytes:
    """Send one GET over a plain socket and read the answer until the server closes."""
    host, port = sim.url.removeprefix("http://").split(":")
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {sim.secret_key}\r\n"
        f"Organization-Id: {sim.organization_id}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(request.encode())
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received


def test_it_sends_a_raw_response_exactly(sim: Simulator) -> None:
    """A raw fault sends its status, headers and body and nothing else, then closes."""
    headers = (("Content-Type", "application/json"), ("X-Odd", "yes"))
    sim.inject(Fault(kind="raw", status=418, headers=headers, body=b'{"items": [1, 2'))
    answer = raw_exchange(sim, path_for(sim, "projects"))
    status_line, rest = answer.split(b"\r\n", 1)
    assert status_line.startswith(b"HTTP/1.1 418 ")
    assert rest == b'Content-Type: application/json\r\nX-Odd: yes\r\n\r\n{"items": [1, 2'
    sim.inject(Fault(kind="raw", status=200, body=b"plain", endpoint="outputs"))
    with client_for(sim) as client:
        response = client.get(path_for(sim, "outputs"))
    assert (response.status_code, response.content) == (200, b"plain")
    assert "server" not in response.headers and "date" not in response.headers
    assert [(r.fault, r.status) for r in sim.requests_log()] == [("raw", 418), ("raw", 200)]


# --- huge -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
def test_it_streams_a_huge_body_of_exactly_its_size(sim: Simulator, chunked: bool) -> None:
    """A huge fault is a 200 of `size` bytes, declared by Content-Length or chunked."""
    size = 5 * MiB + 123
    sim.inject(Fault(kind="huge", size=size, chunked=chunked))
    received = 0
    with client_for(sim) as client, client.stream("GET", path_for(sim, "list")) as response:
        assert response.status_code == 200
        assert response.headers.get("content-length") == (None if chunked else str(size))
        assert (response.headers.get("transfer-encoding") == "chunked") is chunked
        first = b""
        for chunk in response.iter_raw():
            first = first or chunk
            received += len(chunk)
    assert received == size and first.startswith(HUGE_PREFIX)
    assert sim.requests_log()[-1].fault == "huge"


def test_it_stops_a_huge_body_when_the_client_hangs_up(sim: Simulator) -> None:
    """A 1 GiB body read for 4 MiB then dropped frees its thread at once, in flat memory."""
    sim.inject(Fault(kind="huge", size=GiB))
    tracemalloc.start()
    try:
        host, port = sim.url.removeprefix("http://").split(":")
        conn = socket.create_connection((host, int(port)), timeout=5)
        conn.sendall(
            f"GET {path_for(sim, 'list')} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {sim.secret_key}\r\n"
            f"Organization-Id: {sim.organization_id}\r\n\r\n".encode()
        )
        received = 0
        while received < 4 * MiB:
            chunk = conn.recv(256 * 1024)
            assert chunk, "the server closed early"
            received += len(chunk)
        conn.close()
        wait_until(lambda: sim.open_connections() == 0, timeout=5, what="the handler to end")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, peak
    with client_for(sim, timeout=2) as client:
        assert client.get(path_for(sim, "list")).status_code == 200


def test_it_stops_promptly_with_a_huge_body_in_flight() -> None:
    """stop() returns at once while a client holds a huge body half read."""
    sim = Simulator(runs=5, active=0)
    sim.start()
    sim.inject(Fault(kind="huge", size=GiB, chunked=True))
    outcome: list[BaseException | int] = []
    reading, release = threading.Event(), threading.Event()

    def stalled_reader() -> None:
        with client_for(sim, timeout=10) as c:
            try:
                with c.stream("GET", f"/workspaces/{sim.organization_id}/runs") as response:
                    for received, _ in enumerate(response.iter_raw()):
                        reading.set()
                        release.wait(10)  # stop reading: the server's writes block
                        outcome.append(received)
            except httpx.HTTPError as exc:
                outcome.append(exc)

    thread = threading.Thread(target=stalled_reader)
    thread.start()
    assert reading.wait(5)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 2.0
    release.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and isinstance(outcome[-1], httpx.HTTPError)


# --- making faults --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "rewrite"},
        {"kind": "status", "rewrite": lambda b: b},
        {"kind": "rewrite", "rewrite": "not callable"},
        {"kind": "raw", "status": 99},
        {"kind": "raw", "headers": (("X-Bad", "a\r\nInjected: 1"),)},
        {"kind": "status", "body": b"x"},
        {"kind": "huge"},
        {"kind": "huge", "size": -1},
        {"kind": "drop", "size": 10},
        {"kind": "drop", "endpoint": "models"},
    ],
)
def test_it_refuses_new_faults_that_cannot_work(kwargs: dict[str, Any]) -> None:
    """A rewrite without a function, a raw fault's bad status or header, a huge fault without
    a size, or parameters of another kind are refused when the fault is made."""
    with pytest.raises(ValueError):
        Fault(**kwargs)


def test_it_accepts_every_endpoint_name() -> None:
    """Faults may target any, list, get, outputs, projects and project."""
    for endpoint in ("any", "list", "get", "outputs", "projects", "project"):
        assert Fault(kind="drop", endpoint=endpoint).endpoint == endpoint  # type: ignore[arg-type]
