"""How a command's failure reaches the operator: one clear line and an exit status.

A configuration error lists every problem and exits 78; an unusable state store says what
to do and exits 1; any other runwatch error is logged and exits 1. An exception runwatch did
not expect is a bug: it is logged once with its traceback (through the redacting log
pipeline, never raw to the terminal) and exits 1.
"""

from __future__ import annotations

import sys

import structlog

from runwatch.errors import ConfigError, RunwatchError, StoreError

log = structlog.get_logger("runwatch.cli")

EX_FAILURE, EX_CONFIG = 1, 78


def exit_status_of(exc: Exception) -> int:
    if isinstance(exc, ConfigError):
        log.error("config.invalid", source=exc.source, problems=exc.problems)
        print(f"runwatch: {exc}", file=sys.stderr)
        return EX_CONFIG
    if isinstance(exc, StoreError):
        log.error("state.unusable", error=str(exc))
        print(f"runwatch: {exc}", file=sys.stderr)
        return EX_FAILURE
    if isinstance(exc, RunwatchError):
        log.error("runwatch.failed", error=str(exc))
        return EX_FAILURE
    log.error("runwatch.crashed", error=type(exc).__name__, exc_info=exc)
    print(f"runwatch: internal error ({type(exc).__name__}); see the log above", file=sys.stderr)
    return EX_FAILURE
