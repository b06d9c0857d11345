"""Reading one answer of the Vi API: its body under a size cap, and a status other than 200
translated into the `ViError` tree (the table is in `runwatch.vi.client`'s docstring).

Theory: everything here sees one response and nothing else, so `ViClient` keeps the
request side (URLs, headers, retries, pacing) and this module the answer side. Server
text quoted in an error is masked of the secret key (`redact`) before it is cut to length:
a proxy may echo the request back, and a cut secret is still a secret.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import httpx

from runwatch.errors import (
    ViAuthError,
    ViBadResponseError,
    ViError,
    ViNotFoundError,
    ViRateLimitedError,
    ViServerError,
)
from runwatch.redaction import Redactor, cut
from runwatch.vi.decode import safe_json
from runwatch.vi.retry import parse_retry_after

_MAX_QUOTED = 300  # characters of server text quoted in an error message
_MESSAGE_KEYS = ("message", "error_description", "detail", "error")


class TooLarge(Exception):
    """The body passed the cap; the message says how runwatch knew."""


def display_url(endpoint: str) -> str:
    """The endpoint without any user:password part, for messages."""
    url = httpx.URL(endpoint)
    return str(url.copy_with(username=None, password=None, query=None, fragment=None))


async def read_capped(
    http: httpx.AsyncClient,
    url: str,
    params: dict[str, str],
    headers: dict[str, str],
    max_bytes: int,
) -> tuple[httpx.Response, bytes]:
    """GET `url`, reading at most `max_bytes` of its (decoded) body; TooLarge past it."""
    async with http.stream("GET", url, params=params, headers=headers) as response:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise TooLarge(f"it announced {declared} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge("runwatch stopped reading there")
        # One chunk is the common case (a page fits a read): no copy at all.
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return response, body


def certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind a transport error, if that is what it is."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def trace_id(response: httpx.Response) -> str | None:
    # Google's header is "TRACE_ID/SPAN_ID;o=1"; the trace id is what support asks for.
    value = response.headers.get("x-cloud-trace-context")
    if not value:
        return None
    return value.split("/", 1)[0].split(";", 1)[0].strip() or None


def status_error(
    response: httpx.Response,
    body: bytes,
    *,
    what: str,
    missing: str | None,
    organization_id: str,
    endpoint: str,
    redact: Redactor,
    clock: Callable[[], float],
) -> ViError:
    """The ViError for an answer that is not a 200 (nor an expected 304).

    `missing` says what a 404 means ("run X does not exist in organization Y"); without
    it a 404 means the organization itself is unknown. `clock` is the wall clock that a
    Retry-After HTTP date is measured against.
    """
    status = response.status_code
    org = organization_id
    detail = _detail(response, body, redact)
    kw: dict[str, object] = {"status_code": status, "trace_id": trace_id(response)}

    def error(cls: type[ViError], message: str, **more: object) -> ViError:
        return cls(redact(message), **kw, **more)  # type: ignore[arg-type]

    if status in (401, 403):
        return error(
            ViAuthError,
            f"the Vi API rejected the secret key for organization {org} ({status}); "
            f"check secret_key / secret_key_file{detail}",
        )
    if status == 404:
        if missing is not None:
            message = f"{missing} (404){detail}"
        else:
            message = (
                f"the Vi API at {endpoint} does not know organization {org} (404); "
                f"check organization_id and endpoint{detail}"
            )
        return error(ViNotFoundError, message)
    if status == 429:
        wait = parse_retry_after(response.headers.get("retry-after"), now=clock())
        after = f", Retry-After {wait:g}s" if wait is not None else ""
        return error(
            ViRateLimitedError,
            f"the Vi API rate-limited runwatch {what} (429{after}){detail}; "
            f"poll less often (poll.interval) or cap poll.max_requests_per_second",
            retry_after=wait,
        )
    if 500 <= status <= 599:
        wait = None
        if status == 503:
            wait = parse_retry_after(response.headers.get("retry-after"), now=clock())
        return error(
            ViServerError,
            f"the Vi API failed {what} with HTTP {status}{detail}; a fault on the API "
            f"side, usually brief",
            retry_after=wait,
        )
    if 300 <= status <= 499:
        where = response.headers.get("location")
        hint = (
            f"; it redirects to {display_url(where)} — set endpoint to the final URL"
            if where and 300 <= status <= 399
            else "; is the endpoint really the Vi API?"
        )
        refused = error(ViError, f"the Vi API refused {what} with HTTP {status}{detail}{hint}")
        refused.permanent = True  # the same request will be refused again
        return refused
    return error(
        ViBadResponseError,
        f"the Vi API answered {what} with an unexpected HTTP {status}{detail}",
    )


def _server_message(body: bytes) -> str | None:
    try:
        doc = safe_json(body)
    except (ValueError, RecursionError):
        text = body.decode("utf-8", "replace").strip()
        return text or None
    if not isinstance(doc, dict):
        return None
    for key in _MESSAGE_KEYS:
        value = doc.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if key == "error" and isinstance(value, dict):
            nested = value.get("message")
            if isinstance(nested, str) and nested.strip():
                return nested.strip()
    return None


def _detail(response: httpx.Response, body: bytes, redact: Redactor) -> str:
    """': <server message> [trace <id>]', as much of it as the response offers, masked of
    the secret key before it is cut to length (a cut secret is still a secret)."""
    parts = ""
    message = _server_message(body[: 64 * _MAX_QUOTED])
    if message:
        parts += f": {cut(message, _MAX_QUOTED, redact)}"
    trace = trace_id(response)
    if trace:
        parts += f" [trace {trace}]"
    return parts
