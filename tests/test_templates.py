"""Templates in the sandbox: what they may not reach, what they may not build, and how their
mistakes are reported."""

from __future__ import annotations

from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from runwatch.core.render import render, sample_events, validate_template

TRANSITION = sample_events()[0]
SECRET = "dtvi_" + "s3cr3t" * 16


ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__ }}",
    "{{ cycler.__init__.__globals__.os.environ }}",
    "{{ lipsum.__globals__['os'].environ }}",
    "{{ self.__dict__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ run_id.upper() }}",
    "{{ run_id.__len__() }}",
    "{{ attributes.items() }}",
    "{{ attributes.__class__ }}",
    "{{ attributes.get('team') }}",
    "{{ previous.condition }}",  # values are plain strings, not runwatch's objects
    "{{ '{0.__class__}'.format(run_id) }}",
    "{{ run_id.format }}",
    "{{ '%s'.__mod__ }}",
    "{{ run_id|attr('__class__') }}",
    "{{ (run_id|attr('upper'))() }}",
    "{{ range(10)|list }}",
    "{{ lipsum() }}",
    "{{ namespace(a=1) }}",
    "{{ joiner() }}",
    "{{ dict(a=1) }}",
    "{{ os.environ }}",
    "{{ environ }}",
    "{{ config }}",
    "{% macro m() %}x{% endmacro %}{{ m() }}",
    "{% for c in skipped %}{{ loop.cycle('a', 'b') }}{% endfor %}",
    "{% for c in skipped %}{{ loop.__class__ }}{% endfor %}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}{{ os }}",
]


@pytest.mark.parametrize("template", ESCAPES)
def test_it_refuses_templates_that_reach_beyond_the_event(
    template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls, attributes, globals and imports fail; the default is sent; no secret leaks."""
    monkeypatch.setenv("DATATURE_VI_SECRET_KEY", SECRET)

    error = validate_template(template)
    with capture_logs() as logs:
        message = render(TRANSITION, title=template, body=template)

    assert error is not None
    assert "\n" not in error
    assert message == render(TRANSITION)
    assert [(entry["event"], entry["field"]) for entry in logs] == [
        ("render.failed", "title"),
        ("render.failed", "body"),
    ]
    assert SECRET not in f"{error}{message}{logs}"


def test_it_offers_templates_no_global_functions() -> None:
    """Jinja2's default globals (range, lipsum, cycler, ...) are gone, not merely uncallable."""
    names = ("range", "lipsum", "cycler", "joiner", "namespace", "dict")
    title = " ".join(f"{{{{ {name} is defined }}}}" for name in names)

    assert render(TRANSITION, title=title).title == " ".join(["False"] * len(names))


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("{{ run_id }}\n{% if %}", "line 2: Expected an expression, got 'end of statement block'"),
        ("ok\n\n{{ run_id }", "line 3: unexpected '}'"),
        ("{% for c in skipped %}\n{{ c }}", "line 2: Unexpected end of template."),
        ("{{ run_id|nope }}", "line 1: No filter named 'nope'."),
    ],
)
def test_it_reports_syntax_errors_with_their_line(template: str, error: str) -> None:
    """A template that does not compile is reported on one line that names where."""
    message = validate_template(template)

    assert message is not None
    assert message.startswith(error)


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("first\n\n{{ nope }}", "line 3: UndefinedError: 'nope' is undefined (sample transition"),
        (
            "{{ attributes.owner }}",
            "line 1: UndefinedError: 'dict object' has no attribute 'owner' (sample transition",
        ),
        (
            "{{ run_id.upper() }}",
            "line 1: SecurityError: access to attribute 'upper' of 'str' object is unsafe.",
        ),
        # only the deletion sample skipped nothing
        (
            "{{ skipped[0] }}",
            "line 1: UndefinedError: tuple object has no element 0 (sample deleted",
        ),
    ],
)
def test_it_reports_render_failures_on_the_sample_events(template: str, error: str) -> None:
    """A template that fails on any sample event is refused, with the line and the sample."""
    message = validate_template(template)

    assert message is not None
    assert message.startswith(error)


def test_it_accepts_a_template_that_renders_every_sample() -> None:
    """Guarded optional values are fine."""
    template = (
        "{{ emoji }} {{ flow or run_id }}: {{ previous or 'new' }} → {{ condition }}"
        "{% if reason %} ({{ reason }}){% endif %} {{ attributes.team|default('') }}"
    )

    assert validate_template(template) is None


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 10**9 }}",
        "{{ 9**9**9 }}",
        "{{ run_id * 100000 }}",
        "{{ run_id|center(100000000) }}",
        "{{ '%*s'|format(1000000000, 'a') }}",
        "{{ message|indent(10**6) }}",
        "{{ run_id" + "|replace('_', '__________')" * 6 + " }}",
    ],
)
def test_it_refuses_templates_that_would_build_huge_strings(source: str) -> None:
    """A template cannot take the daemon's memory or CPU by building an enormous string."""
    error = validate_template(source)
    assert error is not None and "SecurityError" in error
    with capture_logs() as logs:
        message = render(TRANSITION, body=source)
    assert message.body == render(TRANSITION).body  # fell back to the default
    assert [entry["event"] for entry in logs] == ["render.failed"]


def test_it_still_allows_modest_repetition_and_padding() -> None:
    """Bounds leave room for what real templates do: rules of dashes, aligned columns."""
    body = "{{ '-' * 20 }}|{{ run_id|center(12) }}"

    assert render(TRANSITION, body=body, flavour="text").body == (
        "-" * 20 + "|" + "run_ab12".center(12).rstrip()
    )


def test_it_refuses_the_safe_filter() -> None:
    """`|safe` would claim an API value is markup; it is refused when the template is checked."""
    error = validate_template("{{ message|safe }}")

    assert error is not None and error.startswith("line 1: No filter named 'safe'.")


@pytest.mark.parametrize(
    "template",
    [
        '{% filter replace("\\\\", "") %}{{ reason }}{% endfilter %}',
        "{% filter wordwrap(5) %}{{ message }}{% endfilter %}",
        "{% set x | upper %}{{ reason }}{% endset %}{{ x }}",
    ],
)
def test_it_refuses_filter_blocks_that_would_write_unescaped_text(template: str) -> None:
    """A filter block's result skips the escaping of values; it is refused at load."""
    error = validate_template(template)

    assert error is not None and "filter blocks are not allowed" in error
    assert render(TRANSITION, body=template).body == render(TRANSITION).body


def test_it_writes_a_captured_block_once_escaped() -> None:
    """`{% set x %}...{% endset %}` holds escaped output; writing it does not escape it twice."""
    event = replace(TRANSITION, flow_name="<@U1> *x*")
    body = "{% set line %}**{{ flow }}**{% endset %}{{ line }} {{ line|length > 0 }}"

    assert render(event, body=body).body == "**\\<@U1\\> \\*x\\*** True"
