"""URLs in messages: which texts may become a link, and the console link of a run.

Theory: a link target is the one place where text becomes markup by design, so only an
http(s) URL with a plain host becomes one, and every character that could end the target
early in some markup (a space, quotes, `( ) < > [ ] | \\`, backticks) is percent-encoded:
a URL means the same with them encoded, and no converter can then read the rest of it as
a label or as more markup. The console link is a template of the operator's (workspace
`console_url`) holding `{organization_id}` and `{run_id}`; the values are percent-encoded
into it, and a template that names anything else is not formatted at all.
"""

from __future__ import annotations

import re
import string
import urllib.parse

CONSOLE_URL = "https://vi.datature.com/org/{organization_id}"

_SCHEME = re.compile(r"https?://", re.IGNORECASE)
_HOST = re.compile(r"[A-Za-z0-9.\-_~%:@\[\]!$&'*+,;=]+")
# Kept as they are in the path, query and fragment: RFC 3986's unreserved and sub-delims
# that no markup reads, plus the separators and existing %-escapes.
_SAFE = "-._~!$&*+,;=:@/?#%"


def href(url: str) -> str | None:
    """`url` as a link target, or None when it is not an http(s) URL."""
    url = url.strip()
    if not _SCHEME.match(url):
        return None
    scheme, rest = url.split("://", 1)
    host, slash, tail = rest.partition("/")
    if not host or not _HOST.fullmatch(host):
        return None
    if any(c in host for c in "[]") and not re.fullmatch(r"\[[0-9A-Fa-f:.]+\](:\d+)?", host):
        return None  # brackets only around an IPv6 literal
    return f"{scheme.lower()}://{host}{slash}{urllib.parse.quote(tail, safe=_SAFE)}"


def console_link(template: str | None, *, organization_id: str, run_id: str) -> str:
    """The console URL of a run from a workspace's `console_url` template (None: default).

    A template naming anything but `{organization_id}` and `{run_id}` (the configuration
    refuses those) falls back to the default rather than costing the message.
    """
    values = {
        "organization_id": urllib.parse.quote(organization_id, safe=""),
        "run_id": urllib.parse.quote(run_id, safe=""),
    }
    for source in (template, CONSOLE_URL):
        if source is None:
            continue
        try:
            parts = list(string.Formatter().parse(source))
        except ValueError:
            continue
        if all(
            name is None or (name in values and not spec and not conv)
            for _, name, spec, conv in parts
        ):
            return "".join(
                text + ("" if name is None else values[name]) for text, name, _, _ in parts
            )
    raise AssertionError("the default console URL is a valid template")  # pragma: no cover
