"""Loading the configuration: YAML text to a `settings.Config`, every problem named at once.

Theory: `yaml_document` turns the file into plain values, with the line of every key path
and `${VAR}` references replaced; `schema.Reader` reads those values against the
declarations in `settings` (types, ranges, durations, sizes, strings or lists, nested
sections, unknown keys with "did you mean"); the hooks here add what involves more than one
key: exactly one of secret_key and secret_key_file, state.path or state.url, a channel's
one kind and its digest, rules against channels and workspaces, time-in-state rules against
event kinds, Apprise URLs (through `apprise_urls`). Every problem is collected, none stops
the others, and the result is one `ConfigError` naming each key path and line, or a
`Config` that the rest of runwatch can trust without checking again.

Why a walker of our own (`schema.Reader` over the `settings` dataclasses) and not cattrs:
every message needs its key path and line, a `${VAR}` that stands for a number must read
as one, and a path already reported must get no second message. cattrs' structure hooks
never see the path, so each of those would be a post-pass over its exception groups
re-translating "invalid value for type int" into our words, plus a hook per constrained
type: more code than the reader itself (~450 lines), and cattrs+attrs cost ~1.2 MiB RSS
and ~20 ms more at import. Measured with `/usr/bin/time -f %M python3 -c "import
runwatch.config.loading"`: 34.7 MiB with this reader, as before the split (34.6 MiB);
35.9 MiB with cattrs imported too. pydantic is out: importing its BaseModel adds
~5.6 MiB here before a single model is built, against a 45 MiB budget at READY.

Secrets (secret keys, webhook secrets, Slack tokens, passwords in Apprise and PostgreSQL
URLs) never appear in an error message: every message is scrubbed of every secret found
before it is raised. With `need_secrets=False` (operator commands that cannot read the
daemon's credentials) an unset `${VAR}` in a secret-bearing value and an unreadable
secret_key_file are not errors; the secret becomes `SECRET_NOT_LOADED`.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import stat
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runwatch.config import channels
from runwatch.config.durations import format_duration
from runwatch.config.keys import SECRET_NOT_LOADED
from runwatch.config.schema import INVALID, Reader
from runwatch.config.settings import (
    CORE_FIELDS,
    ChannelConfig,
    Config,
    QuietHours,
    StateConfig,
    WorkspaceConfig,
)
from runwatch.config.values import is_loopback, name_problem
from runwatch.config.yaml_document import FROM_ENV, Problems, compose
from runwatch.core.rules import Match, Rule
from runwatch.errors import ConfigError

MAX_CONFIG_BYTES = 1024 * 1024
MAX_SECRET_FILE_BYTES = 64 * 1024


def load_config(
    path: Path, *, environ: Mapping[str, str] | None = None, need_secrets: bool = True
) -> Config:
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
        need_secrets=need_secrets,
    )


def parse_config(
    text: str,
    *,
    source: str = "<string>",
    environ: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
    need_secrets: bool = True,
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
        need_secrets=need_secrets,
    )


def default_state_path(environ: Mapping[str, str]) -> Path:
    """Where the state database lives when `state.path` is not given.

    Under systemd `StateDirectory=` sets $STATE_DIRECTORY (a colon-separated list when the
    unit names several; the first is ours). Otherwise the XDG base-directory spec applies;
    a relative $XDG_STATE_HOME is invalid by that spec and ignored. Without either, the home
    directory; a user without one (systemd DynamicUser= with no passwd entry) gets a
    ConfigError rather than a file under `/`.
    """
    state_dirs = environ.get("STATE_DIRECTORY", "")
    first = state_dirs.split(":")[0]
    if first:
        return Path(first) / "state.db"
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "runwatch" / "state.db"
    home = _home(environ)
    if home is None or home == Path("/"):
        raise ConfigError(
            [
                "state.path: not given, and there is no default: $STATE_DIRECTORY, "
                f"$XDG_STATE_HOME and $HOME are unset and uid {os.getuid()} has no home "
                "directory (systemd DynamicUser=?); set state.path, or StateDirectory= "
                "in the unit"
            ]
        )
    return home / ".local" / "state" / "runwatch" / "state.db"


# ----------------------------------------------------------------------------- the file


def _parse(
    text: str,
    *,
    source: str,
    environ: Mapping[str, str],
    base_dir: Path,
    file: Path | None,
    mode: int | None,
    need_secrets: bool,
) -> Config:
    problems = Problems()
    doc = compose(text, problems, environ)
    if doc is None:
        raise ConfigError(problems.texts(()), source=source)

    def resolve(name: str, in_credentials: bool) -> Path | None:
        # systemd LoadCredential= puts secrets in $CREDENTIALS_DIRECTORY, named without a path.
        creds = environ.get("CREDENTIALS_DIRECTORY")
        return _resolve(name, Path(creds) if in_credentials and creds else base_dir, environ)

    reader = Reader(doc, problems, resolve=resolve, need_secrets=need_secrets, overlays=CORE_FIELDS)
    config = _Sections(reader, environ).config(doc.root, file)
    reader.finish()
    found = reader.found
    if config is INVALID or problems.items:
        raise ConfigError(problems.texts([*found.secrets, *found.scrub]), source=source)
    warnings = list(found.warnings)
    if found.inline and mode is not None and mode & 0o077:
        where = ", ".join(dict.fromkeys(found.inline))
        warnings.insert(
            0,
            f"{source} holds secrets written inline ({where}) and is readable by group or "
            f"others (mode {mode:04o}): run `chmod 600 {source}`, or move them to "
            "secret_key_file / ${VAR} references",
        )
    unique = sorted(
        dict.fromkeys(s for s in found.secrets if s and SECRET_NOT_LOADED not in s),
        key=len,
        reverse=True,
    )
    result: Config = dataclasses.replace(config, warnings=tuple(warnings), secrets=tuple(unique))
    return result


class _Sections:
    """The checks that involve several keys, as hooks of the reader."""

    def __init__(self, reader: Reader, environ: Mapping[str, str]) -> None:
        self.r = reader
        self.environ = environ
        self.workspace_names: list[str] = []
        self.channel_names: list[str] = []
        reader.hooks.update(
            {
                WorkspaceConfig: self.workspace,
                StateConfig: self.state,
                ChannelConfig: channels.channel,
                QuietHours: channels.quiet_hours,
                Rule: self.rule,
            }
        )

    def config(self, root: object, file: Path | None) -> Any:
        r = self.r
        if root is None:
            r.problems.add(None, "the configuration is empty")
            return INVALID
        if isinstance(root, dict):
            # References are checked against every name written, valid or not, so that one
            # broken workspace or channel does not also flag each rule that names it.
            entries = root.get("workspaces")
            self.workspace_names = list(
                dict.fromkeys(
                    item["name"]
                    for item in (entries if isinstance(entries, list) else [])
                    if isinstance(item, dict) and isinstance(item.get("name"), str)
                )
            )
            channels = root.get("channels")
            self.channel_names = list(channels) if isinstance(channels, dict) else []
            for name in self.channel_names:
                if name_problem(name) is not None:
                    r.fail(
                        f"channels.{name}",
                        f"channel name {name!r} may only use letters, digits, '_', '.', '-'",
                    )
        values = r.fields(Config, root, "")
        if values is None:
            return INVALID
        assert isinstance(root, dict)
        if "state" not in values and root.get("state") is None:
            state = self.state(r, {}, "state")  # the default path
            if state is not INVALID:
                values["state"] = state
        state = values.get("state")
        if isinstance(state, StateConfig) and state.url is None and root.get("ha") is not None:
            r.found.warnings.append(
                "ha is set but state.url is not: several instances need a PostgreSQL state; "
                "with a SQLite file ha is ignored"
            )
        if "alerts" in values:
            alerts = values["alerts"]
            notify = self._channel_refs(
                alerts.notify, root["alerts"].get("notify"), "alerts.notify"
            )
            values["alerts"] = dataclasses.replace(alerts, notify=notify)
        delivery = values.get("delivery")
        if delivery is not None and delivery.max_backoff < delivery.initial_backoff:
            r.fail(
                "delivery.max_backoff",
                f"{format_duration(delivery.max_backoff)} is shorter than initial_backoff "
                f"{format_duration(delivery.initial_backoff)}",
            )
        tls = values.get("tls")
        if tls is not None and not tls.verify:
            r.found.warnings.append(
                "tls.verify is false: the Vi API's certificate is not checked, so anyone on "
                "the network path can read the secret key; use tls.ca_bundle for a private CA "
                "instead"
            )
        return r.construct(Config, {**values, "source": file})

    # -- workspaces -------------------------------------------------------------------------
    def workspace(self, r: Reader, value: object, path: str) -> Any:
        has_key = isinstance(value, dict) and "secret_key" in value
        has_file = isinstance(value, dict) and "secret_key_file" in value
        values = r.fields(
            WorkspaceConfig, value, path, not_required=() if has_key else ("secret_key",)
        )
        if values is None:
            return INVALID
        if has_key == has_file:
            r.fail(
                path,
                "give exactly one of secret_key and secret_key_file"
                + (" (both are set)" if has_key else ""),
            )
            return INVALID
        if "secret_key_file" in values:
            secret = self._secret_file(values["secret_key_file"], f"{path}.secret_key_file")
            if secret is not INVALID:
                values["secret_key"] = secret
        if "endpoint" in values:
            endpoint = values["endpoint"] = values["endpoint"].strip().rstrip("/")
            parts = urllib.parse.urlsplit(endpoint)
            if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
                r.found.warnings.append(
                    f"{path}.endpoint: {endpoint} is plain HTTP to another machine; the secret "
                    "key would cross the network unencrypted"
                )
        return r.construct(WorkspaceConfig, values)

    def _secret_file(self, target: Path, path: str) -> Any:
        r = self.r
        try:
            with target.open("rb") as f:
                data = f.read(MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            if not r.need_secrets:
                return SECRET_NOT_LOADED
            reason = exc.strerror or type(exc).__name__
            r.fail(path, f"cannot read {str(target)!r}: {reason}")
            return INVALID
        if len(data) > MAX_SECRET_FILE_BYTES:
            r.fail(path, f"{str(target)!r} is larger than {MAX_SECRET_FILE_BYTES} bytes")
            return INVALID
        secret = data.decode("utf-8", "replace").strip()
        if not secret:
            r.fail(path, f"{str(target)!r} is empty")
            return INVALID
        r.found.secrets.append(secret)
        return secret

    # -- state ------------------------------------------------------------------------------
    def state(self, r: Reader, value: object, path: str) -> Any:
        values = r.fields(StateConfig, value, path)
        if values is None:
            return INVALID
        assert isinstance(value, dict)
        if value.get("path") is not None and value.get("url") is not None:
            r.fail(path, "give at most one of state.path and state.url")
            return INVALID
        if value.get("url") is not None:
            if "url" not in values:
                return INVALID
            if not r.excuse(f"{path}.url"):
                self._postgres_secrets(values["url"], f"{path}.url")
            return StateConfig(url=values["url"].strip())
        if "path" not in values:
            if value.get("path") is not None:
                return INVALID
            try:
                values["path"] = default_state_path(self.environ)
            except ConfigError as exc:
                problem = exc.problems[0].partition(": ")[2]
                r.fail(f"{path}.path", problem)
                return INVALID
        return StateConfig(path=values["path"])

    def _postgres_secrets(self, url: str, path: str) -> None:
        """The password of a libpq URL (userinfo or ?password=) is a secret; inline, a warning."""
        r = self.r
        r.found.scrub.extend(r.doc.env_values.get(path, []))
        written = r.doc.as_written(path, url)
        for text, found in ((url, r.found.secrets), (written, None)):
            parts = urllib.parse.urlsplit(text.strip())
            query = dict(urllib.parse.parse_qsl(parts.query))
            passwords = [p for p in (parts.password, query.get("password")) if p]
            if found is not None:
                found.extend(p for pw in passwords for p in (pw, urllib.parse.unquote(pw)))
            elif any(FROM_ENV not in pw for pw in passwords):
                r.found.inline.append(path)

    # -- channels ---------------------------------------------------------------------------
    def _channel_refs(self, names: tuple[str, ...], raw: object, path: str) -> tuple[str, ...]:
        """`names` (written at `path`) each checked to be a channel; each kept once."""
        known = ", ".join(self.channel_names)
        for i, name in enumerate(names):
            if name not in self.channel_names and self.channel_names:
                where = f"{path}[{i}]" if isinstance(raw, list) else path
                self.r.fail(where, f"unknown channel {name!r}", f"channels are: {known}")
        # A channel named twice still gets the event once (rules.route dedupes too).
        return tuple(dict.fromkeys(names))

    # -- rules ------------------------------------------------------------------------------
    def rule(self, r: Reader, value: object, path: str) -> Any:
        values = r.fields(Rule, value, path, not_required=("notify", "match"))
        if values is None:
            return INVALID
        assert isinstance(value, dict)
        raw_notify = value.get("notify")
        if "notify" not in value:
            r.fail(f"{path}.notify", "required")
        elif raw_notify is None or raw_notify == []:
            r.fail(f"{path}.notify", "must name at least one channel")
            values.pop("notify", None)
        elif "notify" in values:
            values["notify"] = self._channel_refs(values["notify"], raw_notify, f"{path}.notify")
        raw_match = value.get("match")
        if raw_match is None:
            values["match"] = Match()  # no criteria: every transition and new run
        elif "match" not in values:
            return INVALID
        if isinstance(raw_match, dict):
            self._match(values["match"], raw_match, f"{path}.match")
        if values.get("repeat") is not None and not values["match"].timed:
            r.fail(
                f"{path}.repeat",
                "repeat needs match.for or match.stalled_for: it repeats a time-in-state reminder",
            )
        return r.construct(Rule, values)

    def _match(self, match: Match, raw: dict[str, object], path: str) -> None:
        r = self.r

        def written(key: str) -> list[tuple[str, str]]:
            value = raw.get(key)
            if isinstance(value, str):
                return [(f"{path}.{key}", value)]
            items = value if isinstance(value, list) else []
            return [(f"{path}.{key}[{i}]", v) for i, v in enumerate(items) if isinstance(v, str)]

        for where, pattern in written("workspace"):
            # A plain name that names no workspace is a typo that would silence the rule.
            plain = not any(c in pattern for c in "*?[")
            if plain and pattern not in self.workspace_names and self.workspace_names:
                names = ", ".join(self.workspace_names)
                r.fail(where, f"no workspace is named {pattern!r}", f"workspaces are: {names}")
        if match.for_ is not None and match.stalled_for is not None:
            r.fail(path, "give at most one of for and stalled_for")
        timer = "for" if match.for_ is not None else "stalled_for"
        for where, kind in written("event"):
            if match.timed and kind != "overdue":
                r.fail(
                    where,
                    f"a rule with match.{timer} matches only overdue events, not {kind!r}",
                    "leave event out, or write event: overdue",
                )
            elif not match.timed and kind == "overdue":
                r.fail(
                    where,
                    "an overdue event comes from a time-in-state rule",
                    "add match.for (time in the condition) or match.stalled_for (time "
                    "without any change), e.g. for: 2h",
                )


# ----------------------------------------------------------------------------- helpers


def _too_big(size: int) -> str:
    return f"the file is {size} bytes; a configuration is at most {MAX_CONFIG_BYTES} bytes (1 MiB)"


def _home(environ: Mapping[str, str]) -> Path | None:
    """$HOME, else the passwd entry's; None for a user without one (systemd DynamicUser=)."""
    home = environ.get("HOME")
    if home:
        return Path(home)
    try:
        entry = pwd.getpwuid(os.getuid())
    except KeyError:  # "getpwuid(): uid not found"
        return None
    return Path(entry.pw_dir) if entry.pw_dir else None


def _resolve(name: str, base: Path, environ: Mapping[str, str]) -> Path | None:
    path = Path(name.strip())
    if path.parts and path.parts[0] == "~":
        home = _home(environ)
        if home is None:
            return None
        path = home.joinpath(*path.parts[1:])
    return path if path.is_absolute() else base / path
