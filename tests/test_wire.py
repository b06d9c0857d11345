"""The typed (msgspec) reading of listings and Run documents: it answers exactly as the
tolerant decoder would, or leaves the body to it."""

from __future__ import annotations

import json
from typing import Any

import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_decode import ORG, mutated, run_doc

from runwatch.core.model import Condition
from runwatch.core.run_index import run_fingerprint
from runwatch.vi.decode import Page, decode_page, decode_run, safe_json
from runwatch.vi.wire import _RUN, fingerprint, read_page, read_run


def body(value: object) -> bytes:
    return json.dumps(value).encode()


def page_body(*docs: object, next_page: str | None = None) -> bytes:
    return body({"nextPage": next_page, "prevPage": None, "items": list(docs)})


def test_it_reads_a_well_formed_page_as_the_tolerant_decoder_does() -> None:
    """A page of complete documents reads the same through both paths."""
    raw = page_body(run_doc("run-1"), run_doc("run-2"), next_page="tok")

    fast = read_page(raw, organization_id=ORG)

    assert fast is not None
    assert fast == decode_page(json.loads(raw), organization_id=ORG)
    assert fast.next_page == "tok"
    assert [r.run_id for r in fast.runs] == ["run-1", "run-2"]


def test_it_keeps_an_unknown_condition_and_ignores_unknown_fields() -> None:
    """A condition value never seen before is kept; fields runwatch does not know are skipped."""
    doc = run_doc()
    doc["status"]["conditions"][-1]["condition"] = "Quarantined"
    doc["surprise"] = {"nested": [1, 2, {"x": None}]}
    doc["status"]["conditions"][-1]["extra"] = True

    run = read_run(body(doc), organization_id=ORG)

    assert run is not None and run.latest is not None
    assert run.latest.condition == "Quarantined"
    assert run == decode_run(doc, organization_id=ORG)


def test_it_leaves_a_page_with_one_bad_run_to_the_decoder_that_names_it() -> None:
    """One run with a null condition: the typed path declines, the fallback skips that run,
    names it with what is wrong, and keeps the rest of the page."""
    bad = run_doc("run-bad")
    bad["status"]["conditions"][0]["condition"] = None
    raw = page_body(run_doc("run-1"), bad, run_doc("run-3"))

    assert read_page(raw, organization_id=ORG) is None
    with structlog.testing.capture_logs() as logs:
        page = decode_page(safe_json(raw), organization_id=ORG)

    assert [r.run_id for r in page.runs] == ["run-1", "run-3"]
    assert page.skipped == ("run-bad",)
    [warning] = [e for e in logs if e["event"] == "run.undecodable"]
    assert warning["run_id"] == "run-bad"
    assert "status.conditions[0].condition" in warning["why"]


def test_it_leaves_lone_surrogates_to_the_decoder_that_repairs_them() -> None:
    """An escaped lone surrogate (half an emoji) is never read by the typed path."""
    raw = page_body(run_doc()).replace(b'"on node gpu-3"', b'"on node \\ud83d"')

    assert read_page(raw, organization_id=ORG) is None
    [run] = decode_page(safe_json(raw), organization_id=ORG).runs
    assert run.latest == Condition(
        condition="Running",
        status="Reached",
        last_transition_time=1_700_000_060_000,
        reason="Scheduled",
        message="on node \ufffd",
    )


def test_it_leaves_an_integral_float_timestamp_to_the_decoder() -> None:
    """1.7e12 is the same instant as 1700000000000: the fallback reads it, as before."""
    doc = run_doc()
    doc["metadata"]["timeCreated"] = 1.7e12
    raw = body(doc)

    assert read_run(raw, organization_id=ORG) is None
    assert decode_run(safe_json(raw), organization_id=ORG).time_created == 1_700_000_000_000


def test_it_declines_a_run_id_that_is_not_one() -> None:
    """A run id with a slash or a space goes to the fallback, which refuses or skips it."""
    raw = page_body(run_doc("../../etc"))

    assert read_page(raw, organization_id=ORG) is None
    assert decode_page(safe_json(raw), organization_id=ORG).skipped == ("<item 0>",)


def test_it_names_quiet_runs_without_building_them() -> None:
    """Runs the caller knows unchanged are listed in `quiet`; the others are built."""
    raw = page_body(run_doc("run-1"), run_doc("run-2"))
    known = {"run-1": run_fingerprint(decode_run(run_doc("run-1"), organization_id=ORG))}

    page = read_page(raw, organization_id=ORG, quiet=known.get)

    assert page is not None
    assert page.quiet == ("run-1",)
    assert [r.run_id for r in page.runs] == ["run-2"]


def test_it_builds_a_run_whose_fingerprint_moved() -> None:
    """A known run whose document changed is not quiet: it is built and diffed."""
    old = decode_run(run_doc("run-1"), organization_id=ORG)
    changed = run_doc("run-1", etag="e-3")
    known = {"run-1": run_fingerprint(old)}

    page = read_page(page_body(changed), organization_id=ORG, quiet=known.get)

    assert page is not None and page.quiet == ()
    assert page.runs[0].etag == "e-3"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_it_answers_as_the_tolerant_decoder_or_not_at_all(data: st.DataObject) -> None:
    """For any mangled page, the typed path gives the fallback's page or declines."""
    docs: list[Any] = [run_doc("run-0"), data.draw(mutated(run_doc("run-1")))]
    envelope: dict[str, Any] = {"nextPage": "t", "items": docs}
    if data.draw(st.booleans()):
        envelope = data.draw(mutated(envelope))
    raw = json.dumps(envelope).encode()

    fast = read_page(raw, organization_id=ORG)

    if fast is not None:
        assert fast == decode_page(safe_json(raw), organization_id=ORG)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_its_fingerprint_is_the_fingerprint_of_the_run_it_reads(data: st.DataObject) -> None:
    """A quiet decision made on the typed fields matches `run_fingerprint` of the built Run."""
    raw = json.dumps(data.draw(mutated(run_doc()))).encode()

    run = read_run(raw, organization_id=ORG)

    if run is not None:
        assert fingerprint(_RUN.decode(raw)) == run_fingerprint(run)
        assert run == decode_run(safe_json(raw), organization_id=ORG)


def test_every_page_read_equals_the_fallback_on_a_page_shaped_like_the_simulators() -> None:
    """An empty page and a last page (empty token) read as the fallback reads them."""
    for raw in (page_body(), body({"nextPage": "", "items": []})):
        assert read_page(raw, organization_id=ORG) == Page(runs=(), next_page=None)
