"""Secrets in the configuration: collected for redaction, warned about when written inline
in a readable file, and never shown in an error, a log record or `runwatch check`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_config import MINIMAL, SECRET_KEY, SLACK_C, SMTP_PASSWORD, config_text, env, problems_of

from runwatch.config.describe import describe
from runwatch.config.loading import load_config, parse_config
from runwatch.errors import ConfigError

# ----------------------------------------------------------------------------- secrets


INLINE_SECRETS = config_text(
    f"""
    workspaces:
      - name: prod
        organization_id: org-1
        secret_key: {SECRET_KEY}
    channels:
      slack: slack://T0A1B2C3D/B0A1B2C3D/{SLACK_C}/#ml
      mail: mailtos://alerts:{SMTP_PASSWORD}@smtp.example.com?to=a@example.com
      hook: "json://127.0.0.1:9/hook?+X-Api-Key=header-token-77aa"
    rules:
      - name: all
        notify: [slack, mail, hook]
    """
)


def test_it_collects_every_secret_for_log_redaction() -> None:
    """Secret keys, URL passwords, token path segments and header values are all collected."""
    config = parse_config(INLINE_SECRETS, environ=env())
    for secret in (SECRET_KEY, SLACK_C, SMTP_PASSWORD, "header-token-77aa"):
        assert secret in config.secrets
    assert "smtp.example.com" not in config.secrets
    assert "a@example.com" not in config.secrets


def test_it_warns_when_a_file_with_inline_secrets_is_readable_by_others(tmp_path: Path) -> None:
    """Inline secrets in a group/world-readable file give one warning naming the file and fix."""
    path = tmp_path / "runwatch.yaml"
    path.write_text(INLINE_SECRETS)
    path.chmod(0o644)
    (warning,) = load_config(path, environ=env()).warnings
    assert str(path) in warning
    assert "chmod 600" in warning
    assert "workspaces[0].secret_key" in warning
    assert "channels.mail" in warning
    assert SECRET_KEY not in warning


def test_it_does_not_warn_when_the_file_is_private(tmp_path: Path) -> None:
    """Mode 600 keeps inline secrets quiet."""
    path = tmp_path / "runwatch.yaml"
    path.write_text(INLINE_SECRETS)
    path.chmod(0o600)
    assert load_config(path, environ=env()).warnings == ()


def test_it_does_not_warn_when_secrets_come_from_the_environment(tmp_path: Path) -> None:
    """A readable file whose secrets are all ${VAR} references holds no secret."""
    path = tmp_path / "runwatch.yaml"
    path.write_text(
        MINIMAL.replace(
            "json://127.0.0.1:9/hook",
            "mailtos://alerts:${SMTP_PASSWORD}@smtp.example.com?to=a@example.com",
        )
    )
    path.chmod(0o644)
    config = load_config(path, environ=env(SMTP_PASSWORD=SMTP_PASSWORD))
    assert config.warnings == ()
    assert SMTP_PASSWORD in config.secrets


def test_it_warns_about_tls_verification_off_and_plain_http() -> None:
    """tls.verify false and a plain-HTTP endpoint to another machine each give a warning."""
    text = MINIMAL.replace("org-123", "org-123\n    endpoint: http://vi.example.com")
    config = parse_config(text + "tls: {verify: false}\n", environ=env())
    assert len(config.warnings) == 2
    assert "tls.verify is false" in config.warnings[1]
    assert "workspaces[0].endpoint" in config.warnings[0]


def test_it_never_shows_a_secret_in_an_error() -> None:
    """With secrets inline and from the environment, and misplaced, no error shows one."""
    text = config_text(
        f"""
        workspaces:
          - name: prod
            organization_id: org-1
            secret_key: {SECRET_KEY}
            secret_key_file: also.key
          - name: staging
            organization_id: [{SECRET_KEY}]
            secret_key: ${{SMTP_PASSWORD}}
        poll: {{interval: {SECRET_KEY}, page_size: {SLACK_C}}}
        tls: {{ca_bundle: "${{SMTP_PASSWORD}}"}}
        http: {{listen: "${{SMTP_PASSWORD}}"}}
        channels:
          slack: slack://T0A1B2C3D/bad!token!9/x
          mail: mailtos://alerts:${{SMTP_PASSWORD}}@smtp.example.com?to=a@example.com
          odd: "{SLACK_C}://x"
        rules:
          - name: all
            notify: [slakc, 7]
            title: 5
        """
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ=env(SMTP_PASSWORD=SMTP_PASSWORD))
    message = str(caught.value)
    assert len(caught.value.problems) >= 8
    for secret in (SECRET_KEY, SLACK_C, SMTP_PASSWORD, "bad!token!9"):
        assert secret not in message


def test_it_does_not_echo_the_source_line_of_a_yaml_error() -> None:
    """PyYAML quotes the offending line; the loader reports only its position."""
    text = f"workspaces:\n  - secret_key: {SECRET_KEY}: [\n"
    problems = problems_of(text)
    assert len(problems) == 1
    assert problems[0].startswith("invalid YAML: ")
    assert "(line 2)" in problems[0]
    assert SECRET_KEY not in problems[0]


@pytest.fixture
def apprise_records() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("apprise")
    handler, level = Keep(level=logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_it_keeps_apprise_from_logging_urls_while_checking(
    apprise_records: list[logging.LogRecord],
) -> None:
    """Apprise logs rejected URLs with their tokens; the loader's own checks log nothing."""
    text = MINIMAL.replace("json://127.0.0.1:9/hook", "slack://T0A1B2C3D/bad!token!9/x")
    problems = problems_of(text)
    assert problems == [
        "channels.ops: Apprise cannot use slack://…: "
        "An invalid Slack (second) Token (****) was specified. (line 6)"
    ]
    assert [r.getMessage() for r in apprise_records] == []


def test_it_describes_the_config_without_secrets() -> None:
    """describe() shows names, ids and privacy-form URLs, with custom header values masked."""
    text = INLINE_SECRETS + "http: {listen: 0.0.0.0:9464}\nalerts: {notify: mail}\n"
    lines = describe(parse_config(text, environ=env()))
    joined = "\n".join(lines)
    assert "workspace prod: organization org-1, endpoint https://api.vi.datature.com" in lines
    assert any(
        line.startswith("channel mail: mailtos://alerts:****@smtp.example.com") for line in lines
    )
    assert "X-Api-Key=****" in joined
    assert "rule all: event=transition|new -> slack, mail, hook" in lines
    assert "http: listening on 0.0.0.0:9464" in lines
    for secret in (SECRET_KEY, SLACK_C, SMTP_PASSWORD, "header-token-77aa"):
        assert secret not in joined


def test_it_never_reads_the_process_environment_when_given_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An explicit environ is the only source of ${VAR}s, even if os.environ has the name."""
    monkeypatch.setenv("DATATURE_VI_SECRET_KEY", "from-the-process")
    config = parse_config(MINIMAL, environ=env())
    assert config.workspaces[0].secret_key == SECRET_KEY
