"""The Vi API simulator, spoken to over loopback HTTP with httpx like a real client would."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from runwatch.core.model import KNOWN_CONDITIONS, PENDING, RUNNING, TERMINAL_CONDITIONS
from runwatch.simulator import (
    SIM_ORG,
    UNKNOWN_CONDITION,
    Fault,
    Simulator,
    config_snippet,
    default_secret_key,
)

REPO = Path(__file__).resolve().parents[1]
NOW = 1_800_000_000.0  # a fixed "now" (2027) for tests that create runs


def fixed_clock(value: float = NOW) -> Callable[[], float]:
    return lambda: value


def client_for(sim: Simulator, **kw: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {sim.secret_key}", "Organization-Id": sim.organization_id}
    return httpx.Client(base_url=sim.url, headers=headers, **kw)


def runs_path(sim: Simulator) -> str:
    return f"/workspaces/{sim.organization_id}/runs"


def list_all(client: httpx.Client, sim: Simulator, size: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token: str | None = None
    for _ in range(10_000):
        params: dict[str, Any] = {"s": size}
        if token:
            params["p"] = token
        body = client.get(runs_path(sim), params=params).raise_for_status().json()
        items.extend(body["items"])
        token = body["nextPage"]
        if token is None:
            return items
    raise AssertionError("the listing never ended")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.002)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(runs=120, active=5, seed=7, clock=fixed_clock()) as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with client_for(sim) as c:
        yield c


# --- listing ------------------------------------------------------------------------------


def test_it_lists_the_whole_population_newest_first_across_pages(
    sim: Simulator, client: httpx.Client
) -> None:
    """Walking every page with a small page size yields each run exactly once, newest first."""
    items = list_all(client, sim, size=7)
    ids = [item["runId"] for item in items]
    assert len(ids) == 120 == len(set(ids))
    assert ids == sim.run_ids()
    keys = [(-item["metadata"]["timeCreated"], item["runId"]) for item in items]
    assert keys == sorted(keys)


def test_it_keeps_the_cursor_stable_when_a_run_is_created_mid_listing(
    sim: Simulator, client: httpx.Client
) -> None:
    """A run created between two pages neither shifts nor repeats what the next pages hold."""
    before = sim.run_ids()
    first = client.get(runs_path(sim), params={"s": 10}).json()
    new_id = sim.create_run(condition=PENDING)
    rest = list_all_from(client, sim, first["nextPage"], size=10)
    assert [i["runId"] for i in first["items"]] + rest == before
    head = client.get(runs_path(sim), params={"s": 1}).json()
    assert [i["runId"] for i in head["items"]] == [new_id]


def list_all_from(client: httpx.Client, sim: Simulator, token: str, size: int) -> list[str]:
    ids: list[str] = []
    next_token: str | None = token
    while next_token:
        body = client.get(runs_path(sim), params={"s": size, "p": next_token}).json()
        ids.extend(i["runId"] for i in body["items"])
        next_token = body["nextPage"]
    return ids


def test_it_walks_back_with_prev_page(sim: Simulator, client: httpx.Client) -> None:
    """prevPage leads back to the previous page and is null on page 1."""
    page1 = client.get(runs_path(sim), params={"s": 25}).json()
    page2 = client.get(runs_path(sim), params={"s": 25, "p": page1["nextPage"]}).json()
    back = client.get(runs_path(sim), params={"s": 25, "p": page2["prevPage"]}).json()
    assert page1["prevPage"] is None
    assert back["items"] == page1["items"]


def test_it_caps_the_page_size_and_defaults_to_10(client: httpx.Client) -> None:
    """`s` above the cap gets the cap; no `s` gets 10 items."""
    with Simulator(runs=60, active=0, page_size_cap=20) as capped, client_for(capped) as c:
        assert len(c.get(runs_path(capped), params={"s": 1000}).json()["items"]) == 20
        assert len(c.get(runs_path(capped)).json()["items"]) == 10


@pytest.mark.parametrize("size", ["0", "-3", "ten", "1.5", ""])
def test_it_rejects_a_bad_page_size_with_400(
    sim: Simulator, client: httpx.Client, size: str
) -> None:
    """A page size that is not a positive integer is a 400 with a JSON message."""
    response = client.get(runs_path(sim), params={"s": size})
    assert response.status_code == 400
    assert "page size" in response.json()["message"]


@pytest.mark.parametrize("token", ["garbage!!", "bjox", "eDoxOnJ1bl94", "bjpub3Q6cnVu"])
def test_it_rejects_a_bad_page_token_with_400(
    sim: Simulator, client: httpx.Client, token: str
) -> None:
    """A token the server did not hand out is a 400, never page 1 in disguise."""
    response = client.get(runs_path(sim), params={"p": token})
    assert response.status_code == 400
    assert response.json()["message"] == "invalid page token p"


def test_it_ignores_pagination_parameters_with_other_names(
    sim: Simulator, client: httpx.Client
) -> None:
    """`page_size`/`page_token` are silently ignored, as the real server does."""
    body = client.get(runs_path(sim), params={"page_size": 50, "page_token": "x"}).json()
    assert [i["runId"] for i in body["items"]] == sim.run_ids()[:10]


# --- single runs, auth, errors --------------------------------------------------------------


def test_it_returns_one_run_and_404_for_an_unknown_one(
    sim: Simulator, client: httpx.Client
) -> None:
    """GET of a run returns its document; an unknown run or path is a JSON 404 with a trace id."""
    run_id = sim.run_ids()[3]
    assert client.get(f"{runs_path(sim)}/{run_id}").json() == sim.document(run_id)
    for path in (f"{runs_path(sim)}/run_000000000000", "/nowhere", f"{runs_path(sim)}/a/b"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["message"]
        assert response.headers["x-cloud-trace-context"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Organization-Id": SIM_ORG},
        {"Authorization": "Bearer dtvi_wrong", "Organization-Id": SIM_ORG},
        {"Authorization": f"Bearer {default_secret_key(7)}"},
        {"Authorization": f"Bearer {default_secret_key(7)}", "Organization-Id": "org-other"},
        {"Authorization": default_secret_key(7), "Organization-Id": SIM_ORG},
    ],
)
def test_it_rejects_missing_or_wrong_credentials_with_401(
    sim: Simulator, headers: dict[str, str]
) -> None:
    """A missing or wrong key or organization is a 401 whose body never echoes the key."""
    with httpx.Client(base_url=sim.url, headers=headers) as c:
        response = c.get(runs_path(sim))
    assert response.status_code == 401
    assert response.json()["message"]
    assert "dtvi_" not in response.text
    assert response.headers["x-cloud-trace-context"]


def test_it_refuses_another_organizations_workspace_with_403(
    sim: Simulator, client: httpx.Client
) -> None:
    """Valid credentials for one organization cannot read another's workspace."""
    response = client.get("/workspaces/org-other/runs")
    assert response.status_code == 403
    assert "org-other" in response.json()["message"]


def test_it_answers_304_while_the_etag_matches(sim: Simulator, client: httpx.Client) -> None:
    """If-None-Match with the current etag is a bodiless 304; after a change it is a 200."""
    run_id = sim.run_ids()[0]
    before = sim.document(run_id)
    url = f"{runs_path(sim)}/{run_id}"
    for value in (before["etag"], f'"{before["etag"]}"'):
        not_modified = client.get(url, headers={"If-None-Match": value})
        assert not_modified.status_code == 304
        assert not_modified.content == b""
    sim.append_condition(run_id, "Failed", reason="OutOfMemory", message="boom")
    changed = client.get(url, headers={"If-None-Match": before["etag"]})
    assert changed.status_code == 200
    after = changed.json()
    assert after["etag"] != before["etag"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert after["status"]["observedGeneration"] == after["metadata"]["generation"]
    assert after["metadata"]["lastUpdated"] > before["metadata"]["lastUpdated"]
    assert after["status"]["conditions"][-1] == {
        "condition": "Failed",
        "status": "Reached",
        "lastTransitionTime": after["metadata"]["lastUpdated"],
        "reason": "OutOfMemory",
        "message": "boom",
    }


def test_it_refuses_other_methods_with_405(sim: Simulator, client: httpx.Client) -> None:
    """The simulator is read-only: a PATCH is a 405, counted like any request."""
    response = client.patch(f"{runs_path(sim)}/{sim.run_ids()[0]}", json={"killedAt": 1})
    assert response.status_code == 405
    assert sim.request_count("get") == 1


# --- the documents --------------------------------------------------------------------------

# The Run document of vi-wire-format.md, transcribed: key -> JSON type(s), nested for objects,
# a one-element list for arrays of that shape, "map" for free-form objects.
INT, STR, NULL, MAP = (int,), (str,), (type(None),), "map"
WIRE_RUN: dict[str, Any] = {
    "kind": STR,
    "workspaceId": STR,
    "runId": STR,
    "spec": {
        "flow": {
            "name": STR,
            "schema": STR,
            "tolerations": MAP,
            "settings": MAP,
            "blocks": [{"block": STR, "settings": MAP, "style": MAP}],
            "trainingProject": STR + NULL,
        },
        "killedAt": INT + NULL,
        "trainingProject": STR + NULL,
    },
    "status": {
        "log": STR,
        "observedGeneration": INT,
        "conditions": [
            {
                "condition": STR,
                "status": STR,
                "lastTransitionTime": INT,
                "reason": STR + NULL,
                "message": STR + NULL,
            }
        ],
    },
    "metadata": {"timeCreated": INT, "lastUpdated": INT, "generation": INT, "attributes": MAP},
    "selfLink": STR,
    "etag": STR,
}


def shape_errors(value: Any, shape: Any, where: str = "$") -> list[str]:
    """Every way `value` departs from `shape` (missing or extra keys, wrong JSON types)."""
    if shape == MAP:
        return [] if isinstance(value, dict) else [f"{where}: not an object"]
    if isinstance(shape, tuple):
        ok = isinstance(value, shape) and not isinstance(value, bool)
        return [] if ok else [f"{where}: {type(value).__name__} is not {shape}"]
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{where}: not an array"]
        return [e for i, v in enumerate(value) for e in shape_errors(v, shape[0], f"{where}[{i}]")]
    if not isinstance(value, dict):
        return [f"{where}: not an object"]
    errors = [f"{where}: missing {k}" for k in shape.keys() - value.keys()]
    errors += [f"{where}: unexpected {k}" for k in value.keys() - shape.keys()]
    for key in shape.keys() & value.keys():
        errors += shape_errors(value[key], shape[key], f"{where}.{key}")
    return errors


def test_it_serves_documents_in_the_wire_format(sim: Simulator, client: httpx.Client) -> None:
    """Every listed document has exactly the wire format's keys, with its JSON types."""
    cancelled = sim.create_run(condition=RUNNING)
    sim.append_condition(cancelled, "Cancelled", reason="CancelledByUser")
    empty = sim.create_run(condition=None)
    items = list_all(client, sim, size=100)
    for doc in items:
        assert shape_errors(doc, WIRE_RUN) == [], doc["runId"]
        assert doc["kind"] == "Run"
        assert doc["workspaceId"] == sim.organization_id
        assert doc["selfLink"] == f"/workspaces/{sim.organization_id}/runs/{doc['runId']}"
        assert doc["runId"].startswith("run_") and len(doc["runId"]) == 16
        assert all(
            c["status"] in ("Waiting", "Reached", "FailedReach")
            for c in doc["status"]["conditions"]
        )
        assert doc["status"]["log"].startswith("https://")
    by_id = {doc["runId"]: doc for doc in items}
    assert by_id[cancelled]["spec"]["killedAt"] == by_id[cancelled]["metadata"]["lastUpdated"]
    assert by_id[empty]["status"]["conditions"] == []


def test_it_seeds_a_realistic_population(sim: Simulator) -> None:
    """The population has `active` unfinished runs; the others went Pending, Running, an end."""
    assert len(sim.active_run_ids()) == 5
    latest = {sim.latest_condition(r) for r in sim.run_ids()}
    assert latest <= set(KNOWN_CONDITIONS)
    assert {"Succeeded", "Failed"} <= latest
    for run_id in sim.run_ids():
        conds = sim.document(run_id)["status"]["conditions"]
        assert conds[0]["condition"] == PENDING
        times = [c["lastTransitionTime"] for c in conds]
        assert times == sorted(times)
        if conds[-1]["condition"] in ("Failed", "Error"):
            assert conds[-1]["reason"] and conds[-1]["message"]
        if conds[-1]["condition"] == "Cancelled":
            assert sim.document(run_id)["spec"]["killedAt"] is not None


def test_it_builds_the_same_population_from_the_same_flags() -> None:
    """Two simulators with the same flags serve identical runs, whatever their clocks say."""
    a = Simulator(runs=200, active=9, seed=11, clock=fixed_clock(NOW))
    b = Simulator(runs=200, active=9, seed=11, clock=fixed_clock(NOW + 86_400 * 30))
    other = Simulator(runs=200, active=9, seed=12)
    assert a.run_ids() == b.run_ids()
    assert [a.document(r) for r in a.run_ids()] == [b.document(r) for r in b.run_ids()]
    assert a.active_run_ids() == b.active_run_ids()
    assert a.secret_key == b.secret_key == default_secret_key(11)
    assert other.run_ids() != a.run_ids()


def test_it_puts_active_runs_at_the_head_when_asked() -> None:
    """active_recent=True makes the newest runs the active ones."""
    sim = Simulator(runs=50, active=4, seed=2, active_recent=True)
    assert sim.active_run_ids() == sim.run_ids()[:4]


def test_it_makes_deterministic_secret_keys_of_the_real_shape() -> None:
    """Default keys start with dtvi_, are 103 characters long and depend only on the seed."""
    key = default_secret_key(7)
    assert key.startswith("dtvi_") and len(key) == 103
    assert key == default_secret_key(7) != default_secret_key(8)


def test_it_deletes_runs(sim: Simulator, client: httpx.Client) -> None:
    """A deleted run leaves the listing and its GET is a 404."""
    victim = sim.run_ids()[50]
    sim.delete_run(victim)
    assert victim not in [i["runId"] for i in list_all(client, sim, size=100)]
    assert client.get(f"{runs_path(sim)}/{victim}").status_code == 404
    with pytest.raises(KeyError):
        sim.document(victim)


# --- faults ---------------------------------------------------------------------------------


def test_it_injects_status_faults_with_retry_after_in_fifo_order(
    sim: Simulator, client: httpx.Client
) -> None:
    """Status faults answer the next matching requests in order, then the service recovers."""
    sim.inject(Fault(kind="status", status=429, retry_after="7"), count=2)
    sim.inject(Fault(kind="status", status=500))
    answers = [client.get(runs_path(sim)) for _ in range(4)]
    assert [r.status_code for r in answers] == [429, 429, 500, 200]
    assert answers[0].headers["Retry-After"] == "7"
    assert "Retry-After" not in answers[2].headers
    assert answers[2].json()["message"] and answers[2].headers["x-cloud-trace-context"]


def test_it_applies_a_fault_only_to_its_endpoint(sim: Simulator, client: httpx.Client) -> None:
    """A fault for "get" lets list requests through untouched and hits the next GET."""
    sim.inject(Fault(kind="status", status=503, endpoint="get"))
    assert client.get(runs_path(sim)).status_code == 200
    run_url = f"{runs_path(sim)}/{sim.run_ids()[0]}"
    assert client.get(run_url).status_code == 503
    assert client.get(run_url).status_code == 200


def test_it_answers_slowly_without_blocking_other_requests(sim: Simulator) -> None:
    """A slow fault outlasts a short client timeout while another client is served at once."""
    sim.inject(Fault(kind="slow", delay=3.0))
    outcome: queue.Queue[BaseException | int] = queue.Queue()

    def slow_call() -> None:
        with client_for(sim, timeout=1.0) as c:
            try:
                outcome.put(c.get(runs_path(sim)).status_code)
            except httpx.HTTPError as exc:
                outcome.put(exc)

    thread = threading.Thread(target=slow_call)
    thread.start()
    wait_until(lambda: sim.request_count() == 1)
    with client_for(sim) as other:
        started = time.monotonic()
        assert other.get(runs_path(sim)).status_code == 200
        assert time.monotonic() - started < 0.5
    thread.join(timeout=5)
    assert isinstance(outcome.get_nowait(), httpx.ReadTimeout)


def test_it_stops_promptly_with_a_slow_request_in_flight() -> None:
    """stop() returns at once even while a request is held by a long slow fault."""
    sim = Simulator(runs=10, active=1)
    sim.start()
    sim.inject(Fault(kind="slow", delay=60.0))
    outcome: queue.Queue[BaseException | int] = queue.Queue()

    def slow_call() -> None:
        with client_for(sim, timeout=30.0) as c:
            try:
                outcome.put(c.get(runs_path(sim)).status_code)
            except httpx.HTTPError as exc:
                outcome.put(exc)

    thread = threading.Thread(target=slow_call)
    thread.start()
    wait_until(lambda: sim.request_count() == 1)
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 2.0
    thread.join(timeout=5)
    assert isinstance(outcome.get_nowait(), httpx.TransportError)
    # The held handler wakes up too, rather than lingering for the rest of its minute.
    wait_until(lambda: [(r.fault, r.status) for r in sim.requests_log()] == [("slow", 0)], 2.0)


def test_it_drops_the_connection_without_a_response(sim: Simulator, client: httpx.Client) -> None:
    """A drop fault closes the socket without a byte; the request is logged with status 0."""
    sim.inject(Fault(kind="drop"))
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(runs_path(sim))
    assert client.get(runs_path(sim)).status_code == 200
    assert [(r.status, r.fault) for r in sim.requests_log()] == [(0, "drop"), (200, None)]


def test_it_answers_html_for_a_non_json_fault(sim: Simulator, client: httpx.Client) -> None:
    """A non_json fault is a 200 with an HTML body."""
    sim.inject(Fault(kind="non_json", endpoint="list"))
    response = client.get(runs_path(sim))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_it_truncates_the_body_with_a_matching_content_length(
    sim: Simulator, client: httpx.Client
) -> None:
    """A truncated fault sends the first half of the real body, with a Content-Length to match."""
    url = f"{runs_path(sim)}/{sim.run_ids()[0]}"
    sim.inject(Fault(kind="truncated"))
    cut = client.get(url)
    full = client.get(url).content
    assert cut.status_code == 200
    assert int(cut.headers["content-length"]) == len(cut.content) == len(full) // 2
    assert cut.content == full[: len(full) // 2]
    with pytest.raises(json.JSONDecodeError):
        cut.json()


def test_it_repeats_the_requested_page_token(sim: Simulator, client: httpx.Client) -> None:
    """A repeat_token fault on page 2 hands back page 2's own token as nextPage."""
    token = client.get(runs_path(sim), params={"s": 10}).json()["nextPage"]
    sim.inject(Fault(kind="repeat_token"))
    assert client.get(runs_path(sim), params={"s": 10, "p": token}).json()["nextPage"] == token
    assert client.get(runs_path(sim), params={"s": 10, "p": token}).json()["nextPage"] != token


def test_it_repeats_page_ones_token_when_the_fault_hits_page_1(
    sim: Simulator, client: httpx.Client
) -> None:
    """On page 1 the fault makes the page that token leads to repeat it."""
    sim.inject(Fault(kind="repeat_token"))
    token = client.get(runs_path(sim), params={"s": 10}).json()["nextPage"]
    assert client.get(runs_path(sim), params={"s": 10, "p": token}).json()["nextPage"] == token


def strip_extras(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_extras(v) for k, v in value.items() if not k.startswith("simExtra")}
    if isinstance(value, list):
        return [strip_extras(v) for v in value]
    return value


def test_it_adds_unknown_fields_at_every_level(sim: Simulator, client: httpx.Client) -> None:
    """extra_fields adds unknown keys to the envelope and every object of every item, only."""
    sim.inject(Fault(kind="extra_fields"), count=2)
    page = client.get(runs_path(sim), params={"s": 5}).json()
    run_id = sim.run_ids()[0]
    single = client.get(f"{runs_path(sim)}/{run_id}").json()
    assert any(k.startswith("simExtra") for k in page)
    for doc in [*page["items"], single]:
        objects = [doc, doc["spec"], doc["spec"]["flow"], doc["status"], doc["metadata"]]
        objects += doc["spec"]["flow"]["blocks"] + doc["status"]["conditions"]
        for obj in objects:
            assert any(k.startswith("simExtra") for k in obj), obj
        assert strip_extras(doc) == sim.document(doc["runId"])
    assert "simExtraTop" not in sim.document(run_id)


def test_it_shows_an_unknown_condition_on_that_response_only(
    sim: Simulator, client: httpx.Client
) -> None:
    """unknown_condition changes the latest condition of each item in one response only."""
    sim.inject(Fault(kind="unknown_condition"))
    faulted = client.get(runs_path(sim), params={"s": 5}).json()["items"]
    normal = client.get(runs_path(sim), params={"s": 5}).json()["items"]
    assert {d["status"]["conditions"][-1]["condition"] for d in faulted} == {UNKNOWN_CONDITION}
    assert UNKNOWN_CONDITION not in {d["status"]["conditions"][-1]["condition"] for d in normal}
    assert [d["status"]["conditions"][:-1] for d in faulted] == [
        d["status"]["conditions"][:-1] for d in normal
    ]


def test_it_fails_every_request_during_an_outage(sim: Simulator, client: httpx.Client) -> None:
    """An outage answers every request with its status until it is lifted."""
    sim.set_outage(True, status=502)
    run_url = f"{runs_path(sim)}/{sim.run_ids()[0]}"
    assert [client.get(u).status_code for u in (runs_path(sim), run_url)] == [502, 502]
    sim.set_outage(False)
    assert client.get(run_url).status_code == 200


def test_it_clears_queued_faults(sim: Simulator, client: httpx.Client) -> None:
    """clear_faults drops queued faults and ends an outage."""
    sim.inject(Fault(kind="status", status=500), count=5)
    sim.set_outage(True)
    sim.clear_faults()
    assert client.get(runs_path(sim)).status_code == 200


def test_it_refuses_malformed_faults() -> None:
    """A fault with a kind, endpoint, status or delay that cannot work is refused when made."""
    with pytest.raises(ValueError):
        Fault(kind="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Fault(kind="status", status=200)
    with pytest.raises(ValueError):
        Fault(kind="slow", delay=-1)
    with pytest.raises(ValueError):
        Fault(kind="drop", endpoint="delete")  # type: ignore[arg-type]


# --- counters -------------------------------------------------------------------------------


def test_it_counts_every_request_by_endpoint(sim: Simulator, client: httpx.Client) -> None:
    """Counters include failed requests; the log records each one; reset clears both."""
    run_url = f"{runs_path(sim)}/{sim.run_ids()[0]}"
    sim.inject(Fault(kind="status", status=503, endpoint="list"))
    client.get(runs_path(sim), params={"s": 3})
    client.get(runs_path(sim), params={"s": 3, "p": "bad"})
    client.get(run_url)
    client.get("/elsewhere")
    assert (sim.request_count("list"), sim.request_count("get"), sim.request_count()) == (2, 1, 4)
    log = sim.requests_log()
    assert [(r.method, r.endpoint, r.status) for r in log] == [
        ("GET", "list", 503),
        ("GET", "list", 400),
        ("GET", "get", 200),
        ("GET", "other", 404),
    ]
    assert log[1].query == {"s": "3", "p": "bad"}
    assert log[2].path == run_url
    sim.reset_counters()
    assert sim.request_count() == 0 and sim.requests_log() == []


# --- the scenario clock ---------------------------------------------------------------------


def test_it_advances_active_runs_to_an_end() -> None:
    """advance moves Pending runs to Running and on to a terminal condition, and says so."""
    sim = Simulator(runs=40, active=6, seed=5, clock=fixed_clock())
    active = sim.active_run_ids()
    etags = {r: sim.document(r)["etag"] for r in active}
    assert sim.advance(1.0) == []
    changes = sim.advance(3 * 3600)
    assert {run_id for run_id, _ in changes} == set(active)
    assert sim.active_run_ids() == []
    for run_id in active:
        steps = [c for r, c in changes if r == run_id]
        assert steps[-1] in TERMINAL_CONDITIONS
        assert steps[:-1] in ([RUNNING], [])
        assert sim.latest_condition(run_id) == steps[-1]
        assert sim.document(run_id)["etag"] != etags[run_id]
    assert sim.advance(3 * 3600) == []


def test_it_advances_the_same_way_for_the_same_seed() -> None:
    """Two simulators with the same seed progress identically, step by step."""
    a = Simulator(runs=30, active=8, seed=3, clock=fixed_clock())
    b = Simulator(runs=30, active=8, seed=3, clock=fixed_clock())
    for _ in range(20):
        assert a.advance(90) == b.advance(90)


def test_it_progresses_created_runs_and_replans_after_a_manual_change() -> None:
    """A created run progresses too; a run set to a terminal condition by hand stays there."""
    sim = Simulator(runs=5, active=0, seed=1, clock=fixed_clock())
    moving = sim.create_run(condition=PENDING)
    stopped = sim.create_run(condition=PENDING)
    sim.append_condition(stopped, "Cancelled")
    changes = sim.advance(3 * 3600)
    assert [r for r, _ in changes] in ([moving, moving], [moving])
    assert sim.latest_condition(stopped) == "Cancelled"


def test_it_brings_new_runs_when_arrivals_are_on() -> None:
    """With an arrival interval, advance also creates Pending runs at the head."""
    sim = Simulator(runs=5, active=0, seed=1, clock=fixed_clock(), arrival_interval=60)
    changes = sim.advance(150)
    arrived = [r for r, c in changes if c == PENDING]
    assert len(arrived) == 2
    assert sim.run_ids()[:2] == arrived[::-1]


# --- `runwatch simulate` --------------------------------------------------------------------


def test_it_prints_a_config_snippet_that_points_at_the_simulator(sim: Simulator) -> None:
    """The snippet is YAML naming the simulator's endpoint, organization and key."""
    snippet = yaml.safe_load(config_snippet(sim))
    assert snippet["workspaces"] == [
        {
            "name": "sim",
            "organization_id": sim.organization_id,
            "secret_key": sim.secret_key,
            "endpoint": sim.url,
        }
    ]
    assert snippet["rules"][0]["notify"] == ["console"]
    assert "console" in snippet["channels"]


SERVE = """
import argparse, sys
from runwatch.simulator import cli as simulator
parser = argparse.ArgumentParser()
simulator.add_arguments(parser)
sys.exit(simulator.main(parser.parse_args(sys.argv[1:])))
"""


def test_it_serves_from_the_command_line_until_sigterm() -> None:
    """`simulate` prints its URL, organization and key, serves them, and exits 0 on SIGTERM."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--port", "0", "--runs", "30", "--active", "2", "--org", "org-cli", "--progress", "60"]
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []]).start()
    try:
        seen: dict[str, str] = {}
        while "key" not in seen:
            line = lines.get(timeout=10)
            if "listening on" in line:
                seen["url"] = line.split()[-1]
            elif line.startswith("secret key:"):
                seen["key"] = line.split()[-1]
        headers = {"Authorization": f"Bearer {seen['key']}", "Organization-Id": "org-cli"}
        response = httpx.get(f"{seen['url']}/workspaces/org-cli/runs?s=50", headers=headers)
        assert len(response.json()["items"]) == 30
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_it_builds_the_simulate_parser_without_loading_the_server() -> None:
    """runwatch.simulator.cli (which `runwatch --help` imports) loads no server, ssl or json."""
    heavy = ("http.server", "ssl", "json", "socket", "structlog", "runwatch.simulator.server")
    code = (
        "import sys, argparse, runwatch.simulator.cli as cli\n"
        "cli.add_arguments(argparse.ArgumentParser())\n"
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
