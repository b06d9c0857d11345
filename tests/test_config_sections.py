"""The configuration's newer sections: console links, enrichment, response bounds, the state
URL, high availability, loading without secrets, and a user without a home directory."""

from __future__ import annotations

import pwd
import socket
from pathlib import Path

import pytest
from test_config import MINIMAL, SECRET_KEY, config_text, env

from runwatch.config.describe import describe
from runwatch.config.keys import SECRET_NOT_LOADED
from runwatch.config.loading import default_state_path, load_config
from runwatch.config.settings import (
    DEFAULT_CONSOLE_URL,
    Config,
    EnrichConfig,
    HAConfig,
    StateConfig,
)
from runwatch.errors import ConfigError

PG_PASSWORD = "pg-password-5e4d3c2b"


def load(tmp_path: Path, text: str, *, mode: int = 0o600, **extra: str) -> Config:
    """`text` written to a real file (with `mode`) and loaded with env() plus `extra`."""
    path = tmp_path / "runwatch.yaml"
    path.write_text(text)
    path.chmod(mode)
    return load_config(path, environ=env(**extra))


def problems(tmp_path: Path, text: str, **extra: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, **extra)
    return caught.value.problems


def with_workspace_keys(lines: str) -> str:
    """MINIMAL with `lines` (already indented for a workspace) added to its workspace."""
    return MINIMAL.replace(
        "    secret_key: ${DATATURE_VI_SECRET_KEY}\n",
        f"    secret_key: ${{DATATURE_VI_SECRET_KEY}}\n{lines}",
    )


# ----------------------------------------------------------------------------- workspaces


def test_it_defaults_the_console_url_and_enrichment(tmp_path: Path) -> None:
    """Without console_url or enrich a workspace links to the Vi console and enriches Succeeded."""
    (ws,) = load(tmp_path, MINIMAL).workspaces
    assert ws.console_url == DEFAULT_CONSOLE_URL == "https://vi.datature.com/org/{organization_id}"
    assert ws.enrich == EnrichConfig(
        metrics=("Succeeded",), project_names=True, timeout=5.0, max_metrics=6
    )


def test_it_reads_a_console_url_template_and_enrichment(tmp_path: Path) -> None:
    """A console_url naming both placeholders and an enrich section land as written."""
    text = with_workspace_keys(
        "    console_url: https://vi.example.com/{organization_id}/runs/{run_id}\n"
        "    enrich: {metrics: [Succeeded, 'Fail*'], project_names: false, timeout: 2s,"
        " max_metrics: 3}\n"
    )
    (ws,) = load(tmp_path, text).workspaces
    assert ws.console_url == "https://vi.example.com/{organization_id}/runs/{run_id}"
    assert ws.enrich == EnrichConfig(
        metrics=("Succeeded", "Fail*"), project_names=False, timeout=2.0, max_metrics=3
    )


def test_it_turns_metrics_off_with_an_empty_list(tmp_path: Path) -> None:
    """`metrics: []` is allowed here and means no metrics are fetched."""
    (ws,) = load(tmp_path, with_workspace_keys("    enrich: {metrics: []}\n")).workspaces
    assert ws.enrich.metrics == ()


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("https://vi.example.com/{project}", "{project} is not a known name"),
        ("https://vi.example.com/{}", "{} is not a known name"),
        ("https://vi.example.com/{run_id.__class__}", "{run_id.__class__} is not a known name"),
        ("https://vi.example.com/{run_id", "is not a valid template"),
        ("ftp://vi.example.com/{run_id}", "does not make an http(s) URL"),
    ],
)
def test_it_refuses_a_console_url_that_does_not_format_with_only_its_names(
    tmp_path: Path, template: str, expected: str
) -> None:
    """console_url may use {organization_id} and {run_id} only, and must make an http(s) URL."""
    (problem,) = problems(tmp_path, with_workspace_keys(f"    console_url: '{template}'\n"))
    assert problem.startswith("workspaces[0].console_url: ")
    assert expected in problem
    assert "(line 5)" in problem


def test_it_checks_enrichment_values(tmp_path: Path) -> None:
    """max_metrics has a range, timeout is a duration above 0, project_names is a flag."""
    text = with_workspace_keys(
        "    enrich:\n      max_metrics: 0\n      timeout: 0s\n      project_names: maybe\n"
    )
    assert problems(tmp_path, text) == [
        "workspaces[0].enrich.max_metrics: 0 is out of range 1..100 (line 6)",
        "workspaces[0].enrich.timeout: must be longer than 0s (line 7)",
        "workspaces[0].enrich.project_names: expected true or false, got a string (line 8)",
    ]


# ----------------------------------------------------------------------------- poll


@pytest.mark.parametrize(
    ("written", "size"),
    [
        ("64MiB", 64 * 1024**2),
        ("512KiB", 512 * 1024),
        ("1GiB", 1024**3),
        ("10MB", 10_000_000),
        ("65536", 65_536),
        ("1.5MiB", 1_572_864),
    ],
)
def test_it_reads_max_response_bytes_in_bytes_or_units(
    tmp_path: Path, written: str, size: int
) -> None:
    """A size is a number of bytes or a number with a binary or decimal unit."""
    config = load(tmp_path, MINIMAL + f"poll: {{max_response_bytes: {written}}}\n")
    assert config.poll.max_response_bytes == size


def test_it_defaults_max_response_bytes_to_64_mib(tmp_path: Path) -> None:
    """Left out, a response may be up to 64 MiB."""
    assert load(tmp_path, MINIMAL).poll.max_response_bytes == 64 * 1024 * 1024


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("1000", "poll.max_response_bytes: 1000B is too small: at least 64KiB (line 12)"),
        ("32KiB", "poll.max_response_bytes: 32KiB is too small: at least 64KiB (line 12)"),
        (
            "64 megs",
            "poll.max_response_bytes: '64 megs' is not a size (line 12); "
            "write e.g. 64MiB, 512KiB, 1GiB, 10MB (or a number of bytes)",
        ),
        ("true", "poll.max_response_bytes: a boolean is not a size (line 12); "),
    ],
)
def test_it_refuses_a_response_bound_that_is_not_a_size_of_64_kib_or_more(
    tmp_path: Path, written: str, expected: str
) -> None:
    """Below 64 KiB, or not a size at all, is refused with the key and line."""
    (problem,) = problems(tmp_path, MINIMAL + f"poll:\n  max_response_bytes: {written}\n")
    assert problem.startswith(expected)


# ----------------------------------------------------------------------------- state


PG_URL = "postgresql://runwatch:${PGPASSWORD}@db.example.com:5432/runwatch?sslmode=require"


def test_it_reads_a_postgresql_url_with_the_password_from_the_environment(tmp_path: Path) -> None:
    """state.url selects PostgreSQL; a ${VAR} password is a secret, masked when described."""
    config = load(tmp_path, MINIMAL + f"state: {{url: '{PG_URL}'}}\n", PGPASSWORD=PG_PASSWORD)
    assert config.state == StateConfig(url=PG_URL.replace("${PGPASSWORD}", PG_PASSWORD))
    assert config.state.path is None
    assert config.state.backend == "postgresql"
    assert PG_PASSWORD in config.secrets
    lines = describe(config)
    assert (
        "state: PostgreSQL postgresql://runwatch:****@db.example.com:5432/runwatch?sslmode=require"
        in lines
    )
    assert not any(PG_PASSWORD in line for line in lines)
    with pytest.raises(ConfigError, match="the state is in PostgreSQL"):
        config.state.sqlite_path()


@pytest.mark.parametrize(
    "url",
    [
        "postgres://runwatch@db.example.com/runwatch",
        "postgresql://runwatch@db.example.com/runwatch?passfile=/etc/runwatch/pgpass",
        "postgresql:///runwatch?host=/var/run/postgresql",
    ],
)
def test_it_accepts_postgresql_urls_without_a_password(tmp_path: Path, url: str) -> None:
    """postgres:// works too, and a passfile (or PGPASSFILE) means no password in the URL."""
    config = load(tmp_path, MINIMAL + f"state: {{url: '{url}'}}\n", mode=0o644)
    assert config.state.url == url
    assert config.warnings == ()


def test_it_warns_about_a_password_written_inline_in_a_readable_file(tmp_path: Path) -> None:
    """A password in the URL itself is inline: the readable-file warning names state.url."""
    url = f"postgresql://runwatch:{PG_PASSWORD}@db.example.com/runwatch"
    config = load(tmp_path, MINIMAL + f"state: {{url: '{url}'}}\n", mode=0o644)
    (warning,) = config.warnings
    assert "state.url" in warning and "chmod 600" in warning
    assert PG_PASSWORD not in warning
    assert PG_PASSWORD in config.secrets


def test_it_refuses_both_state_path_and_url(tmp_path: Path) -> None:
    """path and url are alternatives: giving both is one error on the section."""
    text = MINIMAL + "state:\n  path: state.db\n  url: postgresql://db/runwatch\n"
    assert problems(tmp_path, text) == [
        "state: give at most one of state.path and state.url (line 11)"
    ]


def test_it_refuses_a_url_that_is_not_postgresql_without_showing_it(tmp_path: Path) -> None:
    """A wrong scheme is named, but the URL, which may hold a password, is not repeated."""
    url = "mysql://runwatch:${PGPASSWORD}@db.example.com/runwatch"
    (problem,) = problems(tmp_path, MINIMAL + f"state: {{url: '{url}'}}\n", PGPASSWORD=PG_PASSWORD)
    assert problem.startswith("state.url: must be a postgresql:// URL")
    assert PG_PASSWORD not in problem and "mysql" not in problem


# ----------------------------------------------------------------------------- ha


def test_it_defaults_ha_to_a_30s_lease_named_after_the_host(tmp_path: Path) -> None:
    """Without an ha section the lease is 30s and the instance is the host name."""
    config = load(tmp_path, MINIMAL)
    assert config.ha == HAConfig(lease=30.0, instance=socket.gethostname())


def test_it_reads_ha_with_a_postgresql_state(tmp_path: Path) -> None:
    """ha's lease and instance land as written, with no warning next to a state.url."""
    text = MINIMAL + "state: {url: 'postgresql://db/runwatch'}\nha: {lease: 1m, instance: w-2}\n"
    config = load(tmp_path, text)
    assert config.ha == HAConfig(lease=60.0, instance="w-2")
    assert config.warnings == ()
    assert "ha: instance w-2, workspace leases of 1m" in describe(config)


def test_it_warns_when_ha_is_given_without_a_postgresql_state(tmp_path: Path) -> None:
    """ha with a SQLite state does nothing, and the loader says so."""
    (warning,) = load(tmp_path, MINIMAL + "ha: {instance: w-1}\n").warnings
    assert warning.startswith("ha is set but state.url is not")


def test_it_refuses_a_lease_shorter_than_3s(tmp_path: Path) -> None:
    """A lease under 3s could expire between two renewals of a healthy instance."""
    text = MINIMAL + "ha:\n  lease: 2s\n  instance: ''\n"
    assert problems(tmp_path, text) == [
        "ha.lease: must be at least 3s (line 12)",
        "ha.instance: must not be empty (line 13)",
    ]


# ----------------------------------------------------------------------------- without secrets


NO_SECRETS = config_text(
    """
    workspaces:
      - name: prod
        organization_id: org-1
        secret_key: ${DATATURE_VI_SECRET_KEY}
      - name: research
        organization_id: org-2
        secret_key_file: /nonexistent/research.key
    state:
      url: postgresql://runwatch:${PGPASSWORD}@db.example.com/runwatch
    channels:
      mail: mailtos://alerts:${SMTP_PASSWORD}@smtp.example.com?to=a@example.com
      hook: {webhook: {url: "https://hooks.example.com/x", secret: "${WEBHOOK_SECRET}"}}
      team: {slack: {token: "${SLACK_BOT_TOKEN}", channel: "#ml"}}
    rules:
      - name: all
        notify: [mail, hook, team]
    """
)


def test_it_loads_without_secrets_when_told_they_are_not_needed(tmp_path: Path) -> None:
    """need_secrets=False: unset secret ${VAR}s and an unreadable key file become placeholders."""
    path = tmp_path / "runwatch.yaml"
    path.write_text(NO_SECRETS)
    config = load_config(path, environ={"HOME": "/home/operator"}, need_secrets=False)
    assert [ws.secret_key for ws in config.workspaces] == [SECRET_NOT_LOADED] * 2
    assert config.channels["hook"].webhook is not None
    assert config.channels["hook"].webhook.secret == SECRET_NOT_LOADED
    assert config.channels["team"].slack is not None
    assert config.channels["team"].slack.token == SECRET_NOT_LOADED
    assert SECRET_NOT_LOADED in config.channels["mail"].urls[0]
    assert config.state.url is not None and SECRET_NOT_LOADED in config.state.url
    assert config.secrets == ()
    assert "workspace prod: secret key not loaded; " in "\n".join(describe(config))


def test_it_still_names_every_missing_secret_when_they_are_needed(tmp_path: Path) -> None:
    """The same file with need_secrets=True names each unset variable and the key file."""
    path = tmp_path / "runwatch.yaml"
    path.write_text(NO_SECRETS)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"HOME": "/home/operator"})
    assert [p.partition(":")[0] for p in caught.value.problems] == [
        "workspaces[0].secret_key",
        "workspaces[1].secret_key_file",
        "state.url",
        "channels.mail",
        "channels.hook.webhook.secret",
        "channels.team.slack.token",
    ]


def test_it_validates_everything_else_without_secrets(tmp_path: Path) -> None:
    """need_secrets=False excuses only secrets: a bad key or an unset non-secret still fails."""
    text = NO_SECRETS.replace("organization_id: org-2", "organization_id: ${ORG}") + (
        "poll: {page_size: 0}\n"
    )
    path = tmp_path / "runwatch.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"HOME": "/home/operator"}, need_secrets=False)
    assert caught.value.problems == [
        "workspaces[1].organization_id: environment variable ORG is not set "
        "(or write ${ORG:-default}) (line 6)",
        "poll.page_size: 0 is out of range 1..1000 (line 17)",
    ]


# ----------------------------------------------------------------------------- no home


@pytest.fixture
def no_passwd_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process runs as a uid without a passwd entry, as under systemd DynamicUser=."""

    def getpwuid(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", getpwuid)


@pytest.mark.usefixtures("no_passwd_entry")
def test_it_refuses_the_default_state_path_for_a_user_without_a_home(tmp_path: Path) -> None:
    """No $HOME and no passwd entry: a ConfigError telling to set state.path, no traceback."""
    path = tmp_path / "runwatch.yaml"
    path.write_text(MINIMAL)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"DATATURE_VI_SECRET_KEY": SECRET_KEY})
    (problem,) = caught.value.problems
    assert problem.startswith("state.path: not given, and there is no default")
    assert "set state.path" in problem
    with pytest.raises(ConfigError, match=r"set state\.path"):
        default_state_path({})


@pytest.mark.usefixtures("no_passwd_entry")
def test_it_loads_for_a_user_without_a_home_given_a_state_path(tmp_path: Path) -> None:
    """With state.path, $STATE_DIRECTORY or $HOME the missing passwd entry does not matter."""
    environ = {"DATATURE_VI_SECRET_KEY": SECRET_KEY}
    path = tmp_path / "runwatch.yaml"
    path.write_text(MINIMAL + "state: {path: /var/lib/runwatch/state.db}\n")
    assert load_config(path, environ=environ).state.path == Path("/var/lib/runwatch/state.db")
    path.write_text(MINIMAL)
    config = load_config(path, environ={**environ, "STATE_DIRECTORY": "/var/lib/rw"})
    assert config.state.path == Path("/var/lib/rw/state.db")
    config = load_config(path, environ={**environ, "HOME": "/home/x"})
    assert config.state.path == Path("/home/x/.local/state/runwatch/state.db")


@pytest.mark.usefixtures("no_passwd_entry")
def test_it_refuses_a_tilde_path_for_a_user_without_a_home(tmp_path: Path) -> None:
    """`~` cannot be expanded without a home: an error on that key, not a KeyError."""
    path = tmp_path / "runwatch.yaml"
    path.write_text(MINIMAL + "state: {path: ~/state.db}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"DATATURE_VI_SECRET_KEY": SECRET_KEY})
    assert caught.value.problems == [
        "state.path: '~' needs a home directory, and this user has none; write the full path "
        "(line 11)"
    ]
