"""The Vi client's model-output and training-project calls against the simulator on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from runwatch.core.model import SUCCEEDED
from runwatch.errors import ViBadResponseError, ViNotFoundError, ViRateLimitedError, ViServerError
from runwatch.simulator.server import Fault, Simulator
from runwatch.vi.client import ViClient
from runwatch.vi.decode_more import ModelOutput
from runwatch.vi.retry import RetryPolicy

SECRET = "dtvi_" + "S3cr3tK3y" * 10 + "xyz"  # 103 characters, like a real key
PROJECT = "proj_retail-shelves"


@dataclass
class Recorder:
    sleeps: list[float] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def on_request(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.requests.append((endpoint, outcome))


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(runs=10, active=2, seed=7, secret_key=SECRET) as s:
        yield s


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
async def client(sim: Simulator, rec: Recorder) -> AsyncIterator[ViClient]:
    async with ViClient(
        endpoint=sim.url,
        organization_id=sim.organization_id,
        secret_key=SECRET,
        timeout=5.0,
        retry=RetryPolicy(max_attempts=3, sleep=rec.sleep, clock=lambda: 1_750_000_000.0),
        on_request=rec.on_request,
    ) as c:
        yield c


def succeeded_run(sim: Simulator, outputs: list[dict[str, object]]) -> str:
    run_id = sim.create_run(condition="Running", training_project=PROJECT)
    sim.set_outputs(run_id, outputs)
    sim.append_condition(run_id, SUCCEEDED)
    return run_id


async def test_it_answers_none_for_a_run_without_outputs(sim: Simulator, client: ViClient) -> None:
    run_id = succeeded_run(sim, [])
    assert await client.latest_output(run_id) is None
    assert sim.request_count("outputs") == 1


async def test_it_reads_the_latest_output_in_one_request(
    sim: Simulator, client: ViClient, rec: Recorder
) -> None:
    run_id = succeeded_run(sim, [{"epoch": 1}, {"epoch": 2, "evaluationMetrics": {"f1": 0.5}}])
    found = await client.latest_output(run_id)
    assert found is not None
    assert (found.epoch, found.metrics) == (2, (("f1", 0.5),))
    assert rec.requests == [("outputs", "200")]


async def test_it_walks_small_pages_to_the_last(sim: Simulator, client: ViClient) -> None:
    run_id = succeeded_run(sim, [{"epoch": n} for n in range(1, 8)])
    found = await client.latest_output(run_id, page_size=3)
    assert found is not None and found.epoch == 7
    queries = [r.query for r in sim.requests_log() if r.endpoint == "outputs"]
    assert [q["s"] for q in queries] == ["3", "3", "3"]
    assert "p" not in queries[0] and all(q["p"] for q in queries[1:])


async def test_it_refuses_a_repeated_outputs_page_token(sim: Simulator, client: ViClient) -> None:
    run_id = succeeded_run(sim, [{"epoch": n} for n in range(1, 8)])
    sim.inject(Fault(kind="repeat_token", endpoint="outputs"), count=10)
    with pytest.raises(ViBadResponseError, match="a second time while listing the model outputs"):
        await client.latest_output(run_id, page_size=3)


async def test_a_missing_run_and_project_say_what_is_missing(
    sim: Simulator, client: ViClient
) -> None:
    """404 names the run or the project, not the organization; it is not retried."""
    org = sim.organization_id
    with pytest.raises(ViNotFoundError, match=f"run run_nope does not exist in organization {org}"):
        await client.latest_output("run_nope")
    with pytest.raises(
        ViNotFoundError, match=f"training project proj_nope does not exist in organization {org}"
    ):
        await client.training_project("proj_nope")
    assert (sim.request_count("outputs"), sim.request_count("project")) == (1, 1)


async def test_it_reads_a_project_and_asks_again_with_its_etag(
    sim: Simulator, client: ViClient, rec: Recorder
) -> None:
    """An unchanged project answers 304 (None); a renamed one its new name."""
    first = await client.training_project(PROJECT)
    assert first is not None and first.name == "Retail shelves" and first.etag
    assert await client.training_project(PROJECT, etag=first.etag) is None
    sim.rename_project(PROJECT, "Shelves")
    again = await client.training_project(PROJECT, etag=first.etag)
    assert again is not None and (again.name, again.project_id) == ("Shelves", PROJECT)
    assert again.etag not in (None, first.etag)
    assert [outcome for _, outcome in rec.requests] == ["200", "304", "200"]


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "x" * 256, "sp ace"])
async def test_it_refuses_an_id_the_api_would_not_accept_without_a_request(
    sim: Simulator, client: ViClient, bad: str
) -> None:
    with pytest.raises(ValueError, match="is not a Vi"):
        await client.latest_output(bad)
    with pytest.raises(ValueError, match="is not a Vi"):
        await client.training_project(bad)
    assert sim.request_count("any") == 0


async def test_a_budget_shorter_than_retry_after_gives_up_at_once(
    sim: Simulator, client: ViClient, rec: Recorder
) -> None:
    """within= caps the retries: a Retry-After beyond it fails the call without waiting."""
    sim.inject(Fault(kind="status", status=429, retry_after="300", endpoint="project"), count=5)
    with pytest.raises(ViRateLimitedError):
        await client.training_project(PROJECT, within=5.0)
    assert rec.sleeps == []
    assert sim.request_count("project") == 1


async def test_within_the_budget_it_retries_as_usual(
    sim: Simulator, client: ViClient, rec: Recorder
) -> None:
    run_id = succeeded_run(sim, [{"epoch": 3}])
    sim.inject(Fault(kind="status", status=503, retry_after="1", endpoint="outputs"), count=1)
    assert await client.latest_output(run_id, within=5.0) == ModelOutput(
        run_id=run_id, model_id=sim.outputs(run_id)[0]["runOutputId"], epoch=3
    )
    assert rec.sleeps == [1.0]
    sim.inject(Fault(kind="status", status=503, endpoint="outputs"), count=10)
    with pytest.raises(ViServerError):
        await client.latest_output(run_id, within=0.0)
    assert sim.request_count("outputs") == 3  # the budget of 0: one attempt, no retry


async def test_a_name_echoing_the_secret_key_is_masked(sim: Simulator, client: ViClient) -> None:
    """A proxy that echoes the Authorization header into a body shows none of the key."""

    def echo(body: dict[str, object]) -> dict[str, object]:
        return {**body, "spec": {"name": f"Bearer {SECRET}"}}

    sim.inject(Fault(kind="rewrite", rewrite=echo, endpoint="project"))
    found = await client.training_project(PROJECT)
    assert found is not None
    assert SECRET[:12] not in found.name and found.name == "Bearer ****"


async def test_a_request_cut_by_its_caller_is_counted_cancelled(
    sim: Simulator, client: ViClient, rec: Recorder
) -> None:
    """A deadline of the caller's (enrichment's) is not the API's timeout."""
    sim.inject(Fault(kind="slow", delay=30.0, endpoint="project"))
    task = asyncio.ensure_future(client.training_project(PROJECT))
    for _ in range(1000):  # until the simulator holds the request (at most 10 s)
        if sim.request_count("project"):
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.requests == [("project", "cancelled")]
