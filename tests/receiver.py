"""A loopback HTTP receiver for tests: what Apprise's json:// and form:// services deliver.

A `ThreadingHTTPServer` on 127.0.0.1 with a free port, in a thread. Each path (or the whole
server) can be told to accept ("ok", HTTP 200), refuse ("fail", HTTP 500; "reject", HTTP 400,
for good), hang ("hang": read the request and never answer until the receiver closes), or
drop ("drop": read the request, then close the connection without an answer; the message
counts as received, since the service got it). Tests wait for deliveries with
`wait_for`, a condition wait with a deadline, never a sleep.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

Mode = Literal["ok", "fail", "reject", "hang", "drop"]


class Receiver:
    """Records the messages POSTed to it; a context manager (`with Receiver() as r:`)."""

    def __init__(self, port: int = 0) -> None:
        """Listen on 127.0.0.1:`port`; 0, the default, is any free port."""
        self.received: list[dict[str, Any]] = []  # accepted messages ("ok"), arrival order
        self.requests: list[dict[str, Any]] = []  # every POST, whatever the answer
        self.raw: list[tuple[dict[str, str], bytes]] = []  # every POST's headers and bytes
        self._modes: dict[str | None, Mode] = {None: "ok"}
        self._changed = threading.Condition()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True  # a hung handler must not keep pytest alive
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Receiver:
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
        self._closing.set()  # releases hanging handlers: they drop the connection unanswered
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def apprise_url(self, path: str = "/") -> str:
        """An Apprise json:// URL that delivers to `path` on this receiver."""
        return f"json://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def set_mode(self, mode: Mode, path: str | None = None) -> None:
        """Answer requests to `path` (every path when None) as `mode` says (see the module)."""
        with self._changed:
            if path is None:
                self._modes = {None: mode}
            else:
                self._modes["/" + path.lstrip("/")] = mode

    def _mode(self, path: str) -> Mode:
        with self._changed:
            return self._modes.get(path, self._modes[None])

    def wait_for(
        self, n: int, timeout: float = 10.0, path: str | None = None
    ) -> list[dict[str, Any]]:
        """The accepted messages (to `path`, if given) once there are at least `n`.

        Raises AssertionError when they have not arrived within `timeout` seconds.
        """
        want = None if path is None else "/" + path.lstrip("/")

        def matching() -> list[dict[str, Any]]:
            return [m for m in self.received if want is None or m["path"] == want]

        with self._changed:
            if not self._changed.wait_for(lambda: len(matching()) >= n, timeout=timeout):
                raise AssertionError(
                    f"expected {n} message(s) to {want or 'any path'} within {timeout}s, "
                    f"got {len(matching())}: {matching()!r}"
                )
            return matching()

    def _raw(self, headers: dict[str, str], body: bytes) -> None:
        with self._changed:
            self.raw.append((headers, body))

    def _record(self, message: dict[str, Any], accepted: bool) -> None:
        with self._changed:
            self.requests.append(message)
            if accepted:
                self.received.append(message)
            self._changed.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length)
                if len(data) < length:
                    # The sender died mid-request (a test killed it): nothing was delivered.
                    self.close_connection = True
                    return
                raw = data.decode("utf-8", "replace")
                path = urllib.parse.urlsplit(self.path).path
                message = _decode(raw, self.headers.get("Content-Type") or "")
                message["path"] = path
                receiver._raw(dict(self.headers.items()), data)
                mode = receiver._mode(path)
                if mode == "hang":
                    receiver._record(message, accepted=False)
                    receiver._closing.wait()
                    self.close_connection = True
                    return
                if mode == "drop":
                    receiver._record(message, accepted=True)
                    self.close_connection = True
                    return
                accepted = mode == "ok"
                receiver._record(message, accepted=accepted)
                if accepted:
                    self._answer(200, b"{}")
                else:
                    self._answer(400 if mode == "reject" else 500, b"refused")

            def do_GET(self) -> None:
                self._answer(200, b"ok")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest's output for the tests

        return Handler


def _decode(raw: str, content_type: str) -> dict[str, Any]:
    if "json" in content_type:
        try:
            value = json.loads(raw)
        except ValueError:
            return {"raw": raw}
        return value if isinstance(value, dict) else {"raw": value}
    if "x-www-form-urlencoded" in content_type:
        return {k: v[-1] for k, v in urllib.parse.parse_qs(raw).items()}
    return {"raw": raw}
