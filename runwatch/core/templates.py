"""Templates: a strict Jinja2 sandbox, one per flavour, whose every output is escaped.

Templates come from the configuration, so they are treated as untrusted: they run in a
sandbox stricter than Jinja2's own (see `_TemplateSandbox`) over a context of plain values
(see `context`), so a template can neither call code nor walk from a value to a module,
the environment or a secret, nor build a string big enough to hurt.

The values are untrusted too (they come from the Vi API), so each environment escapes for
its flavour: Jinja's `finalize` hook passes every `{{ ... }}` output through
`escaping.escape`, which leaves `Trusted` markup alone and escapes everything else. So a
template's literal text is markup, `{{ x|strong }}` and `{{ url|link("text") }}` are markup
(they escape their own inputs), and every other value, a string literal in an expression
included (as with Jinja's autoescape), is text. None renders as nothing. Filter blocks,
whose output skips `finalize`, are refused (see `_TemplateSandbox._parse`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, LoopContext, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runwatch.core import escaping
from runwatch.core.context import template_context
from runwatch.core.escaping import FLAVOURS, Flavour
from runwatch.core.samples import sample_events

Field = Literal["title", "body"]

# The loop counters are plain numbers and booleans; every other attribute stays refused.
_LOOP_ATTRIBUTES = frozenset(
    {"index", "index0", "revindex", "revindex0", "first", "last", "length", "depth", "depth0"}
)

MAX_RENDERED_CHARS = 20_000  # far above any real message, far below harm
_MAX_FILTER_WIDTH = 1_000
_SIZED_FILTERS = frozenset({"center", "indent", "wordwrap", "format", "truncate", "batch", "slice"})
# `safe` would say "this value is markup"; it knows HTML only, and here it would do nothing
# (its result is escaped like any value), so it is refused rather than silently ignored.
_REMOVED_FILTERS = ("safe",)
_CAPTURE = "captured output"  # not a name a template can write


def _small_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and abs(value) <= 1_000


class _TemplateSandbox(ImmutableSandboxedEnvironment):
    """Templates may read context values, index dicts, and use filters, tests, `if`, `for`.

    Jinja2's sandbox blocks underscore attributes and mutation but still lets a template call
    methods and reach objects' attributes, which is where sandbox escapes have come from.
    Here every call is refused and so is every attribute, save a loop's counters. Keys of
    the context's dicts (`attributes.team`, `attributes["team"]`) are looked up as items,
    which never asks `is_safe_attribute`.
    """

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return isinstance(obj, LoopContext) and attr in _LOOP_ATTRIBUTES

    def is_safe_callable(self, obj: Any) -> bool:
        return False

    def wrap_str_format(self, value: Any) -> None:
        return None  # no sandboxed `str.format` either: `.format` is an attribute, refused

    # Bounds on what one template may build: a message is a few hundred characters, and a
    # template like `{{ 'x' * 10**9 }}` must fail rather than take the daemon's memory.
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and not (_small_number(left) and _small_number(right)):
            raise SecurityError("'**' is limited to small numbers in templates")
        if operator == "*":
            sizes = [len(v) for v in (left, right) if isinstance(v, (str, list, tuple))]
            counts = [v for v in (left, right) if isinstance(v, int)]
            if sizes and counts and sizes[0] * max(counts[0], 0) > MAX_RENDERED_CHARS:
                raise SecurityError(
                    f"a template may not build more than {MAX_RENDERED_CHARS} characters"
                )
        return super().call_binop(context, operator, left, right)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """The parsed template, with the two blocks that would bypass `finalize` dealt with.

        A `{% filter %}` block writes its filter's result straight out, unescaped, after its
        content was escaped: `replace("\\", "")` or `wordwrap` would undo the escaping. It
        is refused, as is `{% set x | f %}...{% endset %}`; a filter applies to a value,
        `{{ reason|upper }}`. A plain `{% set x %}...{% endset %}` captures output that is
        already escaped, so the capture is marked Trusted (through a filter no template can
        name) rather than escaped a second time when `{{ x }}` writes it.
        """
        tree = super()._parse(source, name, filename)
        filtered: list[nodes.Node] = [*tree.find_all(nodes.FilterBlock)]
        filtered += [b for b in tree.find_all(nodes.AssignBlock) if b.filter is not None]
        if filtered:
            raise TemplateSyntaxError(
                "filter blocks are not allowed; apply the filter to a value instead, "
                "e.g. {{ reason|upper }}",
                min(block.lineno for block in filtered),
                name,
                filename,
            )
        for block in tree.find_all(nodes.AssignBlock):
            block.filter = nodes.Filter(None, _CAPTURE, [], [], None, None, lineno=block.lineno)
        return tree

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(__obj, Undefined):
            # `run_id.upper()`: say that the attribute was refused, or that the name is
            # unknown, rather than the puzzling "Undefined is not safely callable".
            str(__obj)
        return super().call(__context, __obj, *args, **kwargs)


def _bounded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that refuses huge widths and huge results (`'%*s'|format(10**9, x)`)."""
    sized = name in _SIZED_FILTERS

    @functools.wraps(fn)  # keeps jinja's pass_context marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        if sized:
            numbers = [a for a in (*args, *kwargs.values()) if type(a) is int]
            if any(abs(n) > _MAX_FILTER_WIDTH for n in numbers):
                raise SecurityError(
                    f"filter {name!r} is limited to widths up to {_MAX_FILTER_WIDTH}"
                )
        result = fn(*args, **kwargs)
        if isinstance(result, str) and len(result) > MAX_RENDERED_CHARS:
            raise SecurityError(
                f"a template may not build more than {MAX_RENDERED_CHARS} characters"
            )
        return result

    return bounded


@functools.cache
def _environment(flavour: Flavour, field: Field) -> _TemplateSandbox:
    # A title is one line after a heading marker or in a plain field: no block can start.
    line_start = field == "body"

    def finalize(value: object) -> str:
        return escaping.escape(value, flavour, line_start=line_start)

    def strong(value: object) -> escaping.Trusted:
        return escaping.strong(value, flavour)

    def link(url: object, text: object = None) -> escaping.Trusted:
        return escaping.link(url, text, flavour)

    env = _TemplateSandbox(
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=finalize,
    )
    # range, dict, lipsum, cycler, joiner, namespace: callables, and handles to Python.
    env.globals.clear()
    for name in _REMOVED_FILTERS:
        env.filters.pop(name, None)
    env.filters["strong"] = strong
    env.filters["link"] = link
    env.filters[_CAPTURE] = escaping.Trusted
    for name, fn in list(env.filters.items()):
        env.filters[name] = _bounded_filter(name, fn)
    return env


@functools.lru_cache(maxsize=512)
def compile_template(source: str, flavour: Flavour, field: Field = "body") -> Template:
    """`source` compiled for `flavour`; raises TemplateSyntaxError."""
    return _environment(flavour, field).from_string(source)


def render_template(
    source: str, context: Mapping[str, object], *, flavour: Flavour, field: Field
) -> str:
    """`source` rendered over `context`; raises whatever the template raises."""
    return compile_template(source, flavour, field).render(context)


def validate_template(source: str) -> str | None:
    """None if `source` compiles and renders every sample event in every flavour, else why not."""
    try:
        compile_template(source, "markdown")
    except TemplateSyntaxError as exc:
        return f"line {exc.lineno}: {one_line(exc.message or str(exc))}"
    for event in sample_events():
        for flavour in FLAVOURS:
            try:
                render_template(
                    source, template_context(event, flavour), flavour=flavour, field="body"
                )
            except Exception as exc:  # any failure of a user's template is a finding
                return f"{describe(exc)} (sample {event.kind} event, {flavour} flavour)"
    return None


def describe(exc: BaseException) -> str:
    """One line naming the error and, when the traceback shows it, the template line."""
    line = _template_line(exc.__traceback__)
    where = "" if line is None else f"line {line}: "
    return f"{where}{type(exc).__name__}: {one_line(str(exc))}"


def _template_line(tb: TracebackType | None) -> int | None:
    # Jinja2 rewrites tracebacks so that template frames carry the template's line numbers.
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def one_line(text: str) -> str:
    return " ".join(text.split())
