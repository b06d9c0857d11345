"""The systemd unit: its required settings, systemd's own verdict on it, and its exposure score."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "runwatch.service"
MAX_EXPOSURE = 2.0

analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed")


def settings(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value given, in order (keys like SystemCallFilter repeat)."""
    parsed: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            parsed.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        parsed[section].setdefault(key.strip(), []).append(value.strip())
    return parsed


def runnable_copy(directory: Path, text: str | None = None) -> Path:
    """The unit, copied with an ExecStart= binary that exists here (verify insists on one)."""
    text = UNIT.read_text() if text is None else text
    replaced, count = re.subn(
        r"^ExecStart=.*$", f"ExecStart={sys.executable} -c pass", text, flags=re.MULTILINE
    )
    assert count == 1
    copy = directory / "runwatch.service"
    copy.write_text(replaced)
    return copy


def run_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert analyze is not None
    return subprocess.run([analyze, *args], capture_output=True, text=True, timeout=60, check=False)


REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecStart": "/opt/runwatch/bin/runwatch run -c /etc/runwatch/config.yaml",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "WatchdogSec": "120",
    "Restart": "on-failure",
    "RestartSec": "10",
    "RestartPreventExitStatus": "78",
    "TimeoutStopSec": "30",
    "DynamicUser": "yes",
    "StateDirectory": "runwatch",
    "ConfigurationDirectory": "runwatch",
    "ReadOnlyPaths": "/etc/runwatch",
    "SupplementaryGroups": "runwatch-config",
    "LoadCredential": "vi-secret-key:/etc/credstore/runwatch-vi-secret-key",
    "Environment": "PYTHONUNBUFFERED=1",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateMounts": "yes",
    "PrivateUsers": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
}


@pytest.mark.parametrize(("key", "value"), REQUIRED.items(), ids=list(REQUIRED))
def test_it_sets_each_required_service_option(key: str, value: str) -> None:
    """The [Service] section sets each required option exactly once, to the required value."""
    service = settings(UNIT.read_text())["Service"]
    assert service.get(key) == [value]


def test_it_filters_system_calls_to_the_service_set_minus_privileged_ones() -> None:
    """The syscall filter allows @system-service and then denies @privileged and @resources."""
    service = settings(UNIT.read_text())["Service"]
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]


def test_it_starts_after_the_network_and_with_the_system() -> None:
    """The unit waits for network-online.target and is enabled into multi-user.target."""
    unit = settings(UNIT.read_text())
    assert unit["Unit"]["After"] == ["network-online.target"]
    assert unit["Unit"]["Wants"] == ["network-online.target"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@needs_analyze
def test_it_passes_systemd_analyze_verify_without_a_word(tmp_path: Path) -> None:
    """`systemd-analyze verify` prints nothing at all about the unit (any output is a fault)."""
    result = run_analyze("verify", str(runnable_copy(tmp_path)))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_analyze
def test_it_would_notice_a_bad_key_through_verify(tmp_path: Path) -> None:
    """The verify check is real: a misspelt option makes systemd-analyze say so."""
    broken = UNIT.read_text().replace("ProtectClock=yes", "ProtectClocks=yes")
    result = run_analyze("verify", str(runnable_copy(tmp_path, broken)))
    assert "ProtectClocks" in result.stdout + result.stderr


@needs_analyze
def test_it_keeps_the_exposure_level_at_most_two() -> None:
    """`systemd-analyze security --offline=yes` rates the unit's exposure at 2.0 or less."""
    result = run_analyze("security", "--offline=yes", str(UNIT))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    found = re.search(r"Overall exposure level for runwatch\.service: (\d+\.\d+)", result.stdout)
    assert found is not None, result.stdout
    assert float(found.group(1)) <= MAX_EXPOSURE
