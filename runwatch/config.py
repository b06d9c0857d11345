"""The configuration file: its typed shape, and loading it with every error named.

(The loader below the dataclasses is filled in by the config work.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runwatch.rules import Rule

DEFAULT_ENDPOINT = "https://api.vi.datature.com"


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkspaceConfig:
    name: str
    organization_id: str
    secret_key: str = field(repr=False)  # never printed
    endpoint: str = DEFAULT_ENDPOINT


@dataclass(frozen=True, kw_only=True, slots=True)
class TLSConfig:
    verify: bool = True  # turning it off needs `tls.verify: false` and logs a warning
    ca_bundle: Path | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PollConfig:
    interval: float = 30.0  # seconds
    page_size: int = 50
    request_timeout: float = 20.0
    full_resync: float = 900.0
    max_attempts: int = 5  # per HTTP call, first try included
    max_retry_time: float = 120.0  # seconds of retrying one HTTP call before giving up
    max_retry_after: float = 300.0  # cap on a server's Retry-After
    max_concurrency: int = 8  # concurrent single-run GETs per workspace
    max_requests_per_second: float | None = None  # token bucket per workspace
    terminal_conditions: tuple[str, ...] = ()  # in addition to the built-in terminal set
    max_pages: int = 10_000


@dataclass(frozen=True, kw_only=True, slots=True)
class StateConfig:
    path: Path


@dataclass(frozen=True, kw_only=True, slots=True)
class DeliveryConfig:
    max_age: float = 86_400.0  # seconds after which an undelivered row is dead
    initial_backoff: float = 30.0
    max_backoff: float = 1_800.0
    timeout: float = 30.0  # bound on one Apprise notify() call
    min_interval: float = 1.0  # pacing: seconds between two sends on one channel


@dataclass(frozen=True, kw_only=True, slots=True)
class Templates:
    title: str | None = None  # overrides the built-in default title for every rule
    body: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class AlertsConfig:
    notify: tuple[str, ...] = ()  # admin channels; empty disables self-alerts
    api_down_after: float = 600.0
    channel_failing_after: float = 1_800.0


@dataclass(frozen=True, kw_only=True, slots=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 9464


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    workspaces: tuple[WorkspaceConfig, ...]
    channels: Mapping[str, tuple[str, ...]]  # name -> Apprise URLs (secrets inside!)
    rules: tuple[Rule, ...]
    state: StateConfig
    poll: PollConfig = PollConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    templates: Templates = Templates()
    alerts: AlertsConfig = AlertsConfig()
    http: HttpConfig | None = None
    tls: TLSConfig = TLSConfig()
    source: Path | None = None  # the file it was loaded from
