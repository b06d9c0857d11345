"""Every error runwatch raises, in one tree.

    RunwatchError
    ├── ConfigError            the configuration is invalid (exit 78); holds every problem
    ├── StoreError             the state database cannot be used (corrupt, newer schema,
    │   │                      read-only, disk full, unreachable); never "fixed" by resetting
    │   └── LeaseLostError       PostgreSQL: this instance no longer holds the workspace's
    │                            lease, so its poll was not committed (another one polls it)
    └── ViError                a call to the Vi API failed; `.permanent` says if retrying helps
        ├── ViAuthError          401/403: the secret key or organization id was rejected
        ├── ViNotFoundError      404: the run (or organization) does not exist
        ├── ViRateLimitedError   429, after the retries allowed; `.retry_after` seconds
        ├── ViServerError        5xx, after the retries allowed
        ├── ViTransportError     timeouts and dropped connections, after the retries allowed
        └── ViBadResponseError   a body that is not the documented JSON, a repeated page
                                 token, a listing past the page cap

Foreign exceptions (httpx, sqlite3, yaml) are translated at the edge with `raise ... from`.
Messages say what failed, where, and what to do next, and never contain a secret.
"""

from __future__ import annotations


class RunwatchError(Exception):
    """Base of every error runwatch raises on purpose."""


class ConfigError(RunwatchError):
    """The configuration is invalid; `problems` lists every one found, each naming its place."""

    def __init__(self, problems: list[str], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} configuration error(s){where}:\n{lines}")


class StoreError(RunwatchError):
    """The state database cannot be opened or written."""


class LeaseLostError(StoreError):
    """This instance no longer holds the workspace's lease: its poll was not committed."""


class ViError(RunwatchError):
    """A Vi API call failed."""

    permanent = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        trace_id: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.trace_id = trace_id
        super().__init__(message)


class ViAuthError(ViError):
    permanent = True


class ViNotFoundError(ViError):
    permanent = True


class ViRateLimitedError(ViError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]


class ViServerError(ViError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        self.retry_after = retry_after  # a 503 may say when to come back, like a 429
        super().__init__(message, **kw)  # type: ignore[arg-type]


class ViTransportError(ViError):
    pass


class ViBadResponseError(ViError):
    pass
