"""What `runwatch check` prints about a loaded configuration: one line per thing, no secret.

Theory: every line is built from the checked `Config` alone. Anything that may hold a
secret (Apprise and webhook URLs, a PostgreSQL URL) is shown through a masking form, and
every line is scrubbed of every secret the loader found, so a token that slipped into an
odd place is masked too. Secret keys and tokens are never shown at all.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence

from runwatch.config.apprise_urls import MASK, mask_secrets, private_url
from runwatch.config.durations import format_duration
from runwatch.config.keys import SECRET_NOT_LOADED
from runwatch.config.settings import ChannelConfig, Config, QuietHours, WorkspaceConfig
from runwatch.config.values import format_size
from runwatch.core.rules import Match, Rule


def describe(config: Config) -> list[str]:
    """Human-readable lines for `runwatch check`, with every secret masked."""
    secrets = sorted(set(config.secrets), key=len, reverse=True)
    lines: list[str] = []
    for ws in config.workspaces:
        lines.extend(_workspace(ws))
    poll, delivery, alerts = config.poll, config.delivery, config.alerts
    rps = (
        "unlimited" if poll.max_requests_per_second is None else f"{poll.max_requests_per_second:g}"
    )
    terminal = ", ".join(poll.terminal_conditions) or "built-in only"
    lines.append(
        f"poll: every {format_duration(poll.interval)}, page size {poll.page_size}, "
        f"request timeout {format_duration(poll.request_timeout)}, "
        f"full resync every {format_duration(poll.full_resync)}, "
        f"{poll.max_attempts} attempts within {format_duration(poll.max_retry_time)}, "
        f"Retry-After capped at {format_duration(poll.max_retry_after)}, "
        f"concurrency {poll.max_concurrency}, requests/s {rps}, "
        f"max pages {poll.max_pages}, responses up to {format_size(poll.max_response_bytes)}, "
        f"extra terminal conditions: {terminal}"
    )
    state = config.state
    if state.url is not None:
        lines.append(f"state: PostgreSQL {_postgres_url(state.url)}")
        lines.append(
            f"ha: instance {config.ha.instance}, workspace leases of "
            f"{format_duration(config.ha.lease)}"
        )
    else:
        lines.append(f"state: {state.path}")
    ca = f", CA bundle {config.tls.ca_bundle}" if config.tls.ca_bundle else ""
    lines.append(f"tls: verify {'on' if config.tls.verify else 'OFF'}{ca}")
    for name, channel in config.channels.items():
        lines.append(f"channel {name}: {_channel(channel, secrets)}")
    for rule in config.rules:
        lines.append(f"rule {rule.name}: {_rule(rule)}")
    lines.append(
        f"delivery: give up after {format_duration(delivery.max_age)}, backoff "
        f"{format_duration(delivery.initial_backoff)}..{format_duration(delivery.max_backoff)}, "
        f"timeout {format_duration(delivery.timeout)}, "
        f"at most one send per {format_duration(delivery.min_interval)} per channel"
    )
    if alerts.notify:
        lines.append(
            f"alerts: to {', '.join(alerts.notify)} when the API is down for "
            f"{format_duration(alerts.api_down_after)} or a channel fails for "
            f"{format_duration(alerts.channel_failing_after)}"
        )
    else:
        lines.append("alerts: off (alerts.notify is empty)")
    if config.http is not None:
        host, port = config.http.host, config.http.port
        lines.append(f"http: listening on {f'[{host}]' if ':' in host else host}:{port}")
    return [_scrub(line, secrets) for line in lines]


def _workspace(ws: WorkspaceConfig) -> list[str]:
    enrich = ws.enrich
    parts = []
    if enrich.metrics:
        parts.append(f"metrics on {'|'.join(enrich.metrics)} (at most {enrich.max_metrics} shown)")
    if enrich.project_names:
        parts.append("project names")
    extras = f"{', '.join(parts)} within {format_duration(enrich.timeout)}" if parts else "off"
    key = "not loaded" if ws.secret_key == SECRET_NOT_LOADED else "set"
    source = f" from {ws.secret_key_file}" if ws.secret_key_file is not None else ""
    return [
        f"workspace {ws.name}: organization {ws.organization_id}, endpoint {ws.endpoint}",
        f"workspace {ws.name}: secret key {key}{source}; console {ws.console_url}; "
        f"enrichment: {extras}",
    ]


def _channel(channel: ChannelConfig, secrets: Sequence[str]) -> str:
    if channel.kind == "apprise":
        shown = ", ".join(private_url(url, secrets=secrets) for url in channel.urls)
    elif channel.webhook is not None:
        shown = f"signed webhook to {_masked_url(channel.webhook.url, secrets)}"
    else:
        assert channel.slack is not None
        slack = channel.slack
        threads = "thread replies" if slack.thread else "no threads"
        shown = f"Slack {slack.channel} via {slack.api_url} ({threads})"
    extras = []
    if channel.digest is not None:
        d = channel.digest
        extras.append(
            f"digest after {d.max_single} in {format_duration(d.window)} "
            f"(at most {d.max_lines} lines)"
        )
    if channel.min_interval is not None:
        extras.append(f"at most one send per {format_duration(channel.min_interval)}")
    if channel.quiet_hours is not None:
        extras.append(_quiet(channel.quiet_hours))
    return shown + "".join(f"; {extra}" for extra in extras)


def _quiet(quiet: QuietHours) -> str:
    span = f"{quiet.from_:%H:%M}-{quiet.to:%H:%M} {quiet.timezone}"
    sent = f", except {'|'.join(quiet.except_)}" if quiet.except_ else ""
    return f"quiet {span}{sent}"


def _rule(rule: Rule) -> str:
    timing = []
    if rule.match.for_ is not None:
        timing.append(f"for={format_duration(rule.match.for_)}")
    if rule.match.stalled_for is not None:
        timing.append(f"stalled_for={format_duration(rule.match.stalled_for)}")
    if rule.repeat is not None:
        timing.append(f"repeat={format_duration(rule.repeat)}")
    criteria = " ".join([_match(rule.match), *timing])
    return f"{criteria} -> {', '.join(rule.notify)}"


def _match(match: Match) -> str:
    parts: list[str] = []
    default_events = ("overdue",) if match.timed else ("transition", "new")
    criteria: list[tuple[str, tuple[str, ...]]] = [
        ("event", match.event or default_events),
        ("condition", match.condition),
        ("status", match.status),
        ("previous", match.previous),
        ("workspace", match.workspace),
        ("flow", match.flow),
        ("training_project", match.training_project),
    ]
    for name, values in criteria:
        if values:
            parts.append(f"{name}={'|'.join(values)}")
    for key, values in match.attributes.items():
        parts.append(f"attributes.{key}={'|'.join(values)}")
    return " ".join(parts)


def _postgres_url(url: str) -> str:
    """The URL with its password (in the userinfo or ?password=) masked."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    query = "&".join(
        f"{k}={MASK}" if k == "password" else f"{k}={v}"
        for k, v in urllib.parse.parse_qsl(parts.query)
    )
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _masked_url(url: str, secrets: Sequence[str]) -> str:
    """A URL that may hold tokens in its path or query: token-like parts and query values
    masked."""
    parts = urllib.parse.urlsplit(url)
    query = "&".join(f"{k}={MASK}" for k, _ in urllib.parse.parse_qsl(parts.query))
    return mask_secrets(urllib.parse.urlunsplit(parts._replace(query=query)), secrets)


def _scrub(line: str, secrets: Sequence[str]) -> str:
    return mask_secrets(line, secrets).replace(SECRET_NOT_LOADED, "(not loaded)")
