"""Reading the Vi API's model outputs and training projects into runwatch's values.

Pure: no I/O, no clock. As `decode.py` does for runs, a document is checked only for what
runwatch keeps, and everything else is read leniently:
  - an outputs page (`Pagination[Model]`): `items` (a list; missing means none) and
    `nextPage` (a string or null; missing means the last page, the SDK's default). Only the
    page's last item is read, the latest checkpoint ("latest last"), and it must be an
    object with a usable `runOutputId`; `spec.epoch` (an int) and `spec.evaluationMetrics`
    (an object) are optional and read as absent when they are of another type;
  - a TrainingProject: `spec.name`, a non-empty string; a `kind` other than
    "TrainingProject" or a `trainingProjectId` naming another project is refused (the SDK
    refuses the first; the second is an answer to another question).
A document that names another run or project than the one asked for is refused too.
Anything that cannot be read raises `ViBadResponseError`, naming the run or project.

Every string is made safe here, at the edge: these values go into messages, logs and the
state store. `safe_text` replaces lone UTF-16 surrogates (U+FFFD), turns control and
bidirectional-override characters into spaces, masks secrets (`mask`, the client's
redactor, in case a proxy echoes the request) and cuts the text to length. Metric values
stay as sent: numbers as numbers, booleans, null and strings as they are; a value JSON
cannot carry back (NaN, Infinity) becomes its name, and a nested value (a list, an object)
its compact JSON text, so the stored event payload is always plain JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runwatch.errors import ViBadResponseError

MetricValue = float | int | str | bool | None

MAX_METRICS = 100  # metrics kept per output (enrich.max_metrics goes up to 100)
MAX_NAME = 200  # characters of a metric or project name
MAX_TEXT = 500  # characters of a metric value that is text
MAX_ID = 255  # characters of a runOutputId

_RESOURCE_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")  # the SDK's validate_id_param
# C0 and C1 controls, line and paragraph separators, bidi embeddings/overrides/isolates, BOM
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
PROJECT_KIND = "TrainingProject"


def _same(text: str) -> str:
    return text


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelOutput:
    """A run's model output (checkpoint), reduced to what a message shows."""

    run_id: str
    model_id: str  # runOutputId
    epoch: int | None = None
    metrics: tuple[tuple[str, MetricValue], ...] = ()  # in the API's order


@dataclass(frozen=True, kw_only=True, slots=True)
class OutputsPage:
    """One page of a run's outputs listing: its last (latest) output and where it goes on."""

    latest: ModelOutput | None  # None: the page has no items
    next_page: str | None
    items: int


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainingProject:
    project_id: str
    name: str  # spec.name, the display name
    etag: str | None = None


class _Unreadable(Exception):
    """Internal: why a document cannot be read; turned into ViBadResponseError at the edge."""


def usable_id(value: object) -> bool:
    """True for a run or training project id the API accepts (1..255 of A-Z a-z 0-9 _ -)."""
    return type(value) is str and _RESOURCE_ID.fullmatch(value) is not None


def safe_text(value: str, limit: int, mask: Callable[[str], str] = _same) -> str:
    """`value` fit for a message, a log line and the store (see the module docstring):
    one line, no control characters, no lone surrogates, no secret, at most `limit`."""
    text = _UNSAFE.sub(" ", _LONE_SURROGATE.sub("\ufffd", value))
    text = mask(text).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _kind(value: object) -> str:
    return "missing" if value is None else type(value).__name__


def _json_kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def metric_value(value: object, mask: Callable[[str], str] = _same) -> MetricValue:
    """A metric value as sent, in a form JSON and every later stage can carry."""
    if value is None or type(value) is bool or type(value) is int:
        return value
    if type(value) is float:
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if type(value) is str:
        return safe_text(value, MAX_TEXT, mask)
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    except (ValueError, TypeError, RecursionError):
        text = type(value).__name__
    return safe_text(text, MAX_TEXT, mask)


def _metrics(value: object, mask: Callable[[str], str]) -> tuple[tuple[str, MetricValue], ...]:
    if type(value) is not dict:
        return ()
    kept: list[tuple[str, MetricValue]] = []
    for name, raw in value.items():
        if len(kept) >= MAX_METRICS:
            break
        label = safe_text(str(name), MAX_NAME, mask)
        if label:
            kept.append((label, metric_value(raw, mask)))
    return tuple(kept)


def _epoch(value: object) -> int | None:
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return None


def _output(doc: object, run_id: str, mask: Callable[[str], str]) -> ModelOutput:
    if type(doc) is not dict:
        raise _Unreadable(f"its latest item is {_kind(doc)}, not a Model object")
    named = doc.get("runId")
    if type(named) is str and named != run_id:
        raise _Unreadable(f"its latest item belongs to run {safe_text(named, 80)}")
    raw_id = doc.get("runOutputId")
    model_id = safe_text(raw_id, MAX_ID, mask) if type(raw_id) is str else ""
    if not model_id:
        raise _Unreadable(f"its latest item's runOutputId is {_kind(raw_id)}")
    spec = doc.get("spec")
    if type(spec) is not dict:
        spec = {}
    return ModelOutput(
        run_id=run_id,
        model_id=model_id,
        epoch=_epoch(spec.get("epoch")),
        metrics=_metrics(spec.get("evaluationMetrics"), mask),
    )


def decode_outputs_page(
    body: object, *, organization_id: str, run_id: str, mask: Callable[[str], str] = _same
) -> OutputsPage:
    """Read one page of `GET .../runs/<run_id>/outputs`: its latest output and next page."""
    where = f"the model outputs of run {run_id} of organization {organization_id}"
    try:
        if type(body) is not dict:
            raise _Unreadable(f"it is {_kind(body)}, not a page (an object with items)")
        items: Any = body.get("items", [])
        if items is None:
            items = []
        if type(items) is not list:
            raise _Unreadable(f"its items is {_kind(items)}, not a list")
        next_page = body.get("nextPage")
        if next_page is not None and type(next_page) is not str:
            raise _Unreadable(f"its nextPage is {_kind(next_page)}, not a string or null")
        latest = _output(items[-1], run_id, mask) if items else None
    except _Unreadable as exc:
        raise ViBadResponseError(
            f"the Vi API sent {where} in a shape runwatch cannot read: {exc}"
        ) from None
    return OutputsPage(latest=latest, next_page=next_page or None, items=len(items))


def decode_training_project(
    doc: object, *, organization_id: str, project_id: str, mask: Callable[[str], str] = _same
) -> TrainingProject:
    """Read one TrainingProject document (`GET .../trainingProjects/<project_id>`)."""
    try:
        if type(doc) is not dict:
            raise _Unreadable(f"it is {_kind(doc)}, not a TrainingProject object")
        kind = doc.get("kind", PROJECT_KIND)
        if kind != PROJECT_KIND:
            shown = repr(safe_text(kind, 40)) if type(kind) is str else _json_kind(kind)
            raise _Unreadable(f"its kind is {shown}, not {PROJECT_KIND!r}")
        named = doc.get("trainingProjectId")
        if type(named) is str and named != project_id:
            raise _Unreadable(f"it is training project {safe_text(named, 80)}")
        spec = doc.get("spec")
        if type(spec) is not dict:
            raise _Unreadable(f"its spec is {_kind(spec)}, not an object")
        raw_name = spec.get("name")
        name = safe_text(raw_name, MAX_NAME, mask) if type(raw_name) is str else ""
        if not name:
            shown = "blank" if type(raw_name) is str else _kind(raw_name)
            raise _Unreadable(f"its spec.name is {shown}")
    except _Unreadable as exc:
        raise ViBadResponseError(
            f"the Vi API sent training project {project_id} of organization {organization_id} "
            f"in a shape runwatch cannot read: {exc}"
        ) from None
    etag = doc.get("etag")
    return TrainingProject(
        project_id=project_id, name=name, etag=etag if type(etag) is str and etag else None
    )
