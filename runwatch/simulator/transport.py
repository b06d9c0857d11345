"""The HTTP plumbing under the simulator: a threaded stdlib server on one address, optional
TLS, keep-alive, streamed bodies, and a stop that does not wait for slow clients.

Theory: this module knows nothing of the Vi API. A handler thread parses a request and hands
(method, path, query, headers, send) to the `Answerer`; whatever `Response` comes back is
written as it is. `Listener.stop` sets `stopping` (slow faults and streams watch it), shuts
the server down and then the sockets of idle keep-alive connections, which would otherwise
hold their threads until the client left. A client that hangs up mid-answer is routine for
a test server: the write fails, the connection is closed, nothing is printed.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, cast


@dataclass(frozen=True, kw_only=True)
class Response:
    """What to send. Status 0: close the connection without a byte."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    stream: Callable[[], Iterator[bytes]] | None = None  # the body in chunks, instead of `body`
    length: int | None = None  # the stream's Content-Length; None: chunked transfer encoding
    raw: bool = False  # send exactly `headers` (no Server, Date, Content-*), then close


class Answerer(Protocol):
    def answer(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: Message,
        send: Callable[[Response], None],
    ) -> None: ...


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow handler must not keep stop() (or the process) waiting
    allow_reuse_address = True
    listener: Listener

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request (a timeout, a killed daemon) is routine for a
        # test server, not a traceback on stderr; anything else still gets one.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class Listener:
    """One server on host:port answering with `answerer`, until `stop`."""

    def __init__(
        self,
        answerer: Answerer,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        stopping: threading.Event,
    ) -> None:
        self.answerer = answerer
        self.stopping = stopping
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        server_class = _Server6 if ":" in host else _Server
        server = server_class((host, port), _Handler)  # binds and listens
        server.listener = self
        if ssl_context is not None:
            # The handshake happens in the handler's thread (see _Handler.handle): done on
            # accept, one client that never finishes it would stall every other.
            server.socket = ssl_context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        bound_port = server.server_address[1]
        scheme = "http" if ssl_context is None else "https"
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{scheme}://{shown}:{bound_port}"
        # A short poll interval: shutdown() waits for serve_forever's next look at the flag.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="runwatch-simulator",
            daemon=True,
        )
        self._thread.start()

    def open_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def stop(self) -> None:
        """Stop serving; returns promptly even with slow requests in flight."""
        self.stopping.set()  # wakes slow faults and streams, which then drop their connection
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by its client
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients walk many pages on one connection
    server_version = "vi-simulator"
    timeout = 60  # an idle keep-alive connection frees its thread after a minute
    # Headers and body go out in two writes; with Nagle, the second waits for a delayed ACK
    # (40 ms on Linux) and a 1,000-page listing would take a minute.
    disable_nagle_algorithm = True

    @property
    def _listener(self) -> Listener:
        return cast(_Server, self.server).listener

    def setup(self) -> None:
        super().setup()
        self._listener.track(self.connection, True)

    def finish(self) -> None:
        self._listener.track(self.connection, False)
        super().finish()

    def handle(self) -> None:
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except OSError:  # ssl.SSLError too: a client that does not trust the certificate
                return
        super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's stderr access log; requests_log() has the same facts."""

    def _serve(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        if self.command != "GET":
            self.close_connection = True  # a request body we do not read would desync
        self._listener.answerer.answer(self.command, split.path, query, self.headers, self._send)

    def _send(self, response: Response) -> None:
        if response.status == 0:
            self.close_connection = True  # close without a byte: the client sees a dropped line
            return
        try:
            if response.raw:
                self._send_raw(response)
                return
            self.send_response(response.status)
            for name, value in response.headers:
                self.send_header(name, value)
            with_body = response.status != 304
            if with_body:
                self.send_header("Content-Type", response.content_type)
                if response.stream is None:
                    self.send_header("Content-Length", str(len(response.body)))
                elif response.length is not None:
                    self.send_header("Content-Length", str(response.length))
                else:
                    self.send_header("Transfer-Encoding", "chunked")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if not with_body or self.command == "HEAD":
                return
            if response.stream is None:
                self.wfile.write(response.body)
            else:
                self._stream(response.stream(), chunked=response.length is None)
        except OSError:
            self.close_connection = True  # the client gave up (e.g. timed out on a slow fault)

    def _send_raw(self, response: Response) -> None:
        self.close_connection = True  # the body's framing is the test's: end it by closing
        self.send_response_only(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _stream(self, chunks: Iterator[bytes], *, chunked: bool) -> None:
        stopping = self._listener.stopping
        for chunk in chunks:
            if stopping.is_set():
                self.close_connection = True
                return
            if not chunk:
                continue  # an empty chunk would end a chunked body
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            else:
                self.wfile.write(chunk)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    do_GET = _serve
    do_HEAD = _serve
    do_POST = _serve
    do_PUT = _serve
    do_PATCH = _serve
    do_DELETE = _serve
