"""Single values as the file writes them: sizes, times of day, URLs, names, templates.

Theory: each function here reads or checks one value on its own, knows nothing of key paths
or lines, and answers with a value or with the problem in words (`None` when fine). Only
`schema` (through the `Check` markers that `settings` declares) and `loading` call them. A
message may quote the value only when it cannot be a secret; those that check tokens or
secret-bearing URLs never do.
"""

from __future__ import annotations

import ipaddress
import re
import string
import urllib.parse
from datetime import time
from pathlib import Path

from runwatch.core.render import validate_template

KiB, MiB, GiB = 1024, 1024**2, 1024**3
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": KiB,
    "MiB": MiB,
    "GiB": GiB,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}


def parse_size(value: object) -> int:
    """Bytes in `value`: an integer, or a number with a unit ("64MiB", "512KiB", "10MB")."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size is not negative")
        return value
    m = _SIZE.fullmatch(value)
    if m is None:
        raise ValueError(f"{value!r} is not a size")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def format_size(size: int) -> str:
    """`size` in the largest binary unit that writes it whole: 65536 -> "64KiB"."""
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


def parse_clock(value: object) -> time:
    """A time of day written HH:MM, 24-hour ("07:00", "22:30")."""
    m = _CLOCK.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError("not a time of day")
    return time(int(m.group(1)), int(m.group(2)))


# ----------------------------------------------------------------------------- checks

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def name_problem(value: object) -> str | None:
    """A workspace or channel name: letters, digits, '_', '.', '-' (it appears in logs)."""
    if isinstance(value, str) and _NAME.fullmatch(value):
        return None
    return f"{value!r} may only use letters, digits, '_', '.', '-'"


def http_url_problem(value: object) -> str | None:
    """A plain http(s) URL: a host, no user, query or fragment (the URL itself is shown)."""
    url = str(value).strip()
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return f"{url!r} has an invalid port"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{url!r} is not an http(s) URL"
    if parts.username or parts.password or parts.query or parts.fragment:
        return "must be a plain http(s) URL, with no user, query or fragment"
    return None


def secret_url_problem(value: object) -> str | None:
    """An http(s) URL that may carry a token in its path or query: never quoted back."""
    parts = urllib.parse.urlsplit(str(value).strip())
    try:
        parts.port  # noqa: B018
    except ValueError:
        return "has an invalid port"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"is not an http(s) URL (it starts {parts.scheme or 'without a scheme'!r})"
    if parts.username or parts.password:
        return "must not hold a user or password (the secret key signs every request)"
    return None


def postgres_url_problem(value: object) -> str | None:
    """A libpq connection URL, postgresql:// or postgres:// (never quoted: it may hold a
    password)."""
    parts = urllib.parse.urlsplit(str(value).strip())
    if parts.scheme not in ("postgresql", "postgres"):
        return "must be a postgresql:// URL, e.g. postgresql://runwatch@db.example.com/runwatch"
    try:
        parts.port  # noqa: B018
    except ValueError:
        return "has an invalid port"
    if parts.fragment:
        return "must not have a #fragment"
    return None


def console_url_problem(value: object) -> str | None:
    """A URL template naming only {organization_id} and {run_id}, formatting to http(s)."""
    template = str(value)
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        return f"is not a valid template ({exc}); write e.g. https://vi.example.com/{{run_id}}"
    for name in names:
        if name not in ("organization_id", "run_id"):
            shown = f"{{{name}}}" if name else "{}"
            return f"{shown} is not a known name; use only {{organization_id}} and {{run_id}}"
    try:
        url = template.format(organization_id="org", run_id="run")
    except (ValueError, IndexError, KeyError) as exc:
        return f"is not a valid template ({exc})"
    if http_url_problem(url.partition("?")[0].partition("#")[0]) is not None:
        return f"{template!r} does not make an http(s) URL"
    return None


def slack_token_problem(value: object) -> str | None:
    """A Slack token (xoxb-..., xoxp-...); the message never shows it."""
    token = str(value).strip()
    if not token.startswith("xox") or len(token) < 10 or any(c.isspace() for c in token):
        return "is not a Slack token: it should start with xoxb- (a bot token)"
    return None


_SLACK_CHANNEL = re.compile(r"[CGD][A-Z0-9]{6,}|#[a-z0-9][a-z0-9._-]{0,79}")


def slack_channel_problem(value: object) -> str | None:
    """A Slack channel id (C0123456789) or a #name."""
    if isinstance(value, str) and _SLACK_CHANNEL.fullmatch(value.strip()):
        return None
    return (
        f"{value!r} is not a Slack channel: write its id (e.g. C0123456789) or #name "
        "(lowercase, digits, '-', '_', '.')"
    )


def template_problem(value: object) -> str | None:
    """A Jinja2 template that renders in the sandbox on every sample event."""
    error = validate_template(str(value))
    return None if error is None else f"invalid template: {error}"


def readable_file_problem(value: object) -> str | None:
    return None if Path(str(value)).is_file() else f"{str(value)!r} is not a readable file"


def is_loopback(host: str) -> bool:
    """True for localhost names and loopback addresses: traffic that never leaves the machine."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def parse_listen(text: str) -> tuple[str, int] | None:
    """(host, port) of "host:port" or "[v6]:port"; None when it is neither."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            return None
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            return None
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if not _HOSTNAME.fullmatch(host) or host.replace(".", "").isdigit():
                return None
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > 65_535:
        return None
    return host, int(port_text)


def listen_problem(value: object) -> str | None:
    if parse_listen(str(value)) is not None:
        return None
    return f"{value!r} is not host:port"
