"""Signals for the long-running commands: stop gracefully, stop now, reload."""

from __future__ import annotations

import asyncio
import os
import signal

import structlog

log = structlog.get_logger("runwatch.cli.signals")

EX_FAILURE = 1


def install_signal_handlers(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, reload: asyncio.Event | None
) -> None:
    """SIGTERM/SIGINT stop gracefully; a second one exits at once. SIGHUP asks for a reload."""

    def on_stop(signame: str) -> None:
        if stop.is_set():
            log.warning("daemon.killed", signal=signame)
            os._exit(EX_FAILURE)
        log.info("signal.received", signal=signame)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig.name)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reload.set)
