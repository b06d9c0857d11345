"""The fast way to read run listings and Run documents: typed msgspec decoding straight from
the bytes into only the fields runwatch keeps, with `decode.py` as the tolerant fallback.

Theory: a typed decoder is strict (a string where an int belongs fails the whole body), and
runwatch must stay tolerant (an odd field reads as absent; one bad run is skipped and
named while the rest of its page counts). So this path only ever answers for a body that
it reads exactly as `decode.py` would read the same body, and returns None for anything
else: then the caller parses the body with `safe_json` and hands it to
`decode.decode_page` / `decode.decode_run`, which apply every tolerance rule and name
what is wrong. The fast path answers None when:
  - msgspec fails at all (not JSON, not UTF-8, NaN, a wrong type or a null anywhere in a
    kept field, a required field missing; an integral float such as 1.7e12, which the
    fallback reads as the same instant);
  - the body has an escaped UTF-16 surrogate (the fallback repairs lone ones);
  - a run id does not look like one.
Fields not declared here are skipped unread by msgspec (never materialised), which is most
of the saving: a run document is ~1.3 kB, of which runwatch keeps a few dozen bytes.

The other saving is for a full listing, where nearly every run is finished and unchanged:
the caller may pass `quiet(run_id)`, the fingerprint under which it knows that run as
finished (None for any other run), and a run whose decoded fields have that fingerprint
(`run_index.run_fingerprint` of the Run it would have been) is only named in `Page.quiet`,
never built into a `Run`. Runs the caller does not know cost no fingerprint at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import msgspec

from runwatch.core.model import Condition, Run
from runwatch.core.run_index import observed_fingerprint
from runwatch.vi.decode import (
    RUN_ID,
    Page,
    attributes,
    has_surrogate_escape,
    intern,
    opt_interned,
    shared_message,
)

Quiet = Callable[[str], int | None]  # run id -> fingerprint it is known finished under
_NO_LABELS: Mapping[str, str] = {}


class _Condition(msgspec.Struct, rename="camel", gc=False):
    condition: str
    status: str
    last_transition_time: int
    reason: str | None = None
    message: str | None = None


class _Flow(msgspec.Struct, rename="camel", gc=False):
    name: str | None = None
    training_project: str | None = None  # older documents keep the project here


class _Spec(msgspec.Struct, rename="camel", gc=False):
    flow: _Flow | None = None
    training_project: str | None = None
    killed_at: int | None = None


class _Status(msgspec.Struct, rename="camel", gc=False):
    conditions: list[_Condition]
    log: str | None = None


class _Metadata(msgspec.Struct, rename="camel", gc=False):
    time_created: int
    last_updated: int | None = None
    generation: int | None = None
    attributes: dict[str, str] | None = None


class _Run(msgspec.Struct, rename="camel", gc=False):
    run_id: str
    status: _Status
    metadata: _Metadata
    spec: _Spec | None = None
    etag: str | None = None


class _Page(msgspec.Struct, rename="camel", gc=False):
    # Both required, as the fallback requires them: a listing without nextPage is refused.
    next_page: str | None
    items: list[_Run]


_PAGE = msgspec.json.Decoder(_Page)
_RUN = msgspec.json.Decoder(_Run)
_EMPTY_SPEC = _Spec()
_EMPTY_FLOW = _Flow()


def _condition(c: _Condition) -> Condition:
    return Condition(
        condition=intern(c.condition),
        status=intern(c.status),
        last_transition_time=c.last_transition_time,
        reason=opt_interned(c.reason),
        message=shared_message(c.message),
    )


def _run(doc: _Run, organization_id: str) -> Run:
    spec = doc.spec or _EMPTY_SPEC
    flow = spec.flow or _EMPTY_FLOW
    project = spec.training_project
    if project is None:
        project = flow.training_project
    meta = doc.metadata
    conditions = tuple([_condition(c) for c in doc.status.conditions])
    last_updated = meta.last_updated
    if conditions and last_updated == conditions[-1].last_transition_time:
        last_updated = conditions[-1].last_transition_time  # one int object for both
    return Run(
        organization_id=organization_id,
        run_id=doc.run_id,
        conditions=conditions,
        time_created=meta.time_created,
        last_updated=last_updated,
        generation=meta.generation,
        flow_name=opt_interned(flow.name),
        training_project=opt_interned(project),
        etag=doc.etag,
        log=doc.status.log,
        killed_at=spec.killed_at,
        attributes=attributes(meta.attributes),
    )


def fingerprint(doc: _Run) -> int:
    """`run_index.run_fingerprint` of the Run that `_run(doc)` builds, without building it."""
    conditions = doc.status.conditions
    latest: tuple[object, ...] | None = None
    if conditions:
        c = conditions[-1]
        latest = (c.condition, c.status, c.last_transition_time, c.reason, c.message)
    spec = doc.spec or _EMPTY_SPEC
    flow = spec.flow or _EMPTY_FLOW
    project = spec.training_project
    if project is None:
        project = flow.training_project
    meta = doc.metadata
    return observed_fingerprint(
        latest,
        (meta.time_created, meta.last_updated, meta.generation, flow.name),
        (project, doc.etag, doc.status.log, spec.killed_at),
        meta.attributes or _NO_LABELS,
    )


def read_page(body: bytes, *, organization_id: str, quiet: Quiet | None = None) -> Page | None:
    """The listing page in `body`, or None when only the tolerant fallback may read it.
    Runs that `quiet` accepts are named in `Page.quiet` instead of built."""
    if has_surrogate_escape(body):
        return None
    try:
        page = _PAGE.decode(body)
    except msgspec.MsgspecError:  # DecodeError and ValidationError
        return None
    valid = RUN_ID.fullmatch
    if not all(valid(item.run_id) for item in page.items):
        return None
    org = intern(organization_id)
    next_page = page.next_page or None
    if quiet is None:
        return Page(runs=tuple([_run(item, org) for item in page.items]), next_page=next_page)
    runs: list[Run] = []
    unchanged: list[str] = []
    for item in page.items:
        known = quiet(item.run_id)
        if known is not None and known == fingerprint(item):
            unchanged.append(item.run_id)
        else:
            runs.append(_run(item, org))
    return Page(runs=tuple(runs), next_page=next_page, quiet=tuple(unchanged))


def read_run(body: bytes, *, organization_id: str) -> Run | None:
    """The Run document in `body`, or None when only the tolerant fallback may read it."""
    if has_surrogate_escape(body):
        return None
    try:
        doc = _RUN.decode(body)
    except msgspec.MsgspecError:
        return None
    if RUN_ID.fullmatch(doc.run_id) is None:
        return None
    return _run(doc, intern(organization_id))
