"""Secrets never leave the configuration: not in output, logs, errors, or the state database.

One scenario drives every command as a real `runwatch` process with `--log-level debug
--log-format json`, through faults, against real services on loopback:

- the Vi API simulator, with a recognisable secret key (given through `${VAR}`);
- an SMTP server (aiosmtpd) that requires AUTH: the password, full of characters that must
  be percent-encoded, is written encoded inside a `mailto://user:PASSWORD@...` URL, and the
  server checks it, so the mail is really delivered with it;
- the json:// receiver, with a token in the URL path and another in a `+X-Api-Key=` header;
- a `slack://TokenA/TokenB/TokenC/` URL, which fails (every request that is not for
  127.0.0.1 goes to a dead proxy on loopback), to exercise the error paths.

Commands: check, notify-test, once (baseline), once --dry-run, once through a 401, a 500
storm, dropped connections and a refusing channel, runs, and `run` through faults until a
SIGTERM. Everything they print, what the daemon serves on /healthz and /metrics, every file
in the state directory (database, -wal, -shm, kept after each command) and every delivered
message are then searched for each secret, raw and percent-encoded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.smtp import AuthResult, LoginPassword
from harness import wait_until
from receiver import Receiver
from smtp_server import LoopbackController, Mailbox

from runwatch.simulator.server import Fault, Simulator

SECRET_KEY = "dtvi_ViKeyNeverPrinted" + "Q7w3Zr9" * 8
SMTP_USER = "alerts-bot"
SMTP_PASSWORD = "Sm7p-P@ss/w0rd%Leak!:#"
PATH_TOKEN = "PathTok3nWebhookNeverShown"
HEADER_TOKEN = "HdrTok3nApiKeyNeverShown"
SLACK_A, SLACK_B, SLACK_C = "T0SLACKAAA1", "B0SLACKBBB2", "SlackTokenC0NeverShownXyZ9"
SECRETS = {
    "secret key": SECRET_KEY,
    "SMTP password": SMTP_PASSWORD,
    "json path token": PATH_TOKEN,
    "json header token": HEADER_TOKEN,
    "slack token A": SLACK_A,
    "slack token B": SLACK_B,
    "slack token C": SLACK_C,
}


def forms(secret: str) -> set[str]:
    """The ways a secret can be written: raw, percent-encoded (either case), form-encoded."""
    encoded = urllib.parse.quote(secret, safe="")
    return {secret, encoded, encoded.lower(), urllib.parse.quote_plus(secret)}


@dataclass
class Transcript:
    """Everything the scenario's processes wrote, by step."""

    outputs: dict[str, tuple[int, str, str]] = field(default_factory=dict)

    def add(self, step: str, code: int, stdout: str, stderr: str) -> None:
        self.outputs[step] = (code, stdout, stderr)

    def logs(self, step: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.outputs[step][2].splitlines() if x.startswith("{")]

    def events(self, step: str, name: str) -> list[dict[str, Any]]:
        return [x for x in self.logs(step) if x.get("event") == name]


class SmtpAuth:
    """An aiosmtpd authenticator accepting exactly one user and password."""

    def __init__(self) -> None:
        self.attempts: list[tuple[bytes, bytes]] = []

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.attempts.append((auth_data.login, auth_data.password))
        ok = auth_data.login == SMTP_USER.encode() and auth_data.password == SMTP_PASSWORD.encode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data)


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, SmtpAuth, int]]:
    mailbox, auth = Mailbox(), SmtpAuth()
    controller = LoopbackController(
        mailbox,
        hostname="127.0.0.1",
        port=0,
        auth_require_tls=False,
        authenticator=auth,
    )
    controller.start()
    try:
        yield mailbox, auth, controller.port
    finally:
        controller.stop()


class Scenario:
    """The config, environment and state directory of one run of every command."""

    def __init__(self, tmp_path: Path, sim: Simulator, receiver: Receiver, smtp_port: int):
        self.state_dir = tmp_path / "state"
        self.config = tmp_path / "config.yaml"
        password = urllib.parse.quote(SMTP_PASSWORD, safe="")
        doc = {
            "workspaces": [
                {
                    "name": "prod",
                    "organization_id": sim.organization_id,
                    "secret_key": "${VI_SECRET_KEY}",
                    "endpoint": sim.url,
                }
            ],
            "poll": {
                "interval": "200ms",
                "page_size": 20,
                "request_timeout": "2s",
                "max_attempts": 2,
                "max_retry_time": "3s",
            },
            "state": {"path": str(self.state_dir / "state.db")},
            "channels": {
                "mail": (
                    f"mailto://{SMTP_USER}:{password}@127.0.0.1:{smtp_port}"
                    "?from=runwatch@example.com&to=ops@example.com"
                ),
                "hook": (
                    f"json://127.0.0.1:{receiver.port}/hooks/{PATH_TOKEN}?+X-Api-Key={HEADER_TOKEN}"
                ),
                "slack": "slack://${SLACK_A}/${SLACK_B}/${SLACK_C}/#ml-runs",
            },
            "rules": [{"name": "all", "match": {}, "notify": ["mail", "hook", "slack"]}],
            "delivery": {"min_interval": "0s", "initial_backoff": "1s", "timeout": "5s"},
            "http": {"listen": "127.0.0.1:0"},
        }
        self.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.config.chmod(0o600)
        dead_proxy = "http://127.0.0.1:9"  # the discard port: nothing listens, refused at once
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RUNWATCH_", "NOTIFY_"))},
            "VI_SECRET_KEY": SECRET_KEY,
            "SLACK_A": SLACK_A,
            "SLACK_B": SLACK_B,
            "SLACK_C": SLACK_C,
            # Slack must fail, and never reach the internet: only loopback goes direct.
            "HTTPS_PROXY": dead_proxy,
            "HTTP_PROXY": dead_proxy,
            "https_proxy": dead_proxy,
            "http_proxy": dead_proxy,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        self.transcript = Transcript()
        self.state_files: dict[str, bytes] = {}

    def argv(self, *args: str) -> list[str]:
        return [
            sys.executable, "-m", "runwatch", *args[:1], "-c", str(self.config),
            "--log-level", "debug", "--log-format", "json", *args[1:],
        ]  # fmt: skip

    def run(self, step: str, *args: str, expect: int) -> Transcript:
        proc = subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=60, env=self.env
        )
        self.transcript.add(step, proc.returncode, proc.stdout, proc.stderr)
        assert proc.returncode == expect, f"{step}: exit {proc.returncode}\n{proc.stderr}"
        assert "Traceback" not in proc.stdout + proc.stderr, step
        self.keep_state_files()
        return self.transcript

    def keep_state_files(self) -> None:
        """Remember every version of every state file (a -wal may be gone by the end)."""
        if not self.state_dir.exists():
            return
        for path in self.state_dir.iterdir():
            if path.is_file():
                self.state_files[f"{path.name}@{len(self.state_files)}"] = path.read_bytes()


def test_it_never_shows_a_secret_in_any_command_output_log_or_state(
    tmp_path: Path, receiver: Receiver, smtp: tuple[Mailbox, SmtpAuth, int]
) -> None:
    """check, notify-test, once, once --dry-run, runs and run, through a 401, 500s, dropped
    connections and failing channels at debug level: no secret in any byte they leave."""
    mailbox, auth, smtp_port = smtp
    with Simulator(runs=30, active=6, seed=21, secret_key=SECRET_KEY) as sim:
        s = Scenario(tmp_path, sim, receiver, smtp_port)
        active = sim.active_run_ids()

        t = s.run("check", "check", expect=0)
        t = s.run("notify-test", "notify-test", expect=1)  # slack fails; mail and hook work
        assert "mail: OK" in t.outputs["notify-test"][1]
        assert "slack: FAILED" in t.outputs["notify-test"][1]
        assert len(mailbox.envelopes) == 1 and len(receiver.received) == 1
        assert (SMTP_USER.encode(), SMTP_PASSWORD.encode()) in auth.attempts  # really used

        s.run("baseline", "once", expect=0)
        sim.append_condition(active[0], "Failed", reason="OOM", message="killed on gpu-3")
        s.run("dry-run", "once", "--dry-run", expect=0)
        s.run("deliver", "once", expect=75)  # mail and hook sent; slack failed and kept
        assert len(mailbox.envelopes) == 2 and len(receiver.received) == 2

        sim.inject(Fault(kind="status", status=401))
        t = s.run("401", "once", expect=1)
        assert "rejected the secret key" in t.outputs["401"][1]
        sim.inject(Fault(kind="status", status=500), count=10)
        s.run("500", "once", expect=1)
        sim.clear_faults()
        sim.inject(Fault(kind="drop"), count=10)
        s.run("drop", "once", expect=1)
        sim.clear_faults()

        receiver.set_mode("fail")
        sim.append_condition(active[1], "Failed", reason="NaN loss")
        t = s.run("hook refusing", "once", expect=75)
        assert any(e["channel"] == "hook" for e in t.events("hook refusing", "delivery.failed"))
        receiver.set_mode("ok")
        s.run("runs", "runs", expect=0)

        # The daemon, through a 500, a dropped connection and a 401, until SIGTERM.
        sim.inject(Fault(kind="status", status=500))
        sim.inject(Fault(kind="drop"))
        sim.inject(Fault(kind="status", status=401))
        sim.append_condition(active[2], "Succeeded")
        proc = subprocess.Popen(
            s.argv("run"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=s.env
        )
        streams: dict[str, list[str]] = {"stdout": [], "stderr": []}

        def drain(name: str, stream: Any) -> None:
            for line in stream:
                streams[name].append(line)

        readers = [
            threading.Thread(target=drain, args=("stdout", proc.stdout), daemon=True),
            threading.Thread(target=drain, args=("stderr", proc.stderr), daemon=True),
        ]
        for reader in readers:
            reader.start()
        served: dict[str, str] = {}
        try:
            # The hook's refused message is retried after its backoff, the new one sent: four
            # in all; every email went out the first time: four as well.
            wait_until(lambda: len(receiver.received) >= 4, what="the daemon's deliveries")
            wait_until(lambda: len(mailbox.envelopes) >= 4, what="the daemon's emails")
            url = next(
                json.loads(x)["url"] for x in list(streams["stderr"]) if "http.listening" in x
            )
            for page in ("/healthz", "/metrics"):
                with urllib.request.urlopen(url + page, timeout=10) as response:
                    served[page] = response.read().decode()
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
            for reader in readers:
                reader.join(timeout=10)
        stdout, stderr = "".join(streams["stdout"]), "".join(streams["stderr"])
        s.transcript.add("run", code, stdout, stderr)
        s.keep_state_files()
        assert code == 0 and "Traceback" not in stdout + stderr
        assert "runwatch_" in served["/metrics"] and "workspaces" in served["/healthz"]

    # The error paths really ran, at debug level.
    t = s.transcript
    everything = [e for step in t.outputs for e in t.logs(step)]
    assert any(e.get("logger", "").startswith(("httpx", "httpcore")) for e in everything)
    assert "auth" in {e["reason"] for e in t.events("run", "poll.failed")}
    assert any(e.get("event") == "delivery.failed" and e["channel"] == "slack" for e in everything)

    haystacks: dict[str, str] = {}
    for step, (_, stdout, stderr) in t.outputs.items():
        haystacks[f"{step} stdout"] = stdout
        haystacks[f"{step} stderr"] = stderr
    for page, text in served.items():
        haystacks[f"http {page}"] = text
    for name, data in s.state_files.items():
        haystacks[f"state file {name}"] = data.decode("latin-1")
    for i, message in enumerate(receiver.requests):
        # (not "path": the URL the receiver was called at, whose token it is given to own)
        haystacks[f"hook message {i}"] = json.dumps({k: message[k] for k in message if k != "path"})
    for i, envelope in enumerate(mailbox.envelopes):
        haystacks[f"email {i}"] = envelope.content.decode("latin-1")
    leaks = [
        f"{what} ({form!r}) in {where}"
        for what, secret in SECRETS.items()
        for form in forms(secret)
        for where, text in haystacks.items()
        if form in text
    ]
    assert leaks == [], "\n".join(leaks)
