"""The Vi client against the simulator (and a capturing server) on loopback, faults included."""

from __future__ import annotations

import asyncio
import email.utils
import json
import traceback
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog

from runwatch import __version__
from runwatch.errors import (
    ViAuthError,
    ViBadResponseError,
    ViError,
    ViNotFoundError,
    ViRateLimitedError,
    ViServerError,
    ViTransportError,
)
from runwatch.simulator.server import UNKNOWN_CONDITION, Fault, Simulator
from runwatch.vi.client import ViClient
from runwatch.vi.decode import decode_run
from runwatch.vi.retry import RetryPolicy

NOW = 1_750_000_000.0  # the wall clock Retry-After dates are measured against
SECRET = "dtvi_" + "S3cr3tK3y" * 10 + "xyz"  # 103 characters, like a real key


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(runs=120, active=5, seed=7, page_size_cap=100, secret_key=SECRET) as s:
        yield s


@dataclass
class Recorder:
    """Collects the client's injected sleeps and its per-attempt metric hook calls."""

    sleeps: list[float] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def on_request(self, endpoint: str, outcome: str, seconds: float) -> None:
        assert seconds >= 0
        self.requests.append((endpoint, outcome))


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def client_for(
    sim: Simulator,
    rec: Recorder,
    *,
    max_attempts: int = 5,
    timeout: float = 5.0,
    secret_key: str | None = None,
) -> ViClient:
    return ViClient(
        endpoint=sim.url,
        organization_id=sim.organization_id,
        secret_key=secret_key or sim.secret_key,
        timeout=timeout,
        retry=RetryPolicy(max_attempts=max_attempts, sleep=rec.sleep, clock=lambda: NOW),
        on_request=rec.on_request,
    )


async def all_run_ids(client: ViClient, page_size: int) -> list[str]:
    return [r.run_id async for page in client.list_runs(page_size) for r in page.runs]


# --- listing and getting ----------------------------------------------------------------


@pytest.mark.parametrize("page_size", [7, 100, 1000])
async def test_it_lists_the_whole_population_across_pages_exactly_once(
    sim: Simulator, rec: Recorder, page_size: int
) -> None:
    """Walking every page yields each run once, newest first, with one request per page."""
    async with client_for(sim, rec) as client:
        ids = await all_run_ids(client, page_size)

    assert ids == sim.run_ids()
    pages = -(-120 // min(page_size, 100))
    assert sim.request_count("list") == pages
    assert client.requests_made == pages
    assert rec.requests == [("list", "200")] * pages
    log = sim.requests_log()
    assert "p" not in log[0].query and log[0].query["s"] == str(page_size)
    assert all("p" in r.query for r in log[1:])


async def test_it_decodes_listed_runs_as_the_api_documents_them(
    sim: Simulator, rec: Recorder
) -> None:
    """Every run in a page equals the decoding of its own document."""
    async with client_for(sim, rec) as client:
        page = await client.list_page(None, 20)

    assert len(page.runs) == 20 and page.skipped == ()
    for run in page.runs:
        assert run == decode_run(sim.document(run.run_id), organization_id=sim.organization_id)


async def test_it_gets_one_run_and_sees_it_change(sim: Simulator, rec: Recorder) -> None:
    """get_run returns the current document, None while the etag matches, then the change."""
    run_id = sim.create_run(condition="Pending")
    async with client_for(sim, rec) as client:
        first = await client.get_run(run_id)
        assert first is not None and first.latest is not None
        assert first.latest.condition == "Pending"

        unchanged = await client.get_run(run_id, etag=first.etag)
        sim.append_condition(run_id, "Failed", reason="OutOfMemory", message="CUDA OOM")
        changed = await client.get_run(run_id, etag=first.etag)

    assert unchanged is None
    assert rec.requests == [("get", "200"), ("get", "304"), ("get", "200")]
    assert changed is not None and changed.latest is not None
    assert (changed.latest.condition, changed.latest.reason) == ("Failed", "OutOfMemory")
    assert changed.etag != first.etag


async def test_it_refuses_a_run_id_that_is_not_one_but_quotes_what_it_asks_for(
    sim: Simulator, rec: Recorder
) -> None:
    """An id with a slash, space and question mark still addresses only that one run in the
    path, and the answer is refused at the edge: such an id never reaches URLs, logs or state."""
    odd = "run/odd id?x=1"
    sim.create_run(run_id=odd, condition="Running")
    async with client_for(sim, rec) as client:
        with pytest.raises(ViBadResponseError, match="without a usable runId"):
            await client.get_run(odd)
        pages = [page async for page in client.list_runs(100)]

    assert {r.path for r in sim.requests_log() if r.endpoint == "get"} == {
        f"/workspaces/{sim.organization_id}/runs/run%2Fodd%20id%3Fx%3D1"
    }
    assert odd not in {r.run_id for page in pages for r in page.runs}
    assert sum(len(page.skipped) for page in pages) == 1


async def test_it_raises_not_found_for_a_missing_run_without_retrying(
    sim: Simulator, rec: Recorder
) -> None:
    """A 404 is ViNotFoundError naming the run, after exactly one request."""
    async with client_for(sim, rec) as client:
        with pytest.raises(ViNotFoundError, match="run_gone") as caught:
            await client.get_run("run_gone")

    assert caught.value.status_code == 404
    assert sim.request_count("any") == 1
    assert rec.sleeps == []


async def test_it_does_not_retry_a_rejected_secret_key(sim: Simulator, rec: Recorder) -> None:
    """A 401 is ViAuthError after exactly one request, and says what to check."""
    wrong = "dtvi_" + "w" * 98
    async with client_for(sim, rec, secret_key=wrong) as client:
        with pytest.raises(ViAuthError) as caught:
            await client.list_page(None, 10)

    message = str(caught.value)
    assert f"rejected the secret key for organization {sim.organization_id} (401)" in message
    assert "check secret_key / secret_key_file" in message
    assert "missing or invalid secret key" in message  # the server's own words
    assert caught.value.trace_id and f"[trace {caught.value.trace_id}]" in message
    assert wrong not in message
    assert sim.request_count("any") == 1
    assert rec.sleeps == []


async def test_it_paces_requests_to_max_requests_per_second(sim: Simulator, rec: Recorder) -> None:
    """With a cap of 2 a second, a burst of two goes at once and later requests wait their turn."""
    run_id = sim.run_ids()[0]
    client = ViClient(
        endpoint=sim.url,
        organization_id=sim.organization_id,
        secret_key=sim.secret_key,
        retry=RetryPolicy(sleep=rec.sleep, clock=lambda: NOW),
        max_requests_per_second=2.0,
    )
    async with client:
        for _ in range(5):
            await client.get_run(run_id)

    # The injected sleep returns at once, so each wait is measured from (nearly) the same
    # instant: slots at +0.5 s, +1.0 s and +1.5 s after the burst of two.
    assert rec.sleeps == pytest.approx([0.5, 1.0, 1.5], abs=0.2)
    assert sim.request_count("get") == 5


# --- faults -------------------------------------------------------------------------------

FAULTS = {
    "503": Fault(kind="status", status=503),
    "500": Fault(kind="status", status=500),
    "429": Fault(kind="status", status=429),
    "slow": Fault(kind="slow", delay=1.0),
    "drop": Fault(kind="drop"),
    "non_json": Fault(kind="non_json"),
    "truncated": Fault(kind="truncated"),
}
SURFACES_AS: dict[str, type[ViError]] = {
    "503": ViServerError,
    "500": ViServerError,
    "429": ViRateLimitedError,
    "slow": ViTransportError,
    "drop": ViTransportError,
    "non_json": ViBadResponseError,
    "truncated": ViBadResponseError,
}


@pytest.mark.parametrize("name", FAULTS)
async def test_it_retries_every_transient_fault_to_a_complete_listing(
    sim: Simulator, rec: Recorder, name: str
) -> None:
    """Two faulty answers in a listing are retried and the listing is still exactly complete."""
    sim.inject(FAULTS[name], count=2)
    async with client_for(sim, rec, timeout=0.2) as client:
        ids = await all_run_ids(client, 50)

    assert ids == sim.run_ids()
    assert sim.request_count("list") == 3 + 2
    assert len(rec.sleeps) == 2


@pytest.mark.parametrize("name", FAULTS)
async def test_it_retries_every_transient_fault_of_a_single_get(
    sim: Simulator, rec: Recorder, name: str
) -> None:
    """A GET that meets a fault twice is retried and returns the run."""
    run_id = sim.run_ids()[3]
    sim.inject(FAULTS[name], count=2)
    async with client_for(sim, rec, timeout=0.2) as client:
        run = await client.get_run(run_id)

    assert run is not None and run.run_id == run_id
    assert sim.request_count("get") == 3


@pytest.mark.parametrize("name", FAULTS)
async def test_it_surfaces_a_persistent_fault_as_its_typed_error_within_the_attempts(
    sim: Simulator, rec: Recorder, name: str
) -> None:
    """A fault that outlasts max_attempts raises its own ViError after exactly that many tries."""
    sim.inject(FAULTS[name], count=10)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client_for(sim, rec, max_attempts=3, timeout=0.2) as client:
        with pytest.raises(SURFACES_AS[name]) as caught:
            await client.list_page(None, 10)

    assert type(caught.value) is SURFACES_AS[name]
    assert sim.request_count("any") == 3
    assert len(rec.sleeps) == 2
    assert loop.time() - started < 3.0  # three 0.2 s timeouts at most: no hang
    if name == "slow":
        assert "timed out after 0.2s" in str(caught.value)


async def test_it_reports_each_attempt_to_the_metrics_hook(sim: Simulator, rec: Recorder) -> None:
    """The hook sees one call per HTTP attempt, with its status or failure kind."""
    sim.inject(Fault(kind="status", status=503))
    sim.inject(Fault(kind="slow", delay=1.0))
    sim.inject(Fault(kind="drop"))
    async with client_for(sim, rec, timeout=0.2) as client:
        await client.list_page(None, 10)

    assert rec.requests == [
        ("list", "503"),
        ("list", "timeout"),
        ("list", "transport"),
        ("list", "200"),
    ]
    assert client.requests_made == 4 == sim.request_count("any")


async def test_it_logs_each_retry_with_its_reason(sim: Simulator, rec: Recorder) -> None:
    """Each retried attempt is one vi.retry warning saying HTTP status, timeout or dropped."""
    sim.inject(Fault(kind="status", status=503))
    sim.inject(Fault(kind="slow", delay=1.0))
    sim.inject(Fault(kind="drop"))
    with structlog.testing.capture_logs() as logs:
        async with client_for(sim, rec, timeout=0.2) as client:
            await client.list_page(None, 10)

    retries = [e for e in logs if e["event"] == "vi.retry"]
    assert [(e["attempt"], e["reason"], e["what"]) for e in retries] == [
        (1, "HTTP 503", "list org-sim"),
        (2, "timeout", "list org-sim"),
        (3, "connection dropped", "list org-sim"),
    ]


async def test_it_waits_the_retry_after_seconds_a_429_asks_for(
    sim: Simulator, rec: Recorder
) -> None:
    """Retry-After in seconds is waited exactly, once per rate-limited answer."""
    sim.inject(Fault(kind="status", status=429, retry_after="7"), count=2)
    async with client_for(sim, rec) as client:
        page = await client.list_page(None, 10)

    assert len(page.runs) == 10
    assert rec.sleeps == [7.0, 7.0]


async def test_it_waits_until_the_retry_after_http_date(sim: Simulator, rec: Recorder) -> None:
    """Retry-After as an HTTP date is waited until that time on the injected wall clock."""
    date = email.utils.formatdate(NOW + 42, usegmt=True)
    sim.inject(Fault(kind="status", status=503, retry_after=date))
    async with client_for(sim, rec) as client:
        await client.list_page(None, 10)

    assert rec.sleeps == [42.0]


async def test_it_keeps_the_retry_after_of_a_final_429(sim: Simulator, rec: Recorder) -> None:
    """A 429 that outlasts the attempts raises ViRateLimitedError carrying its retry_after."""
    sim.inject(Fault(kind="status", status=429, retry_after="3"), count=5)
    async with client_for(sim, rec, max_attempts=2) as client:
        with pytest.raises(ViRateLimitedError) as caught:
            await client.list_page(None, 10)

    assert caught.value.retry_after == 3.0
    assert caught.value.status_code == 429
    assert "injected HTTP 429" in str(caught.value)


async def test_it_passes_unknown_fields_through(sim: Simulator, rec: Recorder) -> None:
    """A page whose documents carry fields never seen before decodes exactly as without them."""
    async with client_for(sim, rec) as client:
        plain = await client.list_page(None, 30)
        sim.inject(Fault(kind="extra_fields"))
        extra = await client.list_page(None, 30)

    assert extra == plain


async def test_it_keeps_unknown_condition_values(sim: Simulator, rec: Recorder) -> None:
    """A condition value the API adds later arrives as the run's latest condition, unchanged."""
    sim.inject(Fault(kind="unknown_condition", endpoint="list"))
    sim.inject(Fault(kind="unknown_condition", endpoint="get"))
    async with client_for(sim, rec) as client:
        page = await client.list_page(None, 10)
        one = await client.get_run(sim.run_ids()[0])

    assert {r.latest.condition for r in page.runs if r.latest} == {UNKNOWN_CONDITION}
    assert one is not None and one.latest is not None
    assert one.latest.condition == UNKNOWN_CONDITION


async def test_it_refuses_a_repeated_page_token(sim: Simulator, rec: Recorder) -> None:
    """A nextPage handed out twice raises ViBadResponseError instead of looping."""
    sim.inject(Fault(kind="repeat_token", endpoint="list"), count=2)
    pages = 0
    async with client_for(sim, rec) as client:
        with pytest.raises(ViBadResponseError, match="a second time"):
            async for _ in client.list_runs(10):
                pages += 1

    assert pages <= 3
    assert sim.request_count("list") == pages


async def test_it_stops_a_listing_longer_than_max_pages(sim: Simulator, rec: Recorder) -> None:
    """A listing that goes on past max_pages raises ViBadResponseError after that many pages."""
    pages = 0
    async with client_for(sim, rec) as client:
        with pytest.raises(ViBadResponseError, match="past 5 pages"):
            async for _ in client.list_runs(10, max_pages=5):
                pages += 1

    assert pages == 5 == sim.request_count("list")


async def test_it_fails_the_whole_listing_when_page_three_fails(
    sim: Simulator, rec: Recorder
) -> None:
    """When page 3 cannot be had, iterating the listing raises; it never just ends early."""
    seen: list[str] = []
    async with client_for(sim, rec, max_attempts=3) as client:
        with pytest.raises(ViServerError):
            async for page in client.list_runs(10):
                seen.extend(r.run_id for r in page.runs)
                if len(seen) == 20:
                    sim.set_outage(True)

    assert seen == sim.run_ids()[:20]
    assert sim.request_count("list") == 2 + 3


# --- secrets ----------------------------------------------------------------------------


async def test_it_never_puts_the_secret_key_in_an_error_or_a_log(
    sim: Simulator, rec: Recorder
) -> None:
    """Across every failure mode, no error text, traceback or log event contains the key."""
    texts: list[str] = []
    with structlog.testing.capture_logs() as logs:
        async with client_for(sim, rec, max_attempts=2, timeout=0.2) as client:
            texts.append(repr(client))
            for name, fault in FAULTS.items():
                sim.inject(fault, count=2)
                with pytest.raises(SURFACES_AS[name]) as caught:
                    await client.list_page(None, 10)
                texts.append("".join(traceback.format_exception(caught.value)))
            for call in (client.get_run("run_missing"), client.list_page("not-a-token", 10)):
                with pytest.raises(ViError) as failed:
                    await call
                texts.append("".join(traceback.format_exception(failed.value)))
        async with client_for(sim, rec, secret_key=SECRET[:-1] + "Q") as rejected:
            with pytest.raises(ViAuthError) as auth:
                await rejected.list_page(None, 10)
            texts.append("".join(traceback.format_exception(auth.value)))

    assert len(logs) >= len(FAULTS)
    everything = "\n".join(texts) + json.dumps(logs, default=repr)
    assert SECRET not in everything
    assert SECRET[:-1] + "Q" not in everything
    assert SECRET[5:40] not in everything


# --- what only a capturing server can show -------------------------------------------------


@dataclass
class Canned:
    """A loopback HTTP server answering canned responses in turn and recording each request."""

    responses: list[tuple[int, dict[str, str], bytes]]
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        self.requests.append((target, {k.lower(): v for k, v in headers.items()}))
        status, extra, body = self.responses.pop(0)
        out = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Connection: close"]
        out += [f"{k}: {v}" for k, v in extra.items()]
        writer.write(("\r\n".join(out) + "\r\n\r\n").encode() + body)
        await writer.drain()
        writer.close()


@pytest.fixture
async def canned() -> AsyncIterator[Canned]:
    server_state = Canned(responses=[])
    server = await asyncio.start_server(server_state.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server_state.url = f"http://127.0.0.1:{port}"
    async with server:
        yield server_state


def canned_client(canned: Canned, endpoint: str, rec: Recorder) -> ViClient:
    return ViClient(
        endpoint=endpoint,
        organization_id="org/7",
        secret_key=SECRET,
        retry=RetryPolicy(sleep=rec.sleep, clock=lambda: NOW),
    )


EMPTY_PAGE = json.dumps({"nextPage": None, "prevPage": None, "items": []}).encode()


@pytest.mark.parametrize("suffix", ["/vi/api", "/vi/api/"])
async def test_it_sends_the_documented_request_under_an_endpoint_prefix(
    canned: Canned, rec: Recorder, suffix: str
) -> None:
    """The path keeps the endpoint's prefix, and every documented header is sent."""
    canned.responses.append((200, {}, EMPTY_PAGE))
    async with canned_client(canned, canned.url + suffix, rec) as client:
        await client.list_page(None, 5)

    target, headers = canned.requests[0]
    assert target == "/vi/api/workspaces/org%2F7/runs?s=5"
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["organization-id"] == "org/7"
    assert headers["accept"] == "application/json"
    assert headers["user-agent"] == f"runwatch/{__version__}"


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"error": {"message": "nested words", "code": 9}}, "nested words"),
        ({"detail": "detail words"}, "detail words"),
        ({"error": "invalid_request", "error_description": "oauth words"}, "oauth words"),
        ({"error": "plain words"}, "plain words"),
    ],
)
async def test_it_quotes_the_server_message_of_a_refused_request(
    canned: Canned, rec: Recorder, body: dict[str, Any], said: str
) -> None:
    """Another 4xx is a permanent ViError, not retried, quoting the body's message and trace."""
    trace = {"x-cloud-trace-context": "105445aa7843bc8bf206b12000100000/1;o=1"}
    canned.responses.append((400, trace, json.dumps(body).encode()))
    async with canned_client(canned, canned.url, rec) as client:
        with pytest.raises(ViError) as caught:
            await client.list_page(None, 5)

    assert caught.value.permanent
    assert caught.value.trace_id == "105445aa7843bc8bf206b12000100000"
    assert said in str(caught.value)
    assert "[trace 105445aa7843bc8bf206b12000100000]" in str(caught.value)
    assert len(canned.requests) == 1


async def test_it_scrubs_the_key_from_a_server_that_echoes_it(
    canned: Canned, rec: Recorder
) -> None:
    """A proxy quoting the Authorization header back has the key replaced in the error."""
    echo = json.dumps({"message": f"bad header Authorization: Bearer {SECRET}"}).encode()
    canned.responses.append((403, {}, echo))
    async with canned_client(canned, canned.url, rec) as client:
        with pytest.raises(ViAuthError) as caught:
            await client.list_page(None, 5)

    assert SECRET not in str(caught.value)
    assert "Bearer ****" in str(caught.value)


async def test_it_does_not_follow_a_redirect(canned: Canned, rec: Recorder) -> None:
    """A redirect is a permanent error naming where to point the endpoint; the key stays home."""
    canned.responses.append((301, {"Location": "https://elsewhere.example/api"}, b""))
    async with canned_client(canned, canned.url, rec) as client:
        with pytest.raises(ViError, match="set endpoint to the final URL") as caught:
            await client.list_page(None, 5)

    assert caught.value.permanent
    assert len(canned.requests) == 1


def test_it_refuses_a_secret_key_that_cannot_be_a_header_without_quoting_it() -> None:
    """A key with a newline is refused at construction, and the error does not contain it."""
    with pytest.raises(ValueError) as caught:
        ViClient(endpoint="http://127.0.0.1:1", organization_id="org", secret_key="dtvi_ab\ncd")

    assert "dtvi_ab" not in str(caught.value)
