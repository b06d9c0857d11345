"""The vocabulary `settings` declares keys with: what a field's `Annotated` metadata may say.

Theory: a settings field is one key of the file. Its Python type says what the key holds
(`bool`, `int`, `float`, `str`, `Path`, `time`, `ZoneInfo`, a tuple of strings, a mapping, a
nested section, a list of sections); the markers here add what the type cannot say: that a
float is a duration, an int a size in bytes, the range allowed, that a string is a secret,
or a check of its own. A plain string in the metadata names one value in messages ("a
condition name"). `schema.Reader` is the one reader of these declarations; nothing here
knows about YAML.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
