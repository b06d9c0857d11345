"""The channels section: each channel's one kind, its digest, quiet hours and Apprise URLs.

Theory: a channel is written short (`name: URL` or `name: [URLs]`, an Apprise channel) or
as a mapping with exactly one of `urls`, `webhook` and `slack`, plus what every kind may
have (`digest`, `min_interval`, `quiet_hours`). The generic part is read from the settings
declarations; what is decided here involves the kind: the digest's default (on for Apprise,
off for webhooks) and its refusal on Slack (which edits one message per run instead), and
Apprise's own check of each URL, whose secrets are collected before any message is made.
These functions are hooks of `schema.Reader`, registered by `loading`.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from typing import Any

from runwatch.config.apprise_urls import url_problem, url_secrets
from runwatch.config.schema import INVALID, Reader
from runwatch.config.settings import ChannelConfig, ChannelKind, DigestConfig, QuietHours
from runwatch.config.values import is_loopback
from runwatch.config.yaml_document import FROM_ENV


def channel(r: Reader, value: object, path: str) -> Any:
    """A channel: the short form (Apprise URLs) or a mapping with one of urls, webhook, slack."""
    if isinstance(value, str | list):
        urls = _apprise_urls(r, value, path)
        if urls is INVALID:
            return INVALID
        return ChannelConfig(kind="apprise", urls=urls, digest=DigestConfig())
    if not isinstance(value, dict):
        r.wrong_type(path, "an Apprise URL, a list of them, or a mapping", value)
        return INVALID
    values = r.fields(ChannelConfig, value, path, skip=("urls", "digest"))
    if values is None:
        return INVALID
    given = [k for k in ("urls", "webhook", "slack") if k in value]
    if len(given) != 1:
        both = f" ({' and '.join(given)} are set)" if given else ""
        r.fail(path, f"give exactly one of urls, webhook and slack{both}")
        return INVALID
    kinds: dict[str, ChannelKind] = {"urls": "apprise", "webhook": "webhook", "slack": "slack"}
    kind = kinds[given[0]]
    if kind == "apprise":
        values["urls"] = _apprise_urls(r, value["urls"], f"{path}.urls")
    elif kind not in values:
        return INVALID  # the webhook or slack section had a problem, reported
    digest = _digest(r, value.get("digest"), f"{path}.digest", kind)
    if digest is INVALID or (kind == "apprise" and values["urls"] is INVALID):
        return INVALID
    if kind == "webhook":
        url_secrets_of(r, values["webhook"].url, f"{path}.webhook.url")
    if kind == "slack":
        slack = values["slack"]
        api_url = slack.api_url.strip().rstrip("/") + "/"
        values["slack"] = dataclasses.replace(slack, api_url=api_url)
        host = urllib.parse.urlsplit(api_url).hostname or ""
        if api_url.startswith("http:") and not is_loopback(host):
            r.found.warnings.append(
                f"{path}.slack.api_url: {api_url} is plain HTTP to another machine; the "
                "Slack token would cross the network unencrypted"
            )
    return ChannelConfig(kind=kind, digest=digest, **values)


def _digest(r: Reader, raw: object, path: str, kind: ChannelKind) -> Any:
    if raw is None:  # left out: a digest for Apprise channels, none for the others
        return DigestConfig() if kind == "apprise" else None
    if kind == "slack" and raw is not False:
        r.fail(
            path,
            "a Slack channel edits one message per run in place, so it takes no digest",
            "remove digest here (or write digest: false)",
        )
        return INVALID
    if isinstance(raw, bool):
        return DigestConfig() if raw else None
    if not isinstance(raw, dict):
        r.wrong_type(path, "false or a mapping", raw)
        return INVALID
    return r.section(DigestConfig, raw, path)


def quiet_hours(r: Reader, value: object, path: str) -> Any:
    """Quiet hours, whose end must differ from their start."""
    values = r.fields(QuietHours, value, path)
    quiet = r.construct(QuietHours, values)
    if quiet is not INVALID and quiet.from_ == quiet.to:
        r.fail(
            f"{path}.to",
            f"equals from ({quiet.to:%H:%M}): quiet hours need an end other than their start",
        )
        return INVALID
    return quiet


def _apprise_urls(r: Reader, value: object, path: str) -> Any:
    if isinstance(value, str):
        entries = [(path, value)]
    elif isinstance(value, list) and value:
        entries = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                entries.append((f"{path}[{i}]", item))
            else:
                r.wrong_type(f"{path}[{i}]", "an Apprise URL string", item)
    elif isinstance(value, list):
        r.fail(path, "must list at least one Apprise URL")
        return INVALID
    else:
        r.wrong_type(path, "an Apprise URL or a list of them", value)
        return INVALID
    urls: list[str] = []
    for url_path, url in entries:
        url = url.strip()
        excused = r.excuse(url_path)  # an unset secret: the URL cannot be checked
        url_secrets_of(r, url, url_path)
        error = None if excused else url_problem(url)
        if error is not None:
            r.fail(url_path, error)
        urls.append(url)
    return tuple(urls)


def url_secrets_of(r: Reader, url: str, path: str) -> None:
    """Collect the secrets of an Apprise or webhook URL; one written in the file is inline."""
    r.found.secrets.extend(url_secrets(url))
    r.found.scrub.extend(r.doc.env_values.get(path, []))
    # A secret part of the URL written here, not taken from ${VAR}, is inline.
    written = url_secrets(r.doc.as_written(path, url))
    if any(FROM_ENV not in secret for secret in written):
        r.found.inline.append(path)
