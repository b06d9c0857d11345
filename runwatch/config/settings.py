"""The configuration's typed shape: one frozen dataclass per section, one field per key.

Theory: this module is the declaration of the file. A field's name is its key (a trailing
`_` dropped: `from_` is `from`), its type and `Annotated` markers (`keys`) say what the key
holds and which values are allowed, its default is the documented default (a field without
one is a required key), and the `#:` comment above it is its one line of documentation
(config.example.yaml is the annotated reference). `schema.Reader` reads the file against
these declarations; `loading` adds only the checks that involve several keys. So adding a
key is adding a field here and documenting it in config.example.yaml.

The rule types (`Rule`, `Match`, `Templates`) live in the pure core, which knows nothing of
files; `CORE_FIELDS` holds the markers their fields would carry. Values are final: a
`Config` is trusted by the rest of runwatch without checking again.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time, timezone, tzinfo
from pathlib import Path
from typing import Annotated, Literal

from runwatch.config.keys import (
    DERIVED,
    EMPTY_OK,
    IN_CREDENTIALS,
    SECRET,
    Above,
    Check,
    Duration,
    Range,
    Size,
)
from runwatch.config.values import (
    KiB,
    MiB,
    console_url_problem,
    http_url_problem,
    listen_problem,
    name_problem,
    parse_listen,
    postgres_url_problem,
    readable_file_problem,
    secret_url_problem,
    slack_channel_problem,
    slack_token_problem,
    template_problem,
)
from runwatch.core.model import SUCCEEDED
from runwatch.core.rules import Match, Rule, Templates
from runwatch.errors import ConfigError

DEFAULT_ENDPOINT = "https://api.vi.datature.com"
DEFAULT_CONSOLE_URL = "https://vi.datature.com/org/{organization_id}"
DEFAULT_SLACK_API_URL = "https://slack.com/api/"

ChannelKind = Literal["apprise", "webhook", "slack"]
StateBackend = Literal["sqlite", "postgresql"]

_GLOB = "a condition name or glob"
_TEMPLATE = (EMPTY_OK, Check(template_problem))


# ----------------------------------------------------------------------------- workspaces


@dataclass(frozen=True, kw_only=True, slots=True)
class EnrichConfig:
    """What a poll fetches beyond the listing for a message; bounded, never blocking one."""

    #: conditions whose model metrics are fetched; [] turns metrics off
    metrics: Annotated[tuple[str, ...], _GLOB, EMPTY_OK] = (SUCCEEDED,)
    #: look up the training project's name for messages
    project_names: bool = True
    #: bound on all the extra requests of one poll; a message never waits longer for them
    timeout: Annotated[float, Duration()] = 5.0
    #: metrics shown in one message
    max_metrics: Annotated[int, Range(1, 100)] = 6


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkspaceConfig:
    """One Datature Vi organization to watch."""

    #: the label in messages, logs and rules; unique
    name: Annotated[str, Check(name_problem)]
    #: the Vi organization
    organization_id: str
    #: the Vi secret key; exactly one of secret_key and secret_key_file is written
    secret_key: Annotated[str, SECRET] = field(repr=False)
    #: the file secret_key was read from ($CREDENTIALS_DIRECTORY or next to the config)
    secret_key_file: Annotated[Path | None, IN_CREDENTIALS] = None
    #: the Vi API
    endpoint: Annotated[str, Check(http_url_problem)] = DEFAULT_ENDPOINT
    #: link to a run in messages, a str.format template of {organization_id} and {run_id}
    console_url: Annotated[str, Check(console_url_problem)] = DEFAULT_CONSOLE_URL
    #: extra lookups for messages
    enrich: EnrichConfig = EnrichConfig()


# ----------------------------------------------------------------------------- polling


@dataclass(frozen=True, kw_only=True, slots=True)
class PollConfig:
    """How often and how hard the Vi API is asked."""

    #: seconds between two polls of a workspace
    interval: Annotated[float, Duration()] = 30.0
    #: runs per listing page
    page_size: Annotated[int, Range(1, 1000)] = 50
    #: bound on one HTTP request
    request_timeout: Annotated[float, Duration()] = 20.0
    #: a complete listing at least this often; 0 makes every poll complete
    full_resync: Annotated[float, Duration(positive=False)] = 900.0
    #: tries per HTTP call, the first included
    max_attempts: Annotated[int, Range(1, 100)] = 5
    #: seconds of retrying one HTTP call before giving up
    max_retry_time: Annotated[float, Duration(positive=False)] = 120.0
    #: cap on a server's Retry-After
    max_retry_after: Annotated[float, Duration(positive=False)] = 300.0
    #: concurrent single-run GETs per workspace
    max_concurrency: Annotated[int, Range(1, 256)] = 8
    #: token bucket per workspace; None: no limit
    max_requests_per_second: Annotated[float | None, Above(0)] = None
    #: conditions treated as final, in addition to the built-in terminal set
    terminal_conditions: Annotated[tuple[str, ...], "a condition name", EMPTY_OK] = ()
    #: a listing longer than this is a broken API
    max_pages: Annotated[int, Range(1, 10_000_000)] = 10_000
    #: bound on one response body, in bytes
    max_response_bytes: Annotated[int, Size(at_least=64 * KiB)] = 64 * MiB


# ----------------------------------------------------------------------------- state and HA


@dataclass(frozen=True, kw_only=True, slots=True)
class StateConfig:
    """Where runs, events and the outbox are kept: a SQLite file or a PostgreSQL database."""

    #: the SQLite file; the loader fills in the default path when url is not given either
    path: Path | None = None
    #: a libpq URL, postgresql://user@host/db (its password is a secret)
    url: Annotated[str | None, Check(postgres_url_problem)] = field(default=None, repr=False)

    @property
    def backend(self) -> StateBackend:
        """Which store the state lives in: "postgresql" when a url is given, else "sqlite"."""
        return "postgresql" if self.url is not None else "sqlite"

    def sqlite_path(self) -> Path:
        """The SQLite file; a ConfigError when the state is in PostgreSQL (`state.open`
        opens either)."""
        if self.path is None:
            raise ConfigError(
                ["state.url: the state is in PostgreSQL; this needs a SQLite state.path"]
            )
        return self.path


@dataclass(frozen=True, kw_only=True, slots=True)
class HAConfig:
    """Several instances on one PostgreSQL state: each workspace leased to one live instance."""

    #: a lease not renewed for this long expires, and another instance takes the workspace
    lease: Annotated[float, Duration(at_least=3.0)] = 30.0
    #: this instance's name in leases and status; default the host name
    instance: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True, kw_only=True, slots=True)
class TLSConfig:
    """TLS towards the Vi API."""

    #: turning it off needs `tls.verify: false` and logs a warning
    verify: bool = True
    #: a PEM file of CA certificates to trust instead of the system's
    ca_bundle: Annotated[Path | None, Check(readable_file_problem)] = None


# ----------------------------------------------------------------------------- channels


@dataclass(frozen=True, kw_only=True, slots=True)
class WebhookConfig:
    """A signed JSON webhook: each message POSTed with an HMAC signature of its body."""

    #: where to POST; http(s), and it may hold a token (never shown)
    url: Annotated[str, Check(secret_url_problem)] = field(repr=False)
    #: the HMAC signing key
    secret: Annotated[str, SECRET] = field(repr=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class SlackConfig:
    """Native Slack: one message per run, edited in place, with thread replies."""

    #: a bot token, xoxb-...
    token: Annotated[str, SECRET, Check(slack_token_problem)] = field(repr=False)
    #: a channel id (C0123456789) or #name
    channel: Annotated[str, Check(slack_channel_problem)]
    #: Slack's Web API, ending with "/"
    api_url: Annotated[str, Check(http_url_problem)] = DEFAULT_SLACK_API_URL
    #: failures, errors and overdue notices also as replies in the run's message's thread
    thread: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class DigestConfig:
    """A burst of messages to one channel goes out as one digest."""

    #: up to this many messages in one window go out one by one, the rest as a digest
    max_single: Annotated[int, Range(1, 1000)] = 3
    #: the time a burst is counted in
    window: Annotated[float, Duration()] = 60.0
    #: lines in one digest; the rest are counted, not listed
    max_lines: Annotated[int, Range(1, 10_000)] = 50


@dataclass(frozen=True, kw_only=True, slots=True)
class QuietHours:
    """A daily time when a channel's messages are held, released when it ends."""

    #: HH:MM, 24-hour; later than `to` wraps past midnight
    from_: time
    #: HH:MM, 24-hour; not equal to `from`
    to: time
    #: an IANA time zone name; default UTC
    timezone: tzinfo = timezone.utc
    #: conditions (names or globs) sent at once even in quiet hours
    except_: Annotated[tuple[str, ...], _GLOB, EMPTY_OK] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelConfig:
    """Where notifications go: Apprise URLs, a signed webhook or native Slack."""

    #: which one of urls, webhook and slack the channel was given
    kind: Annotated[ChannelKind, DERIVED]
    #: kind "apprise": every URL gets each message (secrets inside!)
    urls: Annotated[tuple[str, ...], "an Apprise URL"] = field(default=(), repr=False)
    #: kind "webhook"
    webhook: WebhookConfig | None = None
    #: kind "slack"
    slack: SlackConfig | None = None
    #: None: every message alone; default on for Apprise channels, off for webhooks
    digest: DigestConfig | None = None
    #: seconds between two sends on this channel, overriding delivery.min_interval
    min_interval: Annotated[float | None, Duration(positive=False)] = None
    #: None: no quiet time
    quiet_hours: QuietHours | None = None


# ----------------------------------------------------------------------------- the rest


@dataclass(frozen=True, kw_only=True, slots=True)
class DeliveryConfig:
    """Retrying and pacing sends, per channel."""

    #: seconds after which an undelivered message is dead
    max_age: Annotated[float, Duration()] = 86_400.0
    #: first wait after a failed send, doubling each time
    initial_backoff: Annotated[float, Duration(positive=False)] = 30.0
    #: longest wait between two tries; at least initial_backoff
    max_backoff: Annotated[float, Duration(positive=False)] = 1_800.0
    #: bound on one send (all of a channel's URLs)
    timeout: Annotated[float, Duration()] = 30.0
    #: pacing: seconds between two sends on one channel
    min_interval: Annotated[float, Duration(positive=False)] = 1.0


@dataclass(frozen=True, kw_only=True, slots=True)
class AlertsConfig:
    """runwatch's own alerts, when the API or a channel keeps failing."""

    #: admin channels; empty disables self-alerts
    notify: Annotated[tuple[str, ...], "a channel name", EMPTY_OK] = ()
    #: alert when a workspace could not be polled for this long
    api_down_after: Annotated[float, Duration()] = 600.0
    #: alert when a channel has failed every send for this long
    channel_failing_after: Annotated[float, Duration()] = 1_800.0


_LISTEN_HINT = "write e.g. 127.0.0.1:9464 or [::1]:9464 (port 0..65535)"


@dataclass(frozen=True, kw_only=True, slots=True)
class HttpConfig:
    """Health and Prometheus metrics over HTTP."""

    #: host:port, IPv6 as [::1]:9464
    listen: Annotated[str, Check(listen_problem, _LISTEN_HINT)] = "127.0.0.1:9464"

    @property
    def host(self) -> str:
        return self._address[0]

    @property
    def port(self) -> int:
        return self._address[1]

    @property
    def _address(self) -> tuple[str, int]:
        address = parse_listen(self.listen)
        assert address is not None, "checked when loaded"
        return address


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    """The whole file, checked."""

    #: at least one
    workspaces: Annotated[tuple[WorkspaceConfig, ...], "a workspace"]
    #: name -> channel, at least one (secrets inside!)
    channels: Annotated[Mapping[str, ChannelConfig], "a channel"]
    #: at least one
    rules: Annotated[tuple[Rule, ...], "a rule"]
    state: StateConfig = StateConfig()
    #: used with a PostgreSQL state
    ha: HAConfig = field(default_factory=HAConfig)
    poll: PollConfig = PollConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    templates: Templates = field(default_factory=Templates)
    alerts: AlertsConfig = AlertsConfig()
    #: None: nothing listens
    http: HttpConfig | None = None
    tls: TLSConfig = TLSConfig()
    #: the file it was loaded from
    source: Annotated[Path | None, DERIVED] = None
    #: e.g. the file holds secrets and is readable by others
    warnings: Annotated[tuple[str, ...], DERIVED] = ()
    #: every secret, for log redaction
    secrets: Annotated[tuple[str, ...], DERIVED] = field(default=(), repr=False)


# The markers the core's rule types would carry on their fields (the core knows no files).
CORE_FIELDS: Mapping[type, Mapping[str, tuple[object, ...]]] = {
    Rule: {
        "name": ("a rule name",),
        "notify": ("a channel name", EMPTY_OK),
        "title": _TEMPLATE,
        "body": _TEMPLATE,
        "repeat": (Duration(),),
    },
    Match: {
        "condition": ("a condition or glob",),
        "status": ("a status or glob",),
        "previous": ("a condition or glob",),
        "workspace": ("a workspace name or glob",),
        "flow": ("a flow name or glob",),
        "training_project": ("a project or glob",),
        "attributes": ("a glob",),
        "event": ("an event kind",),
        "for_": (Duration(),),
        "stalled_for": (Duration(),),
    },
    Templates: {"title": _TEMPLATE, "body": _TEMPLATE},
}
