"""sd_notify: datagrams received on real unix sockets, as systemd would receive them."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from runwatch.service.sdnotify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a file, and the NOTIFY_SOCKET value that names it."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path


@pytest.fixture
def abstract_listener() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace, and its NOTIFY_SOCKET value (leading @)."""
    name = f"runwatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        yield sock, "@" + name


def received(sock: socket.socket) -> list[str]:
    return sock.recv(65536).decode("utf-8").split("\n")


def test_it_sends_ready_and_status_in_one_datagram(listener: tuple[socket.socket, str]) -> None:
    """ready() with a status sends READY=1 and STATUS in a single datagram."""
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("watching 2 workspaces")
    assert received(sock) == ["READY=1", "STATUS=watching 2 workspaces"]


def test_it_sends_to_the_abstract_namespace(abstract_listener: tuple[socket.socket, str]) -> None:
    """A NOTIFY_SOCKET starting with @ reaches the abstract socket of that name."""
    sock, address = abstract_listener
    Notifier({"NOTIFY_SOCKET": address}).ready()
    assert received(sock) == ["READY=1"]


def test_it_sends_status_text_as_utf8(listener: tuple[socket.socket, str]) -> None:
    """Status text outside latin-1 arrives intact, encoded as UTF-8."""
    sock, path = listener
    Notifier({"NOTIFY_SOCKET": path}).status("läuft ✓ 実行中")
    assert received(sock) == ["STATUS=läuft ✓ 実行中"]


def test_it_flattens_newlines_so_a_value_cannot_add_keys(
    listener: tuple[socket.socket, str],
) -> None:
    """A newline in a status cannot smuggle in a second line such as READY=1."""
    sock, path = listener
    Notifier({"NOTIFY_SOCKET": path}).status("run failed\nREADY=1")
    assert received(sock) == ["STATUS=run failed READY=1"]


def test_it_sends_watchdog_and_stopping(listener: tuple[socket.socket, str]) -> None:
    """watchdog() and stopping() send WATCHDOG=1 and STOPPING=1."""
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.watchdog()
    notifier.stopping()
    assert received(sock) == ["WATCHDOG=1"]
    assert received(sock) == ["STOPPING=1"]


def test_it_sends_reloading_with_the_monotonic_clock(listener: tuple[socket.socket, str]) -> None:
    """reloading() sends RELOADING=1 and MONOTONIC_USEC read from CLOCK_MONOTONIC."""
    sock, path = listener
    before = time.monotonic_ns() // 1000
    Notifier({"NOTIFY_SOCKET": path}).reloading()
    after = time.monotonic_ns() // 1000
    reloading, monotonic = received(sock)
    assert reloading == "RELOADING=1"
    key, value = monotonic.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_it_sends_arbitrary_fields(listener: tuple[socket.socket, str]) -> None:
    """send() writes each keyword as a KEY=value line."""
    sock, path = listener
    Notifier({"NOTIFY_SOCKET": path}).send(STATUS="degraded", ERRNO="5")
    assert received(sock) == ["STATUS=degraded", "ERRNO=5"]


def test_it_reads_the_process_environment_by_default(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an explicit mapping, NOTIFY_SOCKET is taken from os.environ."""
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    Notifier().ready()
    assert received(sock) == ["READY=1"]


def test_it_does_nothing_without_notify_socket() -> None:
    """Outside systemd the notifier is disabled and every call is a silent no-op."""
    notifier = Notifier({})
    assert not notifier.enabled
    with capture_logs() as logs:
        notifier.ready("up")
        notifier.watchdog()
        notifier.reloading()
    assert logs == []
    assert notifier.watchdog_interval() is None


def test_it_never_raises_when_the_socket_is_gone(tmp_path: Path) -> None:
    """A NOTIFY_SOCKET that nobody listens on is logged at debug, not raised."""
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    with capture_logs() as logs:
        notifier.ready("up")
    assert [(e["event"], e["log_level"]) for e in logs] == [("sdnotify.failed", "debug")]


def test_it_ignores_an_unsupported_socket_address() -> None:
    """An address that is neither a path nor @abstract (e.g. vsock:) disables notifications."""
    notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    notifier.ready()


@pytest.mark.parametrize(
    ("watchdog_usec", "watchdog_pid", "interval"),
    [
        ("120000000", None, 60.0),
        ("120000000", "self", 60.0),
        ("120000000", "other", None),
        ("3000000", None, 1.5),
        (None, None, None),
        ("0", None, None),
        ("soon", None, None),
    ],
)
def test_it_pings_the_watchdog_at_half_its_timeout(
    listener: tuple[socket.socket, str],
    watchdog_usec: str | None,
    watchdog_pid: str | None,
    interval: float | None,
) -> None:
    """The ping interval is WATCHDOG_USEC/2, only when WATCHDOG_PID is unset or this process."""
    _, path = listener
    env = {"NOTIFY_SOCKET": path}
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = watchdog_usec
    if watchdog_pid is not None:
        env["WATCHDOG_PID"] = str(os.getpid() if watchdog_pid == "self" else os.getpid() + 1)
    assert Notifier(env).watchdog_interval() == interval
