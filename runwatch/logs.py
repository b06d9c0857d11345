"""Logging: one structlog pipeline for runwatch's own events and for the libraries' stdlib logs.

Every line, whether it came from `structlog.get_logger("runwatch.x")` or from a stdlib logger
(httpx, httpcore, apprise, asyncio), goes through the same processors and is written to the
same stream: JSON lines when the stream is not a terminal (systemd's journal), key=value with
colours on a terminal.

Secrets are redacted twice, as defense in depth: every string value of the event (the
formatted traceback included) has each registered secret, and any 12-character piece of one,
replaced by "****" (`runwatch.redaction`), and the final rendered line is scrubbed again,
which catches a secret hidden inside the repr of an object.
The callers' first duty is still never to log a secret; this only limits the damage of a
mistake.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from runwatch.redaction import MASK, Redactor

REDACTED = MASK

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Chatty libraries: their INFO lines (one per HTTP request) drown the daemon's own summary.
_QUIET_UNLESS_DEBUG = ("httpx", "httpcore")
# Apprise's DEBUG and INFO output holds message payloads and header secrets (apprise-notes.md),
# and urllib3 (under Apprise's requests) logs each request path, where Slack and Discord
# webhooks keep their tokens; so these stay at WARNING even when runwatch runs at debug.
_ALWAYS_WARNING = ("apprise", "urllib3", "requests")

_secrets_lock = threading.Lock()
# Swapped as a whole on registration, so the logging threads never see a half-built one.
_redactor = Redactor()
_handler: logging.Handler | None = None
_secretive_handler: logging.Handler | None = None


def register_secrets(secrets: Iterable[str]) -> None:
    """Add strings to redact from every log line from now on; shorter than 4 chars are ignored.

    The percent-encoded form of each secret is masked too, because a secret usually sits
    inside an Apprise URL, where it is written (and logged) encoded.
    """
    global _redactor
    with _secrets_lock:
        _redactor = _redactor.extended(secrets)


def redactor() -> Redactor:
    """What every log line is masked with: the secrets registered so far."""
    return _redactor


def _scrub(value: object, redact: Redactor) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _scrub(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub(v, redact) for v in value]
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: mask every registered secret, and pieces of one, in every string value."""
    redact = _redactor
    if not redact:
        return event_dict
    for key, value in event_dict.items():
        if key != "_record":  # the stdlib record itself is never rendered
            event_dict[key] = _scrub(value, redact)
    return event_dict


def _redacting(renderer: Processor) -> Processor:
    """Wrap the renderer so that the finished line is scrubbed once more."""

    def render(logger: WrappedLogger, method: str, event_dict: EventDict) -> Any:
        line = renderer(logger, method, event_dict)
        return _redactor(line) if isinstance(line, str) else line

    return render


class _NamedWriteLogger(structlog.WriteLogger):
    """A WriteLogger that remembers the name given to `get_logger`, for `add_logger_name`."""

    def __init__(self, name: str, file: TextIO) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        name = args[0] if args and isinstance(args[0], str) else "runwatch"
        return _NamedWriteLogger(name, self._file)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def configure_logging(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Send structlog and stdlib logging, redacted, to `stream` (default stderr) at `level`.

    Safe to call again (e.g. on reload): the previous configuration is replaced, not stacked.
    """
    numeric = LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"unknown log format {fmt!r}; use auto, json or console")
    out = sys.stderr if stream is None else stream
    tty = _is_tty(out)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Exceptions are formatted to plain text BEFORE redaction, so the message of an exception
    # is scrubbed too; the console renderer's own pretty tracebacks would bypass that.
    finishing: list[Processor] = [
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    renderer: Processor
    if fmt == "json" or (fmt == "auto" and not tty):
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=tty)

    structlog.configure(
        processors=[*shared, *finishing, _redacting(renderer)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_NamedWriteLoggerFactory(out),
        # Not cached: module-level loggers must pick up a reconfiguration (new level on reload).
        cache_logger_on_first_use=False,
    )

    global _handler, _secretive_handler
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *finishing,
            _redacting(renderer),
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    # The libraries that log secrets below WARNING get a handler of their own that never
    # writes below WARNING, whatever their loggers' level (Apprise's is DEBUG so that each
    # send can read its own details back; see delivery.apprise_channel).
    secretive_handler = logging.StreamHandler(out)
    secretive_handler.setFormatter(formatter)
    secretive_handler.setLevel(max(numeric, logging.WARNING))
    root = logging.getLogger()
    _remove_handlers()
    _handler, _secretive_handler = handler, secretive_handler
    root.addHandler(handler)
    root.setLevel(numeric)

    quiet = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for name in _QUIET_UNLESS_DEBUG:
        logging.getLogger(name).setLevel(quiet)
    # These get the handler directly and no propagation, so no other handler someone adds to
    # the root logger ever sees their records.
    for name in _ALWAYS_WARNING:
        secretive = logging.getLogger(name)
        secretive.setLevel(max(numeric, logging.WARNING))
        for other in [h for h in secretive.handlers if getattr(h, "runwatch_forwarder", False)]:
            secretive.removeHandler(other)  # a stand-in from before logging was set up
        secretive.addHandler(secretive_handler)
        secretive.propagate = False


def _remove_handlers() -> None:
    global _handler, _secretive_handler
    if _handler is not None:
        logging.getLogger().removeHandler(_handler)
    if _secretive_handler is not None:
        for name in _ALWAYS_WARNING:
            logging.getLogger(name).removeHandler(_secretive_handler)
    _handler = _secretive_handler = None


def reset_logging() -> None:
    """Undo `configure_logging` and forget the registered secrets (for tests)."""
    global _redactor
    with _secrets_lock:
        _redactor = Redactor()
    structlog.reset_defaults()
    _remove_handlers()
    for name in (*_QUIET_UNLESS_DEBUG, *_ALWAYS_WARNING):
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name in _ALWAYS_WARNING:
        logging.getLogger(name).propagate = True
    logging.getLogger().setLevel(logging.WARNING)  # the stdlib's default
