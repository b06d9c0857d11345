"""Apprise URLs: the one place that knows how to check them, show them and find their secrets.

Why one place: an Apprise URL carries its credentials inline (a password in the userinfo,
tokens in the host and path, an `Authorization` header as `+Authorization=...` in the query),
and Apprise gives them away in several ways: its privacy form masks only some of them, and
its exception texts and log records quote the URL as written. So everything in runwatch that
shows, logs or checks a URL goes through here, and what counts as a secret, and how it is
masked, is decided once.

`import apprise` costs ~150 ms and 20 MiB, so it happens on first use: a caller that only
finds secrets (or only imports the configuration's types) never pays for it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import apprise

MASK = "****"


def make_asset() -> apprise.AppriseAsset:
    """The asset of every Apprise object runwatch builds, to check a URL or to send."""
    # In-memory storage: as a library Apprise must never write files next to the daemon.
    asset: apprise.AppriseAsset = _apprise().AppriseAsset(
        storage_mode="memory", app_id="runwatch", app_desc="runwatch"
    )
    return asset


# ----------------------------------------------------------------------------- secrets

# Token-like: long, no spaces, from the characters of URL-safe tokens, and either mixing
# letters with digits or long enough that a word is unlikely ("services", "channel" are not).
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_\-.~+/=:%!]+")


def _looks_like_token(text: str) -> bool:
    if len(text) < 8 or not _TOKEN_CHARS.fullmatch(text):
        return False
    mixed = any(c.isdigit() for c in text) and any(c.isalpha() for c in text)
    return mixed or len(text) >= 16


def url_secrets(url: str) -> list[str]:
    """The parts of an Apprise URL that are probably credentials (to mask them anywhere)."""
    _, sep, rest = url.partition("://")
    if not sep:
        return [url] if _looks_like_token(url) else []
    head, _, query = rest.partition("?")
    netloc, _, path = head.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    found: list[str] = []

    def add(piece: str, *, always: bool = False) -> None:
        for candidate in dict.fromkeys((piece, urllib.parse.unquote(piece))):
            if candidate and (always or _looks_like_token(candidate)):
                found.append(candidate)

    if at:
        user, colon, password = userinfo.partition(":")
        add(user)
        if colon:
            add(password, always=True)
    for piece in host.split(":"):
        if "." not in piece:  # a DNS name or IP address is not a secret
            add(piece)
    for segment in path.split("/"):
        add(segment)
    for pair in query.split("&"):
        # Not parse_qsl: it reads "+" as a space, and "+Name=value" is an Apprise header.
        key, _, value = (urllib.parse.unquote(p) for p in pair.partition("="))
        if key.startswith("+") and len(value) >= 8:
            add(value, always=True)  # custom HTTP header: often "Authorization"
            for word in value.split():
                add(word)
        else:
            add(value)
    return found


def secret_forms(urls: Iterable[str]) -> list[str]:
    """Every secret of `urls`, as written and percent-encoded, longest first (4+ characters)."""
    return sorted(
        {
            form
            for url in urls
            for secret in url_secrets(url)
            for form in (secret, urllib.parse.quote(secret, safe=""))
            if len(form) >= 4
        },
        key=len,
        reverse=True,
    )


def mask_secrets(text: str, secrets: Sequence[str]) -> str:
    """`text` with each of `secrets` of 4 characters or more masked, the longest first."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, MASK)
    return text


# ----------------------------------------------------------------------------- showing

# Query parameters Apprise copies verbatim into its privacy form: +Header=value (HTTP
# headers, often tokens), -param=value (query arguments) and :key=value (payload fields),
# written plain or percent-encoded.
_VERBATIM_PARAM = re.compile(r"([?&](?:\+|%2B|-|%2D|:|%3A)[^=&]*=)[^&]*", re.IGNORECASE)


def redact(privacy_form: str, *, secrets: Sequence[str] = ()) -> str:
    """A URL in Apprise's privacy form with what that form still shows, and `secrets`, masked.

    Apprise's privacy form masks passwords and most tokens, but copies header, argument and
    payload values verbatim (masked here by their `+`, `-` or `:` prefix) and keeps the path
    of json://, form:// and xml:// URLs, where webhook tokens live (masked here when they are
    among `secrets`, e.g. from `url_secrets`).
    """
    return mask_secrets(_VERBATIM_PARAM.sub(r"\1" + MASK, privacy_form), secrets)


def short_form(privacy_form: str) -> str:
    """A privacy-form URL, redacted, without its query (Apprise's defaults, mostly): the target."""
    return redact(privacy_form).partition("?")[0]


def private_url(url: str, *, secrets: Sequence[str] = ()) -> str:
    """`url` as Apprise shows it with privacy on, `redact`ed; only its schema if not a service."""
    try:
        service = _instantiate(url)
    except Exception:  # Apprise raises a mix of TypeError/ValueError subclasses
        service = None
    if service is None:
        return _schema_only(url)
    return redact(str(service.url(privacy=True)), secrets=secrets)


def _schema_only(url: str) -> str:
    schema, sep, _ = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", schema):
        return "(not a URL)"
    # A schema Apprise knows is safe to show; an unknown one only when it cannot be a token
    # (a typo like "slak" helps the reader, a token pasted in the wrong place must not show).
    from runwatch.config.apprise_plugins import need

    need(url)  # Apprise knows a schema once its plugin is loaded
    if schema.lower() in _apprise().manager_plugins.NotificationManager() or not _looks_like_token(
        schema
    ):
        return f"{schema}://…"
    return "(not a URL)"


# ----------------------------------------------------------------------------- checking


def load_service(url: str, *, asset: Any = None) -> Any:
    """Apprise's service for `url`, built quietly; ValueError says why not, with no secret."""
    shown = _schema_only(url)
    try:
        service = _instantiate(url, asset=asset)
    except Exception as exc:  # AppriseImproperlyConfigured, or a plugin's own TypeError
        reason = _mask_url_parts(str(exc), url)
        raise ValueError(f"Apprise cannot use {shown}: {reason}") from None
    if service is None:
        raise ValueError(f"Apprise cannot use {shown}: unknown service or malformed URL")
    return service


def url_problem(url: str) -> str | None:
    """None when Apprise can build a service from `url`, else why not (with no secret)."""
    try:
        load_service(url)
    except ValueError as exc:
        return str(exc)
    return None


def _mask_url_parts(text: str, url: str) -> str:
    """`text` (an Apprise error) with every piece of `url` that could be a token masked."""
    _, _, rest = url.partition("://")
    head, _, query = rest.partition("?")
    pieces = set(re.split(r"[/:@#]", head))
    pieces |= {pair.partition("=")[2] for pair in query.split("&")}  # values, not key names
    pieces |= {urllib.parse.unquote(p) for p in pieces}
    for piece in sorted(pieces, key=len, reverse=True):
        if len(piece) >= 8:
            text = text.replace(piece, MASK)
        elif len(piece) >= 3:
            # Short pieces only as whole words: "T12" must not eat part of another word.
            pattern = rf"(?<![A-Za-z0-9]){re.escape(piece)}(?![A-Za-z0-9])"
            text = re.sub(pattern, MASK, text)
    return text


def _instantiate(url: str, *, asset: Any = None) -> Any:
    """Apprise's service for `url` (None for an unknown schema); raises what the plugin raises."""
    from runwatch.config.apprise_plugins import need

    with _apprise_quiet():
        need(url)  # only the plugin this URL needs, not all ~217 (see that module)
        return _apprise().Apprise.instantiate(
            url, asset=asset or make_asset(), suppress_exceptions=False
        )


class _ThisThread(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread


@contextlib.contextmanager
def _apprise_quiet() -> Iterator[None]:
    """Drop Apprise's log records from this thread only: they quote URLs with their tokens.

    Callers report each failure themselves; other threads (deliveries running during a
    reload) keep their logging.
    """
    logger = logging.getLogger("apprise")
    quiet = _ThisThread()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _apprise() -> Any:
    # Imported on first use: it costs ~150 ms and 20 MiB, and pure callers never need it.
    import apprise

    return apprise
