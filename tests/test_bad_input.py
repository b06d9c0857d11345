"""Bad input: malformed configurations, API payloads and templates never crash runwatch.

- Every file of the configuration corpus (tests/configs/bad, see test_config_corpus.py),
  given to the real `runwatch check` entry point (all files in one process), and a file past
  1 MiB to the real command: exit 78, the expected message naming the place, no traceback,
  no secret.
- Arbitrary and mutated Run documents, decoded as a page and diffed against known state
  (decode_page + detect_transitions, as a poll does): no exception escapes, an unreadable
  run is skipped and named in the log, and only readable runs make events.
- Rule and global templates that reach for Python internals or the environment are
  refused by `runwatch check` with exit 78, one problem per template.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import Outcome, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from test_config_corpus import ENV_SECRETS, ENVIRON, FILES, header
from test_decode import json_values, mutated

from runwatch.config.loading import MAX_CONFIG_BYTES
from runwatch.core.model import RunState
from runwatch.core.transitions import detect_transitions, state_of
from runwatch.simulator.server import Simulator
from runwatch.vi.decode import decode_page

EX_CONFIG = 78


def check(path: Path) -> Outcome:
    """`runwatch check -c PATH --log-format json` in a clean environment holding only ENVIRON."""
    env = {**ENVIRON, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return run_cli("check", "-c", str(path), "--log-format", "json", env=env, timeout=120)


def assert_refused(out: Outcome, path: Path, expected: list[str], secrets: list[str]) -> None:
    everything = out.stdout + out.stderr
    assert out.code == EX_CONFIG, everything
    assert "Traceback" not in everything
    for text in expected:
        assert text in out.stderr, f"{text!r} not in:\n{out.stderr}"
    [invalid] = [line for line in out.logs if line["event"] == "config.invalid"]
    assert invalid["source"] == str(path) and invalid["level"] == "error"
    assert out.stdout == ""  # nothing that looks like a configuration summary
    for secret in secrets:
        assert secret not in everything


# --- configuration corpus, through the real command -----------------------------------------

# Run in ONE interpreter: the real entry point, once per file, each run's exit status, stdout
# and stderr kept apart. A Python start-up per file would cost ~15 s for the corpus; what is
# tested is the same (argument parsing, logging set-up, loading, the exit-78 path), and an
# exception escaping main() is printed as the traceback the test must not find.
CHECK_EACH = """
import contextlib, io, json, sys, traceback
from runwatch.cli.main import main

results = []
for path in sys.argv[1:]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["check", "-c", path, "--log-format", "json"])
        except BaseException:
            traceback.print_exc()
            code = -1
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
json.dump(results, sys.__stdout__)
"""


@pytest.fixture(scope="module")
def corpus_outcomes() -> Mapping[Path, Outcome]:
    """`runwatch check` on every corpus file, all in one process started like the command."""
    env = {**ENVIRON, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_EACH, *map(str, FILES)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    return {
        path: Outcome(r["code"], r["stdout"], r["stderr"])
        for path, r in zip(FILES, results, strict=True)
    }


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_it_exits_78_with_the_expected_message_for_every_corpus_file(
    path: Path, corpus_outcomes: Mapping[Path, Outcome]
) -> None:
    """`runwatch check` exits 78 with the file's expected text, no traceback and no secret."""
    assert_refused(
        corpus_outcomes[path],
        path,
        expected=[*header(path, "expect"), f"configuration error(s) in {path}"],
        secrets=[*ENV_SECRETS, *header(path, "secret")],
    )


def test_it_exits_78_for_a_file_over_one_mebibyte(tmp_path: Path) -> None:
    """A huge file is refused by size, before parsing, with exit 78."""
    path = tmp_path / "huge.yaml"
    path.write_text("workspaces: []\n" + "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    assert_refused(check(path), path, ["at most 1048576 bytes (1 MiB)"], list(ENV_SECRETS))


# --- API payloads: decode a page and diff it, as one poll does --------------------------------

ORG = "org-sim"
# Not started: only its documents are used, real wire-format Runs of every condition.
_SIM = Simulator(runs=12, active=6, seed=3, organization_id=ORG)
BASE_DOCS: tuple[dict[str, Any], ...] = tuple(_SIM.document(r) for r in _SIM.run_ids())
KNOWN: dict[str, RunState] = {
    run.run_id: state_of(run)
    for run in decode_page({"nextPage": None, "items": list(BASE_DOCS)}, organization_id=ORG).runs
}
NOW_MS = 1_900_000_000_000

JSON = json_values(max_size=3, max_leaves=12)  # smaller than test_decode's: a page holds ten


@st.composite
def progressed(draw: st.DrawFn, doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with one more condition, of any value, at any time."""
    doc = copy.deepcopy(doc)
    doc["status"]["conditions"].append(
        {
            "condition": draw(st.sampled_from(["Running", "Failed", "Succeeded", "Quarantined"])),
            "status": draw(st.sampled_from(["Reached", "FailedReach"])),
            "lastTransitionTime": draw(st.integers(min_value=0, max_value=2**53)),
            "reason": draw(st.none() | st.text(max_size=8)),
            "message": draw(st.none() | st.text(max_size=20)),
        }
    )
    return doc


@st.composite
def item(draw: st.DrawFn) -> object:
    """One listing item: a known run as it was, moved on, mangled, a new run, or any JSON."""
    base = draw(st.sampled_from(BASE_DOCS))
    kind = draw(st.sampled_from(["same", "progressed", "mutated", "new", "json"]))
    if kind == "same":
        return copy.deepcopy(base)
    if kind == "progressed":
        return draw(progressed(base))
    if kind == "mutated":
        return draw(mutated(draw(st.sampled_from([base, draw(progressed(base))])), JSON))
    if kind == "new":
        fresh = copy.deepcopy(base)
        fresh["runId"] = "run_new_" + draw(st.text("abcdef0123456789", min_size=1, max_size=4))
        return draw(st.sampled_from([fresh, draw(mutated(fresh, JSON))]))
    return draw(JSON)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(item(), max_size=10))
def test_it_decodes_and_diffs_any_page_without_raising_and_names_what_it_skips(
    items: list[object],
) -> None:
    """A page of arbitrary and mutated Runs decodes and diffs without an exception; every
    unreadable run is skipped and named in the log, and makes no event and no state."""
    with capture_logs() as logs:
        page = decode_page({"nextPage": None, "items": items}, organization_id=ORG)
        diff = detect_transitions(KNOWN, page.runs, workspace="prod", baseline=False, now_ms=NOW_MS)

    assert len(page.runs) + len(page.skipped) == len(items)
    undecodable = [e for e in logs if e["event"] == "run.undecodable"]
    assert [e["run_id"] for e in undecodable] == list(page.skipped)
    assert all(e["log_level"] == "warning" and e["why"] for e in undecodable)
    for index, name in enumerate(page.skipped):
        assert name.startswith("<item ") or any(
            isinstance(i, dict) and i.get("runId") == name for i in items
        ), (index, name)

    decoded = {run.run_id for run in page.runs}
    event_runs = [event.run_id for event in diff.events]
    assert set(event_runs) <= decoded and len(event_runs) == len(set(event_runs))
    assert {state.run_id for state in diff.upserts} <= decoded
    assert all(state.deleted_at is None for state in diff.upserts)  # a page never deletes
    for event in diff.events:
        assert event.current is not None and event.workspace == "prod"
        assert event.kind == ("new" if event.run_id not in KNOWN else "transition")
    changed = {
        r.run_id for r in page.runs if KNOWN.get(r.run_id) != state_of(r, KNOWN.get(r.run_id))
    }
    assert set(event_runs) <= changed  # a run seen only as it was known makes no event

    # Recording what was decided and seeing the same page again finds nothing new.
    known = {**KNOWN, **{state.run_id: state for state in diff.upserts}}
    again = detect_transitions(known, page.runs, workspace="prod", baseline=False, now_ms=NOW_MS)
    assert again.events == ()


# --- templates: the sandbox, through `runwatch check` ------------------------------------------

ESCAPES = {
    "class of a literal": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "class of an event value": "{{ run_id.__class__.__base__.__subclasses__() }}",
    "globals of a Jinja helper": "{{ cycler.__init__.__globals__.os.environ }}",
    "environment through lipsum": "{{ lipsum.__globals__['os'].environ['HOME'] }}",
    "template self reference": "{{ self.__init__.__globals__ }}",
    "private template context": "{% for k in self._TemplateReference__context %}{% endfor %}",
    "an environ variable": "{{ environ }}",
    "the configuration": "{{ config }}",
    "attr filter": "{{ workspace|attr('__class__') }}",
    "str.format": "{{ '{0.__class__.__mro__}'.format(run_id) }}",
    "a method call": "{{ message.upper() }}",
    "a dict method": "{{ attributes.items() }}",
    "range global": "{{ range.__self__ }}",
}


def test_it_refuses_templates_that_reach_for_python_or_the_environment(tmp_path: Path) -> None:
    """Every rule template (title or body) and global template that tries to leave the event
    is a configuration error naming it; `check` exits 78 and prints no secret."""
    names = list(ESCAPES)
    rules = [
        {
            "name": f"escape-{index}",
            "match": {},
            "notify": ["hook"],
            ("title" if index % 2 == 0 else "body"): ESCAPES[name],
        }
        for index, name in enumerate(names)
    ]
    doc = {
        "workspaces": [
            {
                "name": "prod",
                "organization_id": "${DATATURE_VI_ORGANIZATION_ID}",
                "secret_key": "${DATATURE_VI_SECRET_KEY}",
                "endpoint": "http://127.0.0.1:9",
            }
        ],
        "state": {"path": str(tmp_path / "state.db")},
        "channels": {"hook": "json://127.0.0.1:9/hook"},
        "templates": {"body": "{{ lipsum.__globals__.os.environ }}"},
        "rules": rules,
    }
    path = tmp_path / "escapes.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = check(path)

    expected = [
        f"rules[{index}].{'title' if index % 2 == 0 else 'body'}: invalid template"
        for index in range(len(names))
    ]
    assert_refused(
        out,
        path,
        [*expected, "templates.body: invalid template", f"{len(names) + 1} configuration error"],
        [*ENV_SECRETS, "corpus-secret-key", ENVIRON["HOME"] + "/"],
    )
    assert not (tmp_path / "state.db").exists()  # refused before anything was opened
