"""API text is text in every flavour: checked through Apprise's own conversions, by e-mail to
a loopback SMTP server, and in the payload Apprise's Slack plugin POSTs to a loopback receiver.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import apprise
import pytest
from apprise.conversion import markdown_to_html
from apprise.plugins.slack import NotifySlack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markup import DISGUISED, HOSTILE, HTML_ATTACKS, MENTIONS, Html
from receiver import Receiver
from smtp_server import Mailbox

from runwatch.config.apprise_urls import load_service, make_asset
from runwatch.core.context import template_context
from runwatch.core.escaping import (
    FLAVOURS,
    Flavour,
    clean_text,
    escape,
    escape_markdown,
    escape_slack,
    link,
    strong,
)
from runwatch.core.links import href
from runwatch.core.model import Condition, Enrichment, Event
from runwatch.core.render import render, sample_events

TRANSITION, NEW, DELETED, OVERDUE = sample_events()
FRAGMENTS = [
    *MENTIONS,
    DISGUISED,
    *HTML_ATTACKS,
    "<",
    ">",
    "&",
    "&lt;",
    "&#x202e;",
    "&amp;",
    "*",
    "**",
    "_",
    "__",
    "~",
    "~~~",
    "`",
    "```",
    "[",
    "]",
    "(",
    ")",
    "![",
    "](",
    "#",
    "# ",
    "- ",
    "+ ",
    "* ",
    "1. ",
    "2) ",
    "---",
    "===",
    "|",
    "| --- |",
    "\\",
    "\\<",
    "\n",
    "\r\n",
    "\t",
    "    ",
    " ",
    "\x1b[31m",
    "\x00",
    "\x02",
    "\u202e",
    "\u2028",
    "\ud800",
    "a",
    "word",
    "é",
    ":",
    "@here",
    "http://evil.example",
    "<mailto:a@evil.example>",
    "<!-- c -->",
    "[1]: http://evil.example",
]
hostile_text = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=10).map("".join)


def words(text: str) -> str:
    return " ".join(text.split())


def with_text(event: Event, text: str) -> Event:
    """`event` with `text` as its reason and message."""
    assert event.current is not None
    return replace(event, current=replace(event.current, reason=text, message=text))


def slack_unescaped(mrkdwn: str, mark: str) -> list[int]:
    """Positions of `mark` in Slack mrkdwn that no backslash escapes and no word surrounds."""
    found = []
    for i, ch in enumerate(mrkdwn):
        if ch != mark or (i and mrkdwn[i - 1] == "\\"):
            continue
        inside = 0 < i < len(mrkdwn) - 1 and mrkdwn[i - 1].isalnum() and mrkdwn[i + 1].isalnum()
        if mark in "*`" or not inside:
            found.append(i)
    return found


# ----------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("text", "markdown"),
    [
        ("<!channel>", "\\<!channel\\>"),
        (DISGUISED, "\\<http://evil.example\\|click here\\>"),
        ("**bold** and *it*", "\\*\\*bold\\*\\* and \\*it\\*"),
        ("snake_case_name _edge_ a~b ~x~", "snake_case_name \\_edge\\_ a~b \\~x\\~"),
        ("[x](http://evil)", "\\[x\\](http://evil)"),
        ("`code`", "\\`code\\`"),
        ("A & B &lt; &#60; &", "A & B &amp;lt; &amp;#60; &amp;"),
        ("C:\\data\\* end\\", "C:\\data\\\\\\* end\\\\"),
        ("# heading", "\\# heading"),
        ("- item", "\\- item"),
        ("-5 is fine", "-5 is fine"),
        ("1. first", "1\\. first"),
        ("2024. a year", "2024\\. a year"),
        ("---", "\\---"),
        ("    indented", "\u00a0\u00a0\u00a0\u00a0indented"),
        ("line one\n\n  line two", "line one line two"),
        ("a | b", "a \\| b"),
        ("bell\x07 esc\x1b[31m rtl\u202e", "bell\ufffd esc\ufffd\\[31m rtl\ufffd"),
    ],
)
def test_it_escapes_markdown_so_that_every_converter_shows_it_literally(
    text: str, markdown: str
) -> None:
    """Markup characters get a backslash where they could mean something, and only there."""
    assert escape_markdown(text) == markdown


def test_it_escapes_no_block_markup_in_a_title() -> None:
    """A title is never the start of a line, so `#1` and `- x` stay as they are."""
    assert escape_markdown("#1 - x", line_start=False) == "#1 - x"
    assert render(replace(TRANSITION, flow_name="#1 detector")).title.startswith("❌ #1 detector")


def test_it_escapes_slack_control_characters_only() -> None:
    """Slack gives meaning to `&`, `<` and `>` alone; they become its entities."""
    assert escape_slack("<!channel> & <@U1> *b*") == "&lt;!channel&gt; &amp; &lt;@U1&gt; *b*"


def test_it_makes_control_characters_harmless_as_text() -> None:
    """Line breaks become a space; terminal escapes, NUL, bidi overrides, surrogates U+FFFD."""
    assert clean_text("a\r\n\tb\x1b[2Jc\x00d\u202ee\ud800f\u2029g") == (
        "a b\ufffd[2Jc\ufffdd\ufffde\ufffdf g"
    )


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_it_keeps_the_operators_markup_and_escapes_the_values(flavour: Flavour) -> None:
    """Template text, |strong and |link are markup; values and string literals are text."""
    body = "**{{ reason }}** {{ reason|strong }} {{ '**x**' }} {{ log|link('a]b') }}"
    event = replace(with_text(TRANSITION, "<@U1>"), log="https://logs.example/a b)")

    expected = {
        "markdown": (
            "**\\<@U1\\>** **\\<@U1\\>** \\*\\*x\\*\\* [a\\]b](https://logs.example/a%20b%29)"
        ),
        "slack": "**&lt;@U1&gt;** *&lt;@U1&gt;* **x** <https://logs.example/a%20b%29|a]b>",
        "text": "**<@U1>** <@U1> **x** a]b: https://logs.example/a%20b%29",
    }
    assert render(event, body=body, flavour=flavour).body == expected[flavour]


def test_it_escapes_what_a_filter_made_of_trusted_markup() -> None:
    """A filter applied to |strong returns plain text again: escaped, never trusted."""
    assert render(TRANSITION, body="{{ reason|strong|upper }}").body == "\\*\\*OUTOFMEMORY\\*\\*"


@pytest.mark.parametrize("url", ["javascript:alert(1)", "/var/log/x", "http://", "http://a b/"])
def test_it_links_only_http_urls(url: str) -> None:
    """Anything but an http(s) URL with a plain host is shown as text, not linked."""
    assert link(url, "Log", "markdown") == f"Log: {escape_markdown(url, line_start=False)}"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_it_writes_nothing_for_a_missing_link_or_empty_bold(flavour: Flavour) -> None:
    """No "Log: " without a log, no `****` around nothing."""
    assert (
        render(replace(TRANSITION, log=None), body="{{ log|link('Log') }}", flavour=flavour).body
        == ""
    )
    assert strong("", flavour) == strong(None, flavour) == ""


# ----------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=hostile_text)
def test_it_shows_any_text_literally_in_the_html_apprise_makes_for_email(text: str) -> None:
    """Through Python-Markdown as Apprise configures it, API text is text: no element but the
    template's own, and exactly the characters it had."""
    event = with_text(TRANSITION, text)
    body = render(event, body="{{ reason }}\n**Why:** {{ message }}\n{{ reason|strong }}").body

    html = Html(markdown_to_html(body))

    shown, bold = clean_text(text), clean_text(text.strip())
    assert {tag for tag, _ in html.tags} <= {"p", "br", "strong"}
    assert [tag for tag, _ in html.tags].count("strong") == (2 if bold else 1)
    assert words("".join(html.text)) == words(f"{shown} Why: {shown} {bold}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=hostile_text)
def test_it_lets_no_mention_link_or_emphasis_through_apprises_slack_conversion(text: str) -> None:
    """Through Apprise's CommonMark-to-mrkdwn converter, API text forms no `<...>` entity, no
    bold, italic, strike or code, and every `&` is an entity."""
    body = render(with_text(TRANSITION, text), body="{{ reason }} {{ message }}").body

    mrkdwn = NotifySlack._commonmark_to_slack(body)

    assert "<" not in mrkdwn and ">" not in mrkdwn
    assert not re.search(r"&(?!amp;|lt;|gt;)", mrkdwn)
    for mark in "*_~`":
        assert slack_unescaped(mrkdwn, mark) == [], mark


@settings(max_examples=200, deadline=None)
@given(text=hostile_text)
def test_it_writes_any_text_as_plain_slack_text_in_the_slack_flavour(text: str) -> None:
    """The slack flavour leaves no `<` or `>` and no bare `&`; decoded, it is the text."""
    shown = escape(text, "slack")

    assert "<" not in shown and ">" not in shown
    assert not re.search(r"&(?!amp;|lt;|gt;)", shown)
    assert shown.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") == clean_text(text)


@settings(max_examples=200, deadline=None)
@given(text=hostile_text)
def test_it_writes_any_text_as_one_harmless_line_in_the_text_flavour(text: str) -> None:
    """No line break, no control character, no surrogate reaches the terminal."""
    shown = escape(text, "text")

    assert shown == clean_text(text)
    assert not re.search("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e]", shown)


# ----------------------------------------------------------------------------- every field


def hostile_event(kind: str, h: str = HOSTILE + "\n# heading\n---\n> quote") -> Event:
    """An event of `kind` whose every text from the API is `h`."""
    seen = Condition(condition=h, status=h, last_transition_time=1_000, reason=h, message=h)
    return Event(
        kind=kind,  # type: ignore[arg-type]
        workspace="prod",
        organization_id="org-1",
        run_id="run_1",
        previous=seen,
        current=None if kind == "deleted" else seen,
        skipped=(seen,),
        history=(seen,),
        flow_name=h,
        training_project=h,
        attributes={h: h, "team": h},
        log=h,
        rule=h,
        elapsed_s=60,
        reminder=1,
        enrichment=Enrichment(project_name=h, model_id=h, epoch=1, metrics=((h, h), ("m", 0.5))),
    )


def every_value(context: dict[str, object]) -> str:
    """A template that writes every value of `context`, at the start of a line."""
    lines = []
    for name, value in context.items():
        if name == "shown_metrics":
            lines.append("{% for a, b in shown_metrics %}{{ a }}\n{{ b }}\n{% endfor %}")
        elif isinstance(value, dict):
            lines.append(f"{{% for k in {name} %}}{{{{ k }}}}\n{{{{ {name}[k] }}}}\n{{% endfor %}}")
        elif isinstance(value, tuple):
            lines.append(f"{{% for x in {name} %}}{{{{ x }}}}\n{{% endfor %}}")
        else:
            lines.append(f"{{{{ {name} }}}}")
    return "\n".join(lines)


KINDS = ["transition", "new", "deleted", "overdue"]


def assert_text_everywhere(event: Event) -> None:
    """Every value of the context, and the defaults, are text in HTML and in Slack."""
    template = every_value(template_context(event, "markdown"))
    # The only links: the console, and the run's log when the API gives it as an http(s) URL
    # (the default body links it on purpose).
    console = "https://vi.datature.com/org/org-1"
    log = href(event.log or "")
    hrefs = {console, log}
    entities = {f"<{console}|Console>", f"<{log}|Log>"}
    for message in (render(event, title=template, body=template), render(event)):
        # A service without a title field gets the title as a heading over the body.
        for part in (f"# {message.title}", message.body):
            html = Html(markdown_to_html(part))
            links = {attrs.get("href") for tag, attrs in html.tags if tag == "a"}
            assert {tag for tag, _ in html.tags} <= {"h1", "p", "br", "strong", "a"}, part
            assert links <= hrefs
            mrkdwn = NotifySlack._commonmark_to_slack(part)
            assert set(re.findall("<[^>]*>", mrkdwn)) <= entities


@pytest.mark.parametrize("kind", KINDS)
def test_it_escapes_every_value_of_the_context(kind: str) -> None:
    """Whatever field of the event the API text is in, it is text in HTML and in Slack."""
    assert_text_everywhere(hostile_event(kind))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), text=hostile_text)
def test_it_escapes_any_text_in_any_field(kind: str, text: str) -> None:
    """The same for any text in every field at once."""
    assert_text_everywhere(hostile_event(kind, text))


# ----------------------------------------------------------------------------- for real


def hostile_message() -> tuple[Event, str]:
    """A failed run whose reason and message carry every attack, and a body template with
    the operator's own bold around the default body's first line."""
    event = replace(with_text(TRANSITION, HOSTILE), flow_name="<b>flow</b>", log=None)
    return event, "**Operator said:** {{ reason }}\n{{ message|strong }}"


def test_it_sends_api_text_as_text_in_the_html_part_of_an_email(
    smtp: tuple[Mailbox, int],
) -> None:
    """Apprise's mailto:// to a loopback SMTP server: no script, image or link from the API in
    the HTML part, while the operator's **bold** is <strong>."""
    mailbox, port = smtp
    event, template = hostile_message()
    url = f"mailto://127.0.0.1:{port}?from=runwatch@example.com&to=ops@example.com"
    for message in (render(event), render(event, body=template)):
        asset = make_asset()
        service = load_service(url, asset=asset)
        service.request_rate_per_sec = 0
        sender = apprise.Apprise(asset=asset)
        sender.add(service)
        assert sender.notify(
            body=message.body,
            title=message.title,
            body_format=apprise.NotifyFormat.MARKDOWN,
        )

    default, custom = mailbox.messages()
    for mail in (default, custom):
        html_part = mail.get_body(preferencelist=("html",))
        assert html_part is not None
        content = html_part.get_content()
        html = Html(content)
        assert not {"script", "img", "b", "!"} & {tag for tag, _ in html.tags}
        assert [a.get("href") for t, a in html.tags if t == "a"] in (
            [],
            [f"https://vi.datature.com/org/{TRANSITION.organization_id}"],
        )
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in content
        assert "&lt;!channel&gt;" in content
        assert "\n" not in str(mail["Subject"])
    assert "<strong>Operator said:</strong>" in str(
        custom.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    )
    assert "<strong>Failed</strong>" in str(
        default.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    )


def slack_payload(receiver: Receiver, title: str, body: str, *, blocks: bool) -> dict[str, Any]:
    """What Apprise's Slack plugin POSTs for a runwatch message, caught on loopback.

    The plugin is the real one, built from a real webhook URL; only the host it posts to
    (its `webhook_url`) is pointed at the receiver.
    """
    url = "https://hooks.slack.com/services/T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"
    asset = make_asset()
    service = load_service(url + ("?blocks=yes" if blocks else ""), asset=asset)
    service.webhook_url = f"{receiver.url}/services"
    service.request_rate_per_sec = 0
    sender = apprise.Apprise(asset=asset)
    sender.add(service)
    sender.notify(body=body, title=title, body_format=apprise.NotifyFormat.MARKDOWN)
    [payload] = receiver.wait_for(1)
    return payload


def texts(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from texts(item)


@pytest.mark.parametrize("blocks", [False, True], ids=["attachments", "blocks"])
def test_it_sends_mentions_and_disguised_links_to_slack_as_literal_text(
    receiver: Receiver, blocks: bool
) -> None:
    """In the payload Apprise's Slack plugin POSTs, `<!channel>`, `<@U…>` and
    `<http://evil|click here>` from the API arrive escaped: no mention or link entity."""
    event, _ = hostile_message()
    message = render(event)

    payload = slack_payload(receiver, message.title, message.body, blocks=blocks)

    sent = list(texts(payload))
    entities = [e for text in sent for e in re.findall(r"<[^>]*>", text)]
    console = f"https://vi.datature.com/org/{TRANSITION.organization_id}"
    assert entities == [f"<{console}|Console>"]
    [body] = [text for text in sent if "Console" in text]
    for mention in MENTIONS:
        assert escape_slack(mention).replace("|", "\\|") in body
    assert escape_slack(DISGUISED).replace("|", "\\|") in body
    assert "*Failed*" in body  # the operator's bold became Slack's
