"""The configuration loader: good files become exact values, bad ones name every problem."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from runwatch.config.durations import format_duration, parse_duration
from runwatch.config.keys import file_keys
from runwatch.config.loading import default_state_path, load_config, parse_config
from runwatch.config.settings import (
    CORE_FIELDS,
    DEFAULT_ENDPOINT,
    AlertsConfig,
    ChannelConfig,
    Config,
    DeliveryConfig,
    DigestConfig,
    HAConfig,
    HttpConfig,
    PollConfig,
    StateConfig,
    Templates,
    TLSConfig,
    WorkspaceConfig,
)
from runwatch.core.rules import Match, Rule
from runwatch.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

SECRET_KEY = "vi-secret-key-4f1c9a7e"
SMTP_PASSWORD = "smtp-password-93kd"
SLACK_C = "xoxToken0C9d8e7f6a5b4c3d"


def config_text(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n")


MINIMAL = config_text(
    """
    workspaces:
      - name: prod
        organization_id: org-123
        secret_key: ${DATATURE_VI_SECRET_KEY}
    channels:
      ops: json://127.0.0.1:9/hook
    rules:
      - name: failures
        match: {condition: [Failed, Error]}
        notify: [ops]
    """
)


def env(**extra: str) -> dict[str, str]:
    base = {"DATATURE_VI_SECRET_KEY": SECRET_KEY, "HOME": "/home/operator"}
    base.update(extra)
    return base


def problems_of(text: str, environ: dict[str, str] | None = None, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ=env() if environ is None else environ, **kw)  # type: ignore[arg-type]
    return caught.value.problems


# ----------------------------------------------------------------------------- good files


def test_it_loads_a_minimal_config_with_every_default() -> None:
    """A file with only the required keys gives the documented defaults everywhere else."""
    config = parse_config(MINIMAL, environ=env(XDG_STATE_HOME="/xdg"))
    assert config == Config(
        workspaces=(
            WorkspaceConfig(
                name="prod",
                organization_id="org-123",
                secret_key=SECRET_KEY,
                endpoint=DEFAULT_ENDPOINT,
            ),
        ),
        channels={
            "ops": ChannelConfig(
                kind="apprise", urls=("json://127.0.0.1:9/hook",), digest=DigestConfig()
            )
        },
        rules=(Rule(name="failures", match=Match(condition=("Failed", "Error")), notify=("ops",)),),
        state=StateConfig(path=Path("/xdg/runwatch/state.db")),
        ha=HAConfig(),
        poll=PollConfig(),
        delivery=DeliveryConfig(),
        templates=Templates(),
        alerts=AlertsConfig(),
        http=None,
        tls=TLSConfig(),
        source=None,
        warnings=(),
        secrets=(SECRET_KEY,),
    )


FULL = config_text(
    """
    workspaces:
      - name: prod
        organization_id: org-prod
        secret_key: ${DATATURE_VI_SECRET_KEY}
        endpoint: https://vi.example.com/
      - name: research
        organization_id: org-research
        secret_key_file: research.key
        endpoint: http://127.0.0.1:8080
    poll:
      interval: 1m30s
      page_size: 200
      request_timeout: 5s
      full_resync: 0s
      max_attempts: 3
      max_retry_time: 45s
      max_retry_after: 1m
      max_concurrency: 4
      max_requests_per_second: 2.5
      terminal_conditions: [Archived]
      max_pages: 50
    state:
      path: data/state.db
    tls:
      verify: true
      ca_bundle: ca.pem
    channels:
      ml-slack: slack://T0A1B2C3D/B0A1B2C3D/${SLACK_C}/#ml-runs
      oncall:
        - mailtos://alerts:${SMTP_PASSWORD}@smtp.example.com?to=oncall@example.com
        - json://127.0.0.1:9/hook
    rules:
      - name: failures
        match:
          condition: [Failed, Error]
          status: Reached
          previous: Running
          workspace: "prod*"
          flow: yolo-*
          training_project: [vision, audio]
          attributes: {team: ml, gpu: ["a100", "h100"]}
          event: [transition, new]
        notify: [ml-slack, oncall, ml-slack]
        title: "{{ run_id }} failed"
        body: "{{ reason or 'no reason' }}"
      - name: deletions
        match: {event: deleted}
        notify: oncall
    templates:
      title: "{{ run_id }}: {{ condition }}"
      body: "{{ workspace }}"
    delivery:
      max_age: 2h
      initial_backoff: 500ms
      max_backoff: 10m
      timeout: 10s
      min_interval: 0s
    alerts:
      notify: [oncall]
      api_down_after: 5m
      channel_failing_after: 1h
    http:
      listen: "[::1]:0"
    """
)


def test_it_loads_every_key_into_the_exact_dataclasses(tmp_path: Path) -> None:
    """Each key of a full file lands in its field, with durations in seconds and paths resolved."""
    (tmp_path / "research.key").write_text("  research-key-5d6e7f  \n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "runwatch.yaml"
    path.write_text(FULL)
    path.chmod(0o600)
    config = load_config(path, environ=env(SLACK_C=SLACK_C, SMTP_PASSWORD=SMTP_PASSWORD))
    assert config.workspaces == (
        WorkspaceConfig(
            name="prod",
            organization_id="org-prod",
            secret_key=SECRET_KEY,
            endpoint="https://vi.example.com",
        ),
        WorkspaceConfig(
            name="research",
            organization_id="org-research",
            secret_key="research-key-5d6e7f",
            secret_key_file=tmp_path / "research.key",
            endpoint="http://127.0.0.1:8080",
        ),
    )
    assert config.poll == PollConfig(
        interval=90.0,
        page_size=200,
        request_timeout=5.0,
        full_resync=0.0,
        max_attempts=3,
        max_retry_time=45.0,
        max_retry_after=60.0,
        max_concurrency=4,
        max_requests_per_second=2.5,
        terminal_conditions=("Archived",),
        max_pages=50,
        max_response_bytes=64 * 1024 * 1024,
    )
    assert config.state == StateConfig(path=tmp_path / "data" / "state.db")
    assert config.tls == TLSConfig(verify=True, ca_bundle=tmp_path / "ca.pem")
    assert {name: channel.urls for name, channel in config.channels.items()} == {
        "ml-slack": (f"slack://T0A1B2C3D/B0A1B2C3D/{SLACK_C}/#ml-runs",),
        "oncall": (
            f"mailtos://alerts:{SMTP_PASSWORD}@smtp.example.com?to=oncall@example.com",
            "json://127.0.0.1:9/hook",
        ),
    }
    assert config.rules == (
        Rule(
            name="failures",
            match=Match(
                condition=("Failed", "Error"),
                status=("Reached",),
                previous=("Running",),
                workspace=("prod*",),
                flow=("yolo-*",),
                training_project=("vision", "audio"),
                attributes={"team": ("ml",), "gpu": ("a100", "h100")},
                event=("transition", "new"),
            ),
            notify=("ml-slack", "oncall"),
            title="{{ run_id }} failed",
            body="{{ reason or 'no reason' }}",
        ),
        Rule(name="deletions", match=Match(event=("deleted",)), notify=("oncall",)),
    )
    assert config.templates == Templates(
        title="{{ run_id }}: {{ condition }}", body="{{ workspace }}"
    )
    assert config.delivery == DeliveryConfig(
        max_age=7200.0, initial_backoff=0.5, max_backoff=600.0, timeout=10.0, min_interval=0.0
    )
    assert config.alerts == AlertsConfig(
        notify=("oncall",), api_down_after=300.0, channel_failing_after=3600.0
    )
    assert config.http == HttpConfig(listen="[::1]:0")
    assert (config.http.host, config.http.port) == ("::1", 0)
    assert config.source == path
    assert config.warnings == ()


def test_it_loads_the_annotated_example_file(tmp_path: Path) -> None:
    """config.example.yaml loads once its ${VAR}s and credential file are provided."""
    (tmp_path / "research.key").write_text("research-key-0000\n")
    environ = {
        "DATATURE_VI_ORGANIZATION_ID": "org-prod",
        "DATATURE_VI_SECRET_KEY": SECRET_KEY,
        "SLACK_TOKEN_A": "T0A1B2C3D",
        "SLACK_TOKEN_B": "B0A1B2C3D",
        "SLACK_TOKEN_C": SLACK_C,
        "SMTP_PASSWORD": SMTP_PASSWORD,
        "WEBHOOK_AUTHORIZATION": "Bearer hook-token-8c7b6a",
        "WEBHOOK_SECRET": "webhook-signing-secret-1",
        "SLACK_BOT_TOKEN": "xoxb-1111-2222-slack-bot",
        "CREDENTIALS_DIRECTORY": str(tmp_path),
        "HOME": "/home/operator",
    }
    config = load_config(REPO / "config.example.yaml", environ=environ)
    assert [ws.name for ws in config.workspaces] == ["prod", "research"]
    assert config.workspaces[1].organization_id == "research-org"  # from ${VAR:-default}
    assert config.state.path == Path("/var/lib/runwatch/state.db")
    assert [rule.name for rule in config.rules] == [
        "failures",
        "finished",
        "deletions",
        "stuck-pending",
    ]
    assert {name: channel.kind for name, channel in config.channels.items()} == {
        "ml-slack": "apprise",
        "oncall": "apprise",
        "admins": "apprise",
        "team-email": "apprise",
        "audit": "webhook",
        "ml-runs": "slack",
    }
    assert config.alerts.notify == ("admins",)
    assert config.http == HttpConfig(listen="127.0.0.1:9464")
    assert config.warnings == ()
    for secret in (SECRET_KEY, SLACK_C, SMTP_PASSWORD, "hook-token-8c7b6a", "research-key-0000"):
        assert secret in config.secrets
    assert {"webhook-signing-secret-1", "xoxb-1111-2222-slack-bot"} <= set(config.secrets)


def test_it_documents_every_key_the_loader_accepts() -> None:
    """Every key the settings declare appears in config.example.yaml, under its section."""
    example = (REPO / "config.example.yaml").read_text()
    # Top-level sections, written or commented out (`# ha:`), each with the text below it.
    starts = list(re.finditer(r"^(?:# )?([a-z_]+):", example, re.MULTILINE))
    sections = {
        m.group(1): example[m.start() : nxt.start() if nxt else len(example)]
        for m, nxt in zip(starts, [*starts[1:], None], strict=True)
    }
    declared = file_keys(Config, CORE_FIELDS)
    assert {"workspaces[].enrich.max_metrics", "channels.*.quiet_hours.except"} <= set(declared)
    missing = [
        path
        for path in declared
        if f"{path.rpartition('.')[2]}:" not in sections.get(re.split(r"[.\[]", path)[0], "")
    ]
    assert missing == []


# ----------------------------------------------------------------------------- ${VAR}


def test_it_substitutes_variables_defaults_and_dollar_escapes() -> None:
    """${VAR} takes the environment, ${VAR:-x} falls back when unset or empty, $$ is a $."""
    text = MINIMAL.replace("org-123", "${ORG}-${REGION:-eu}-${TIER:-gold}-$$5")
    config = parse_config(text, environ=env(ORG="acme", TIER=""))
    assert config.workspaces[0].organization_id == "acme-eu-gold-$5"


def test_it_reads_numbers_and_flags_from_substituted_strings() -> None:
    """`${PAGE_SIZE:-50}` is a string in YAML but stands for a number where one is expected."""
    text = MINIMAL + config_text(
        """
        poll:
          page_size: ${PAGE_SIZE}
          max_requests_per_second: ${RPS:-}
          interval: ${IV}
        tls:
          verify: ${VERIFY}
        """
    )
    config = parse_config(text, environ=env(PAGE_SIZE="200", IV="2m", VERIFY="true"))
    assert config.poll.page_size == 200
    assert config.poll.max_requests_per_second is None
    assert config.poll.interval == 120.0
    assert config.tls.verify is True


def test_it_keeps_literal_numbers_strictly_typed() -> None:
    """A quoted number written in the file is a string, not an integer."""
    problems = problems_of(MINIMAL + 'poll: {page_size: "50"}\n')
    assert problems == ["poll.page_size: expected an integer, got a string (line 11)"]


def test_it_names_the_path_and_variable_of_an_unset_reference() -> None:
    """An unset ${VAR} without default is one error naming where and which variable."""
    problems = problems_of(MINIMAL, environ={"HOME": "/home/operator"})
    assert problems == [
        "workspaces[0].secret_key: environment variable DATATURE_VI_SECRET_KEY is not set "
        "(or write ${DATATURE_VI_SECRET_KEY:-default}) (line 4)"
    ]


# ----------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1d2h3m4s5ms", 93784.005),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        ("0s", 0.0),
        ("45", 45.0),
        ("2.5", 2.5),
        (30, 30.0),
        (0.25, 0.25),
    ],
)
def test_it_parses_durations(value: object, seconds: float) -> None:
    """Durations are unit-suffixed strings or plain seconds."""
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["", "s", "5 minutes", "30m1h", "1h1h", "-5s", "1w", "5S", "1e3", "nan", True, None, -1, [1]],
)
def test_it_refuses_what_is_not_a_duration(value: object) -> None:
    """Unknown units, wrong order, negatives, booleans and non-scalars raise ValueError."""
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("seconds", [0.0, 0.5, 1.0, 59.0, 90.0, 3600.0, 5400.0, 93784.0])
def test_it_formats_durations_that_parse_back(seconds: float) -> None:
    """format_duration writes what parse_duration reads back to the same value."""
    assert parse_duration(format_duration(seconds)) == seconds


# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"STATE_DIRECTORY": "/var/lib/runwatch"}, "/var/lib/runwatch/state.db"),
        ({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b", "HOME": "/h"}, "/var/lib/a/state.db"),
        ({"XDG_STATE_HOME": "/x/state", "HOME": "/h"}, "/x/state/runwatch/state.db"),
        ({"XDG_STATE_HOME": "relative", "HOME": "/h"}, "/h/.local/state/runwatch/state.db"),
        ({"HOME": "/h"}, "/h/.local/state/runwatch/state.db"),
    ],
)
def test_it_chooses_the_default_state_path(environ: dict[str, str], expected: str) -> None:
    """systemd's state directory wins, then XDG_STATE_HOME, then ~/.local/state."""
    assert default_state_path(environ) == Path(expected)


def test_it_resolves_relative_paths_against_the_config_directory(tmp_path: Path) -> None:
    """state.path relative to the file's directory; ~ is HOME from the given environment."""
    path = tmp_path / "etc" / "runwatch.yaml"
    path.parent.mkdir()
    path.write_text(MINIMAL + "state: {path: db/state.db}\n")
    assert load_config(path, environ=env()).state.path == tmp_path / "etc" / "db" / "state.db"
    config = parse_config(MINIMAL + "state: {path: ~/rw.db}\n", environ=env(HOME=str(tmp_path)))
    assert config.state.path == tmp_path / "rw.db"


SECRET_FILE_CONFIG = MINIMAL.replace(
    "secret_key: ${DATATURE_VI_SECRET_KEY}", "secret_key_file: vi.key"
)


def test_it_reads_secret_key_file_from_the_credentials_directory(tmp_path: Path) -> None:
    """A relative secret_key_file is looked up in $CREDENTIALS_DIRECTORY, stripped."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "vi.key").write_text(f"\n  {SECRET_KEY}\n")
    (tmp_path / "vi.key").write_text("the-wrong-one-next-to-the-config")
    config = parse_config(
        SECRET_FILE_CONFIG, environ=env(CREDENTIALS_DIRECTORY=str(creds)), base_dir=tmp_path
    )
    assert config.workspaces[0].secret_key == SECRET_KEY
    assert SECRET_KEY in config.secrets


def test_it_reads_secret_key_file_next_to_the_config_without_systemd(tmp_path: Path) -> None:
    """Without $CREDENTIALS_DIRECTORY a relative secret_key_file is relative to the file."""
    (tmp_path / "vi.key").write_text(SECRET_KEY + "\n")
    path = tmp_path / "runwatch.yaml"
    path.write_text(SECRET_FILE_CONFIG)
    assert load_config(path, environ=env()).workspaces[0].secret_key == SECRET_KEY


def test_it_refuses_an_empty_secret_key_file_naming_the_file(tmp_path: Path) -> None:
    """An empty key file is an error naming the key path and the file."""
    (tmp_path / "vi.key").write_text(" \n")
    problems = problems_of(SECRET_FILE_CONFIG, base_dir=tmp_path)
    assert problems == [
        f"workspaces[0].secret_key_file: {str(tmp_path / 'vi.key')!r} is empty (line 4)"
    ]


# ----------------------------------------------------------------------------- errors


def test_it_reports_every_problem_together_with_path_and_line() -> None:
    """One ConfigError lists each problem, in file order, each with its path and line."""
    text = config_text(
        """
        workspaces:
          - name: prod
            organization_id: org-1
            secret_key: ${DATATURE_VI_SECRET_KEY}
            endpont: https://api.vi.datature.com
        poll:
          interval: soon
          page_size: 0
          max_attempts: yes
        channels:
          ml-slack: json://127.0.0.1:9/a
          oncall: json://127.0.0.1:9/b
        rules:
          - name: failures
            match: {condition: Failed, event: created}
            notify: [ml-slack, oncal]
          - name: failures
            notify: []
        http: {listen: "127.0.0.1:99999"}
        """
    )
    assert problems_of(text) == [
        "workspaces[0].endpont: unknown key (line 5); did you mean 'endpoint'?",
        "poll.interval: 'soon' is not a duration (line 7); "
        "write e.g. 30s, 15m, 2h, 1d, 1h30m, 500ms (or a number of seconds)",
        "poll.page_size: 0 is out of range 1..1000 (line 8)",
        "poll.max_attempts: expected an integer, got a boolean (line 9)",
        "rules[0].match.event: unknown event kind 'created' (line 15); "
        "use one of: transition, new, deleted, overdue",
        "rules[0].notify[1]: unknown channel 'oncal' (line 16); channels are: ml-slack, oncall",
        "rules[1].name: duplicate rule name 'failures' (line 17); also rules[0].name",
        "rules[1].notify: must name at least one channel (line 18)",
        "http.listen: '127.0.0.1:99999' is not host:port (line 19); "
        "write e.g. 127.0.0.1:9464 or [::1]:9464 (port 0..65535)",
    ]


def test_it_names_the_source_in_the_error(tmp_path: Path) -> None:
    """The exception's text names the file and counts the problems."""
    path = tmp_path / "bad.yaml"
    path.write_text("workspaces: []\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ=env())
    assert caught.value.source == str(path)
    assert str(caught.value).startswith(f"3 configuration error(s) in {path}:")


def test_it_refuses_a_missing_file() -> None:
    """A file that cannot be opened is a ConfigError, not an OSError."""
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(Path("/nonexistent/runwatch.yaml"), environ=env())


def test_it_refuses_a_plain_workspace_name_that_no_workspace_has() -> None:
    """A typo in match.workspace is an error; a glob matching nothing yet is not."""
    problems = problems_of(
        MINIMAL.replace("{condition: [Failed, Error]}", "{workspace: [prod, prdo, 'staging-*']}")
    )
    assert problems == [
        "rules[0].match.workspace[1]: no workspace is named 'prdo' (line 9); workspaces are: prod"
    ]


def test_it_supports_anchors_and_merge_keys() -> None:
    """Shared settings can be written once with &anchor and merged with <<: *anchor."""
    text = config_text(
        """
        workspaces:
          - &base
            name: prod
            organization_id: org-1
            secret_key: ${DATATURE_VI_SECRET_KEY}
          - <<: *base
            name: staging
        channels: {ops: "json://127.0.0.1:9/hook"}
        rules: [{name: all, notify: [ops]}]
        """
    )
    config = parse_config(text, environ=env())
    assert [(ws.name, ws.organization_id) for ws in config.workspaces] == [
        ("prod", "org-1"),
        ("staging", "org-1"),
    ]
    assert config.rules == (Rule(name="all", match=Match(), notify=("ops",)),)
