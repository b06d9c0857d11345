"""Every file in tests/configs/bad/ is refused with the error its first line expects.

Each file starts with `# expect: <text>`, a substring of the ConfigError message (usually
the key path, message and line). Optional `# secret: <text>` lines name strings written in
the file that must not appear in the message; the environment's secrets are always checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runwatch.config.loading import MAX_CONFIG_BYTES, load_config, parse_config
from runwatch.errors import ConfigError

BAD = Path(__file__).parent / "configs" / "bad"
FILES = sorted(BAD.glob("*.yaml"))

ENVIRON = {
    "DATATURE_VI_ORGANIZATION_ID": "org-corpus",
    "DATATURE_VI_SECRET_KEY": "corpus-secret-key-0001",
    "SMTP_PASSWORD": "corpus-smtp-password-7",
    "HOME": "/home/operator",
}
ENV_SECRETS = ("corpus-secret-key-0001", "corpus-smtp-password-7")


def header(path: Path, name: str) -> list[str]:
    prefix = f"# {name}: "
    with path.open("rb") as f:
        lines = f.read().decode("utf-8", "replace").splitlines()
    return [line[len(prefix) :] for line in lines if line.startswith(prefix)]


def test_it_has_a_corpus_worth_the_name() -> None:
    """At least twenty bad files, each saying what it expects."""
    assert len(FILES) >= 20
    assert all(len(header(path, "expect")) == 1 for path in FILES)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_it_refuses_each_bad_config_with_the_expected_error(path: Path) -> None:
    """Loading the file raises ConfigError containing the expected text and no secret."""
    (expected,) = header(path, "expect")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=ENVIRON)
    message = str(caught.value)
    assert expected in message
    assert caught.value.source == str(path)
    for secret in (*ENV_SECRETS, *header(path, "secret")):
        assert secret not in message


def test_it_refuses_a_file_over_one_mebibyte(tmp_path: Path) -> None:
    """A file past 1 MiB is refused before it is parsed, from disk or as text."""
    text = "# padding\n" * (MAX_CONFIG_BYTES // 10 + 1)
    path = tmp_path / "huge.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"at most 1048576 bytes \(1 MiB\)"):
        load_config(path, environ=ENVIRON)
    with pytest.raises(ConfigError, match=r"at most 1048576 bytes \(1 MiB\)"):
        parse_config(text, environ=ENVIRON)


def test_it_accepts_a_file_just_under_the_limit(tmp_path: Path) -> None:
    """The limit is the size, not a guess: a valid file padded to 1 MiB still loads."""
    body = (
        "workspaces: [{name: prod, organization_id: org, secret_key: k}]\n"
        "channels: {ops: 'json://127.0.0.1:9/hook'}\n"
        "rules: [{name: all, notify: [ops]}]\n"
    )
    padding = "#" * 99 + "\n"
    text = body + padding * ((MAX_CONFIG_BYTES - len(body)) // len(padding))
    assert len(text.encode()) <= MAX_CONFIG_BYTES
    path = tmp_path / "big.yaml"
    path.write_text(text)
    assert load_config(path, environ=ENVIRON).workspaces[0].name == "prod"
