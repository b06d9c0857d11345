"""A local fake of Slack's Web API for tests: real HTTP on 127.0.0.1, Slack's own shapes.

Not a mock: runwatch talks to it over a socket exactly as to slack.com. It serves
`POST /api/chat.postMessage` and `POST /api/chat.update` with JSON or form bodies (Slack
takes both; a form's `blocks` is a JSON string), checks `Authorization: Bearer xoxb-...`
(or a form's `token`), resolves `#name` to the channel's id as Slack does for posts (an
update needs the id), and answers `{"ok": true, "channel": ..., "ts": ...}` or
`{"ok": false, "error": ...}` with Slack's error names: `not_authed`, `invalid_auth`,
`token_revoked`, `channel_not_found`, `not_in_channel`, `no_text`, `thread_not_found`,
`message_not_found`.

It keeps the channel's messages (top-level and thread replies, each with its edits) and
records every call. Tests steer it: `fail(method, ...)` queues answers (HTTP 429 with
Retry-After, `ok:false` errors, HTTP 5xx), `slow(method, seconds)` answers late,
`hold(method)` does the call's work and then keeps its answer back until `release()` (the
client waits, or is killed meanwhile),
`delete(ts)` removes a message as a person would, and `revoke()` kills the token. Waits are
condition waits with a deadline, never sleeps.
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

TOKEN = "xoxb-1111111111-2222222222-FAKEbotTOKENfortests42"
CHANNEL_ID = "C0123456789"
CHANNEL_NAME = "ml-runs"


@dataclass
class Message:
    """One message in a channel, as Slack would show it now (`versions`: every text it had)."""

    channel: str
    ts: str
    text: str
    blocks: list[Any]
    thread_ts: str | None = None
    reply_broadcast: bool = False
    versions: list[dict[str, Any]] = field(default_factory=list)  # posted, then each edit

    @property
    def edits(self) -> int:
        return len(self.versions) - 1


@dataclass(frozen=True)
class Call:
    """One request as it arrived and what it was answered."""

    method: str
    args: dict[str, Any]
    headers: dict[str, str]
    status: int
    answer: dict[str, Any]


@dataclass
class _Fault:
    status: int = 200
    error: str | None = None
    retry_after: str | None = None
    body: bytes | None = None  # a raw body instead of Slack's JSON
    channel: str | None = None  # only for calls naming this channel (as they name it)


class FakeSlack:
    """Slack's Web API on a free loopback port; a context manager (`with FakeSlack() as s:`)."""

    def __init__(
        self,
        token: str = TOKEN,
        channels: dict[str, str] | None = None,
        *,
        not_member: tuple[str, ...] = (),
    ) -> None:
        self.token = token
        self.channels = dict(channels or {CHANNEL_ID: CHANNEL_NAME})  # id -> name
        self.not_member = set(not_member)
        self.messages: dict[str, Message] = {}  # ts -> message, in posting order
        self.calls: list[Call] = []
        self.deleted: list[str] = []
        self._revoked = False
        self._faults: dict[str, list[_Fault]] = {}
        self._held: set[str] = set()
        self._delays: dict[str, float] = {}
        self._release = threading.Event()
        self._closing = threading.Event()
        self._ids = itertools.count(1)
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A client that gave up or was killed mid-answer is routine here, not a traceback.
        self._server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.port: int = self._server.server_address[1]
        self.api_url = f"http://127.0.0.1:{self.port}/api/"

    def __enter__(self) -> FakeSlack:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()
        self._release.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    # -- steering -------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        *,
        error: str | None = None,
        status: int = 200,
        retry_after: float | str | None = None,
        body: bytes | None = None,
        times: int = 1,
        channel: str | None = None,
    ) -> None:
        """Answer the next `times` calls of `method` (to `channel`, if given) so: `ok:false`
        with `error`, an HTTP `status` (429 answers `ratelimited` with `Retry-After`), or a
        raw `body`."""
        if status == 429 and error is None:
            error = "ratelimited"
        fault = _Fault(
            status=status,
            error=error,
            retry_after=None if retry_after is None else str(retry_after),
            body=body,
            channel=channel,
        )
        with self._changed:
            self._faults.setdefault(method, []).extend([fault] * times)

    def hold(self, method: str) -> None:
        """Do the next call of `method` (a post is posted), then keep its answer until
        `release()`: the client is left waiting, as when Slack or the network stalls."""
        with self._changed:
            self._held.add(method)
            self._release.clear()

    def slow(self, method: str, seconds: float) -> None:
        """Answer every later call of `method` only after `seconds` (real time): Slack slow."""
        with self._changed:
            self._delays[method] = seconds

    def release(self) -> None:
        self._release.set()

    def revoke(self) -> None:
        """Revoke the token: every later call answers `token_revoked`."""
        self._revoked = True

    def delete(self, ts: str) -> None:
        """Delete a message, as a person in the channel would."""
        with self._changed:
            self.messages.pop(ts)
            self.deleted.append(ts)

    # -- what happened ----------------------------------------------------------------------

    def top_level(self) -> list[Message]:
        """The channel's own messages (not thread replies, broadcast or not), oldest first."""
        with self._changed:
            return [m for m in self.messages.values() if m.thread_ts is None]

    def replies(self, ts: str) -> list[Message]:
        with self._changed:
            return [m for m in self.messages.values() if m.thread_ts == ts]

    def calls_to(self, method: str) -> list[Call]:
        with self._changed:
            return [c for c in self.calls if c.method == method]

    def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = ""
    ) -> None:
        """Wait until `predicate` holds, re-checked at every call; fail after `timeout` s."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout=timeout):
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")

    def arrived(self, method: str, count: int = 1) -> Callable[[], bool]:
        """A predicate for `wait_for`: `count` calls of `method` have arrived."""
        return lambda: sum(1 for c in self.calls if c.method == method) >= count

    # -- Slack's side ---------------------------------------------------------------------

    def _answer(
        self, method: str, args: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        with self._changed:
            faults = self._faults.get(method, [])
            fault = next(
                (f for f in faults if f.channel in (None, args.get("channel"))), None
            )
            if fault is not None:
                faults.remove(fault)
            held = method in self._held
            self._held.discard(method)
            delay = self._delays.get(method, 0.0)
            if fault is not None:
                status, answer = fault.status, {"ok": False, "error": fault.error or "fault"}
                extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            else:
                status, extra = 200, {}
                answer = self._act(method, args, headers)
            self.calls.append(Call(method, args, headers, status, answer))
            self._changed.notify_all()
        if held:
            self._release.wait()
        elif delay > 0:
            self._closing.wait(delay)
        if self._closing.is_set():
            return 0, {}, b""  # closing: drop the connection unanswered
        if fault is not None and fault.body is not None:
            return status, {**extra, "Content-Type": "text/html"}, fault.body
        if fault is not None and fault.error is None and status >= 500:
            return status, {"Content-Type": "text/html"}, b"<html>upstream error</html>"
        return status, extra, json.dumps(answer).encode()

    def _act(self, method: str, args: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        auth = headers.get("authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else args.get("token")
        if not token:
            return {"ok": False, "error": "not_authed"}
        if token != self.token:
            return {"ok": False, "error": "invalid_auth"}
        if self._revoked:
            return {"ok": False, "error": "token_revoked"}
        if method == "chat.postMessage":
            return self._post(args)
        if method == "chat.update":
            return self._update(args)
        return {"ok": False, "error": "unknown_method"}

    def _channel(self, value: object, *, by_name: bool) -> str | None:
        name = str(value or "")
        if name in self.channels:
            return name
        if by_name:
            for channel_id, channel_name in self.channels.items():
                if name.lstrip("#") == channel_name:
                    return channel_id
        return None

    def _post(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args.get("channel"), by_name=True)
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        if channel in self.not_member:
            return {"ok": False, "error": "not_in_channel"}
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        thread_ts = args.get("thread_ts")
        if thread_ts is not None and thread_ts not in self.messages:
            return {"ok": False, "error": "thread_not_found"}
        n = next(self._ids)
        ts = f"{1_760_000_000 + n}.{n:06d}"
        message = Message(
            channel=channel,
            ts=ts,
            text=str(args.get("text", "")),
            blocks=list(args.get("blocks") or []),
            thread_ts=thread_ts,
            reply_broadcast=bool(args.get("reply_broadcast")),
        )
        message.versions.append({"text": message.text, "blocks": message.blocks})
        self.messages[ts] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": {"text": message.text}}

    def _update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(args.get("channel"), by_name=False)  # an id, as Slack wants
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        message = self.messages.get(str(args.get("ts")))
        if message is None or message.channel != channel:
            return {"ok": False, "error": "message_not_found"}
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        message.text = str(args.get("text", ""))
        message.blocks = list(args.get("blocks") or [])
        message.versions.append({"text": message.text, "blocks": message.blocks})
        return {"ok": True, "channel": channel, "ts": message.ts, "text": message.text}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length)
                if len(data) < length:
                    self.close_connection = True  # the client died mid-request
                    return
                path = urllib.parse.urlsplit(self.path).path
                if not path.startswith("/api/"):
                    self._send(404, {}, b"not found")
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                args = _decode(data, headers.get("content-type", ""))
                status, extra, body = fake._answer(path.removeprefix("/api/"), args, headers)
                if status == 0:
                    self.close_connection = True
                    return
                self._send(status, extra, body)

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                headers = {"Content-Type": "application/json; charset=utf-8", **headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _decode(data: bytes, content_type: str) -> dict[str, Any]:
    """A request's arguments: a JSON object, or a form whose `blocks` is a JSON string."""
    text = data.decode("utf-8", "replace")
    if "json" in content_type:
        try:
            value = json.loads(text)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}
    args: dict[str, Any] = {k: v[-1] for k, v in urllib.parse.parse_qs(text).items()}
    if isinstance(args.get("blocks"), str):
        try:
            args["blocks"] = json.loads(args["blocks"])
        except ValueError:
            args["blocks"] = None
    for key in ("reply_broadcast", "unfurl_links", "unfurl_media"):
        if key in args:
            args[key] = args[key] in ("true", "1")
    return args


def iter_texts(message: Message) -> Iterator[str]:
    """Every text of a message as shown now: its `text` and each text object in its blocks."""
    yield message.text

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                yield node["text"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    yield from walk(message.blocks)
