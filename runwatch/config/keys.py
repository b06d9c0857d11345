"""The vocabulary `settings` declares keys with: what a field's `Annotated` metadata may say.

Theory: a settings field is one key of the file. Its Python type says what the key holds
(`bool`, `int`, `float`, `str`, `Path`, `time`, `tzinfo`, a tuple of strings, a mapping, a
nested section, a list of sections); the markers here add what the type cannot say: that a
float is a duration, an int a size in bytes, the range allowed, that a string is a secret,
or a check of its own. A plain string in the metadata names one value in messages ("a
condition name"). `keys_of` turns a dataclass into its `Key`s, which `schema.Reader` reads
the file by and `file_keys` lists for the documentation test; nothing here knows YAML.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# What a secret becomes when it could not be read and was not needed (`need_secrets=False`):
# NUL bytes make it unusable as an HTTP header, a URL part or a password, so it can never
# be used to connect by accident.
SECRET_NOT_LOADED = "\x00secret not loaded\x00"


@dataclass(frozen=True, slots=True)
class Duration:
    """A float written as a duration ("30s", "1h30m" or seconds), at least `at_least`.

    `positive` refuses 0s as well; durations are never negative.
    """

    positive: bool = True
    at_least: float = 0.0


@dataclass(frozen=True, slots=True)
class Range:
    """An int within lo..hi, both included."""

    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class Above:
    """A float strictly above `bound`."""

    bound: float


@dataclass(frozen=True, slots=True)
class Size:
    """An int of bytes, written as a number or with a unit ("64MiB", "512KiB", "10MB")."""

    at_least: int = 0


@dataclass(frozen=True, slots=True)
class Check:
    """A check of the value after its type is read: None when fine, else the problem.

    The message may quote the value only where it cannot be a secret.
    """

    problem: Callable[[object], str | None]
    hint: str | None = None  # what to write instead, shown after the line number


@dataclass(frozen=True, slots=True)
class _Flag:
    name: str

    def __repr__(self) -> str:
        return self.name


SECRET = _Flag("SECRET")  # a string that is a credential: collected, masked, never echoed
DERIVED = _Flag("DERIVED")  # a field the loader fills in; not a key of the file
EMPTY_OK = _Flag("EMPTY_OK")  # a string that may be "", or a list that may be []
IN_CREDENTIALS = _Flag("IN_CREDENTIALS")  # a relative Path looked up in $CREDENTIALS_DIRECTORY


# ----------------------------------------------------------------------------- reading them


@dataclass(frozen=True, kw_only=True, slots=True)
class Key:
    """One field of a settings dataclass, as a key of the file."""

    name: str  # the Python field name
    key: str  # the key in the file: the name without a trailing "_"
    type: Any  # the type, Annotated and Optional unwrapped
    optional: bool  # `X | None`
    markers: tuple[object, ...]
    required: bool

    def noun(self, default: str) -> str:
        return next((m for m in self.markers if isinstance(m, str)), default)


Overlay = tuple[tuple[str, tuple[object, ...]], ...]  # field name -> extra markers


@functools.cache
def keys_of(cls: type, overlay: Overlay = ()) -> tuple[Key, ...]:
    """The file keys `cls` declares (DERIVED fields left out), in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    extra = dict(overlay)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        markers: tuple[object, ...] = ()
        if typing.get_origin(tp) is typing.Annotated:
            tp, *meta = typing.get_args(tp)
            markers = tuple(meta)
        markers += extra.get(f.name, ())
        if DERIVED in markers:
            continue
        args = typing.get_args(tp)
        optional = _is_union(tp) and type(None) in args
        if optional:
            (tp,) = (a for a in args if a is not type(None))
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append(
            Key(
                name=f.name,
                key=f.name.rstrip("_"),
                type=tp,
                optional=optional,
                markers=markers,
                required=no_default,
            )
        )
    return tuple(out)


def _is_union(tp: object) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def file_keys(cls: type, overlays: Mapping[type, Mapping[str, tuple[object, ...]]]) -> list[str]:
    """Every key path `cls` declares, lists as `[]` and mappings of sections as `.*`."""
    out: list[str] = []

    def walk(cls: type, base: str) -> None:
        for k in keys_of(cls, tuple(overlays.get(cls, {}).items())):
            path = f"{base}.{k.key}" if base else k.key
            out.append(path)
            tp = k.type
            args = typing.get_args(tp)
            if dataclasses.is_dataclass(tp):
                walk(typing.cast(type, tp), path)
            elif typing.get_origin(tp) is tuple and dataclasses.is_dataclass(args[0]):
                walk(typing.cast(type, args[0]), path + "[]")
            elif typing.get_origin(tp) in (Mapping, dict) and dataclasses.is_dataclass(args[1]):
                walk(typing.cast(type, args[1]), path + ".*")

    walk(cls, "")
    return out
