"""The configuration file as YAML: plain values, the line of each key, and ${VAR}s replaced.

Theory: the text is composed into YAML nodes (never constructed blindly: a tag other than the
plain ones is refused, not obeyed), walked once into plain values while a map from key path to
line is kept, and `${VAR}` references in string scalars are replaced, remembering which parts
came from the environment (they may be secrets, and are not "written in the file"). An
unset variable is recorded, not yet reported: the reader knows whether the value is a secret
that may be missing (`need_secrets=False`). Duplicate
keys, which PyYAML silently lets win, are refused, and so is a document whose aliases expand
it past `_MAX_NODES` values. Every problem goes into `Problems` with its key path and line;
none stops the others.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from runwatch.config.keys import SECRET_NOT_LOADED


class Problems:
    """Every problem found, each as "path: message (line N); hint", sorted by line at the end."""

    def __init__(self) -> None:
        self.items: list[tuple[float, int, str]] = []

    def add(
        self, path: str | None, message: str, *, line: int | None = None, hint: str | None = None
    ) -> None:
        text = f"{path}: {message}" if path else message
        if line is not None:
            text += f" (line {line})"
        if hint:
            text += f"; {hint}"
        self.items.append((math.inf if line is None else line, len(self.items), text))

    def texts(self, secrets: Sequence[str]) -> list[str]:
        masked = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        out = []
        for _, _, text in sorted(self.items):
            for secret in masked:
                text = text.replace(secret, "****")
            out.append(text)
        return out


# ----------------------------------------------------------------------------- YAML nodes

_MERGE_TAG = "tag:yaml.org,2002:merge"
_YAML = "tag:yaml.org,2002:"
_PLAIN_TAGS: dict[type[Node], frozenset[str]] = {
    MappingNode: frozenset({_YAML + "map"}),
    SequenceNode: frozenset({_YAML + "seq"}),
    # The scalars a configuration can hold; binary is not among them, and a date is text.
    ScalarNode: frozenset(_YAML + t for t in ("str", "int", "float", "bool", "null", "timestamp")),
}
_MAX_NODES = 200_000  # anchors and aliases can multiply a 1 MiB file into billions of nodes


class _Loader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys, which PyYAML silently lets win.

    The duplicates are recorded (by key node) rather than raised, so they are reported
    together with every other problem, each with its full key path.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: dict[int, int] = {}  # id(key node) -> line of the first occurrence

    def compose_mapping_node(self, anchor: dict[Any, Node]) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, object], int] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == _MERGE_TAG:
                continue
            ident = (key.tag, key.value)
            if ident in first:
                self.duplicates[id(key)] = first[ident]
            else:
                first[ident] = key.start_mark.line + 1
        return node


class _TooManyNodes(Exception):
    pass


@dataclass(kw_only=True)
class Document:
    """The YAML turned into plain values, plus what the checks need to know about them."""

    root: object
    lines: dict[str, int]  # key path -> line (1-based)
    substituted: set[str]  # paths of string scalars that contained ${...}
    masked: dict[str, str]  # for those paths: the value with environment parts masked
    env_values: dict[str, list[str]]  # for those paths: the values taken from the environment
    broken: set[str]  # paths already reported (a failed ${VAR}): no further complaints
    # Paths with an unset ${VAR}, each with its messages, not yet reported: the reader
    # reports them unless the value is a secret that is not needed (`need_secrets=False`).
    # The variable's place holds SECRET_NOT_LOADED.
    unset: dict[str, list[str]] = field(default_factory=dict)

    def as_written(self, path: str, value: str) -> str:
        """`value` (found at `path`) with every part that came from the environment masked."""
        return self.masked.get(path, value).strip()


def compose(text: str, problems: Problems, environ: Mapping[str, str]) -> Document | None:
    """The document in `text`; None when it cannot be read at all (`problems` says why)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        problems.add(None, _yaml_error_text(exc), line=_mark_line(exc))
        return None
    except yaml.YAMLError as exc:
        problems.add(None, _yaml_error_text(exc))
        return None
    finally:
        loader.dispose()
    doc = Document(root=None, lines={}, substituted=set(), masked={}, env_values={}, broken=set())
    if node is None:
        return doc
    budget = _MAX_NODES

    def walk(node: Node, path: str) -> object:
        nonlocal budget
        budget -= 1
        if budget < 0:
            raise _TooManyNodes
        if node.tag not in _PLAIN_TAGS[type(node)]:
            # Never construct what an explicit tag asks for (`!!python/object`, `!!set`...).
            line = node.start_mark.line + 1
            problems.add(path or None, f"unsupported YAML tag {node.tag!r}", line=line)
            doc.broken.add(path)
            return None
        if isinstance(node, MappingNode):
            try:
                loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
            except yaml.MarkedYAMLError as exc:
                problems.add(path, _yaml_error_text(exc), line=_mark_line(exc))
                return {}
            result: dict[str, object] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, ScalarNode):
                    problems.add(path or None, "a mapping key must be a plain name", line=line)
                    continue
                # Keys are names, kept as written: `on:` stays "on", not YAML 1.1's True.
                key = str(key_node.value)
                child = f"{path}.{key}" if path else key
                if id(key_node) in loader.duplicates:
                    # The first occurrence is the one checked; the repeat is only reported, as
                    # walking it too would mix the two under one path.
                    first = loader.duplicates[id(key_node)]
                    problems.add(child, f"duplicate key {key!r} (first on line {first})", line=line)
                    continue
                doc.lines[child] = line
                result[key] = walk(value_node, child)
            return result
        if isinstance(node, SequenceNode):
            items: list[object] = []
            for i, item in enumerate(node.value):
                child = f"{path}[{i}]"
                doc.lines[child] = item.start_mark.line + 1
                items.append(walk(item, child))
            return items
        assert isinstance(node, ScalarNode)
        if node.tag == _YAML + "timestamp":
            return node.value  # no key holds a date; `2024-06-01` in a glob or name is text
        if node.tag in (_YAML + "int", _YAML + "float") and ":" in node.value:
            # YAML 1.1 reads `22:00` as sexagesimal 1320; no key holds one, a time of day does.
            return node.value
        try:
            value = loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:  # e.g. `!!int abc`
            problems.add(path or None, _yaml_error_text(exc), line=_mark_line(exc))
            doc.broken.add(path)
            return None
        if isinstance(value, str) and "$" in value:
            return substitute(value, path)
        return value

    def substitute(value: str, path: str) -> str:
        sub = _substitute(value, environ)
        if sub.references:
            doc.substituted.add(path)
            doc.masked[path] = sub.masked
            doc.env_values[path] = sub.env_values
        for error in sub.errors:
            problems.add(path, error, line=doc.lines.get(path))
            doc.broken.add(path)
        if sub.unset:
            doc.unset[path] = sub.unset
            doc.broken.add(path)
        return sub.value

    try:
        doc.root = walk(node, "")
    except _TooManyNodes:
        problems.add(None, f"the document expands to more than {_MAX_NODES} values (aliases?)")
        return None
    return doc


def _yaml_error_text(exc: yaml.YAMLError) -> str:
    # str(exc) quotes the offending source line, which may hold a secret: build our own text.
    if isinstance(exc, yaml.MarkedYAMLError):
        parts = [p for p in (exc.context, exc.problem) if p]
        mark = exc.problem_mark or exc.context_mark
        where = f", column {mark.column + 1}" if mark is not None else ""
        return f"invalid YAML: {'; '.join(parts) or 'syntax error'}{where}"
    if isinstance(exc, yaml.reader.ReaderError):
        return (
            f"invalid YAML: unacceptable character #x{exc.character:04x} at position {exc.position}"
        )
    return f"invalid YAML: {type(exc).__name__}"


def _mark_line(exc: yaml.MarkedYAMLError) -> int | None:
    mark = exc.problem_mark or exc.context_mark
    return None if mark is None else mark.line + 1


# ----------------------------------------------------------------------------- ${VAR}

_REFERENCE = re.compile(r"\$\$|\$\{(?P<body>[^}]*)\}|\$\{")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


FROM_ENV = "\0"  # stands for a value taken from the environment in `_Substitution.masked`


@dataclass(frozen=True, kw_only=True)
class _Substitution:
    value: str
    masked: str  # `value` with each environment value replaced by FROM_ENV (defaults kept)
    env_values: list[str]
    references: bool
    errors: list[str]
    unset: list[str]  # the messages for unset variables (their place holds SECRET_NOT_LOADED)


def _substitute(text: str, environ: Mapping[str, str]) -> _Substitution:
    """Replace ${VAR} and ${VAR:-default} (default when unset or empty, as in sh); $$ is $."""
    out: list[str] = []
    masked: list[str] = []
    env_values: list[str] = []
    errors: list[str] = []
    unset: list[str] = []
    references = False
    pos = 0
    for m in _REFERENCE.finditer(text):
        out.append(text[pos : m.start()])
        masked.append(text[pos : m.start()])
        pos = m.end()
        if m.group(0) == "$$":
            out.append("$")
            masked.append("$")
            continue
        references = True
        body = m.group("body")
        if body is None:
            errors.append("unterminated '${' (write '$$' for a literal '$')")
            pos = len(text)
            break
        name, has_default, default = body.partition(":-")
        if not _VAR_NAME.fullmatch(name):
            errors.append(f"'${{{name}...}}' is not a variable name (write '$$' for a literal '$')")
            continue
        value = environ.get(name)
        if has_default and not value:
            out.append(default)
            masked.append(default)  # a default is written in the file itself
        elif value is None:
            unset.append(f"environment variable {name} is not set (or write ${{{name}:-default}})")
            out.append(SECRET_NOT_LOADED)
            masked.append(FROM_ENV)
        else:
            out.append(value)
            masked.append(FROM_ENV)
            env_values.append(value)
    out.append(text[pos:])
    masked.append(text[pos:])
    return _Substitution(
        value="".join(out),
        masked="".join(masked),
        env_values=env_values,
        references=references,
        errors=errors,
        unset=unset,
    )
