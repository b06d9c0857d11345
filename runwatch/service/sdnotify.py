"""The systemd notification protocol (sd_notify), written out by hand.

One datagram of `KEY=value` lines to the unix socket named in `$NOTIFY_SOCKET`; a leading "@"
names the abstract namespace. Without the variable (not under systemd, or `Type=simple`) every
call is a no-op. Sending never raises: a lost notification costs at worst a watchdog restart,
while an exception here would take the daemon down for certain.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("runwatch.service.sdnotify")


class Notifier:
    """Tells systemd about readiness, status, reloads, shutdown and liveness."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if path.startswith("@"):
            self._address = "\0" + path[1:]
        elif path.startswith("/"):
            self._address = path
        elif path:  # e.g. vsock:, which systemd 252 never hands out
            log.debug("sdnotify.unsupported_socket", socket=path)
        self.enabled = self._address is not None
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")

    def send(self, **fields: str) -> None:
        """Send the fields as one datagram; a newline inside a value is flattened to a space."""
        if self._address is None or not fields:
            return
        # A newline in a value (a status text, say) would start a new KEY=value line.
        lines = (f"{key}={value.replace(chr(10), ' ')}" for key, value in fields.items())
        payload = "\n".join(lines).encode("utf-8", errors="replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload, self._address)
        except OSError as exc:
            log.debug("sdnotify.failed", fields=sorted(fields), error=str(exc))

    def ready(self, status: str | None = None) -> None:
        if status is None:
            self.send(READY="1")
        else:
            self.send(READY="1", STATUS=status)

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")

    def stopping(self) -> None:
        self.send(STOPPING="1")

    def reloading(self) -> None:
        # MONOTONIC_USEC is required by Type=notify-reload (systemd 253+) and ignored by 252.
        self.send(RELOADING="1", MONOTONIC_USEC=str(time.monotonic_ns() // 1000))

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of `WATCHDOG_USEC`), or None when none is due.

        None when notifications are off, the watchdog is not set, or it is meant for another
        process (`WATCHDOG_PID` names a different pid).
        """
        if not self.enabled or not self._watchdog_usec:
            return None
        if self._watchdog_pid and self._watchdog_pid != str(os.getpid()):
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        return usec / 2 / 1_000_000 if usec > 0 else None
