"""Channels in the configuration: the short form, and the mapping form with exactly one of
urls, webhook and slack, plus digest, min_interval and quiet hours."""

from __future__ import annotations

import io
from datetime import time, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from test_config import config_text, env

from runwatch.cli.inspect_commands import notify_test
from runwatch.config.describe import describe
from runwatch.config.loading import load_config
from runwatch.config.settings import (
    ChannelConfig,
    Config,
    DigestConfig,
    QuietHours,
    SlackConfig,
    WebhookConfig,
)
from runwatch.delivery.lanes import build_senders
from runwatch.errors import ConfigError

SLACK_TOKEN = "xoxb-1234-5678-abcdefghijkl"
HOOK_SECRET = "hook-signing-secret-91ab"


def with_channels(channels: str, notify: str = "[ops]") -> str:
    """A valid file whose channels section is `channels` (a YAML block, indented by two)."""
    return (
        config_text(
            """
        workspaces:
          - name: prod
            organization_id: org-1
            secret_key: ${DATATURE_VI_SECRET_KEY}
        state: {path: /var/lib/runwatch/state.db}
        rules:
          - name: all
            notify: NOTIFY
        channels:
        """
        ).replace("NOTIFY", notify)
        + channels.strip("\n")
        + "\n"
    )


def load(tmp_path: Path, text: str, *, mode: int = 0o600) -> Config:
    path = tmp_path / "runwatch.yaml"
    path.write_text(text)
    path.chmod(mode)
    return load_config(path, environ=env(SLACK_TOKEN=SLACK_TOKEN, HOOK_SECRET=HOOK_SECRET))


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    message = str(caught.value)
    assert SLACK_TOKEN not in message and HOOK_SECRET not in message
    return caught.value.problems


# Channels start on line 10 of with_channels().
LINE = 10


def test_it_reads_the_short_form_as_an_apprise_channel_with_a_digest(tmp_path: Path) -> None:
    """`name: URL` and `name: [URLs]` are Apprise channels, digested by default."""
    text = with_channels(
        "  ops: json://127.0.0.1:9/a\n  team: [json://127.0.0.1:9/b, json://127.0.0.1:9/c]",
        notify="[ops, team]",
    )
    channels = load(tmp_path, text).channels
    assert channels == {
        "ops": ChannelConfig(kind="apprise", urls=("json://127.0.0.1:9/a",), digest=DigestConfig()),
        "team": ChannelConfig(
            kind="apprise",
            urls=("json://127.0.0.1:9/b", "json://127.0.0.1:9/c"),
            digest=DigestConfig(max_single=3, window=60.0, max_lines=50),
        ),
    }


def test_it_reads_the_mapping_form_with_every_option(tmp_path: Path) -> None:
    """urls, digest, min_interval and quiet_hours land in one ChannelConfig."""
    text = with_channels(
        """
  ops:
    urls: json://127.0.0.1:9/a
    digest: {max_single: 1, window: 5m, max_lines: 20}
    min_interval: 10s
    quiet_hours:
      from: 22:00
      to: "07:30"
      timezone: Europe/Berlin
      except: [Failed, "Err*"]
"""
    )
    (ops,) = load(tmp_path, text).channels.values()
    assert ops == ChannelConfig(
        kind="apprise",
        urls=("json://127.0.0.1:9/a",),
        digest=DigestConfig(max_single=1, window=300.0, max_lines=20),
        min_interval=10.0,
        quiet_hours=QuietHours(
            from_=time(22, 0),
            to=time(7, 30),
            timezone=ZoneInfo("Europe/Berlin"),
            except_=("Failed", "Err*"),
        ),
    )


def test_it_reads_a_signed_webhook_without_a_digest(tmp_path: Path) -> None:
    """A webhook has a URL and a secret (a secret, masked), and no digest unless asked."""
    text = with_channels(
        "  ops:\n    webhook: {url: 'https://hooks.example.com/rw', secret: '${HOOK_SECRET}'}"
    )
    config = load(tmp_path, text, mode=0o644)
    assert config.channels["ops"] == ChannelConfig(
        kind="webhook",
        webhook=WebhookConfig(url="https://hooks.example.com/rw", secret=HOOK_SECRET),
    )
    assert HOOK_SECRET in config.secrets
    assert config.warnings == ()
    assert "channel ops: signed webhook to https://hooks.example.com/rw" in describe(config)


def test_it_reads_a_slack_channel_with_its_defaults(tmp_path: Path) -> None:
    """A Slack channel takes a token and a channel; api_url and thread have defaults."""
    text = with_channels("  ops:\n    slack: {token: '${SLACK_TOKEN}', channel: C0123456789}")
    config = load(tmp_path, text)
    assert config.channels["ops"] == ChannelConfig(
        kind="slack",
        slack=SlackConfig(
            token=SLACK_TOKEN,
            channel="C0123456789",
            api_url="https://slack.com/api/",
            thread=True,
        ),
    )
    assert SLACK_TOKEN in config.secrets
    lines = describe(config)
    assert "channel ops: Slack C0123456789 via https://slack.com/api/ (thread replies)" in lines
    assert not any(SLACK_TOKEN in line for line in lines)


def test_it_ends_a_slack_api_url_with_a_slash_and_warns_about_plain_http(tmp_path: Path) -> None:
    """api_url gets its trailing "/"; plain http is quiet only for loopback."""
    text = with_channels(
        "  ops: {slack: {token: '${SLACK_TOKEN}', channel: '#ml-runs', "
        "api_url: 'http://127.0.0.1:8080/api', thread: false}}\n"
        "  far: {slack: {token: '${SLACK_TOKEN}', channel: '#ml', "
        "api_url: 'http://slack.example.com/api/'}}",
        notify="[ops, far]",
    )
    config = load(tmp_path, text)
    assert config.channels["ops"].slack == SlackConfig(
        token=SLACK_TOKEN, channel="#ml-runs", api_url="http://127.0.0.1:8080/api/", thread=False
    )
    (warning,) = config.warnings
    assert warning.startswith("channels.far.slack.api_url: http://slack.example.com/api/ is plain")


@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        (
            "{urls: 'json://127.0.0.1:9/a', webhook: {url: 'https://h.example.com', secret: x}}",
            f"channels.ops: give exactly one of urls, webhook and slack (urls and webhook are "
            f"set) (line {LINE})",
        ),
        (
            "{digest: false}",
            f"channels.ops: give exactly one of urls, webhook and slack (line {LINE})",
        ),
        ("{urls: []}", f"channels.ops.urls: must list at least one Apprise URL (line {LINE})"),
        (
            "{url: 'json://127.0.0.1:9/a'}",
            f"channels.ops.url: unknown key (line {LINE}); did you mean 'urls'?",
        ),
        (
            "{webhook: {url: 'https://h.example.com'}}",
            f"channels.ops.webhook.secret: required (line {LINE})",
        ),
        (
            "{webhook: {url: 'ftp://h.example.com/${HOOK_SECRET}', secret: '${HOOK_SECRET}'}}",
            f"channels.ops.webhook.url: is not an http(s) URL (it starts 'ftp') (line {LINE})",
        ),
        (
            "{slack: {token: '${HOOK_SECRET}', channel: C0123456789}}",
            f"channels.ops.slack.token: is not a Slack token: it should start with xoxb- "
            f"(a bot token) (line {LINE})",
        ),
        (
            "{slack: {token: '${SLACK_TOKEN}', channel: 'ml runs'}}",
            f"channels.ops.slack.channel: 'ml runs' is not a Slack channel: write its id "
            f"(e.g. C0123456789) or #name (lowercase, digits, '-', '_', '.') (line {LINE})",
        ),
        (
            "{slack: {token: '${SLACK_TOKEN}', channel: C0123456789}, digest: {max_single: 5}}",
            f"channels.ops.digest: a Slack channel edits one message per run in place, so it "
            f"takes no digest (line {LINE}); remove digest here (or write digest: false)",
        ),
        (
            "{urls: 'json://127.0.0.1:9/a', digest: often}",
            f"channels.ops.digest: expected false or a mapping, got a string (line {LINE})",
        ),
        (
            "{urls: 'json://127.0.0.1:9/a', digest: {max_single: 0, window: 0s}}",
            f"channels.ops.digest.max_single: 0 is out of range 1..1000 (line {LINE})",
        ),
        (
            "{urls: 'json://127.0.0.1:9/a', min_interval: soon}",
            f"channels.ops.min_interval: 'soon' is not a duration (line {LINE}); write e.g. "
            "30s, 15m, 2h, 1d, 1h30m, 500ms (or a number of seconds)",
        ),
        (
            "7",
            f"channels.ops: expected an Apprise URL, a list of them, or a mapping, got an "
            f"integer (line {LINE})",
        ),
    ],
)
def test_it_refuses_a_channel_mapping_that_is_not_one_whole_kind(
    tmp_path: Path, channel: str, expected: str
) -> None:
    """Each mistake in a channel is named with its key path and line, and shows no secret."""
    assert problems(tmp_path, with_channels(f"  ops: {channel}"))[0] == expected


def test_it_turns_a_digest_on_or_off_explicitly(tmp_path: Path) -> None:
    """`digest: false` on Apprise, `digest: true` on a webhook, `digest: false` on Slack."""
    text = with_channels(
        "  a: {urls: 'json://127.0.0.1:9/a', digest: false}\n"
        "  w: {webhook: {url: 'https://h.example.com', secret: '${HOOK_SECRET}'}, digest: true}\n"
        "  s: {slack: {token: '${SLACK_TOKEN}', channel: '#ml'}, digest: false}",
        notify="[a, w, s]",
    )
    channels = load(tmp_path, text).channels
    assert [channels[n].digest for n in "aws"] == [None, DigestConfig(), None]


@pytest.mark.parametrize(
    ("quiet", "expected"),
    [
        (
            "{from: '22:00', to: '22:00'}",
            f"channels.ops.quiet_hours.to: equals from (22:00): quiet hours need an end other "
            f"than their start (line {LINE})",
        ),
        (
            "{from: '24:00', to: '07:00'}",
            f"channels.ops.quiet_hours.from: '24:00' is not a time of day (line {LINE}); "
            "write HH:MM, 24-hour, e.g. 22:00",
        ),
        (
            "{from: 10pm, to: '07:00'}",
            f"channels.ops.quiet_hours.from: '10pm' is not a time of day (line {LINE}); "
            "write HH:MM, 24-hour, e.g. 22:00",
        ),
        ("{to: '07:00'}", f"channels.ops.quiet_hours.from: required (line {LINE})"),
        (
            "{from: '22:00', to: '07:00', timezone: Europe/Berln}",
            f"channels.ops.quiet_hours.timezone: unknown time zone 'Europe/Berln' (line {LINE}); "
            "use an IANA name, e.g. Europe/Berlin or UTC",
        ),
        (
            "{from: '22:00', to: '07:00', timezone: ../../etc/passwd}",
            f"channels.ops.quiet_hours.timezone: unknown time zone '../../etc/passwd' "
            f"(line {LINE}); use an IANA name, e.g. Europe/Berlin or UTC",
        ),
        (
            "{from: '22:00', to: '07:00', except: [Failed, 3]}",
            f"channels.ops.quiet_hours.except[1]: expected a condition name or glob, got an "
            f"integer (line {LINE})",
        ),
    ],
)
def test_it_refuses_quiet_hours_that_are_not_a_span_of_the_day(
    tmp_path: Path, quiet: str, expected: str
) -> None:
    """from and to are distinct HH:MM times; the zone is an IANA name; except lists globs."""
    text = with_channels(f"  ops: {{urls: 'json://127.0.0.1:9/a', quiet_hours: {quiet}}}")
    assert problems(tmp_path, text) == [expected]


def test_it_defaults_quiet_hours_to_utc_and_wraps_past_midnight(tmp_path: Path) -> None:
    """Without a zone quiet hours are UTC; from later than to is a span past midnight."""
    text = with_channels(
        "  ops: {urls: 'json://127.0.0.1:9/a', quiet_hours: {from: 23:30, to: 06:00}}"
    )
    (ops,) = load(tmp_path, text).channels.values()
    assert ops.quiet_hours == QuietHours(from_=time(23, 30), to=time(6, 0), timezone=timezone.utc)
    (line,) = [line for line in describe(load(tmp_path, text)) if line.startswith("channel ")]
    assert line.endswith("; quiet 23:30-06:00 UTC")


def test_it_warns_about_a_webhook_secret_written_inline(tmp_path: Path) -> None:
    """A webhook secret or Slack token in a readable file gets the inline-secret warning."""
    text = with_channels(
        f"  ops: {{webhook: {{url: 'https://h.example.com', secret: {HOOK_SECRET}}}}}\n"
        f"  team: {{slack: {{token: {SLACK_TOKEN}, channel: '#ml'}}}}",
        notify="[ops, team]",
    )
    (warning,) = load(tmp_path, text, mode=0o640).warnings
    assert "channels.ops.webhook.secret" in warning and "channels.team.slack.token" in warning
    assert HOOK_SECRET not in warning and SLACK_TOKEN not in warning


def test_it_builds_webhook_and_slack_senders_and_tests_each(tmp_path: Path) -> None:
    """A webhook and a Slack channel get a sender each; notify-test reports both failing to
    reach a closed port without showing the secret or the token."""
    text = with_channels(
        "  hook: {webhook: {url: 'http://127.0.0.1:9/hook', secret: '${HOOK_SECRET}'}}\n"
        "  team: {slack: {token: '${SLACK_TOKEN}', channel: '#ml', "
        "api_url: 'http://127.0.0.1:9/api/'}}",
        notify="[hook, team]",
    )
    config = load(tmp_path, text)
    assert set(build_senders(config.channels)) == {("hook", "webhook"), ("team", "slack")}
    out = io.StringIO()
    assert notify_test(config, [], out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("hook: FAILED http://127.0.0.1:9/hook: ConnectError")
    assert lines[1] == (
        "team: FAILED posting a test message: slack #ml via 127.0.0.1: "
        "chat.postMessage failed: ConnectError"
    )
    assert HOOK_SECRET not in out.getvalue() and SLACK_TOKEN not in out.getvalue()
