"""Decoding Vi API JSON into Runs and Pages: plain dicts in, values or ViBadResponseError out."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runwatch.core.model import Condition
from runwatch.errors import ViBadResponseError
from runwatch.vi.decode import Page, decode_page, decode_run

ORG = "org-7a1c"


def run_doc(run_id: str = "run-1", **overrides: Any) -> dict[str, Any]:
    """A Run document as the API sends it, every documented field present."""
    doc: dict[str, Any] = {
        "kind": "Run",
        "workspaceId": ORG,
        "runId": run_id,
        "spec": {
            "flow": {
                "name": "yolo-train",
                "schema": "v1",
                "tolerations": {"gpu": ["a100"]},
                "settings": {"epochs": 10},
                "blocks": [{"block": "dataset", "settings": {}, "style": {}}],
                "trainingProject": None,
            },
            "killedAt": None,
            "trainingProject": "proj-a",
        },
        "status": {
            "log": "/logs/run-1",
            "observedGeneration": 2,
            "conditions": [
                {
                    "condition": "Pending",
                    "status": "Reached",
                    "lastTransitionTime": 1_700_000_000_000,
                    "reason": None,
                    "message": None,
                },
                {
                    "condition": "Running",
                    "status": "Reached",
                    "lastTransitionTime": 1_700_000_060_000,
                    "reason": "Scheduled",
                    "message": "on node gpu-3",
                },
            ],
        },
        "metadata": {
            "timeCreated": 1_699_999_990_000,
            "lastUpdated": 1_700_000_060_000,
            "generation": 2,
            "attributes": {"team": "vision"},
        },
        "selfLink": f"/workspaces/{ORG}/runs/{run_id}",
        "etag": "e-2",
    }
    doc.update(overrides)
    return doc


def test_it_decodes_every_field_a_run_keeps() -> None:
    """A complete document becomes a Run with its conditions oldest first and its metadata."""
    run = decode_run(run_doc(), organization_id=ORG)

    assert run.organization_id == ORG
    assert run.run_id == "run-1"
    assert run.conditions == (
        Condition(condition="Pending", status="Reached", last_transition_time=1_700_000_000_000),
        Condition(
            condition="Running",
            status="Reached",
            last_transition_time=1_700_000_060_000,
            reason="Scheduled",
            message="on node gpu-3",
        ),
    )
    assert run.latest is not None and run.latest.condition == "Running"
    assert run.time_created == 1_699_999_990_000
    assert run.last_updated == 1_700_000_060_000
    assert run.flow_name == "yolo-train"
    assert run.training_project == "proj-a"
    assert run.etag == "e-2"
    assert run.log == "/logs/run-1"
    assert run.killed_at is None
    assert run.attributes == {"team": "vision"}


def test_it_ignores_unknown_fields_and_keeps_unknown_condition_values() -> None:
    """Fields the API adds later are ignored and a condition value never seen before is kept."""
    doc = run_doc(newTopLevel={"x": [1, 2]})
    doc["status"]["conditions"].append(
        {
            "condition": "Quarantined",
            "status": "SomethingNew",
            "lastTransitionTime": 1_700_000_120_000,
            "reason": "Policy",
            "message": None,
            "severity": "high",
        }
    )
    doc["metadata"]["labels"] = {"a": "b"}

    run = decode_run(doc, organization_id=ORG)

    assert run.latest == Condition(
        condition="Quarantined",
        status="SomethingNew",
        last_transition_time=1_700_000_120_000,
        reason="Policy",
    )


def test_it_reads_an_empty_condition_list_as_no_conditions() -> None:
    """A run the API has not yet given a condition has an empty tuple and no latest."""
    doc = run_doc()
    doc["status"]["conditions"] = []

    run = decode_run(doc, organization_id=ORG)

    assert run.conditions == ()
    assert run.latest is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("no reason or message keys", {"reason": None, "message": None}),
        ("no flow", {"flow_name": None, "training_project": "proj-a"}),
        ("project only inside the flow", {"training_project": "proj-in-flow"}),
        ("no project anywhere", {"training_project": None}),
        ("killed", {"killed_at": 1_700_000_100_000}),
        ("no optional metadata", {"last_updated": None, "attributes": {}}),
        ("no etag, log or spec", {"etag": None, "log": None, "flow_name": None}),
        ("odd optional types", {"etag": None, "log": None, "attributes": {}}),
    ],
)
def test_it_tolerates_missing_optional_fields(change: str, expected: dict[str, Any]) -> None:
    """Optional fields that are absent, null or oddly typed read as absent, never as an error."""
    doc = run_doc()
    conditions = doc["status"]["conditions"]
    if change == "no reason or message keys":
        for c in conditions:
            del c["reason"], c["message"]
    elif change == "no flow":
        del doc["spec"]["flow"]
    elif change == "project only inside the flow":
        doc["spec"]["trainingProject"] = None
        doc["spec"]["flow"]["trainingProject"] = "proj-in-flow"
    elif change == "no project anywhere":
        del doc["spec"]["trainingProject"]
        del doc["spec"]["flow"]["trainingProject"]
    elif change == "killed":
        doc["spec"]["killedAt"] = 1_700_000_100_000
    elif change == "no optional metadata":
        del doc["metadata"]["lastUpdated"], doc["metadata"]["attributes"]
    elif change == "no etag, log or spec":
        del doc["etag"], doc["status"]["log"], doc["spec"]
    elif change == "odd optional types":
        doc["etag"], doc["status"]["log"], doc["metadata"]["attributes"] = 5, ["x"], "a=b"

    run = decode_run(doc, organization_id=ORG)

    for name, value in expected.items():
        if name in ("reason", "message"):
            assert all(getattr(c, name) is value for c in run.conditions)
        else:
            assert getattr(run, name) == value, name


def test_it_interns_repeated_strings_across_runs() -> None:
    """Condition, status and flow names decoded from separate JSON texts share one object."""
    a = decode_run(json.loads(json.dumps(run_doc("run-a"))), organization_id=ORG)
    b = decode_run(json.loads(json.dumps(run_doc("run-b"))), organization_id=ORG)

    assert a.latest is not None and b.latest is not None
    assert a.latest.condition is b.latest.condition
    assert a.latest.status is b.latest.status
    assert a.flow_name is b.flow_name
    assert a.training_project is b.training_project


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        (("status",), None, "status is missing"),
        (("status", "conditions"), {"0": {}}, "status.conditions is dict"),
        (("metadata", "timeCreated"), "2024-01-01", "metadata.timeCreated is str"),
        (("metadata", "timeCreated"), True, "metadata.timeCreated is bool"),
        (("status", "conditions", 1, "condition"), 3, "status.conditions[1].condition is int"),
        (("status", "conditions", 0, "lastTransitionTime"), None, "lastTransitionTime is missing"),
    ],
)
def test_it_names_the_run_and_the_field_when_a_document_cannot_be_read(
    path: tuple[str | int, ...], value: object, complaint: str
) -> None:
    """A required field that is missing or mistyped raises ViBadResponseError naming both."""
    doc = run_doc("run-odd")
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value

    with pytest.raises(ViBadResponseError) as caught:
        decode_run(doc, organization_id=ORG)

    assert "run-odd" in str(caught.value)
    assert complaint in str(caught.value)
    assert not caught.value.permanent


@pytest.mark.parametrize("doc", [None, [], "run-1", {"runId": ""}, {"runId": 7}, {"kind": "Run"}])
def test_it_refuses_a_document_without_a_run_id(doc: object) -> None:
    """Without a readable runId there is no run: ViBadResponseError naming the organization."""
    with pytest.raises(ViBadResponseError, match=ORG):
        decode_run(doc, organization_id=ORG)


def test_it_decodes_a_page_with_its_cursor() -> None:
    """A listing page keeps its runs in order and its nextPage token."""
    body = {"nextPage": "tok-2", "prevPage": None, "items": [run_doc("r-2"), run_doc("r-1")]}

    page = decode_page(body, organization_id=ORG)

    assert [r.run_id for r in page.runs] == ["r-2", "r-1"]
    assert page.next_page == "tok-2"
    assert page.skipped == ()


def test_it_skips_an_undecodable_run_and_keeps_the_rest_of_the_page() -> None:
    """A broken item is skipped, named in `skipped` and in a warning; the others still count."""
    broken = run_doc("r-broken")
    broken["status"]["conditions"][0]["status"] = None
    body = {"nextPage": None, "items": [run_doc("r-3"), broken, 42, run_doc("r-1")]}

    with structlog.testing.capture_logs() as logs:
        page = decode_page(body, organization_id=ORG)

    assert [r.run_id for r in page.runs] == ["r-3", "r-1"]
    assert page.skipped == ("r-broken", "<item 2>")
    assert page.next_page is None
    warnings = [e for e in logs if e["event"] == "run.undecodable"]
    assert [(e["log_level"], e["run_id"]) for e in warnings] == [
        ("warning", "r-broken"),
        ("warning", "<item 2>"),
    ]
    assert "status.conditions[0].status" in warnings[0]["why"]


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "oops",
        {"items": []},  # no nextPage: a listing cut short must not look complete
        {"nextPage": None},
        {"nextPage": None, "items": {"a": 1}},
        {"nextPage": 3, "items": []},
        {"nextPage": ["t"], "items": []},
    ],
)
def test_it_refuses_a_page_envelope_that_is_not_the_documented_shape(body: object) -> None:
    """An envelope without items, or without a string-or-null nextPage, is ViBadResponseError."""
    with pytest.raises(ViBadResponseError, match=ORG):
        decode_page(body, organization_id=ORG)


def test_it_reads_an_empty_next_page_token_as_the_last_page() -> None:
    """An empty-string nextPage ends the listing like null does."""
    assert decode_page({"nextPage": "", "items": []}, organization_id=ORG) == Page(
        runs=(), next_page=None
    )


# --- properties -------------------------------------------------------------------------

# Arbitrary and mangled Vi API JSON; test_bad_input.py draws its pages from these too.

KEYS = st.sampled_from(
    [
        "runId",
        "status",
        "conditions",
        "condition",
        "lastTransitionTime",
        "reason",
        "message",
        "metadata",
        "timeCreated",
        "lastUpdated",
        "spec",
        "flow",
        "name",
        "attributes",
        "etag",
        "killedAt",
        "log",
        "items",
        "nextPage",
    ]
) | st.text(max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["Failed", "Succeeded", "Quarantined", "", "Reached", "FailedReach"])
)


def json_values(*, max_size: int, max_leaves: int) -> st.SearchStrategy[object]:
    """Any JSON value, its object keys mostly those of a Run document or a page."""
    return st.recursive(
        SCALARS,
        lambda inner: (
            st.lists(inner, max_size=max_size) | st.dictionaries(KEYS, inner, max_size=max_size + 1)
        ),
        max_leaves=max_leaves,
    )


JSON = json_values(max_size=4, max_leaves=25)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path (keys and indexes) of every part of `value`, the innermost last."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += paths(inner, (*prefix, index))
    return found


@st.composite
def mutated(
    draw: st.DrawFn, doc: dict[str, Any], values: st.SearchStrategy[object] = JSON
) -> dict[str, Any]:
    """`doc` with up to four parts deleted or replaced by one of `values` (its runId less often,
    so that a mangled run is still often one already known)."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        candidates = [p for p in paths(doc) if p != ("runId",) or draw(st.booleans())]
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)
    return doc


@given(doc=JSON)
def test_it_raises_only_bad_response_for_arbitrary_json(doc: object) -> None:
    """Any JSON value either decodes or raises ViBadResponseError, never anything else."""
    with contextlib.suppress(ViBadResponseError):
        decode_run(doc, organization_id=ORG)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated(run_doc()))
def test_it_raises_only_bad_response_for_mutated_run_documents(doc: dict[str, Any]) -> None:
    """Deleting or replacing any parts of a valid document yields a Run or ViBadResponseError."""
    try:
        run = decode_run(copy.deepcopy(doc), organization_id=ORG)
    except ViBadResponseError:
        return
    assert run.run_id == doc["runId"]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(JSON | st.builds(run_doc, st.text(min_size=1, max_size=8)), max_size=8))
def test_it_never_raises_for_a_page_of_arbitrary_items(items: list[object]) -> None:
    """Every item of a page is either a decoded run or a skipped name; the page never raises."""
    page = decode_page({"nextPage": None, "items": items}, organization_id=ORG)

    assert len(page.runs) + len(page.skipped) == len(items)
