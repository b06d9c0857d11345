"""Decoding model outputs and training projects: odd documents in, values or
ViBadResponseError out, every string made safe."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from vi_structs import decode_models, decode_project

from runwatch.core.model import Enrichment, Event
from runwatch.errors import ViBadResponseError
from runwatch.simulator.server import Simulator
from runwatch.state.rows import event_from_payload, event_payload
from runwatch.vi.decode_more import (
    MAX_METRICS,
    MAX_NAME,
    ModelOutput,
    OutputsPage,
    TrainingProject,
    decode_outputs_page,
    decode_training_project,
    safe_text,
)

ORG, RUN, PROJECT = "org-7a1c", "run_1", "proj_a"


def model(run_output_id: str = "ro_1", **spec: Any) -> dict[str, Any]:
    """A Model document as the API sends it, every documented field present."""
    return {
        "kind": "RunOutput",
        "workspaceId": ORG,
        "runId": RUN,
        "runOutputId": run_output_id,
        "spec": {"kind": "yolo", "epoch": 10, "evaluationMetrics": {"mAP": 0.5}, **spec},
        "status": {"observedGeneration": 1, "conditions": [], "storageObject": "gs://x"},
        "metadata": {"timeCreated": 1, "lastUpdated": 1, "generation": 1, "attributes": {}},
        "selfLink": f"/workspaces/{ORG}/runs/{RUN}/runOutputs/{run_output_id}",
        "etag": "e1",
    }


def page(*items: object, next_page: object = None) -> dict[str, Any]:
    return {"nextPage": next_page, "prevPage": None, "items": list(items)}


def project(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "TrainingProject",
        "workspaceId": ORG,
        "trainingProjectId": PROJECT,
        "spec": {"name": "Retail shelves", "description": None, "type": "freeform"},
        "status": {"runs": [], "flows": [], "runOutputs": [], "tasks": []},
        "metadata": {"timeCreated": 1, "lastUpdated": 1, "generation": 1, "attributes": {}},
        "selfLink": f"/workspaces/{ORG}/trainingProjects/{PROJECT}",
        "etag": "p1",
    }
    doc.update(overrides)
    return doc


def outputs(body: object) -> OutputsPage:
    return decode_outputs_page(body, organization_id=ORG, run_id=RUN)


def latest(*items: object) -> ModelOutput | None:
    return outputs(page(*items)).latest


# --- outputs pages ------------------------------------------------------------------------------


def test_it_reads_the_last_item_of_a_page_as_the_latest() -> None:
    """Latest last: the page's last item, its epoch, id and metrics in the API's order."""
    metrics = {"loss": 0.2, "mAP": 0.5, "accuracy": 0.9}
    got = outputs(page(model("ro_1", epoch=5), model("ro_2", epoch=9, evaluationMetrics=metrics)))
    assert got == OutputsPage(
        latest=ModelOutput(
            run_id=RUN, model_id="ro_2", epoch=9, metrics=tuple(metrics.items())
        ),
        next_page=None,
        items=2,
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(page(), id="empty items"),
        pytest.param({"nextPage": None}, id="no items"),
        pytest.param({"items": None}, id="null items"),
        pytest.param({}, id="an empty object (every key has a default)"),
    ],
)
def test_a_page_without_items_has_no_latest_output(body: dict[str, Any]) -> None:
    """No items is a run that saved nothing, not an error."""
    assert outputs(body) == OutputsPage(latest=None, next_page=None, items=0)


def test_it_keeps_the_next_page_token_and_reads_an_empty_one_as_the_end() -> None:
    assert outputs(page(model(), next_page="tok")).next_page == "tok"
    assert outputs(page(model(), next_page="")).next_page is None


@pytest.mark.parametrize(
    ("body", "why"),
    [
        pytest.param([model()], "it is list", id="a list"),
        pytest.param("nope", "it is str", id="a string"),
        pytest.param(None, "it is missing", id="null"),
        pytest.param({"items": {"a": 1}}, "items is dict", id="items an object"),
        pytest.param(page(model(), next_page=7), "nextPage is int", id="nextPage a number"),
        pytest.param(page(model(), 42), "latest item is int", id="last item a number"),
        pytest.param(page({"runId": RUN}), "runOutputId is missing", id="no runOutputId"),
        pytest.param(page(model(run_output_id=" \n")), "runOutputId is str", id="blank id"),
        pytest.param(
            page({**model(), "runId": "run_other"}), "belongs to run run_other", id="other run"
        ),
    ],
)
def test_it_refuses_a_page_it_cannot_read_naming_the_run(body: object, why: str) -> None:
    with pytest.raises(ViBadResponseError, match=f"run {RUN} of organization {ORG}") as err:
        outputs(body)
    assert why in str(err.value)


def test_only_the_latest_item_must_be_readable() -> None:
    """Garbage before the last item does not matter: only the latest is shown."""
    assert latest("garbage", None, model("ro_9")) == ModelOutput(
        run_id=RUN, model_id="ro_9", epoch=10, metrics=(("mAP", 0.5),)
    )


@pytest.mark.parametrize(
    ("spec", "epoch", "metrics"),
    [
        pytest.param({"epoch": None, "evaluationMetrics": None}, None, (), id="nulls"),
        pytest.param({"epoch": "10", "evaluationMetrics": [1, 2]}, None, (), id="wrong types"),
        pytest.param({"epoch": True}, None, (("mAP", 0.5),), id="a boolean epoch"),
        pytest.param({"epoch": 12.0}, 12, (("mAP", 0.5),), id="an integral float epoch"),
        pytest.param({"epoch": 12.5}, None, (("mAP", 0.5),), id="a fractional epoch"),
        pytest.param({"evaluationMetrics": {}}, 10, (), id="no metrics"),
    ],
)
def test_an_odd_spec_field_reads_as_absent(
    spec: dict[str, Any], epoch: int | None, metrics: tuple[tuple[str, object], ...]
) -> None:
    found = latest(model(**spec))
    assert found is not None
    assert (found.epoch, found.metrics) == (epoch, metrics)


def test_a_model_without_a_spec_still_names_its_output() -> None:
    doc = model()
    del doc["spec"]
    assert latest(doc) == ModelOutput(run_id=RUN, model_id="ro_1")


def test_metric_values_stay_as_sent_in_a_form_json_carries() -> None:
    """Numbers, booleans, null and text as sent; NaN and infinities by name; nested values as
    compact JSON text."""
    sent = {
        "int": 3,
        "big": 10**30,
        "float": 0.123456789,
        "bool": False,
        "none": None,
        "text": "best",
        "nan": math.nan,
        "inf": math.inf,
        "-inf": -math.inf,
        "list": [1, 2.5, "x"],
        "obj": {"car": 0.7},
    }
    found = latest(model(evaluationMetrics=sent))
    assert found is not None
    assert found.metrics == (
        ("int", 3),
        ("big", 10**30),
        ("float", 0.123456789),
        ("bool", False),
        ("none", None),
        ("text", "best"),
        ("nan", "NaN"),
        ("inf", "Infinity"),
        ("-inf", "-Infinity"),
        ("list", '[1,2.5,"x"]'),
        ("obj", '{"car":0.7}'),
    )
    json.dumps(found.metrics, allow_nan=False)  # plain JSON


def test_metric_names_and_texts_are_made_safe_and_bounded() -> None:
    sent: dict[str, Any] = {
        "line\nbreak": "tab\there",
        "\u202egnp.exe": "x",
        "half \ud83d emoji": "\x1b[31mred",
        " \n ": 1,  # blank once cleaned: left out
        "long": "x" * 10_000,
        "y" * 1000: 2,
    }
    found = latest(model(evaluationMetrics=sent))
    assert found is not None
    names = [name for name, _ in found.metrics]
    values = dict(found.metrics)
    assert names[:3] == ["line break", "gnp.exe", "half \ufffd emoji"]
    assert values["line break"] == "tab here"
    assert values["half \ufffd emoji"] == "[31mred"
    assert len(found.metrics) == 5
    assert len(names[4]) == MAX_NAME and names[4].endswith("…")
    assert len(str(values["long"])) == 500


def test_it_keeps_at_most_max_metrics_in_order() -> None:
    sent = {f"m{i}": i for i in range(MAX_METRICS + 50)}
    found = latest(model(evaluationMetrics=sent))
    assert found is not None
    assert [n for n, _ in found.metrics] == [f"m{i}" for i in range(MAX_METRICS)]


def test_a_mask_scrubs_secrets_from_names_and_values() -> None:
    """The client's redactor runs on every string: a proxy echoing the key shows none of it."""
    secret = "dtvi_" + "k" * 98
    sent = {f"echo {secret}": f"Bearer {secret}"}
    found = decode_outputs_page(
        page(model(evaluationMetrics=sent)),
        organization_id=ORG,
        run_id=RUN,
        mask=lambda text: text.replace(secret, "****"),
    ).latest
    assert found is not None
    assert found.metrics == (("echo ****", "Bearer ****"),)


# --- training projects --------------------------------------------------------------------------


def named(doc: object) -> TrainingProject:
    return decode_training_project(doc, organization_id=ORG, project_id=PROJECT)


def test_it_reads_a_projects_name_and_etag() -> None:
    assert named(project()) == TrainingProject(
        project_id=PROJECT, name="Retail shelves", etag="p1"
    )


def test_a_project_may_leave_out_its_kind_and_everything_but_its_name() -> None:
    assert named({"spec": {"name": "Only a name"}}) == TrainingProject(
        project_id=PROJECT, name="Only a name"
    )


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        pytest.param([project()], "it is list", id="a list"),
        pytest.param(project(kind="Run"), "kind is 'Run'", id="another kind"),
        pytest.param(project(kind=None), "kind is null", id="a null kind"),
        pytest.param(project(kind=7), "kind is int", id="a numeric kind"),
        pytest.param(project(trainingProjectId="proj_b"), "training project proj_b", id="other"),
        pytest.param(project(spec=None), "spec is missing", id="no spec"),
        pytest.param(project(spec={"name": 42}), "spec.name is int", id="a numeric name"),
        pytest.param(project(spec={"name": " \t"}), "spec.name is blank", id="a blank name"),
        pytest.param(project(spec={}), "spec.name is missing", id="no name"),
    ],
)
def test_it_refuses_a_project_it_cannot_name(doc: object, why: str) -> None:
    with pytest.raises(ViBadResponseError, match=f"training project {PROJECT} of") as err:
        named(doc)
    assert why in str(err.value)


def test_a_projects_name_is_made_safe() -> None:
    doc = project(spec={"name": "Retail\nshelves \u202e\ud800" + "!" * 500})
    got = named(doc)
    assert got.name.startswith("Retail shelves  \ufffd!!")
    assert len(got.name) == MAX_NAME


# --- the simulator's documents, as runwatch and the SDK's structs read them ---------------------


def test_it_reads_the_simulators_documents_as_the_sdk_does() -> None:
    """Epoch, id and metrics of every output, and each project's name, agree with vi-sdk."""
    sim = Simulator(runs=30, seed=4)
    for run_id in sim.run_ids():
        docs = sim.outputs(run_id)
        if not docs:
            continue
        body = json.dumps(page(*docs)).encode()
        ours = decode_outputs_page(
            json.loads(body), organization_id=sim.organization_id, run_id=run_id
        ).latest
        for sdk in decode_models(body):
            last = sdk[-1]
            assert ours == ModelOutput(
                run_id=run_id,
                model_id=last.model_id,
                epoch=last.spec.epoch,
                metrics=tuple((last.spec.evaluation_metrics or {}).items()),
            )
    for project_id in sim.project_ids():
        doc = sim.project_document(project_id)
        got = decode_training_project(
            doc, organization_id=sim.organization_id, project_id=project_id
        )
        for sdk_project in decode_project(msgspec.json.encode(doc)):
            assert got.name == sdk_project.spec.name


# --- properties ---------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _clean(text: str) -> bool:
    return all(
        not (0xD800 <= ord(c) <= 0xDFFF) and (ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F)
        for c in text
    )


@given(st.one_of(JSON, st.lists(JSON, max_size=3).map(lambda items: page(*items))))
def test_any_json_body_decodes_or_raises_bad_response(body: object) -> None:
    """Whatever the body, decoding returns a page or raises ViBadResponseError, nothing else."""
    with contextlib.suppress(ViBadResponseError):
        outputs(body)
    with contextlib.suppress(ViBadResponseError):
        named(body)


@given(st.dictionaries(st.text(max_size=30), JSON, max_size=12), st.integers() | st.none())
def test_decoded_metrics_are_safe_and_travel_through_the_store_unchanged(
    metrics: dict[str, Any], epoch: int | None
) -> None:
    """Every decoded name and text is clean, every value plain JSON, and an Event carrying them
    reads back from its stored payload equal."""
    found = latest(model(evaluationMetrics=metrics, epoch=epoch))
    assert found is not None
    assert found.epoch == epoch
    assert len(found.metrics) <= len(metrics)
    for name, value in found.metrics:
        assert name and _clean(name) and len(name) <= MAX_NAME
        assert value is None or type(value) in (bool, int, float, str)
        if isinstance(value, str):
            assert _clean(value)
        if isinstance(value, float):
            assert math.isfinite(value)
    json.dumps(found.metrics, allow_nan=False)
    enrichment = Enrichment(
        project_name="P", epoch=found.epoch, model_id=found.model_id, metrics=found.metrics
    )
    event = Event(
        kind="transition",
        workspace="prod",
        organization_id=ORG,
        run_id=RUN,
        previous=None,
        current=None,
        enrichment=enrichment,
    )
    back = event_from_payload(event_payload(event))
    assert back is not None and back.enrichment == enrichment


@given(st.text(max_size=400), st.integers(min_value=1, max_value=300))
def test_safe_text_is_clean_bounded_and_settled(text: str, limit: int) -> None:
    once = safe_text(text, limit)
    assert _clean(once) and len(once) <= limit
    assert safe_text(once, limit) == once
