"""The configuration file: its typed shape, and loading it with every error named.

Theory: `yaml_document` turns the file into plain values, with the line of every key path
and `${VAR}` references replaced; then every section is checked against the shapes below.
Every problem is collected, none stops the others, and the result is one `ConfigError`
naming each key path and line, or a `Config` that the rest of runwatch can trust without
checking again.

Secrets (secret keys, passwords and tokens inside Apprise URLs) never appear in an error
message: URLs are checked and shown through `apprise_urls`, and every message is scrubbed
of every secret found before it is raised.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import pwd
import re
import stat
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runwatch.config.apprise_urls import private_url, url_problem, url_secrets
from runwatch.config.durations import format_duration, parse_duration
from runwatch.config.yaml_document import FROM_ENV, Document, Problems, compose
from runwatch.core.model import EventKind
from runwatch.core.render import validate_template
from runwatch.core.rules import Match, Rule, Templates
from runwatch.errors import ConfigError

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
    templates: Templates = field(default_factory=Templates)
    alerts: AlertsConfig = AlertsConfig()
    http: HttpConfig | None = None
    tls: TLSConfig = TLSConfig()
    source: Path | None = None  # the file it was loaded from
    warnings: tuple[str, ...] = ()  # e.g. the file holds secrets and is readable by others
    secrets: tuple[str, ...] = field(default=(), repr=False)  # every secret, for log redaction


# ----------------------------------------------------------------------------- public API

MAX_CONFIG_BYTES = 1024 * 1024
MAX_SECRET_FILE_BYTES = 64 * 1024


def load_config(path: Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, substitute and validate the configuration file at `path`; raise ConfigError."""
    env = os.environ if environ is None else environ
    source = str(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(["the configuration is not a regular file"], source=source)
        if st.st_size > MAX_CONFIG_BYTES:
            raise ConfigError([_too_big(st.st_size)], source=source)
        with path.open("rb") as f:
            # Read one byte past the limit: the file may have grown since stat().
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([f"cannot read the configuration file: {reason}"], source=source) from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([_too_big(len(data))], source=source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"the file is not UTF-8 text (byte {exc.start})"
        raise ConfigError([problem], source=source) from exc
    return _parse(
        text,
        source=source,
        environ=env,
        base_dir=path.absolute().parent,
        file=path,
        mode=stat.S_IMODE(st.st_mode),
    )


def parse_config(
    text: str,
    *,
    source: str = "<string>",
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> Config:
    """Validate configuration `text`; relative paths resolve against `base_dir` (default: cwd)."""
    env = os.environ if environ is None else environ
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError([_too_big(size)], source=source)
    return _parse(
        text,
        source=source,
        environ=env,
        base_dir=Path.cwd() if base_dir is None else base_dir,
        file=None,
        mode=None,
    )


def default_state_path(environ: Mapping[str, str]) -> Path:
    """Where the state database lives when `state.path` is not given.

    Under systemd `StateDirectory=` sets $STATE_DIRECTORY (a colon-separated list when the
    unit names several; the first is ours). Otherwise the XDG base-directory spec applies;
    a relative $XDG_STATE_HOME is invalid by that spec and ignored.
    """
    state_dirs = environ.get("STATE_DIRECTORY", "")
    first = state_dirs.split(":")[0]
    if first:
        return Path(first) / "state.db"
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "runwatch" / "state.db"
    return _home(environ) / ".local" / "state" / "runwatch" / "state.db"


def describe(config: Config) -> list[str]:
    """Human-readable lines for `runwatch check`, with every secret masked."""
    poll, delivery, alerts = config.poll, config.delivery, config.alerts
    lines = [
        f"workspace {ws.name}: organization {ws.organization_id}, endpoint {ws.endpoint}"
        for ws in config.workspaces
    ]
    rps = (
        "unlimited" if poll.max_requests_per_second is None else f"{poll.max_requests_per_second:g}"
    )
    terminal = ", ".join(poll.terminal_conditions) or "built-in only"
    lines.append(
        f"poll: every {format_duration(poll.interval)}, page size {poll.page_size}, "
        f"request timeout {format_duration(poll.request_timeout)}, "
        f"full resync every {format_duration(poll.full_resync)}, "
        f"{poll.max_attempts} attempts within {format_duration(poll.max_retry_time)}, "
        f"Retry-After capped at {format_duration(poll.max_retry_after)}, "
        f"concurrency {poll.max_concurrency}, requests/s {rps}, "
        f"max pages {poll.max_pages}, extra terminal conditions: {terminal}"
    )
    lines.append(f"state: {config.state.path}")
    ca = f", CA bundle {config.tls.ca_bundle}" if config.tls.ca_bundle else ""
    lines.append(f"tls: verify {'on' if config.tls.verify else 'OFF'}{ca}")
    secrets = sorted(set(config.secrets), key=len, reverse=True)
    for name, urls in config.channels.items():
        shown = ", ".join(private_url(url, secrets=secrets) for url in urls)
        lines.append(f"channel {name}: {shown}")
    for rule in config.rules:
        lines.append(f"rule {rule.name}: {_describe_match(rule.match)} -> {', '.join(rule.notify)}")
    lines.append(
        f"delivery: give up after {format_duration(delivery.max_age)}, backoff "
        f"{format_duration(delivery.initial_backoff)}..{format_duration(delivery.max_backoff)}, "
        f"timeout {format_duration(delivery.timeout)}, "
        f"at most one send per {format_duration(delivery.min_interval)} per channel"
    )
    if alerts.notify:
        lines.append(
            f"alerts: to {', '.join(alerts.notify)} when the API is down for "
            f"{format_duration(alerts.api_down_after)} or a channel fails for "
            f"{format_duration(alerts.channel_failing_after)}"
        )
    else:
        lines.append("alerts: off (alerts.notify is empty)")
    if config.http is not None:
        lines.append(f"http: listening on {_join_host_port(config.http.host, config.http.port)}")
    return lines


# ----------------------------------------------------------------------------- checking

_MISSING = object()


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if value is None:
        return "nothing (null)"
    return f"a {type(value).__name__}"


class _Checker:
    """Typed reads of the plain document, each reporting its problem with path and line."""

    def __init__(self, doc: Document, problems: Problems) -> None:
        self.doc = doc
        self.problems = problems

    def line(self, path: str) -> int | None:
        # A missing key has no line of its own: use the nearest enclosing one.
        while path:
            if path in self.doc.lines:
                return self.doc.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return None

    def fail(self, path: str, message: str, hint: str | None = None) -> None:
        if any(path == b or path.startswith((b + ".", b + "[")) for b in self.doc.broken):
            return  # already reported (e.g. an unset ${VAR}); one message per cause
        self.problems.add(path, message, line=self.line(path), hint=hint)

    def wrong_type(self, path: str, expected: str, value: object) -> None:
        self.fail(path, f"expected {expected}, got {_kind(value)}")

    def mapping(
        self,
        value: object,
        path: str,
        *,
        keys: Sequence[str] | None,
        required: Sequence[str] = (),
    ) -> dict[str, object] | None:
        """`value` as a mapping with only `keys` (any keys if None); None after a problem."""
        if not isinstance(value, dict):
            self.wrong_type(path or "(top level)", "a mapping", value)
            return None
        if keys is not None:
            for key in value:
                if key not in keys:
                    self.unknown_key(_join(path, key), key, keys)
        for key in required:
            if key not in value:
                self.fail(_join(path, key), "required")
        return value

    def unknown_key(self, path: str, key: str, known: Sequence[str]) -> None:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys are: {', '.join(known)}"
        self.fail(path, "unknown key", hint)

    def section(
        self, parent: dict[str, object], key: str, keys: Sequence[str]
    ) -> dict[str, object]:
        """An optional sub-mapping; absent or null reads as empty."""
        value = parent.get(key)
        if value is None:
            return {}
        return self.mapping(value, key, keys=keys) or {}

    def string(
        self,
        m: dict[str, object],
        key: str,
        base: str,
        default: str | None = None,
        *,
        required: bool = False,
        non_empty: bool = True,
    ) -> str | None:
        path = _join(base, key)
        value = m.get(key, _MISSING)
        if value is _MISSING or value is None:
            if required and value is _MISSING:
                self.fail(path, "required")
            elif required:
                self.fail(path, "must not be empty")
            return default
        if not isinstance(value, str):
            self.wrong_type(path, "a string", value)
            return default
        if non_empty and not value.strip():
            self.fail(path, "must not be empty")
            return default
        return value

    def integer(
        self, m: dict[str, object], key: str, base: str, default: int, lo: int, hi: int
    ) -> int:
        path = _join(base, key)
        value = m.get(key)
        if value is None:
            return default
        if isinstance(value, str) and path in self.doc.substituted:
            # `${PAGE_SIZE:-50}` is a string in YAML; read it as the number it stands for.
            try:
                value = int(value.strip())
            except ValueError:
                self.fail(path, "expected an integer (after ${...} substitution)")
                return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(path, "an integer", value)
            return default
        if not lo <= value <= hi:
            self.fail(path, f"{value} is out of range {lo}..{hi}")
            return default
        return value

    def number(
        self, m: dict[str, object], key: str, base: str, default: float | None, *, above: float
    ) -> float | None:
        """A number > `above`; null keeps `default` (which may itself be None)."""
        path = _join(base, key)
        value = m.get(key)
        if value is None or (value == "" and path in self.doc.substituted):
            return default
        if isinstance(value, str) and path in self.doc.substituted:
            try:
                value = float(value.strip())
            except ValueError:
                self.fail(path, "expected a number (after ${...} substitution)")
                return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.wrong_type(path, "a number", value)
            return default
        if not math.isfinite(value) or value <= above:
            self.fail(path, f"must be a number above {above:g}")
            return default
        return float(value)

    def flag(self, m: dict[str, object], key: str, base: str, default: bool) -> bool:
        path = _join(base, key)
        value = m.get(key)
        if value is None:
            return default
        if isinstance(value, str) and path in self.doc.substituted:
            word = value.strip().lower()
            if word in ("true", "yes", "on", "1"):
                return True
            if word in ("false", "no", "off", "0"):
                return False
        if not isinstance(value, bool):
            self.wrong_type(path, "true or false", value)
            return default
        return value

    def duration(
        self, m: dict[str, object], key: str, base: str, default: float, *, positive: bool = True
    ) -> float:
        path = _join(base, key)
        value = m.get(key)
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError:
            shown = f"{value!r}" if isinstance(value, str | int | float) else _kind(value)
            self.fail(
                path,
                f"{shown} is not a duration",
                "write e.g. 30s, 15m, 2h, 1d, 1h30m, 500ms (or a number of seconds)",
            )
            return default
        if positive and seconds <= 0:
            self.fail(path, "must be longer than 0s")
            return default
        return seconds

    def strings(
        self,
        m: dict[str, object],
        key: str,
        base: str,
        *,
        what: str = "a string",
        allow_empty: bool = False,
    ) -> tuple[str, ...]:
        """A string or a list of strings; absent reads as ().

        An empty list is refused unless `allow_empty`: in a match criterion it would read as
        "match anything", the opposite of what someone writing `[]` probably meant.
        """
        path = _join(base, key)
        value = m.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list):
            self.wrong_type(path, f"{what} or a list of them", value)
            return ()
        if not value and not allow_empty:
            self.fail(path, "must not be an empty list (leave the key out instead)")
            return ()
        out: list[str] = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(item)
            else:
                self.wrong_type(f"{path}[{i}]", what, item)
        return tuple(out)


def _as_list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _join(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


# ----------------------------------------------------------------------------- the sections

_TOP_KEYS = (
    "workspaces",
    "poll",
    "state",
    "tls",
    "channels",
    "rules",
    "templates",
    "delivery",
    "alerts",
    "http",
)
_WORKSPACE_KEYS = ("name", "organization_id", "secret_key", "secret_key_file", "endpoint")
_POLL_KEYS = (
    "interval",
    "page_size",
    "request_timeout",
    "full_resync",
    "max_attempts",
    "max_retry_time",
    "max_retry_after",
    "max_concurrency",
    "max_requests_per_second",
    "terminal_conditions",
    "max_pages",
)
_RULE_KEYS = ("name", "match", "notify", "title", "body")
_MATCH_KEYS = (
    "condition",
    "status",
    "previous",
    "workspace",
    "flow",
    "training_project",
    "attributes",
    "event",
)
_EVENT_KINDS: tuple[EventKind, ...] = ("transition", "new", "deleted")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(kw_only=True)
class _Found:
    """Secrets and warnings gathered while checking, for the final Config."""

    secrets: list[str] = field(default_factory=list)
    scrub: list[str] = field(default_factory=list)  # also masked in errors, not all secrets
    inline: list[str] = field(default_factory=list)  # paths holding a secret written in the file
    warnings: list[str] = field(default_factory=list)


def _parse(
    text: str,
    *,
    source: str,
    environ: Mapping[str, str],
    base_dir: Path,
    file: Path | None,
    mode: int | None,
) -> Config:
    problems = Problems()
    doc = compose(text, problems, environ)
    if doc is None:
        raise ConfigError(problems.texts(()), source=source)
    found = _Found()
    check = _Checker(doc, problems)
    config = _check(doc, check, found, environ=environ, base_dir=base_dir, file=file)
    scrub = [*found.secrets, *found.scrub]
    if config is None or problems.items:
        raise ConfigError(problems.texts(scrub), source=source)
    warnings = list(found.warnings)
    if found.inline and mode is not None and mode & 0o077:
        where = ", ".join(found.inline)
        warnings.insert(
            0,
            f"{source} holds secrets written inline ({where}) and is readable by group or "
            f"others (mode {mode:04o}): run `chmod 600 {source}`, or move them to "
            "secret_key_file / ${VAR} references",
        )
    unique = sorted(dict.fromkeys(s for s in found.secrets if s), key=len, reverse=True)
    return dataclasses.replace(config, warnings=tuple(warnings), secrets=tuple(unique))


def _check(
    doc: Document,
    check: _Checker,
    found: _Found,
    *,
    environ: Mapping[str, str],
    base_dir: Path,
    file: Path | None,
) -> Config | None:
    if doc.root is None:
        check.problems.add(None, "the configuration is empty")
        return None
    top = check.mapping(doc.root, "", keys=_TOP_KEYS, required=("workspaces", "channels", "rules"))
    if top is None:
        return None
    workspaces = _workspaces(top, check, found, environ=environ, base_dir=base_dir)
    poll = _poll(top, check)
    state = _state(top, check, environ=environ, base_dir=base_dir)
    tls = _tls(top, check, found, environ=environ, base_dir=base_dir)
    channels = _channels(top, check, found)
    # Rules are checked against every workspace name written, valid or not, so that one
    # broken workspace does not also flag each rule that names it.
    names = list(
        dict.fromkeys(
            item["name"]
            for item in _as_list(top.get("workspaces"))
            if isinstance(item, dict) and isinstance(item.get("name"), str)
        )
    )
    rules = _rules(top, check, channels, names)
    templates = _templates(top, check)
    delivery = _delivery(top, check)
    alerts = _alerts(top, check, channels)
    http = _http(top, check)
    return Config(
        workspaces=tuple(workspaces),
        channels=channels,
        rules=tuple(rules),
        state=state,
        poll=poll,
        delivery=delivery,
        templates=templates,
        alerts=alerts,
        http=http,
        tls=tls,
        source=file,
    )


def _named_entries(
    top: dict[str, object],
    section: str,
    check: _Checker,
    *,
    what: str,
    keys: Sequence[str],
    required: Sequence[str],
    plain_names: bool = False,
) -> Iterator[tuple[str, dict[str, object], str | None]]:
    """(path, mapping, name) of each usable entry of `section`, a list of at least one `what`.

    An entry that is not a mapping of `keys` is reported and skipped; a name used before (or,
    with `plain_names`, not made of letters, digits, '_', '.', '-') is reported. Lazy, so each
    entry's problems are reported before those the caller then finds in it.
    """
    if section not in top:
        return
    value = top[section]
    if not isinstance(value, list):
        check.wrong_type(section, "a list", value)
        return
    if not value:
        check.fail(section, f"must list at least one {what}")
        return
    first_seen: dict[str, str] = {}
    for i, item in enumerate(value):
        path = f"{section}[{i}]"
        m = check.mapping(item, path, keys=keys, required=required)
        if m is None:
            continue
        name = check.string(m, "name", path)
        if name is not None:
            if plain_names and not _NAME.fullmatch(name):
                check.fail(f"{path}.name", f"{name!r} may only use letters, digits, '_', '.', '-'")
            elif name in first_seen:
                check.fail(
                    f"{path}.name", f"duplicate {what} name {name!r}", f"also {first_seen[name]}"
                )
            else:
                first_seen[name] = f"{path}.name"
        yield path, m, name


def _workspaces(
    top: dict[str, object],
    check: _Checker,
    found: _Found,
    *,
    environ: Mapping[str, str],
    base_dir: Path,
) -> list[WorkspaceConfig]:
    result: list[WorkspaceConfig] = []
    entries = _named_entries(
        top,
        "workspaces",
        check,
        what="workspace",
        keys=_WORKSPACE_KEYS,
        required=("name", "organization_id"),
        plain_names=True,
    )
    for path, m, name in entries:
        org = check.string(m, "organization_id", path)
        secret = _secret_key(m, path, check, found, environ=environ, base_dir=base_dir)
        endpoint = _endpoint(m, path, check, found)
        if name is not None and org is not None and secret is not None and endpoint is not None:
            result.append(
                WorkspaceConfig(
                    name=name, organization_id=org, secret_key=secret, endpoint=endpoint
                )
            )
    return result


def _secret_key(
    m: dict[str, object],
    path: str,
    check: _Checker,
    found: _Found,
    *,
    environ: Mapping[str, str],
    base_dir: Path,
) -> str | None:
    has_key, has_file = "secret_key" in m, "secret_key_file" in m
    if has_key == has_file:
        check.fail(
            path,
            "give exactly one of secret_key and secret_key_file"
            + (" (both are set)" if has_key else ""),
        )
        # Still gather the inline key so that no message can show it.
        inline = m.get("secret_key")
        if isinstance(inline, str):
            found.scrub.append(inline)
        return None
    if has_key:
        key_path = f"{path}.secret_key"
        found.scrub.extend(check.doc.env_values.get(key_path, []))
        raw = m.get("secret_key")
        if isinstance(raw, str) and raw.strip():
            found.secrets.append(raw.strip())
        secret = check.string(m, "secret_key", path, required=True)
        if secret is None:
            return None
        secret = secret.strip()
        if FROM_ENV not in check.doc.as_written(key_path, secret):
            found.inline.append(key_path)
        return secret
    file_path = f"{path}.secret_key_file"
    name = check.string(m, "secret_key_file", path, required=True)
    if name is None:
        return None
    # systemd LoadCredential= puts secrets in $CREDENTIALS_DIRECTORY, named without a path.
    creds = environ.get("CREDENTIALS_DIRECTORY")
    target = _resolve(name, Path(creds) if creds else base_dir, environ)
    try:
        with target.open("rb") as f:
            data = f.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        check.fail(file_path, f"cannot read {str(target)!r}: {reason}")
        return None
    if len(data) > MAX_SECRET_FILE_BYTES:
        check.fail(file_path, f"{str(target)!r} is larger than {MAX_SECRET_FILE_BYTES} bytes")
        return None
    secret = data.decode("utf-8", "replace").strip()
    if not secret:
        check.fail(file_path, f"{str(target)!r} is empty")
        return None
    found.secrets.append(secret)
    return secret


def _endpoint(m: dict[str, object], path: str, check: _Checker, found: _Found) -> str | None:
    endpoint = check.string(m, "endpoint", path, DEFAULT_ENDPOINT)
    if endpoint is None:
        return None
    endpoint = endpoint.strip().rstrip("/")
    parts = urllib.parse.urlsplit(endpoint)
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        check.fail(f"{path}.endpoint", f"{endpoint!r} has an invalid port")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        check.fail(f"{path}.endpoint", f"{endpoint!r} is not an http(s) URL")
        return None
    if parts.username or parts.password or parts.query or parts.fragment:
        check.fail(
            f"{path}.endpoint", "must be a plain http(s) URL, with no user, query or fragment"
        )
        return None
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        found.warnings.append(
            f"{path}.endpoint: {endpoint} is plain HTTP to another machine; the secret key "
            "would cross the network unencrypted"
        )
    return endpoint


def _poll(top: dict[str, object], check: _Checker) -> PollConfig:
    m = check.section(top, "poll", _POLL_KEYS)
    d = PollConfig()
    b = "poll"
    rps = check.number(m, "max_requests_per_second", b, d.max_requests_per_second, above=0)
    return PollConfig(
        interval=check.duration(m, "interval", b, d.interval),
        page_size=check.integer(m, "page_size", b, d.page_size, 1, 1000),
        request_timeout=check.duration(m, "request_timeout", b, d.request_timeout),
        full_resync=check.duration(m, "full_resync", b, d.full_resync, positive=False),
        max_attempts=check.integer(m, "max_attempts", b, d.max_attempts, 1, 100),
        max_retry_time=check.duration(m, "max_retry_time", b, d.max_retry_time, positive=False),
        max_retry_after=check.duration(m, "max_retry_after", b, d.max_retry_after, positive=False),
        max_concurrency=check.integer(m, "max_concurrency", b, d.max_concurrency, 1, 256),
        max_requests_per_second=rps,
        terminal_conditions=check.strings(
            m, "terminal_conditions", b, what="a condition name", allow_empty=True
        ),
        max_pages=check.integer(m, "max_pages", b, d.max_pages, 1, 10_000_000),
    )


def _state(
    top: dict[str, object], check: _Checker, *, environ: Mapping[str, str], base_dir: Path
) -> StateConfig:
    m = check.section(top, "state", ("path",))
    path = check.string(m, "path", "state")
    if path is None:
        return StateConfig(path=default_state_path(environ))
    return StateConfig(path=_resolve(path, base_dir, environ))


def _tls(
    top: dict[str, object],
    check: _Checker,
    found: _Found,
    *,
    environ: Mapping[str, str],
    base_dir: Path,
) -> TLSConfig:
    m = check.section(top, "tls", ("verify", "ca_bundle"))
    verify = check.flag(m, "verify", "tls", True)
    if not verify:
        found.warnings.append(
            "tls.verify is false: the Vi API's certificate is not checked, so anyone on the "
            "network path can read the secret key; use tls.ca_bundle for a private CA instead"
        )
    bundle = check.string(m, "ca_bundle", "tls")
    ca_bundle = None
    if bundle is not None:
        ca_bundle = _resolve(bundle, base_dir, environ)
        if not ca_bundle.is_file():
            check.fail("tls.ca_bundle", f"{str(ca_bundle)!r} is not a readable file")
    return TLSConfig(verify=verify, ca_bundle=ca_bundle)


def _channels(top: dict[str, object], check: _Checker, found: _Found) -> dict[str, tuple[str, ...]]:
    if "channels" not in top:
        return {}
    m = check.mapping(top["channels"], "channels", keys=None)
    if m is None:
        return {}
    if not m:
        check.fail("channels", "must name at least one channel")
        return {}
    result: dict[str, tuple[str, ...]] = {}
    for name, value in m.items():
        path = f"channels.{name}"
        if not _NAME.fullmatch(name):
            check.fail(path, f"channel name {name!r} may only use letters, digits, '_', '.', '-'")
        if isinstance(value, str):
            entries = [(path, value)]
        elif isinstance(value, list) and value:
            entries = []
            for i, item in enumerate(value):
                if isinstance(item, str):
                    entries.append((f"{path}[{i}]", item))
                else:
                    check.wrong_type(f"{path}[{i}]", "an Apprise URL string", item)
        else:
            if isinstance(value, list):
                check.fail(path, "must list at least one Apprise URL")
            else:
                check.wrong_type(path, "an Apprise URL or a list of them", value)
            result[name] = ()  # still a name rules may use: report it here only
            continue
        urls: list[str] = []
        for url_path, url in entries:
            url = url.strip()
            secrets = url_secrets(url)
            found.secrets.extend(secrets)
            found.scrub.extend(check.doc.env_values.get(url_path, []))
            # A secret part of the URL written here, not taken from ${VAR}, is inline.
            written = url_secrets(check.doc.as_written(url_path, url))
            if any(FROM_ENV not in secret for secret in written):
                found.inline.append(url_path)
            error = url_problem(url)
            if error is not None:
                check.fail(url_path, error)
            urls.append(url)
        result[name] = tuple(urls)
    return result


def _rules(
    top: dict[str, object],
    check: _Checker,
    channels: Mapping[str, tuple[str, ...]],
    workspaces: Sequence[str],
) -> list[Rule]:
    result: list[Rule] = []
    entries = _named_entries(
        top, "rules", check, what="rule", keys=_RULE_KEYS, required=("name", "notify")
    )
    for path, m, name in entries:
        match = _match(m, path, check, workspaces)
        notify = _notify(m, path, check, channels) if "notify" in m else ()
        title = _template(m, "title", path, check)
        body = _template(m, "body", path, check)
        if name is not None and match is not None and notify:
            result.append(Rule(name=name, match=match, notify=notify, title=title, body=body))
    return result


def _match(
    rule: dict[str, object], base: str, check: _Checker, workspaces: Sequence[str]
) -> Match | None:
    path = f"{base}.match"
    value = rule.get("match")
    if value is None:
        return Match()  # no criteria: every transition and new run
    m = check.mapping(value, path, keys=_MATCH_KEYS)
    if m is None:
        return None
    workspace = check.strings(m, "workspace", path, what="a workspace name or glob")
    for i, pattern in enumerate(workspace):
        # A plain name that names no workspace is a typo that would silence the rule forever.
        if not _GLOB_CHARS.search(pattern) and pattern not in workspaces and workspaces:
            where = f"{path}.workspace" + (f"[{i}]" if isinstance(m["workspace"], list) else "")
            check.fail(
                where,
                f"no workspace is named {pattern!r}",
                f"workspaces are: {', '.join(workspaces)}",
            )
    events: list[EventKind] = []
    for i, kind in enumerate(check.strings(m, "event", path, what="an event kind")):
        known = next((k for k in _EVENT_KINDS if k == kind), None)
        if known is None:
            where = f"{path}.event" + (f"[{i}]" if isinstance(m["event"], list) else "")
            check.fail(
                where, f"unknown event kind {kind!r}", f"use one of: {', '.join(_EVENT_KINDS)}"
            )
        else:
            events.append(known)
    attributes: dict[str, tuple[str, ...]] = {}
    if m.get("attributes") is not None:
        attrs = check.mapping(m["attributes"], f"{path}.attributes", keys=None)
        for key in attrs or {}:
            attributes[key] = check.strings(attrs or {}, key, f"{path}.attributes", what="a glob")
    return Match(
        condition=check.strings(m, "condition", path, what="a condition or glob"),
        status=check.strings(m, "status", path, what="a status or glob"),
        previous=check.strings(m, "previous", path, what="a condition or glob"),
        workspace=workspace,
        flow=check.strings(m, "flow", path, what="a flow name or glob"),
        training_project=check.strings(m, "training_project", path, what="a project or glob"),
        attributes=attributes,
        event=tuple(events),
    )


def _notify(
    m: dict[str, object], base: str, check: _Checker, channels: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
    path = f"{base}.notify"
    value = m.get("notify")
    if value is None or value == []:
        check.fail(path, "must name at least one channel")
        return ()
    names = check.strings(m, "notify", base, what="a channel name")
    known = ", ".join(channels)
    for i, name in enumerate(names):
        if name not in channels and channels:
            where = f"{path}[{i}]" if isinstance(value, list) else path
            check.fail(where, f"unknown channel {name!r}", f"channels are: {known}")
    # A channel named twice still gets the event once (rules.route dedupes too).
    return tuple(dict.fromkeys(names))


def _template(m: dict[str, object], key: str, base: str, check: _Checker) -> str | None:
    source = check.string(m, key, base, non_empty=False)
    if source is None:
        return None
    error = validate_template(source)
    if error is not None:
        check.fail(_join(base, key), f"invalid template: {error}")
        return None
    return source


def _templates(top: dict[str, object], check: _Checker) -> Templates:
    m = check.section(top, "templates", ("title", "body"))
    return Templates(
        title=_template(m, "title", "templates", check),
        body=_template(m, "body", "templates", check),
    )


def _delivery(top: dict[str, object], check: _Checker) -> DeliveryConfig:
    keys = ("max_age", "initial_backoff", "max_backoff", "timeout", "min_interval")
    m = check.section(top, "delivery", keys)
    d = DeliveryConfig()
    b = "delivery"
    initial = check.duration(m, "initial_backoff", b, d.initial_backoff, positive=False)
    maximum = check.duration(m, "max_backoff", b, d.max_backoff, positive=False)
    if maximum < initial:
        check.fail(
            "delivery.max_backoff",
            f"{format_duration(maximum)} is shorter than initial_backoff "
            f"{format_duration(initial)}",
        )
    return DeliveryConfig(
        max_age=check.duration(m, "max_age", b, d.max_age),
        initial_backoff=initial,
        max_backoff=maximum,
        timeout=check.duration(m, "timeout", b, d.timeout),
        min_interval=check.duration(m, "min_interval", b, d.min_interval, positive=False),
    )


def _alerts(
    top: dict[str, object], check: _Checker, channels: Mapping[str, tuple[str, ...]]
) -> AlertsConfig:
    m = check.section(top, "alerts", ("notify", "api_down_after", "channel_failing_after"))
    d = AlertsConfig()
    notify: tuple[str, ...] = ()
    if m.get("notify") is not None:
        notify = check.strings(m, "notify", "alerts", what="a channel name", allow_empty=True)
        value = m["notify"]
        for i, name in enumerate(notify):
            if name not in channels and channels:
                where = f"alerts.notify[{i}]" if isinstance(value, list) else "alerts.notify"
                check.fail(
                    where, f"unknown channel {name!r}", f"channels are: {', '.join(channels)}"
                )
        notify = tuple(dict.fromkeys(notify))
    return AlertsConfig(
        notify=notify,
        api_down_after=check.duration(m, "api_down_after", "alerts", d.api_down_after),
        channel_failing_after=check.duration(
            m, "channel_failing_after", "alerts", d.channel_failing_after
        ),
    )


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _http(top: dict[str, object], check: _Checker) -> HttpConfig | None:
    if top.get("http") is None:
        return None
    m = check.section(top, "http", ("listen",))
    listen = check.string(m, "listen", "http")
    if listen is None:
        return HttpConfig()
    parsed = _parse_listen(listen.strip())
    if parsed is None:
        check.fail(
            "http.listen",
            f"{listen!r} is not host:port",
            "write e.g. 127.0.0.1:9464 or [::1]:9464 (port 0..65535)",
        )
        return HttpConfig()
    host, port = parsed
    return HttpConfig(host=host, port=port)


def _parse_listen(text: str) -> tuple[str, int] | None:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            return None
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            return None
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if not _HOSTNAME.fullmatch(host) or host.replace(".", "").isdigit():
                return None
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65_535:
        return None
    return host, int(port_text)


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ----------------------------------------------------------------------------- helpers


def _too_big(size: int) -> str:
    return f"the file is {size} bytes; a configuration is at most {MAX_CONFIG_BYTES} bytes (1 MiB)"


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    if home:
        return Path(home)
    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def _resolve(name: str, base: Path, environ: Mapping[str, str]) -> Path:
    path = Path(name.strip())
    if path.parts and path.parts[0] == "~":
        path = _home(environ).joinpath(*path.parts[1:])
    return path if path.is_absolute() else base / path


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe_match(match: Match) -> str:
    parts: list[str] = []
    criteria: list[tuple[str, tuple[str, ...]]] = [
        ("event", match.event or ("transition", "new")),
        ("condition", match.condition),
        ("status", match.status),
        ("previous", match.previous),
        ("workspace", match.workspace),
        ("flow", match.flow),
        ("training_project", match.training_project),
    ]
    for name, values in criteria:
        if values:
            parts.append(f"{name}={'|'.join(values)}")
    for key, values in match.attributes.items():
        parts.append(f"attributes.{key}={'|'.join(values)}")
    return " ".join(parts)
