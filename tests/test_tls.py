"""TLS towards the Vi API, against the simulator served over HTTPS on 127.0.0.1.

A private CA and a server certificate for 127.0.0.1 are made with the `openssl` command in
a temporary directory. Verification is on by default, so that server is refused with a
certificate error that says what to do; `tls.ca_bundle` naming the CA makes it work (and a
bundle of another CA does not); `tls: {verify: false}` makes it work and logs a warning.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness import Outcome, cli_env, run_cli, write_config

from runwatch.errors import ViTransportError
from runwatch.simulator.server import Simulator
from runwatch.vi.client import ViClient

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command")


@dataclass(frozen=True)
class Pki:
    ca: Path  # PEM of the CA that signed the server certificate
    other_ca: Path  # PEM of an unrelated CA
    server_cert: Path
    server_key: Path


def openssl(*args: str, cwd: Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=runwatch test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate it signed for IP 127.0.0.1, and an unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=d,
    )  # fmt: skip
    (d / "server.ext").write_text(
        "subjectAltName = IP:127.0.0.1\n"
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature\n"
        "extendedKeyUsage = serverAuth\n"
        "authorityKeyIdentifier = keyid\n"
    )
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        cwd=d,
    )  # fmt: skip
    return Pki(
        ca=d / "ca.pem",
        other_ca=d / "other-ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
    )


@pytest.fixture
def https_sim(pki: Pki) -> Iterator[Simulator]:
    """The simulator serving HTTPS with the server certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    sim = Simulator(runs=25, active=3, seed=4)
    sim.start(ssl_context=context)
    try:
        yield sim
    finally:
        sim.stop()


def runwatch(config: Path, *args: str) -> Outcome:
    env = cli_env()
    # Only the configuration decides what is trusted: no CA from the environment.
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        env.pop(name, None)
    out = run_cli(*args, "-c", str(config), "--log-format", "json", env=env)
    assert "Traceback" not in out.stdout + out.stderr
    return out


def test_it_serves_the_simulator_over_https(https_sim: Simulator, pki: Pki) -> None:
    """The fixture is what it claims: an https:// URL whose certificate the CA verifies."""
    assert https_sim.url.startswith("https://127.0.0.1:")
    import urllib.request

    context = ssl.create_default_context(cafile=str(pki.ca))
    request = urllib.request.Request(
        f"{https_sim.url}/workspaces/{https_sim.organization_id}/runs?s=1",
        headers={
            "Authorization": f"Bearer {https_sim.secret_key}",
            "Organization-Id": https_sim.organization_id,
        },
    )
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        assert len(json.load(response)["items"]) == 1


async def test_it_refuses_a_certificate_it_cannot_verify_with_a_clear_error(
    https_sim: Simulator,
) -> None:
    """With verification on (the client's default), the poll fails on the certificate:
    a ViTransportError that names the problem and the setting to fix, not retried."""
    async with ViClient(
        endpoint=https_sim.url,
        organization_id=https_sim.organization_id,
        secret_key=https_sim.secret_key,
        timeout=5,
    ) as client:
        with pytest.raises(ViTransportError) as caught:
            await client.list_page(None, 10)
        assert client.requests_made == 1  # a certificate does not get better on retry
    message = str(caught.value)
    assert "certificate" in message and "tls.ca_bundle" in message
    assert https_sim.url in message
    assert caught.value.permanent
    assert https_sim.request_count() == 0  # no request was sent over the untrusted line


def test_it_verifies_by_default_and_fails_the_poll(tmp_path: Path, https_sim: Simulator) -> None:
    """A configuration without a tls section verifies against the public CAs: exit 1, the
    certificate error on stdout and in the log, and the secret key never sent."""
    cfg = write_config(tmp_path, https_sim, channels={"hook": "json://127.0.0.1:9/hook"})
    out = runwatch(cfg, "once")
    assert out.code == 1
    assert "baseline poll FAILED" in out.stdout and "certificate" in out.stdout
    [failed] = out.events("poll.failed")
    assert failed["reason"] == "transport" and "tls.ca_bundle" in failed["error"]
    assert out.events("config.warning") == []
    assert https_sim.request_count() == 0


def test_it_trusts_the_ca_bundle_it_is_given(
    tmp_path: Path, https_sim: Simulator, pki: Pki
) -> None:
    """`tls.ca_bundle` naming the private CA makes the poll work, with no warning."""
    cfg = write_config(
        tmp_path,
        https_sim,
        channels={"hook": "json://127.0.0.1:9/hook"},
        tls={"ca_bundle": str(pki.ca)},
    )
    out = runwatch(cfg, "once")
    assert out.code == 0, out.stderr
    assert "baseline poll ok" in out.stdout
    assert out.events("baseline.recorded")[0]["runs"] == 25
    assert out.events("config.warning") == []
    assert https_sim.request_count("list") >= 1


def test_it_refuses_a_server_not_signed_by_the_ca_bundle(
    tmp_path: Path, https_sim: Simulator, pki: Pki
) -> None:
    """A bundle of another CA replaces the trust store: the server is still refused."""
    cfg = write_config(
        tmp_path,
        https_sim,
        channels={"hook": "json://127.0.0.1:9/hook"},
        tls={"ca_bundle": str(pki.other_ca)},
    )
    out = runwatch(cfg, "once")
    assert out.code == 1 and "certificate" in out.stdout
    assert https_sim.request_count() == 0


def test_it_needs_verify_false_to_skip_verification_and_warns(
    tmp_path: Path, https_sim: Simulator
) -> None:
    """`tls: {verify: false}` makes the poll work against the unknown certificate, and both
    `check` and the poll say loudly that verification is off."""
    cfg = write_config(
        tmp_path, https_sim, channels={"hook": "json://127.0.0.1:9/hook"}, tls={"verify": False}
    )
    checked = runwatch(cfg, "check")
    assert checked.code == 0
    assert "tls: verify OFF" in checked.stdout
    assert "warning: tls.verify is false" in checked.stdout

    out = runwatch(cfg, "once")
    assert out.code == 0, out.stderr
    assert "baseline poll ok" in out.stdout
    [warning] = out.events("config.warning")
    assert warning["level"] == "warning"
    assert "tls.verify is false" in warning["message"] and "tls.ca_bundle" in warning["message"]
    assert https_sim.request_count("list") >= 1
