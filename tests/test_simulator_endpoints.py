"""The simulator's model outputs and training projects, and its drive API for odd documents,
spoken to over loopback HTTP with httpx and decoded with the vi-sdk's msgspec structs."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import FakeClock
from vi_structs import decode_models, decode_project, decode_projects, import_sdk, sdk_decoders

from runwatch.core.model import PENDING, RUNNING, SUCCEEDED
from runwatch.simulator import Simulator
from runwatch.simulator.population import FLOWS, PROJECT_CATALOGUE

INTENT = {"intent": "sdkLocalDeploy"}
METRICS = {
    "object-detection": {"mAP", "mAP50", "precision", "recall"},
    "classification": {"accuracy", "f1", "loss"},
    "semantic-segmentation": {"mIoU", "pixel_accuracy"},
    "vision-language": {"loss", "bleu", "rougeL"},
}


def client_for(sim: Simulator, **kw: Any) -> httpx.Client:
    headers = {"Authorization": f"Bearer {sim.secret_key}", "Organization-Id": sim.organization_id}
    return httpx.Client(base_url=sim.url, headers=headers, **kw)


def outputs_path(sim: Simulator, run_id: str) -> str:
    return f"/workspaces/{sim.organization_id}/runs/{run_id}/outputs"


def projects_path(sim: Simulator) -> str:
    return f"/workspaces/{sim.organization_id}/trainingProjects"


def runs_with(sim: Simulator, latest: str) -> list[str]:
    return [r for r in sim.run_ids() if sim.latest_condition(r) == latest]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    with Simulator(runs=300, active=10, seed=7, clock=clock) as s:
        yield s


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with client_for(sim) as c:
        yield c


def a_run_with_outputs(sim: Simulator) -> str:
    return next(r for r in runs_with(sim, SUCCEEDED) if sim.outputs(r))


# --- model outputs --------------------------------------------------------------------------


def test_it_lists_a_succeeded_runs_checkpoints_latest_last(
    sim: Simulator, client: httpx.Client
) -> None:
    """The outputs page holds the run's Model documents, epochs rising to the final one."""
    run_id = a_run_with_outputs(sim)
    response = client.get(outputs_path(sim, run_id), params=INTENT)
    body = response.raise_for_status().json()
    assert body["items"] == sim.outputs(run_id)
    assert body["nextPage"] is None and body["prevPage"] is None
    flow = next(f for f in FLOWS if f.name == sim.document(run_id)["spec"]["flow"]["name"])
    epochs = [m["spec"]["epoch"] for m in body["items"]]
    assert 2 <= len(epochs) <= 5 and epochs == sorted(set(epochs)) and epochs[-1] == flow.epochs
    finished = sim.document(run_id)["status"]["conditions"][-1]["lastTransitionTime"]
    times = [m["metadata"]["timeCreated"] for m in body["items"]]
    assert times == sorted(times) and times[-1] <= finished
    for doc in body["items"]:
        assert doc["kind"] == "RunOutput"
        assert (doc["workspaceId"], doc["runId"]) == (sim.organization_id, run_id)
        assert doc["selfLink"].endswith(f"/runs/{run_id}/runOutputs/{doc['runOutputId']}")
        assert doc["status"]["observedGeneration"] == doc["metadata"]["generation"] >= 1
        assert doc["status"]["storageObject"] and doc["etag"] and doc["spec"]["kind"]
        assert "contents" not in doc["status"]
    for source, items in zip(sdk_decoders(), decode_models(response.content), strict=True):
        assert [m.model_id for m in items] == [d["runOutputId"] for d in body["items"]], source
        assert items[-1].spec.epoch == flow.epochs


def test_it_seeds_plausible_metrics_for_each_kind_of_flow(sim: Simulator) -> None:
    """Each flow's checkpoints carry its family's metrics as 4-decimal floats in range."""
    seen = set()
    for run_id in runs_with(sim, SUCCEEDED):
        schema = sim.document(run_id)["spec"]["flow"]["schema"].split("/")[0]
        for doc in sim.outputs(run_id):
            metrics = doc["spec"]["evaluationMetrics"]
            assert set(metrics) == METRICS[schema], run_id
            assert isinstance(doc["spec"]["epoch"], int)
            for name, value in metrics.items():
                assert isinstance(value, float) and round(value, 4) == value
                assert 0.0 < value <= (10.0 if name == "loss" else 1.0), (name, value)
            seen.add(schema)
        outputs = sim.outputs(run_id)
        if len(outputs) >= 2 and schema == "object-detection":
            first, last = outputs[0]["spec"]["evaluationMetrics"], outputs[-1]["spec"]
            assert last["evaluationMetrics"]["mAP"] > first["mAP"]  # training helps
    assert seen == set(METRICS)


def test_it_gives_some_runs_no_outputs_and_others_a_few(sim: Simulator) -> None:
    """A seeded fraction of Succeeded runs has none; running runs may have some; Pending none."""
    succeeded = [len(sim.outputs(r)) for r in runs_with(sim, SUCCEEDED)]
    assert 0 < succeeded.count(0) < len(succeeded) / 4
    assert all(n == 0 or 2 <= n <= 5 for n in succeeded)
    assert all(sim.outputs(r) == [] for r in runs_with(sim, PENDING))
    partial = [len(sim.outputs(r)) for r in runs_with(sim, "Failed") + runs_with(sim, RUNNING)]
    assert any(partial) and 0 in partial


def test_it_pages_outputs_with_p_and_s(sim: Simulator, client: httpx.Client) -> None:
    """`p`/`s` walk the outputs in checkpoint order, the latest on the last page."""
    run_id = runs_with(sim, SUCCEEDED)[0]
    sim.set_outputs(
        run_id, [{"epoch": e, "evaluationMetrics": {"loss": 1 / e}} for e in range(1, 8)]
    )
    pages, token = [], None
    while True:
        params = {**INTENT, "s": "3", **({"p": token} if token else {})}
        body = client.get(outputs_path(sim, run_id), params=params).raise_for_status().json()
        pages.append([m["spec"]["epoch"] for m in body["items"]])
        token = body["nextPage"]
        if token is None:
            break
    assert pages == [[1, 2, 3], [4, 5, 6], [7]]
    back = client.get(outputs_path(sim, run_id), params={**INTENT, "s": 3, "p": body["prevPage"]})
    assert [m["spec"]["epoch"] for m in back.json()["items"]] == [4, 5, 6]
    for params in ({"s": "0"}, {"p": "garbage!!"}):
        assert client.get(outputs_path(sim, run_id), params={**INTENT, **params}).status_code == 400


def test_it_adds_a_download_url_only_with_contents_y(
    sim: Simulator, client: httpx.Client, clock: FakeClock
) -> None:
    """contents=y adds status.contents.downloadUrl, expiring after the clock's now."""
    run_id = a_run_with_outputs(sim)
    url = outputs_path(sim, run_id)
    plain = client.get(url, params={**INTENT, "contents": "n"}).json()["items"]
    response = client.get(url, params={**INTENT, "contents": "y"})
    full = response.json()["items"]
    assert all("contents" not in m["status"] for m in plain)
    for doc in full:
        download = doc["status"]["contents"]["downloadUrl"]
        assert download["url"].startswith("https://") and ".invalid/" in download["url"]
        assert download["expiresAt"] > clock.now * 1000
    for items in decode_models(response.content):
        assert all(m.status.contents.download_url.url for m in items)
    assert full == sim.outputs(run_id, contents=True)


def test_it_answers_one_checkpoint_as_a_page(sim: Simulator, client: httpx.Client) -> None:
    """`/outputs/<runOutputId>` and `/outputs/epoch_<n>` are pages of that one checkpoint."""
    run_id = a_run_with_outputs(sim)
    first = sim.outputs(run_id)[0]
    for ckpt in (first["runOutputId"], f"epoch_{first['spec']['epoch']}"):
        body = client.get(f"{outputs_path(sim, run_id)}/{ckpt}", params=INTENT).json()
        assert body == {"nextPage": None, "prevPage": None, "items": [first]}
    missing = client.get(f"{outputs_path(sim, run_id)}/epoch_9999", params=INTENT)
    assert missing.status_code == 404 and "epoch_9999" in missing.json()["message"]


def test_it_refuses_an_unknown_run_and_a_missing_intent(
    sim: Simulator, client: httpx.Client
) -> None:
    """An unknown run is a 404; no intent, or the SDK's `?intent=...?s=10`, is a 400."""
    run_id = a_run_with_outputs(sim)
    unknown = client.get(outputs_path(sim, "run_000000000000"), params=INTENT)
    assert unknown.status_code == 404 and unknown.headers["x-cloud-trace-context"]
    assert client.get(outputs_path(sim, run_id)).status_code == 400
    doubled = client.get(f"{outputs_path(sim, run_id)}?intent=sdkLocalDeploy?s=10")
    assert doubled.status_code == 400 and "second '?'" in doubled.json()["message"]


def test_it_gives_outputs_to_a_run_that_succeeds_through_the_drive_api(sim: Simulator) -> None:
    """A created run has none until it succeeds; then it has its whole plan."""
    run_id = sim.create_run(condition=RUNNING)
    assert sim.outputs(run_id) == []
    sim.append_condition(run_id, SUCCEEDED)
    outputs = sim.outputs(run_id)
    assert len(outputs) >= 2
    assert outputs[-1]["metadata"]["timeCreated"] <= sim.document(run_id)["metadata"]["lastUpdated"]


def test_it_saves_no_checkpoint_before_a_run_was_created(sim: Simulator) -> None:
    """A run created already Succeeded has outputs saved at its creation, not before."""
    run_id = sim.create_run(condition=SUCCEEDED)
    created = sim.document(run_id)["metadata"]["timeCreated"]
    times = {o["metadata"]["timeCreated"] for o in sim.outputs(run_id)}
    assert times == {created}


def test_it_keeps_checkpoints_already_served_when_a_running_run_succeeds(sim: Simulator) -> None:
    """A running run's first checkpoints stay as they were; success adds the rest after them."""
    run_id = next(r for r in runs_with(sim, RUNNING) if sim.outputs(r))
    before = sim.outputs(run_id)
    sim.append_condition(run_id, SUCCEEDED)
    after = sim.outputs(run_id)
    assert after[: len(before)] == before and len(after) > len(before)
    assert after[len(before)]["spec"]["epoch"] > before[-1]["spec"]["epoch"]


def test_it_gives_outputs_to_runs_the_scenario_brings_to_success() -> None:
    """advance() moving a run to Succeeded gives it checkpoints."""
    sim = Simulator(runs=60, active=20, seed=4, clock=FakeClock())
    changes = sim.advance(4 * 3600)
    succeeded = [run_id for run_id, condition in changes if condition == SUCCEEDED]
    assert succeeded and all(sim.outputs(r) for r in succeeded)


def test_it_keeps_outputs_set_by_hand_as_given(sim: Simulator) -> None:
    """set_outputs([]) leaves a run without outputs for good; a kept id gets a new generation."""
    run_id = a_run_with_outputs(sim)
    original = sim.outputs(run_id)
    sim.set_outputs(run_id, [{"runOutputId": original[0]["runOutputId"], "epoch": 1}])
    [kept] = sim.outputs(run_id)
    assert kept["metadata"]["generation"] == original[0]["metadata"]["generation"] + 1
    assert kept["etag"] != original[0]["etag"] and kept["spec"]["evaluationMetrics"] is None
    sim.set_outputs(run_id, [])
    sim.set_conditions(run_id, [])
    sim.append_condition(run_id, SUCCEEDED)
    assert sim.outputs(run_id) == []


@pytest.mark.parametrize(
    "outputs",
    [
        [{"epoch": 1, "metrics": {}}],
        [{"epoch": "3"}],
        [{"evaluationMetrics": [1]}],
        [{"runOutputId": "ro_x"}, {"runOutputId": "ro_x"}],
    ],
)
def test_it_refuses_outputs_it_cannot_serve(sim: Simulator, outputs: list[Any]) -> None:
    """Unknown keys, a non-int epoch, non-mapping metrics and repeated ids are refused."""
    with pytest.raises(ValueError):
        sim.set_outputs(sim.run_ids()[0], outputs)


# --- training projects ----------------------------------------------------------------------


def test_it_resolves_every_runs_training_project(sim: Simulator, client: httpx.Client) -> None:
    """Each run's spec.trainingProject is a project whose status.runs names the run."""
    names = {p[0]: p[1] for p in PROJECT_CATALOGUE}
    projects: dict[str, dict[str, Any]] = {}
    for run_id in sim.run_ids():
        project_id = sim.document(run_id)["spec"]["trainingProject"]
        if project_id is None:
            continue
        if project_id not in projects:
            response = client.get(f"{projects_path(sim)}/{project_id}")
            projects[project_id] = response.raise_for_status().json()
            for decoded in decode_project(response.content):
                assert decoded.spec.name == names[project_id]
        assert run_id in projects[project_id]["status"]["runs"]
    assert set(projects) == set(names)
    for project_id, doc in projects.items():
        assert doc["kind"] == "TrainingProject" and doc["trainingProjectId"] == project_id
        assert doc["spec"]["name"] == names[project_id] and doc["spec"]["type"]
        assert doc["selfLink"] == f"{projects_path(sim)}/{project_id}"
        assert doc == sim.project_document(project_id)
        runs = doc["status"]["runs"]
        assert runs == [r for r in sim.run_ids() if r in set(runs)]  # newest first
        outputs = [o["runOutputId"] for r in runs for o in sim.outputs(r)]
        assert doc["status"]["runOutputs"] == outputs


def test_it_lists_training_projects_in_pages(sim: Simulator, client: httpx.Client) -> None:
    """The projects listing pages with p/s like the runs listing; an unknown id is a 404."""
    first = client.get(projects_path(sim), params={"s": 2}).json()
    second = client.get(projects_path(sim), params={"s": 2, "p": first["nextPage"]}).json()
    listed = [p["trainingProjectId"] for p in first["items"] + second["items"]]
    assert listed == sim.project_ids() and len(listed) == 3 and second["nextPage"] is None
    body = client.get(projects_path(sim), params={"s": 10}).content
    for items in decode_projects(body):
        assert [p.training_project_id for p in items] == listed
    missing = client.get(f"{projects_path(sim)}/proj_nowhere")
    assert missing.status_code == 404 and "proj_nowhere" in missing.json()["message"]


def test_it_renames_a_project_as_a_new_generation(sim: Simulator, client: httpx.Client) -> None:
    """rename_project changes spec.name, etag, lastUpdated and generation; If-None-Match sees it."""
    project_id = sim.project_ids()[0]
    url = f"{projects_path(sim)}/{project_id}"
    before = client.get(url).json()
    assert client.get(url, headers={"If-None-Match": f'"{before["etag"]}"'}).status_code == 304
    sim.rename_project(project_id, "Retail shelves (EU)")
    after = client.get(url, headers={"If-None-Match": f'"{before["etag"]}"'})
    assert after.status_code == 200
    doc = after.json()
    assert doc["spec"]["name"] == "Retail shelves (EU)" and doc["etag"] != before["etag"]
    assert doc["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert doc["metadata"]["lastUpdated"] > before["metadata"]["lastUpdated"]
    with pytest.raises(KeyError):
        sim.rename_project("proj_nowhere", "x")


def test_it_makes_a_project_for_a_run_that_names_an_unknown_one(
    sim: Simulator, client: httpx.Client
) -> None:
    """A run created in a project nobody made gets one, named after its id."""
    run_id = sim.create_run(training_project="proj_traffic-cams")
    doc = client.get(f"{projects_path(sim)}/proj_traffic-cams").json()
    assert doc["spec"]["name"] == "Traffic cams" and doc["status"]["runs"] == [run_id]
    assert sim.project_ids()[0] == "proj_traffic-cams"


# --- the same API as the runs endpoints -----------------------------------------------------


def new_endpoint_paths(sim: Simulator) -> list[str]:
    run_id = a_run_with_outputs(sim)
    return [
        f"{outputs_path(sim, run_id)}?intent=sdkLocalDeploy",
        projects_path(sim),
        f"{projects_path(sim)}/{sim.project_ids()[0]}",
    ]


def test_it_guards_the_new_endpoints_like_the_runs_endpoints(sim: Simulator) -> None:
    """No key is a 401, another workspace a 403, a PATCH a 405, an outage its status."""
    other_org = [p.replace(sim.organization_id, "org-other") for p in new_endpoint_paths(sim)]
    with httpx.Client(base_url=sim.url) as anonymous, client_for(sim) as client:
        for path, elsewhere in zip(new_endpoint_paths(sim), other_org, strict=True):
            for response, status in (
                (anonymous.get(path), 401),
                (client.get(elsewhere), 403),
                (client.patch(path, json={}), 405),
            ):
                assert response.status_code == status, path
                assert response.json()["message"] and response.headers["x-cloud-trace-context"]
        sim.set_outage(True, status=502)
        assert {client.get(p).status_code for p in new_endpoint_paths(sim)} == {502}


def test_it_counts_each_endpoint_apart(sim: Simulator, client: httpx.Client) -> None:
    """request_count and requests_log name outputs, projects and project requests."""
    for path in new_endpoint_paths(sim):
        client.get(path)
    client.get(projects_path(sim), params={"s": 1})
    counts = {e: sim.request_count(e) for e in ("list", "get", "outputs", "projects", "project")}
    assert counts == {"list": 0, "get": 0, "outputs": 1, "projects": 2, "project": 1}
    endpoints = [r.endpoint for r in sim.requests_log()]
    assert endpoints == ["outputs", "projects", "project", "projects"]
    assert sim.requests_log()[0].query == INTENT


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_it_serves_the_new_endpoints_over_tls(tmp_path: Path) -> None:
    """With an SSL context the outputs and projects are served over HTTPS too."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "key.pem", "-out", "cert.pem", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    sim = Simulator(runs=40, active=2, seed=3)
    sim.start(ssl_context=context)
    try:
        trust = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        with client_for(sim, verify=trust) as client:
            assert sim.url.startswith("https://")
            assert {client.get(p).status_code for p in new_endpoint_paths(sim)} == {200}
    finally:
        sim.stop()


# --- document-level oddities through the drive API ------------------------------------------


def test_it_replaces_a_runs_condition_history_exactly(sim: Simulator, client: httpx.Client) -> None:
    """set_conditions serves exactly the given list, as a new generation."""
    run_id = sim.run_ids()[5]
    before = sim.document(run_id)
    history = [
        {"condition": "Running", "status": "Reached", "lastTransitionTime": 20, "reason": None,
         "message": None},
        {"condition": "Pending", "status": "Waiting", "lastTransitionTime": 10, "reason": "Odd",
         "message": "older than the one before"},
    ]  # fmt: skip
    sim.set_conditions(run_id, history)
    doc = client.get(f"/workspaces/{sim.organization_id}/runs/{run_id}").json()
    assert doc["status"]["conditions"] == history
    assert doc["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert doc["status"]["observedGeneration"] == doc["metadata"]["generation"]
    assert doc["etag"] != before["etag"]
    assert doc["metadata"]["lastUpdated"] > before["metadata"]["lastUpdated"]
    sim.set_conditions(run_id, [])
    assert sim.document(run_id)["status"]["conditions"] == []


@pytest.mark.parametrize(
    "condition",
    [
        {"condition": "Running", "status": "Reached"},
        {"condition": "Running", "status": "Reached", "lastTransitionTime": 1, "extra": 1},
        {"condition": 3, "status": "Reached", "lastTransitionTime": 1},
        {"condition": "Running", "status": "Reached", "lastTransitionTime": "1"},
        {"condition": "Running", "status": "Reached", "lastTransitionTime": 1, "reason": 5},
    ],
)
def test_it_refuses_conditions_that_are_not_wire_conditions(
    sim: Simulator, condition: dict[str, Any]
) -> None:
    """A missing or unknown key, or a value of the wrong type, is refused and changes nothing."""
    run_id = sim.run_ids()[0]
    before = sim.document(run_id)
    with pytest.raises(ValueError):
        sim.set_conditions(run_id, [condition])
    assert sim.document(run_id) == before


def test_it_resorts_the_listing_when_time_created_changes(
    sim: Simulator, client: httpx.Client
) -> None:
    """set_time_created moves the run in the newest-first listing, as a new generation."""
    oldest = sim.run_ids()[-1]
    generation = sim.document(oldest)["metadata"]["generation"]
    newest = -sim.document(sim.run_ids()[0])["metadata"]["timeCreated"]
    sim.set_time_created(oldest, -newest + 1)
    head = client.get(f"/workspaces/{sim.organization_id}/runs", params={"s": 1}).json()
    assert [r["runId"] for r in head["items"]] == [oldest] == sim.run_ids()[:1]
    assert head["items"][0]["metadata"]["timeCreated"] == -newest + 1
    assert head["items"][0]["metadata"]["generation"] == generation + 1


def test_it_bumps_the_generation_on_every_change(sim: Simulator) -> None:
    """Each drive-API change makes a strictly newer generation of the document it changes."""
    run_id = sim.create_run(condition=PENDING, training_project="proj_aerial-survey")
    generations = [sim.document(run_id)["metadata"]["generation"]]
    for change in (
        lambda: sim.append_condition(run_id, RUNNING),
        lambda: sim.set_conditions(run_id, []),
        lambda: sim.set_time_created(run_id, 5),
        lambda: sim.append_condition(run_id, SUCCEEDED),
    ):
        change()
        generations.append(sim.document(run_id)["metadata"]["generation"])
    assert generations == sorted(set(generations))
    project = [sim.project_document("proj_aerial-survey")["metadata"]["generation"]]
    sim.rename_project("proj_aerial-survey", "Aerial survey 2")
    sim.delete_run(run_id)
    project.append(sim.project_document("proj_aerial-survey")["metadata"]["generation"])
    assert project[1] == project[0] + 2


def test_the_official_sdk_reads_outputs_and_projects(sim: Simulator) -> None:
    """vi-sdk's models.get (latest, one checkpoint, contents) and training_projects.get work."""
    if not import_sdk():
        pytest.skip("vi-sdk is not installed")
    import vi

    quiet = vi.LoggingConfig(enable_console=False, enable_file=False)
    run_id = a_run_with_outputs(sim)
    latest = sim.outputs(run_id)[-1]
    project_id = sim.project_ids()[0]
    client = vi.Client(
        secret_key=sim.secret_key,
        organization_id=sim.organization_id,
        endpoint=sim.url,
        logging_config=quiet,
    )
    model = client.models.get(run_id_or_link=run_id)
    assert (model.model_id, model.spec.epoch) == (latest["runOutputId"], latest["spec"]["epoch"])
    assert model.spec.evaluation_metrics == latest["spec"]["evaluationMetrics"]
    one = client.models.get(run_id_or_link=run_id, ckpt=latest["runOutputId"], contents=True)
    assert one.status.contents is not None and one.status.contents.download_url.url
    project = client.training_projects.get(training_project_id=project_id)
    assert project.spec.name == sim.project_document(project_id)["spec"]["name"]
    assert [r.endpoint for r in sim.requests_log()] == ["outputs", "outputs", "project"]
