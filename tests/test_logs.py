"""Logging: real output of the configured pipeline, captured in a stream."""

from __future__ import annotations

import io
import json
import logging
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import apprise
import pytest
import structlog

from runwatch.config.apprise_plugins import need
from runwatch.logs import configure_logging, register_secrets, reset_logging

SECRET = "vi-sk-7f3a9c1e55d04b2a"
log = structlog.get_logger("runwatch.test")

Configure = Callable[..., io.StringIO]


@pytest.fixture
def configured() -> Iterator[Configure]:
    """Configure logging into a fresh StringIO, and undo every global change afterwards."""

    def configure(level: str = "info", fmt: str = "json") -> io.StringIO:
        stream = io.StringIO()
        configure_logging(level, fmt, stream)  # type: ignore[arg-type]
        return stream

    yield configure
    reset_logging()
    structlog.contextvars.clear_contextvars()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_it_writes_json_lines_with_event_level_and_utc_timestamp(configured: Configure) -> None:
    """A stream that is not a terminal gets one JSON object per event, with its fields."""
    stream = configured(fmt="auto")
    before = datetime.now(timezone.utc)
    log.info("poll.done", workspace="prod", runs=12)
    log.warning("poll.slow", ms=4100)

    first, second = lines(stream)
    assert first["event"] == "poll.done"
    assert first["level"] == "info"
    assert first["workspace"] == "prod"
    assert first["runs"] == 12
    assert first["logger"] == "runwatch.test"
    stamp = datetime.fromisoformat(first["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=5) <= stamp <= datetime.now(timezone.utc)
    assert second["level"] == "warning"


def test_it_renders_key_value_pairs_for_the_console(configured: Configure) -> None:
    """The console format shows the event and key=value fields, uncoloured off a terminal."""
    stream = configured(fmt="console")
    log.info("poll.done", workspace="prod", runs=12)

    out = stream.getvalue()
    assert "poll.done" in out
    assert "workspace=prod" in out
    assert "runs=12" in out
    assert "\x1b[" not in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_it_uses_coloured_console_output_on_a_terminal() -> None:
    """Auto format on a real pseudo-terminal renders the console format with colours."""
    leader, follower = os.openpty()
    tty = open(follower, "w", encoding="utf-8", closefd=True)  # noqa: SIM115
    try:
        configure_logging("info", "auto", tty)
        log.info("poll.done", workspace="prod")
        tty.flush()
        output = b""
        deadline = time.monotonic() + 5
        while b"workspace" not in output and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.1)
            if ready:
                output += os.read(leader, 4096)
    finally:
        reset_logging()
        tty.close()
        os.close(leader)
    assert b"poll.done" in output
    assert b"\x1b[" in output
    assert not output.lstrip().startswith(b"{")


def test_it_merges_context_variables_into_events(configured: Configure) -> None:
    """Fields bound with structlog.contextvars appear on every event."""
    stream = configured()
    structlog.contextvars.bind_contextvars(workspace="prod", cycle=7)
    log.info("poll.done")
    assert lines(stream)[0] | {"workspace": "prod", "cycle": 7} == lines(stream)[0]


def test_it_suppresses_debug_at_info(configured: Configure) -> None:
    """At info, debug events from structlog and stdlib loggers are dropped."""
    stream = configured("info")
    log.debug("poll.page", page=1)
    logging.getLogger("runwatch.stdlib").debug("stdlib detail")
    log.info("poll.done")
    assert [line["event"] for line in lines(stream)] == ["poll.done"]


def test_it_shows_debug_at_debug(configured: Configure) -> None:
    """At debug, debug events from structlog and stdlib loggers are written."""
    stream = configured("debug")
    log.debug("poll.page", page=1)
    logging.getLogger("runwatch.stdlib").debug("stdlib detail")
    assert [line["event"] for line in lines(stream)] == ["poll.page", "stdlib detail"]


def test_it_routes_stdlib_logging_through_the_same_pipeline(configured: Configure) -> None:
    """A stdlib record becomes a JSON line with event, level, logger and timestamp."""
    stream = configured()
    logging.getLogger("asyncio").warning("Task was destroyed but it is pending: %s", "t1")
    (line,) = lines(stream)
    assert line["event"] == "Task was destroyed but it is pending: t1"
    assert line["level"] == "warning"
    assert line["logger"] == "asyncio"
    assert datetime.fromisoformat(line["timestamp"]).utcoffset() == timedelta(0)


def test_it_keeps_httpx_info_quiet_at_info(configured: Configure) -> None:
    """httpx and httpcore INFO lines (one per request) are dropped at info; warnings are kept."""
    stream = configured("info")
    logging.getLogger("httpx").info('HTTP Request: GET http://127.0.0.1/ "HTTP/1.1 200 OK"')
    logging.getLogger("httpcore.connection").info("connect_tcp.started")
    logging.getLogger("httpx").warning("httpx trouble")
    assert [line["event"] for line in lines(stream)] == ["httpx trouble"]


def test_it_lets_httpx_info_through_at_debug(configured: Configure) -> None:
    """At debug the httpx request lines are written."""
    stream = configured("debug")
    logging.getLogger("httpx").info("HTTP Request: GET http://127.0.0.1/")
    assert [line["event"] for line in lines(stream)] == ["HTTP Request: GET http://127.0.0.1/"]


def test_it_keeps_apprise_below_warning_silent_even_at_debug(configured: Configure) -> None:
    """A real Apprise failure logs its warning, but none of its (or urllib3's) debug lines."""
    stream = configured("debug")
    with socket.socket() as probe:  # a loopback port that refuses connections
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"json://bot:{SECRET}@127.0.0.1:{port}/hook"
    need(url)  # runwatch may have started Apprise's plugin manager empty in this process
    notifier = apprise.Apprise()
    assert notifier.add(url)
    assert not notifier.notify(title="run failed", body="payload-marker-3141")

    records = lines(stream)
    assert any(line["logger"].startswith("apprise") for line in records), "no apprise warning"
    assert {line["level"] for line in records} <= {"warning", "error", "critical"}
    assert "payload-marker-3141" not in stream.getvalue()
    assert "/hook" not in stream.getvalue()  # urllib3's debug line names the request path


def test_it_redacts_a_secret_in_the_event_and_in_fields(configured: Configure) -> None:
    """A registered secret is replaced by **** in the event, a field and a nested field."""
    stream = configured()
    register_secrets([SECRET])
    log.info(f"key {SECRET} used", header=f"Bearer {SECRET}", nested={"urls": [SECRET]})

    out = stream.getvalue()
    assert SECRET not in out
    (line,) = lines(stream)
    assert line["event"] == "key **** used"
    assert line["header"] == "Bearer ****"
    assert line["nested"] == {"urls": ["****"]}


def test_it_redacts_a_secret_inside_an_object_repr(configured: Configure) -> None:
    """A secret hidden in the repr of a non-string value is scrubbed from the rendered line."""

    class Holder:
        def __repr__(self) -> str:
            return f"Holder(token={SECRET!r})"

    stream = configured(fmt="console")
    register_secrets([SECRET])
    log.info("holder.seen", holder=Holder())
    assert "holder.seen" in stream.getvalue()
    assert SECRET not in stream.getvalue()


def test_it_redacts_a_secret_in_an_exception_message(configured: Configure) -> None:
    """The traceback of a logged exception keeps its type but loses the secret."""
    stream = configured()
    register_secrets([SECRET])
    try:
        raise PermissionError(f"rejected key {SECRET}")
    except PermissionError:
        log.exception("poll.failed", workspace="prod")

    assert SECRET not in stream.getvalue()
    (line,) = lines(stream)
    assert "PermissionError: rejected key ****" in line["exception"]


def test_it_redacts_a_secret_in_console_tracebacks(configured: Configure) -> None:
    """The console renderer's traceback is scrubbed as well."""
    stream = configured(fmt="console")
    register_secrets([SECRET])
    try:
        raise PermissionError(f"rejected key {SECRET}")
    except PermissionError:
        log.exception("poll.failed")
    assert "PermissionError: rejected key ****" in stream.getvalue()
    assert SECRET not in stream.getvalue()


def test_it_redacts_a_secret_in_stdlib_messages_and_exceptions(configured: Configure) -> None:
    """A stdlib logger's formatted message and exception text are scrubbed too."""
    stream = configured()
    register_secrets([SECRET])
    stdlib = logging.getLogger("httpx")
    stdlib.warning("retrying with %s", SECRET)
    try:
        raise ConnectionError(f"reset while sending {SECRET}")
    except ConnectionError:
        stdlib.exception("send failed")

    assert SECRET not in stream.getvalue()
    warning, error = lines(stream)
    assert warning["event"] == "retrying with ****"
    assert "ConnectionError: reset while sending ****" in error["exception"]


def test_it_redacts_the_percent_encoded_form_of_a_secret(configured: Configure) -> None:
    """A password written percent-encoded in an Apprise URL is scrubbed in that form too."""
    stream = configured()
    register_secrets(["p@ss word!"])
    log.warning("channel.failed", url="mailtos://alerts:p%40ss%20word%21@smtp.example.com")
    assert lines(stream)[0]["url"] == "mailtos://alerts:****@smtp.example.com"


def test_it_redacts_the_longer_of_two_overlapping_secrets_whole(configured: Configure) -> None:
    """When one secret contains another, the whole longer one is replaced."""
    stream = configured()
    register_secrets(["abcd", "abcdefgh"])
    log.info("x", v="abcdefgh and abcd")
    assert lines(stream)[0]["v"] == "**** and ****"


def test_it_ignores_secrets_shorter_than_four_characters(configured: Configure) -> None:
    """Registering a very short string does not blank it out everywhere."""
    stream = configured()
    register_secrets(["abc", ""])
    log.info("abc.event", value="abc")
    (line,) = lines(stream)
    assert line["event"] == "abc.event"
    assert line["value"] == "abc"


def test_it_replaces_the_previous_configuration_when_called_again(configured: Configure) -> None:
    """A second call sends everything to the new stream, once, at the new level."""
    first = configured("info")
    second = configured("debug")
    log.debug("poll.page")
    logging.getLogger("runwatch.stdlib").warning("stdlib once")

    assert first.getvalue() == ""
    assert [line["event"] for line in lines(second)] == ["poll.page", "stdlib once"]


def test_it_rejects_an_unknown_level() -> None:
    """A misspelt level is an error that names the choices."""
    with pytest.raises(ValueError, match="debug, info, warning"):
        configure_logging("verbose", "json", io.StringIO())
