"""The Vi Runs API over HTTP: list pages of runs, get one run; a run's latest model output
and a training project, for messages (`runwatch.vi.enrich`).

Every HTTP attempt is translated at this edge into the `ViError` tree (see `errors.py`; the
answer side, status to error and the size cap, is `responses.py`), and each call goes
through the `RetryPolicy`, which retries only what is not `.permanent`:

    transport error, dropped connection   -> ViTransportError     retried
    TLS certificate it cannot verify      -> ViTransportError     permanent
    timeout (httpx's, or the attempt cap) -> ViTransportError     retried
    200 whose body is not JSON / the shape -> ViBadResponseError  retried
    429                                   -> ViRateLimitedError   retried, Retry-After honoured
    5xx                                   -> ViServerError        retried (503 Retry-After too)
    401 / 403                             -> ViAuthError          permanent
    404                                   -> ViNotFoundError      permanent
    other 3xx / 4xx                       -> ViError              permanent

A response brings at most `max_response_bytes` (a 3 GB answer is cut off, not read whole:
ViBadResponseError, permanent for the call), and each attempt as a whole is bounded in time,
not only each read.

The secret key lives only in the `Authorization` header of the httpx client (whose repr
masks it), never in a URL, a log event or an error message; server text quoted in an error
is masked of it, and of any 12-character piece of it, before it is cut to length, in case a
proxy echoes the request back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ssl
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from types import TracebackType
from typing import Literal, TypeVar
from urllib.parse import quote

import httpx

from runwatch import __version__
from runwatch.core.model import Run
from runwatch.errors import ViBadResponseError, ViError, ViTransportError
from runwatch.redaction import Redactor
from runwatch.vi.decode import Page, decode_page, decode_run, safe_json
from runwatch.vi.decode_more import (
    ModelOutput,
    OutputsPage,
    TrainingProject,
    decode_outputs_page,
    decode_training_project,
    usable_id,
)
from runwatch.vi.responses import (
    TooLarge,
    certificate_error,
    display_url,
    read_capped,
    status_error,
    trace_id,
)
from runwatch.vi.retry import RetryPolicy
from runwatch.vi.transport import http_transport
from runwatch.vi.wire import Quiet, read_page, read_run

Endpoint = Literal["list", "get", "outputs", "project"]
_T = TypeVar("_T")
OUTPUTS_INTENT = "sdkLocalDeploy"  # sent on every outputs call, as the SDK does
OUTPUTS_PAGE_SIZE = 1000  # the most the SDK allows: one page holds a run's checkpoints
MAX_OUTPUT_PAGES = 100

# httpx's timeouts bound each socket operation, so a server that drips one byte at a time
# never trips them; the whole attempt is bounded too, at this multiple of the timeout.
_ATTEMPT_DEADLINE_FACTOR = 3.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024


def _header_safe(value: str) -> bool:
    # Visible ASCII only: anything else would make httpx raise an error that quotes the
    # header value, i.e. the secret key.
    return bool(value) and all(33 <= ord(c) <= 126 for c in value)


class ViClient:
    """An async client for one organization's runs; `requests_made` counts HTTP attempts."""

    def __init__(
        self,
        *,
        endpoint: str,
        organization_id: str,
        secret_key: str,
        timeout: float = 20.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | str = True,
        max_connections: int = 10,
        on_request: Callable[[str, str, float], None] | None = None,
        max_requests_per_second: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        url = httpx.URL(endpoint)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"endpoint must be an http(s) URL, not {display_url(endpoint)!r}")
        if not _header_safe(organization_id):
            raise ValueError(f"organization_id {organization_id!r} is empty or has spaces")
        if not _header_safe(secret_key):
            raise ValueError("secret_key is empty or has characters not allowed in a header")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_requests_per_second is not None and max_requests_per_second <= 0:
            raise ValueError("max_requests_per_second must be positive")

        self.organization_id = organization_id
        self.endpoint = display_url(endpoint)
        self.requests_made = 0
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._on_request = on_request
        self._redact = Redactor([secret_key])  # scrubs the key from quoted server text
        self._max_bytes = max_response_bytes
        self._pace = _Pace(max_requests_per_second) if max_requests_per_second else None
        base = endpoint.rstrip("/")
        self._runs_url = f"{base}/workspaces/{quote(organization_id, safe='')}/runs"
        self._projects_url = f"{base}/workspaces/{quote(organization_id, safe='')}/trainingProjects"
        ssl_verify = _tls_context(verify) if url.scheme == "https" else _NO_TLS
        self._http = httpx.AsyncClient(
            headers={
                "Authorization": f"Bearer {secret_key}",
                "Organization-Id": organization_id,
                "Accept": "application/json",
                "User-Agent": f"runwatch/{__version__}",
            },
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections),
            transport=transport
            or http_transport(verify=ssl_verify, max_connections=max_connections),
            verify=ssl_verify,
            follow_redirects=False,  # a redirect to another host would drop or leak the key
        )

    def __repr__(self) -> str:
        # getattr: a traceback of an __init__ that raised shows this too
        endpoint = getattr(self, "endpoint", None)
        org = getattr(self, "organization_id", None)
        return f"ViClient(endpoint={endpoint!r}, organization_id={org!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ViClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- the API -------------------------------------------------------------------------

    async def list_page(
        self, page_token: str | None, page_size: int, *, quiet: Quiet | None = None
    ) -> Page:
        """One page of the listing, newest runs first; `page_token` None is page 1. Runs
        that `quiet` knows finished and unchanged are named in `Page.quiet` only
        (see `runwatch.vi.wire`)."""
        if not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be 1..1000, not {page_size}")
        params: dict[str, str] = {"s": str(page_size)}
        if page_token is not None:
            params["p"] = page_token
        what = f"listing the runs of organization {self.organization_id}"

        async def attempt() -> Page:
            answer = await self._fetch("list", self._runs_url, params, {}, what=what)
            org = self.organization_id
            if answer is not None:
                page = read_page(answer[1], organization_id=org, quiet=quiet)
                if page is not None:
                    return page
            return decode_page(self._parsed(answer, what), organization_id=org)

        return await self._retry.call(attempt, what=f"list {self.organization_id}")

    async def list_runs(
        self, page_size: int, *, max_pages: int = 10_000, quiet: Quiet | None = None
    ) -> AsyncGenerator[Page, None]:
        """Every page from page 1. Raises rather than end early: a repeated page token or a
        listing longer than `max_pages` is a ViBadResponseError, never an endless loop, and
        any exception means the listing as a whole failed (the pages before it are partial).
        """
        seen: set[str] = set()
        token: str | None = None
        pages = 0
        while True:
            page = await self.list_page(token, page_size, quiet=quiet)
            pages += 1
            yield page
            if page.next_page is None:
                return
            if page.next_page in seen:
                raise ViBadResponseError(
                    f"the Vi API handed back page token {page.next_page[:60]!r} a second time "
                    f"while listing the runs of organization {self.organization_id} (after "
                    f"{pages} pages); runwatch stops rather than loop, and tries again next poll"
                )
            if pages >= max_pages:
                raise ViBadResponseError(
                    f"the run listing of organization {self.organization_id} goes on past "
                    f"{max_pages} pages; raise poll.max_pages or poll.page_size if it is "
                    f"really that long"
                )
            seen.add(page.next_page)
            token = page.next_page

    async def get_run(self, run_id: str, *, etag: str | None = None) -> Run | None:
        """One run; None when `etag` is given and the run has not changed (304)."""
        if not run_id:
            raise ValueError("run_id must not be empty")
        url = f"{self._runs_url}/{quote(run_id, safe='')}"
        headers = {"If-None-Match": _entity_tag(etag)} if etag else {}
        what = f"getting run {run_id} of organization {self.organization_id}"

        missing = f"run {run_id} does not exist in organization {self.organization_id}"

        async def attempt() -> Run | None:
            answer = await self._fetch("get", url, {}, headers, what=what, missing=missing)
            if answer is None:
                return None
            org = self.organization_id
            run = read_run(answer[1], organization_id=org) or decode_run(
                self._parsed(answer, what), organization_id=org
            )
            if run.run_id != run_id:
                raise ViBadResponseError(
                    f"the Vi API answered {what} with run {run.run_id} instead"
                )
            return run

        return await self._retry.call(attempt, what=f"get {self.organization_id}/{run_id}")

    async def latest_output(
        self, run_id: str, *, within: float | None = None, page_size: int = OUTPUTS_PAGE_SIZE
    ) -> ModelOutput | None:
        """The run's latest model output, None when it has saved none.

        The listing is ordered by checkpoint, latest last, so that is the last item of the
        last page: one request unless the run has more checkpoints than a page holds. The
        query is `?intent=sdkLocalDeploy&p=<token>&s=<size>`, one `?` (the SDK's own
        `?intent=sdkLocalDeploy?s=10` is a bug: the page parameters vanish into `intent`).
        `within` caps the seconds each page's retries may take (see `_budgeted`). A
        repeated page token or more than MAX_OUTPUT_PAGES pages is a ViBadResponseError.
        """
        if not usable_id(run_id):
            raise ValueError(f"run_id {run_id[:80]!r} is not a Vi run id")
        url = f"{self._runs_url}/{quote(run_id, safe='')}/outputs"
        org = self.organization_id
        what = f"listing the model outputs of run {run_id} of organization {org}"
        retry = self._budgeted(within)
        latest: ModelOutput | None = None
        token: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_OUTPUT_PAGES):
            params = {"intent": OUTPUTS_INTENT}
            if token is not None:
                params["p"] = token
            params["s"] = str(page_size)
            fetch = functools.partial(self._outputs_page, url, params, run_id, what)
            page = await retry.call(fetch, what=f"outputs {org}/{run_id}")
            latest = page.latest or latest  # an empty last page leaves the one before
            if page.next_page is None:
                return latest
            if page.next_page in seen:
                raise ViBadResponseError(
                    f"the Vi API handed back page token {page.next_page[:60]!r} a second time "
                    f"while {what}"
                )
            seen.add(page.next_page)
            token = page.next_page
        raise ViBadResponseError(f"{what}: more than {MAX_OUTPUT_PAGES} pages")

    async def _outputs_page(
        self, url: str, params: dict[str, str], run_id: str, what: str
    ) -> OutputsPage:
        missing = f"run {run_id} does not exist in organization {self.organization_id}"
        answer = await self._fetch("outputs", url, params, {}, what=what, missing=missing)
        body = self._parsed(answer, what)
        return decode_outputs_page(
            body, organization_id=self.organization_id, run_id=run_id, mask=self._redact
        )

    async def training_project(
        self, project_id: str, *, etag: str | None = None, within: float | None = None
    ) -> TrainingProject | None:
        """One training project; None when `etag` is given and it has not changed (304).
        `within` caps the seconds its retries may take (see `_budgeted`)."""
        if not usable_id(project_id):
            raise ValueError(f"project_id {project_id[:80]!r} is not a Vi training project id")
        org = self.organization_id
        url = f"{self._projects_url}/{quote(project_id, safe='')}"
        headers = {"If-None-Match": _entity_tag(etag)} if etag else {}
        what = f"getting training project {project_id} of organization {org}"
        missing = f"training project {project_id} does not exist in organization {org}"

        async def attempt() -> TrainingProject | None:
            answer = await self._fetch("project", url, {}, headers, what=what, missing=missing)
            if answer is None:
                return None
            body = self._parsed(answer, what)
            return decode_training_project(
                body, organization_id=org, project_id=project_id, mask=self._redact
            )

        return await self._budgeted(within).call(attempt, what=f"project {org}/{project_id}")

    def _budgeted(self, within: float | None) -> RetryPolicy:
        """The retry policy, giving up before a wait would take a call past `within` seconds
        (a caller with a deadline of its own: a Retry-After beyond it fails the call at once
        instead of sleeping through the deadline)."""
        if within is None:
            return self._retry
        budget = max(0.0, min(within, self._retry.max_retry_time))
        return dataclasses.replace(self._retry, max_retry_time=budget)

    # --- one HTTP attempt ------------------------------------------------------------------

    async def _fetch(
        self,
        kind: Endpoint,
        url: str,
        params: dict[str, str],
        headers: dict[str, str],
        *,
        what: str,
        missing: str | None = None,
    ) -> tuple[httpx.Response, bytes] | None:
        """GET once and return a 200 with its body (None for a 304), or raise a ViError.
        `missing` says what a 404 means ("run X does not exist in organization Y")."""
        if self._pace is not None:
            wait = self._pace.reserve(time.monotonic())
            if wait > 0:
                await self._retry.sleep(wait)
        self.requests_made += 1
        outcome = "transport"
        started = time.monotonic()
        try:
            response, body = await _within(
                read_capped(self._http, url, params, headers, self._max_bytes),
                self._timeout * _ATTEMPT_DEADLINE_FACTOR,
            )
            outcome = str(response.status_code)
        except TooLarge as exc:
            raise self._too_big(what, str(exc)) from None
        except asyncio.CancelledError:
            outcome = "cancelled"  # a caller's deadline (enrichment's), not the API's fault
            raise
        except (httpx.TimeoutException, asyncio.TimeoutError) as exc:
            outcome = "timeout"
            limit = self._timeout
            if not isinstance(exc, httpx.TimeoutException):  # the whole-attempt deadline
                limit *= _ATTEMPT_DEADLINE_FACTOR
            raise self._error(
                ViTransportError,
                f"timed out after {limit:g}s {what} at {self.endpoint}; the API is slow "
                f"or unreachable (poll.request_timeout sets the limit)",
            ) from exc
        except httpx.DecodingError as exc:
            raise self._error(
                ViBadResponseError, f"the Vi API sent an undecodable body {what}: {exc}"
            ) from exc
        except httpx.RequestError as exc:
            untrusted = certificate_error(exc)
            if untrusted is not None:
                error = self._error(
                    ViTransportError,
                    f"the Vi API at {self.endpoint} presented a TLS certificate that runwatch "
                    f"cannot verify ({untrusted.verify_message}) while {what}; if it is "
                    f"signed by a private CA, set tls.ca_bundle to that CA's PEM file",
                )
                error.permanent = True  # the same certificate fails the same way on a retry
                raise error from exc
            raise self._error(
                ViTransportError,
                f"lost the connection to the Vi API at {self.endpoint} {what} "
                f"({type(exc).__name__}: {exc}); check the endpoint and the network",
            ) from exc
        finally:
            if self._on_request is not None:
                self._on_request(kind, outcome, time.monotonic() - started)

        status = response.status_code
        if status == 200:
            return response, body
        if status == 304 and "If-None-Match" in headers:
            return None
        raise status_error(
            response,
            body,
            what=what,
            missing=missing,
            organization_id=self.organization_id,
            endpoint=self.endpoint,
            redact=self._redact,
            clock=self._retry.clock,
        )

    def _parsed(self, answer: tuple[httpx.Response, bytes] | None, what: str) -> object:
        """The JSON of a 200's body, lone surrogates repaired (None for a 304)."""
        if answer is None:
            return None
        response, body = answer
        try:
            return safe_json(body)
        except (ValueError, RecursionError) as exc:
            raise self._error(
                ViBadResponseError,
                f"the Vi API answered {what} with a body that is not JSON "
                f"({len(body)} bytes of "
                f"{response.headers.get('content-type', 'no content type')}); "
                f"a proxy in the way, or a truncated response",
                status_code=200,
                trace_id=trace_id(response),
            ) from exc

    def _too_big(self, what: str, how: str) -> ViError:
        error = self._error(
            ViBadResponseError,
            f"the Vi API answered {what} with more than {self._max_bytes} bytes ({how}); "
            "a broken proxy or API, or raise poll.max_response_bytes if pages are really "
            "that large (or lower poll.page_size)",
        )
        error.permanent = True  # the same request brings the same body
        return error

    def _error(self, cls: type[ViError], message: str, **kw: object) -> ViError:
        return cls(self._redact(message), **kw)  # type: ignore[arg-type]


class _Pace:
    """At most `rate` requests a second, in bursts of up to `rate` (a token bucket, kept as
    the time the next token is due, GCRA-style). Each request reserves its slot before it
    waits, so concurrent GETs queue up in order instead of all waking at once."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._slack = (max(1.0, rate) - 1.0) * self._interval  # how far ahead a burst may go
        self._due = 0.0

    def reserve(self, now: float) -> float:
        """Seconds to wait before sending a request at `now`."""
        due = max(self._due, now)
        self._due = due + self._interval
        return max(0.0, due - self._slack - now)


# httpx builds a TLS context for every client, https or not, and loading a CA bundle costs
# ~100 ms and a few MiB. A plain-http endpoint (a local simulator, a proxy on loopback) never
# does TLS (redirects are refused), so it gets a context that trusts no one and costs nothing.
_NO_TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _tls_context(verify: bool | str) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


async def _within(read: Awaitable[_T], seconds: float) -> _T:
    """`await read`, or asyncio.TimeoutError after `seconds`. `asyncio.timeout` (3.11) runs
    it in the caller's task; `wait_for` before 3.12 starts a task per request."""
    if sys.version_info < (3, 11):
        return await asyncio.wait_for(read, seconds)
    async with asyncio.timeout(seconds):
        return await read


def _entity_tag(etag: str) -> str:
    # Run documents carry the bare tag; HTTP wants it quoted (or weak, W/"...") to compare.
    if etag.startswith('"') or etag.startswith('W/"'):
        return etag
    return f'"{etag}"'
