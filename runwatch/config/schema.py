"""Reading the plain document against the settings declarations, every problem named.

Theory: `Reader.fields(cls, value, path)` reads a mapping as the dataclass `cls` declares
it (see `keys` and `settings`): each key found is read by its field's type and markers,
unknown keys get a "did you mean", missing required keys are named, and what is valid comes
back as field values. A type with a hook (registered by `loading`, for what involves several
keys) is read by its hook, which calls `fields` for the generic part. Nothing raises: a
problem is recorded with its key path and the line of the nearest key written, the value is
left out, and reading goes on, so one run finds every problem. A path already reported
(an unset ${VAR}, a refused YAML tag) gets no second message.

Secrets: a `SECRET` string is collected for redaction, and remembered as "written inline"
when no part of it came from the environment. With `need_secrets=False` an unset ${VAR}
inside a secret-bearing value is excused (`excuse`), the value becoming `SECRET_NOT_LOADED`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time, tzinfo
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from runwatch.config.durations import format_duration, parse_duration
from runwatch.config.keys import (
    EMPTY_OK,
    IN_CREDENTIALS,
    SECRET,
    SECRET_NOT_LOADED,
    Above,
    Check,
    Duration,
    Key,
    Range,
    Size,
    keys_of,
)
from runwatch.config.values import format_size, parse_clock, parse_size
from runwatch.config.yaml_document import FROM_ENV, Document, Problems

INVALID: Any = object()  # what a read returns after reporting a problem
Hook = Callable[["Reader", object, str], Any]


def kind_of(value: object) -> str:
    """How a message names the type of a value it refuses."""
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


def _shown(value: object) -> str:
    """A refused scalar as written; anything else by its kind."""
    plain = isinstance(value, str | int | float) and not isinstance(value, bool)
    return repr(value) if plain else kind_of(value)


def join(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def _bare(noun: str) -> str:
    """ "a workspace" -> "workspace"."""
    for article in ("a ", "an "):
        if noun.startswith(article):
            return noun[len(article) :]
    return noun


@dataclass(kw_only=True)
class Found:
    """Secrets and warnings gathered while reading, for the final Config."""

    secrets: list[str] = field(default_factory=list)
    scrub: list[str] = field(default_factory=list)  # also masked in errors, not all secrets
    inline: list[str] = field(default_factory=list)  # paths holding a secret written in the file
    warnings: list[str] = field(default_factory=list)


class Reader:
    """Typed reads of the plain document, each reporting its problem with path and line."""

    def __init__(
        self,
        doc: Document,
        problems: Problems,
        *,
        resolve: Callable[[str, bool], Path | None],
        need_secrets: bool = True,
        overlays: Mapping[type, Mapping[str, tuple[object, ...]]] | None = None,
    ) -> None:
        self.doc = doc
        self.problems = problems
        self.found = Found()
        self.need_secrets = need_secrets
        self.hooks: dict[type, Hook] = {}
        self._resolve = resolve  # (name, in_credentials) -> absolute path, None if impossible
        self._overlays = overlays or {}
        self._excused: set[str] = set()

    # -- problems ---------------------------------------------------------------------------
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
        self.fail(path, f"expected {expected}, got {kind_of(value)}")

    def unknown_key(self, path: str, key: str, known: Sequence[str]) -> None:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys are: {', '.join(known)}"
        self.fail(path, "unknown key", hint)

    def excuse(self, path: str) -> bool:
        """True when `path` holds an unset ${VAR} that is allowed (secrets not needed)."""
        if path in self.doc.unset and not self.need_secrets:
            self._excused.add(path)
            return True
        return False

    def finish(self) -> None:
        """Report the unset ${VAR}s that were not excused."""
        for path, messages in self.doc.unset.items():
            if path not in self._excused:
                for message in messages:
                    self.problems.add(path, message, line=self.doc.lines.get(path))

    # -- sections ---------------------------------------------------------------------------
    def keys(self, cls: type) -> tuple[Key, ...]:
        return keys_of(cls, tuple(self._overlays.get(cls, {}).items()))

    def fields(
        self,
        cls: type,
        value: object,
        path: str,
        *,
        skip: Sequence[str] = (),
        not_required: Sequence[str] = (),
    ) -> dict[str, Any] | None:
        """The valid values of the keys `cls` declares in mapping `value`; None if no mapping.

        `skip` fields are left to the caller (their keys are still known); `not_required`
        fields are not reported when absent (the caller decides).
        """
        if not isinstance(value, dict):
            self.wrong_type(path or "(top level)", "a mapping", value)
            return None
        keys = self.keys(cls)
        known = [k.key for k in keys]
        for key in value:
            if key not in known:
                self.unknown_key(join(path, key), key, known)
        out: dict[str, Any] = {}
        for k in keys:
            where = join(path, k.key)
            if k.name in skip:
                continue
            if k.key not in value:
                if k.required and k.name not in not_required:
                    self.fail(where, "required")
                continue
            raw = value[k.key]
            if raw is None and (not k.required or k.name in not_required):
                continue  # null keeps the default (or is the caller's to judge)
            if raw == "" and where in self.doc.substituted and k.type is not str:
                continue  # `${RPS:-}`: the variable chose the default
            result = self.value(k, raw, where)
            if result is not INVALID:
                out[k.name] = result
        return out

    def construct(self, cls: type, values: dict[str, Any] | None) -> Any:
        """`cls(**values)`, or INVALID when a required field is missing (already reported)."""
        if values is None or any(k.required and k.name not in values for k in self.keys(cls)):
            return INVALID
        return cls(**values)

    def section(self, cls: type, value: object, path: str) -> Any:
        hook = self.hooks.get(cls)
        if hook is not None:
            return hook(self, value, path)
        return self.construct(cls, self.fields(cls, value, path))

    # -- values -----------------------------------------------------------------------------
    def value(self, k: Key, raw: object, path: str) -> Any:
        tp, markers = k.type, k.markers
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            result = self.section(typing.cast(type, tp), raw, path)
        elif origin is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            result = self.entries(typing.get_args(tp)[0], raw, path, k)
        elif origin is tuple:
            result = self.strings(raw, path, k, typing.get_args(tp)[0])
        elif origin in (Mapping, dict):
            result = self.mapping(raw, path, k, typing.get_args(tp)[1])
        elif tp is bool:
            result = self.flag(raw, path)
        elif tp is int:
            size = next((m for m in markers if isinstance(m, Size)), None)
            result = (
                self.integer(raw, path, markers) if size is None else self.size(raw, path, size)
            )
        elif tp is float:
            duration = next((m for m in markers if isinstance(m, Duration)), None)
            if duration is None:
                result = self.number(raw, path, markers)
            else:
                result = self.duration(raw, path, duration)
        elif tp is str:
            result = self.string(raw, path, markers)
        elif tp is Path:
            result = self.path(raw, path, markers)
        elif tp is time:
            result = self.clock(raw, path)
        elif tp is tzinfo:
            result = self.zone(raw, path)
        else:
            raise TypeError(f"settings field {path} has a type the reader does not know: {tp}")
        if result is not INVALID and path not in self._excused:
            for check in (m for m in markers if isinstance(m, Check)):
                problem = check.problem(result)
                if problem is not None:
                    self.fail(path, problem, check.hint)
                    return INVALID
        return result

    def entries(self, cls: type, raw: object, path: str, k: Key) -> Any:
        """A list of sections, each named uniquely when the section has a `name`."""
        noun = _bare(k.noun("an entry"))
        if not isinstance(raw, list):
            self.wrong_type(path, "a list", raw)
            return INVALID
        if not raw:
            self.fail(path, f"must list at least one {noun}")
            return INVALID
        first_seen: dict[str, str] = {}
        out = []
        for i, item in enumerate(raw):
            where = f"{path}[{i}]"
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str) and name in first_seen:
                self.fail(
                    f"{where}.name", f"duplicate {noun} name {name!r}", f"also {first_seen[name]}"
                )
            elif isinstance(name, str):
                first_seen[name] = f"{where}.name"
            entry = self.section(cls, item, where)
            if entry is not INVALID:
                out.append(entry)
        return tuple(out)

    def mapping(self, raw: object, path: str, k: Key, item_type: object) -> Any:
        """A mapping of any names to values of `item_type`."""
        if not isinstance(raw, dict):
            self.wrong_type(path, "a mapping", raw)
            return INVALID
        if not raw and k.required:
            self.fail(path, f"must name at least one {_bare(k.noun('entry'))}")
            return INVALID
        item = dataclasses.replace(k, type=item_type, optional=False, required=True)
        out = {}
        for name, value in raw.items():
            result = self.value(item, value, join(path, name))
            if result is not INVALID:
                out[name] = result
        return out

    def strings(self, raw: object, path: str, k: Key, item_type: object) -> Any:
        """A string or a list of strings (or of a Literal's values).

        An empty list is refused unless EMPTY_OK: in a match criterion it would read as
        "match anything", the opposite of what someone writing `[]` probably meant.
        """
        what = k.noun("a string")
        if isinstance(raw, str):
            items: list[tuple[str, object]] = [(path, raw)]
        elif isinstance(raw, list):
            if not raw and EMPTY_OK not in k.markers:
                self.fail(path, "must not be an empty list (leave the key out instead)")
                return INVALID
            items = [(f"{path}[{i}]", item) for i, item in enumerate(raw)]
        else:
            self.wrong_type(path, f"{what} or a list of them", raw)
            return INVALID
        allowed = typing.get_args(item_type) if typing.get_origin(item_type) is Literal else None
        out: list[str] = []
        for where, item in items:
            if not isinstance(item, str):
                self.wrong_type(where, what, item)
            elif allowed is not None and item not in allowed:
                hint = f"use one of: {', '.join(allowed)}"
                self.fail(where, f"unknown {_bare(what)} {item!r}", hint)
            else:
                out.append(item)
        return tuple(out)

    def _number_text(self, raw: object, path: str) -> object:
        # `${PAGE_SIZE:-50}` is a string in YAML; read it as the number it stands for.
        if isinstance(raw, str) and path in self.doc.substituted:
            for parse in (int, float):
                try:
                    return parse(raw.strip())
                except ValueError:
                    pass
        return raw

    def integer(self, raw: object, path: str, markers: tuple[object, ...]) -> Any:
        value = self._number_text(raw, path)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(raw, str) and path in self.doc.substituted:
                self.fail(path, "expected an integer (after ${...} substitution)")
            else:
                self.wrong_type(path, "an integer", value)
            return INVALID
        for bounds in (m for m in markers if isinstance(m, Range)):
            if not bounds.lo <= value <= bounds.hi:
                self.fail(path, f"{value} is out of range {bounds.lo}..{bounds.hi}")
                return INVALID
        return value

    def number(self, raw: object, path: str, markers: tuple[object, ...]) -> Any:
        value = self._number_text(raw, path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            if isinstance(raw, str) and path in self.doc.substituted:
                self.fail(path, "expected a number (after ${...} substitution)")
            else:
                self.wrong_type(path, "a number", value)
            return INVALID
        for above in (m for m in markers if isinstance(m, Above)):
            if not math.isfinite(value) or value <= above.bound:
                self.fail(path, f"must be a number above {above.bound:g}")
                return INVALID
        return float(value)

    def flag(self, raw: object, path: str) -> Any:
        if isinstance(raw, str) and path in self.doc.substituted:
            word = raw.strip().lower()
            if word in ("true", "yes", "on", "1"):
                return True
            if word in ("false", "no", "off", "0"):
                return False
        if not isinstance(raw, bool):
            self.wrong_type(path, "true or false", raw)
            return INVALID
        return raw

    def duration(self, raw: object, path: str, spec: Duration) -> Any:
        try:
            seconds = parse_duration(raw)
        except ValueError:
            shown = _shown(raw)
            self.fail(
                path,
                f"{shown} is not a duration",
                "write e.g. 30s, 15m, 2h, 1d, 1h30m, 500ms (or a number of seconds)",
            )
            return INVALID
        if spec.positive and seconds <= 0:
            self.fail(path, "must be longer than 0s")
            return INVALID
        if seconds < spec.at_least:
            self.fail(path, f"must be at least {format_duration(spec.at_least)}")
            return INVALID
        return seconds

    def size(self, raw: object, path: str, spec: Size) -> Any:
        try:
            size = parse_size(raw)
        except ValueError:
            shown = _shown(raw)
            hint = "write e.g. 64MiB, 512KiB, 1GiB, 10MB (or a number of bytes)"
            self.fail(path, f"{shown} is not a size", hint)
            return INVALID
        if size < spec.at_least:
            self.fail(
                path, f"{format_size(size)} is too small: at least {format_size(spec.at_least)}"
            )
            return INVALID
        return size

    def string(self, raw: object, path: str, markers: tuple[object, ...]) -> Any:
        secret = SECRET in markers
        if secret and self.excuse(path):
            return SECRET_NOT_LOADED
        if raw is None or (isinstance(raw, str) and not raw.strip() and EMPTY_OK not in markers):
            self.fail(path, "must not be empty")
            return INVALID
        if not isinstance(raw, str):
            self.wrong_type(path, "a string", raw)
            return INVALID
        if secret:
            raw = raw.strip()
            self.found.scrub.extend(self.doc.env_values.get(path, []))
            self.found.secrets.append(raw)
            if FROM_ENV not in self.doc.as_written(path, raw):
                self.found.inline.append(path)
        return raw

    def path(self, raw: object, path: str, markers: tuple[object, ...]) -> Any:
        name = self.string(raw, path, ())
        if name is INVALID:
            return INVALID
        resolved = self._resolve(name, IN_CREDENTIALS in markers)
        if resolved is None:
            self.fail(
                path, "'~' needs a home directory, and this user has none; write the full path"
            )
            return INVALID
        return resolved

    def clock(self, raw: object, path: str) -> Any:
        try:
            return parse_clock(raw)
        except ValueError:
            shown = _shown(raw)
            self.fail(path, f"{shown} is not a time of day", "write HH:MM, 24-hour, e.g. 22:00")
            return INVALID

    def zone(self, raw: object, path: str) -> Any:
        name = self.string(raw, path, ())
        if name is INVALID:
            return INVALID
        try:
            return ZoneInfo(name.strip())
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(
                path, f"unknown time zone {name!r}", "use an IANA name, e.g. Europe/Berlin or UTC"
            )
            return INVALID
