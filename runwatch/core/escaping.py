"""Text from the Vi API, made literal in the markup of the channel it is rendered into.

Theory: every value that comes from the API (run ids, flow and project names, attributes,
reasons, messages, metric names) is text, never markup. It is escaped for the flavour of
the message it goes into; only what the operator wrote (a template's literal text, and the
`strong` and `link` helpers, which escape their own inputs) is markup, and it is marked as
such by being a `Trusted` str. Anything else, whatever a template did to it (`|upper`,
`~`, `|join`), is a plain str again and is escaped: losing the mark escapes too much (a
`**` shows), it never escapes too little.

Every flavour first makes the text harmless as text (`clean_text`): one line (line breaks
and tabs become one space), C0/C1 control characters, lone surrogates and bidirectional
overrides become U+FFFD, so no terminal escape, header injection or right-to-left spoof
survives. Then:

- "markdown", what Apprise receives for every service (`body_format=MARKDOWN`). Two
  converters read it, and both must show the text literally: Python-Markdown, as Apprise
  configures it for mailto:// and every HTML service (a backslash may escape any ASCII
  punctuation, which is then written as text), and Apprise's own CommonMark-to-mrkdwn
  converter for Slack (`NotifySlack._commonmark_to_slack`: `\\<` and `\\>` become `&lt;`
  and `&gt;`; `\\[`, `\\]`, `\\(`, `\\)`, `\\!`, `\\#` plain characters; a bare `&`
  `&amp;`; any other escape pair is kept as it is; and a raw `<` is passed on raw, which is
  how `<!channel>` reached Slack). So a backslash goes before `*`, backticks, `[`, `]`,
  `<`, `>` and `|` wherever they are, before a backslash where it could escape what
  follows (`C:\\data` stays as it is), and before `_` and `~` unless inside a word
  (`snake_case` stays: neither converter nor Slack reads an intraword underscore). An `&`
  that would start an entity (`&lt;`, `&#x202e;`) becomes `&amp;`, since Python-Markdown
  passes entities on and mail clients decode them. At the start of a value, what would
  open a block is escaped too (`#`, `- `, `+ `, `1. `, `---`, `===`; leading spaces,
  which would open an indented code block, become no-break spaces): a value may land at
  the start of a line (`{{ message }}` alone on one). Titles skip this (`line_start=False`):
  a title is a plain field, or one line after the heading marker Apprise puts before it.
  What Slack makes of the result: no mention, channel ping or link can be formed, as `<`
  never reaches it raw. Slack documents no escape for `*`, `_`, `~` and backticks, so it
  is shown the backslash Apprise keeps before them, and where its renderer ignores that
  backslash it may still format such text; that is what one body for every service costs.
- "slack", for a channel that writes Slack's mrkdwn itself: `&`, `<`, `>` as `&amp;`,
  `&lt;`, `&gt;` (`escape_slack`), which is all Slack's parser gives meaning to.
- "text", for the terminal: no markup, so nothing but `clean_text`.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from runwatch.core.links import href

Flavour = Literal["markdown", "text", "slack"]
FLAVOURS: tuple[Flavour, ...] = get_args(Flavour)


class Trusted(str):
    """Markup the operator wrote, already in the flavour's syntax: emitted as it is.

    A str subclass that overrides nothing, so every operation on it (`+`, `.upper()`,
    Jinja's filters) returns a plain str, which is escaped again.
    """

    __slots__ = ()


# Line breaks (str.splitlines' set) and tabs: a value is one line wherever it is shown.
_BREAK = "\t\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_BREAKS = re.compile(f"[ {_BREAK}]*[{_BREAK}][ {_BREAK}]*")
# C0 and C1 controls, lone surrogates, and the bidirectional embeddings, overrides and
# isolates (U+202A..E, U+2066..9, U+061C) that make a terminal or a mail client show text
# in an order other than the one it has.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069\u061c]")
_REPLACEMENT = "\ufffd"


def clean_text(text: str) -> str:
    """`text` as one harmless line: breaks become a space, control characters U+FFFD."""
    return _UNSAFE.sub(_REPLACEMENT, _BREAKS.sub(" ", text))


def escape_slack(text: str) -> str:
    """`text` literal in Slack's mrkdwn: `&`, `<` and `>` as the entities Slack decodes."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_ASCII_PUNCTUATION = frozenset("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_ALWAYS = frozenset("*`[]<>|")
_OUTSIDE_WORDS = frozenset("_~")
_ENTITY_START = re.compile(r"&(?=#?[0-9A-Za-z]*(?:;|$))")
_LIST_OR_RULE = re.compile(r"[-+=](?:\s|$|[-+=])")
_ORDERED = re.compile(r"\d{1,9}(?=[.)](?:\s|$))")


def escape_markdown(text: str, *, line_start: bool = True) -> str:
    """`text` literal in Markdown, as Python-Markdown and Apprise's Slack converter read it.

    `line_start`: the value may begin a line, so what would open a block is escaped too.
    """
    text = clean_text(text)
    out: list[str] = []
    last = len(text) - 1
    for i, ch in enumerate(text):
        if ch == "\\":
            following = text[i + 1] if i < last else ""
            out.append("\\\\" if following == "" or following in _ASCII_PUNCTUATION else ch)
        elif ch in _ALWAYS:
            out.append("\\" + ch)
        elif ch in _OUTSIDE_WORDS:
            inside = 0 < i < last and text[i - 1].isalnum() and text[i + 1].isalnum()
            out.append(ch if inside else "\\" + ch)
        elif ch == "&" and _ENTITY_START.match(text, i):
            out.append("&amp;")
        else:
            out.append(ch)
    escaped = "".join(out)
    return _escape_block_start(escaped) if line_start else escaped


def _escape_block_start(text: str) -> str:
    stripped = text.lstrip(" ")
    # Four spaces open an indented code block; no-break spaces look the same and open
    # nothing in either converter. What follows is escaped all the same: a caller that
    # strips the message (str.strip() takes no-break spaces too) must not bare a `#`.
    indent = "\u00a0" * (len(text) - len(stripped))
    if stripped.startswith("#") or _LIST_OR_RULE.match(stripped):
        return f"{indent}\\{stripped}"
    ordered = _ORDERED.match(stripped)
    if ordered:
        return f"{indent}{ordered.group()}\\{stripped[ordered.end() :]}"
    return indent + stripped


def escape(value: object, flavour: Flavour, *, line_start: bool = True) -> str:
    """A value for a message in `flavour`: Trusted markup as it is, None as nothing, and
    anything else as its text, escaped."""
    if value is None:
        return ""
    if isinstance(value, Trusted):
        return str(value)
    text = str(value)
    if flavour == "markdown":
        return escape_markdown(text, line_start=line_start)
    if flavour == "slack":
        return escape_slack(clean_text(text))
    return clean_text(text)


def strong(value: object, flavour: Flavour) -> Trusted:
    """`value` in bold: `**x**` in Markdown, `*x*` in Slack, plain in text."""
    if isinstance(value, Trusted) or value is None:
        inner = escape(value, flavour).strip()
    else:
        # Stripped before escaping: a backslash left last by the strip would escape the mark.
        inner = escape(str(value).strip(), flavour, line_start=False)
    if not inner or flavour == "text":
        return Trusted(inner)
    mark = "**" if flavour == "markdown" else "*"
    return Trusted(f"{mark}{inner}{mark}")


def link(url: object, label: object, flavour: Flavour) -> Trusted:
    """A link to `url` reading `label`, if `url` is an http(s) URL; else `label: url` as text.

    Plain text has no links: the bare URL is what terminals and mail clients make clickable.
    """
    if url is None or url == "":
        return Trusted("")  # nothing to point to: nothing to show
    target = href(str(url))
    shown = None if label is None else escape(label, flavour, line_start=False)
    if target is None or flavour == "text":
        text = escape(url if target is None else target, flavour, line_start=False)
        return Trusted(f"{shown}: {text}" if shown else text)
    if flavour == "slack":
        return Trusted(f"<{escape_slack(target)}|{shown or escape_slack(target)}>")
    return Trusted(f"[{shown or escape_markdown(target, line_start=False)}]({target})")
