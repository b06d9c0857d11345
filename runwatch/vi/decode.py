"""Reading Vi API JSON into runwatch's values: `Run` documents and listing pages.

Pure: no I/O, no clock. A document is checked only for what `model.Run` keeps:
  - required: `runId`, `metadata.timeCreated`, `status.conditions` (a list, maybe empty), and
    in every condition `condition`, `status` and `lastTransitionTime`;
  - optional: everything else. An optional field that is absent, null or of the wrong type
    reads as absent, so one odd field never hides a run's Failed condition.
Unknown fields are ignored and unknown condition values kept as they are (the API adds
values). Anything else that cannot be read raises `ViBadResponseError`, naming the run.

Every string from the API is untrusted, and made safe here, at the edge: a run id must look
like one (1..255 of `A-Z a-z 0-9 _ -`, the SDK's own rule: it goes into URLs, logs and
the state store), and a lone UTF-16 surrogate (valid JSON, `"\ud83d"`, what a JavaScript
backend sends when it cuts an emoji in half) becomes U+FFFD, so no later stage (SQLite,
logging, Apprise, a socket) can fail to encode it. `safe_json` does that for a whole body.

runwatch keeps up to 100,000 runs in memory, so the strings that repeat across runs
(condition, status, flow and project names, reasons) are interned.

Listings and Run documents are first read by `wire.py` (typed msgspec decoding from the
bytes, several times faster); this module is the tolerant reading it falls back to for any
body it cannot read exactly as this one would, and so the reference for what a document
means.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast

import structlog

from runwatch.core.model import Condition, Run
from runwatch.errors import ViBadResponseError

log = structlog.get_logger("runwatch.vi.decode")

intern = sys.intern
_EMPTY: Mapping[str, str] = {}
# Attribute sets repeat across runs ({"team": "vision", "owner": "alice"}); runs with the same
# set share one read-only mapping, so 100,000 tracked runs keep a few hundred, not 100,000.
_SHARED_ATTRIBUTES: dict[tuple[tuple[str, object], ...], Mapping[str, str]] = {}
_MAX_SHARED_ATTRIBUTES = 4096  # distinct sets shared; past that, each run has its own
# Condition messages mostly repeat too ("Training completed; model saved"): the first 4096
# distinct ones are shared (a bounded table; past it, each run keeps its own copy).
_SHARED_MESSAGES: dict[str, str] = {}
_MAX_SHARED_MESSAGES = 4096


@dataclass(frozen=True, kw_only=True, slots=True)
class Page:
    """One page of a run listing.

    `skipped` names the items that could not be decoded: their run id, or `<item N>` when
    not even the id could be read. They are still on the server, so a caller that concludes
    deletions from a full listing must not count them as gone. `quiet` names the runs the
    caller said it knows unchanged (`wire.read_page`): listed, not built into Runs.
    """

    runs: tuple[Run, ...]
    next_page: str | None
    skipped: tuple[str, ...] = ()
    quiet: tuple[str, ...] = ()


class _Unreadable(Exception):
    """Internal: why a document cannot be read; turned into ViBadResponseError at the edge."""


RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # a JSON escape of a UTF-16 surrogate


def has_surrogate_escape(body: bytes) -> bool:
    """Whether `body` escapes a UTF-16 surrogate (the regex's literal prefix makes this one
    fast scan: ~5x faster than two `in` tests of the same bytes)."""
    return SURROGATE_ESCAPE.search(body) is not None


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def safe_json(body: bytes) -> object:
    """`body` parsed as JSON, with every lone surrogate in its strings replaced by U+FFFD.

    Raises ValueError (or RecursionError) for a body that is not JSON. The scan for escaped
    surrogates costs one pass over the bytes; the repair runs only on the rare body that has
    one (a surrogate pair, a legitimate emoji, is decoded whole and left alone).
    """
    doc = json.loads(body)
    if not has_surrogate_escape(body):
        return doc
    return _repaired(doc)


def _repaired(value: object) -> object:
    if type(value) is str:
        return _LONE_SURROGATE.sub("\ufffd", value)
    if type(value) is list:
        return [_repaired(v) for v in value]
    if type(value) is dict:
        return {_repaired(k): _repaired(v) for k, v in value.items()}
    return value


def _millis(value: object, name: str) -> int:
    # JSON gives ints; an integral float (1.7e12) is the same instant. bool is an int subclass
    # in Python but never a timestamp.
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    raise _Unreadable(f"{name} is {_kind(value)}, not epoch milliseconds")


def _opt_millis(value: object) -> int | None:
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


def _opt_int(value: object) -> int | None:
    return value if type(value) is int else None


def _opt_str(value: object) -> str | None:
    return value if type(value) is str else None


def opt_interned(value: object) -> str | None:
    return intern(value) if type(value) is str else None


def shared_message(value: object) -> str | None:
    if type(value) is not str:
        return None
    shared = _SHARED_MESSAGES.get(value)
    if shared is None:
        shared = value
        if len(_SHARED_MESSAGES) < _MAX_SHARED_MESSAGES:
            _SHARED_MESSAGES[value] = value
    return shared


def _kind(value: object) -> str:
    return "missing" if value is None else type(value).__name__


def _condition(doc: object, index: int) -> Condition:
    if type(doc) is not dict:
        raise _Unreadable(f"status.conditions[{index}] is {_kind(doc)}, not an object")
    name = doc.get("condition")
    status = doc.get("status")
    if type(name) is not str:
        raise _Unreadable(f"status.conditions[{index}].condition is {_kind(name)}")
    if type(status) is not str:
        raise _Unreadable(f"status.conditions[{index}].status is {_kind(status)}")
    return Condition(
        condition=intern(name),
        status=intern(status),
        last_transition_time=_millis(
            doc.get("lastTransitionTime"), f"status.conditions[{index}].lastTransitionTime"
        ),
        reason=opt_interned(doc.get("reason")),
        message=shared_message(doc.get("message")),
    )


def attributes(value: object) -> Mapping[str, str]:
    if type(value) is not dict or not value:
        return _EMPTY
    key = tuple(value.items())
    try:
        shared = _SHARED_ATTRIBUTES.get(key)
    except TypeError:  # an unhashable value (a list, an object): not a label set to share
        return _own_attributes(value)
    if shared is None:
        shared = _own_attributes(value)
        if len(_SHARED_ATTRIBUTES) < _MAX_SHARED_ATTRIBUTES:
            _SHARED_ATTRIBUTES[key] = shared
    return shared


def _own_attributes(value: dict[str, object]) -> Mapping[str, str]:
    return MappingProxyType({intern(k): intern(v) for k, v in value.items() if type(v) is str})


def _run(doc: dict[str, Any], run_id: str, organization_id: str) -> Run:
    status = doc.get("status")
    if type(status) is not dict:
        raise _Unreadable(f"status is {_kind(status)}, not an object")
    raw_conditions = status.get("conditions")
    if type(raw_conditions) is not list:
        raise _Unreadable(f"status.conditions is {_kind(raw_conditions)}, not a list")
    metadata = doc.get("metadata")
    if type(metadata) is not dict:
        raise _Unreadable(f"metadata is {_kind(metadata)}, not an object")

    spec = doc.get("spec")
    if type(spec) is not dict:
        spec = _EMPTY
    flow = spec.get("flow")
    if type(flow) is not dict:
        flow = _EMPTY
    # The project sits at spec level in current documents and inside the flow in older ones.
    project = spec.get("trainingProject")
    if type(project) is not str:
        project = flow.get("trainingProject")

    conditions = tuple([_condition(c, i) for i, c in enumerate(raw_conditions)])
    last_updated = _opt_millis(metadata.get("lastUpdated"))
    if conditions and last_updated == conditions[-1].last_transition_time:
        # Usually the time of the latest transition: keep one int object for both.
        last_updated = conditions[-1].last_transition_time
    return Run(
        organization_id=organization_id,
        run_id=run_id,
        conditions=conditions,
        time_created=_millis(metadata.get("timeCreated"), "metadata.timeCreated"),
        last_updated=last_updated,
        generation=_opt_int(metadata.get("generation")),
        flow_name=opt_interned(flow.get("name")),
        training_project=opt_interned(project),
        etag=_opt_str(doc.get("etag")),
        log=_opt_str(status.get("log")),
        killed_at=_opt_millis(spec.get("killedAt")),
        attributes=attributes(metadata.get("attributes")),
    )


def _run_id(doc: object) -> str | None:
    """The document's run id if it is one (see the module docstring), else None."""
    if type(doc) is not dict:
        return None
    run_id = doc.get("runId")
    return run_id if type(run_id) is str and RUN_ID.fullmatch(run_id) else None


def decode_run(doc: object, *, organization_id: str) -> Run:
    """Read one Run document; raise ViBadResponseError (naming the run) if it cannot be read."""
    run_id = _run_id(doc)
    if run_id is None:
        what = "a JSON object" if type(doc) is dict else _kind(doc)
        raise ViBadResponseError(
            f"the Vi API sent a run without a usable runId ({what}) for organization "
            f"{organization_id}"
        )
    try:
        return _run(cast(dict[str, Any], doc), run_id, intern(organization_id))
    except _Unreadable as exc:
        raise ViBadResponseError(
            f"the Vi API sent run {run_id} of organization {organization_id} in a shape "
            f"runwatch cannot read: {exc}"
        ) from None


def decode_page(body: object, *, organization_id: str) -> Page:
    """Read one listing page; undecodable runs are skipped and named, a bad envelope raises."""
    if type(body) is not dict:
        raise ViBadResponseError(
            f"the Vi API sent {_kind(body)} instead of a run listing (an object with "
            f"nextPage and items) for organization {organization_id}"
        )
    items = body.get("items")
    if type(items) is not list:
        raise ViBadResponseError(
            f"the Vi API sent a run listing for organization {organization_id} whose items "
            f"is {_kind(items)}, not a list"
        )
    # A missing nextPage is refused rather than read as "last page": a listing cut short would
    # make every run on the later pages look deleted.
    if "nextPage" not in body:
        raise ViBadResponseError(
            f"the Vi API sent a run listing for organization {organization_id} without nextPage"
        )
    next_page = body["nextPage"]
    if next_page is not None and type(next_page) is not str:
        raise ViBadResponseError(
            f"the Vi API sent a run listing for organization {organization_id} whose nextPage "
            f"is {_kind(next_page)}, not a string or null"
        )

    org = intern(organization_id)
    runs: list[Run] = []
    skipped: list[str] = []
    for index, item in enumerate(items):
        run_id = _run_id(item)
        try:
            if run_id is None:
                raise _Unreadable("no runId")
            runs.append(_run(cast(dict[str, Any], item), run_id, org))
        except _Unreadable as exc:
            name = run_id if run_id is not None else f"<item {index}>"
            skipped.append(name)
            log.warning(
                "run.undecodable", organization_id=organization_id, run_id=name, why=str(exc)
            )
    return Page(runs=tuple(runs), next_page=next_page or None, skipped=tuple(skipped))
