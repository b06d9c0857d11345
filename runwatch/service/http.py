"""The HTTP side door: `GET /healthz` for load balancers and probes, `GET /metrics` for Prometheus.

A stdlib `ThreadingHTTPServer` in a daemon thread, away from the asyncio loop, so a scrape
still answers while a poll is stuck (which is exactly when /healthz must say 503). The
`health` callable therefore runs on the server's threads and must be thread-safe; it returns
(healthy, summary) and the summary is sent as JSON.

Bounded, because it is the daemon's one door that anyone on the network path may knock on:
at most `MAX_CONNECTIONS` connections are served at once (more are closed at once, before a
thread is spent on them), a connection that says nothing for `IDLE_TIMEOUT_S` is closed, and
no failure inside the server (a file-descriptor limit reached, a client gone mid-answer, a
bug) leaves it: it is logged and the server goes on, so it can never stop polling or
delivery, which share the process's descriptors but not its threads.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from runwatch.errors import RunwatchError
from runwatch.service.metrics import Metrics

log = structlog.get_logger("runwatch.service.http")

HealthCheck = Callable[[], tuple[bool, dict[str, object]]]

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ALLOWED = "GET"
MAX_CONNECTIONS = 16  # served at once; Prometheus and a probe need two
IDLE_TIMEOUT_S = 5.0  # a client that sends nothing for this long is hung up on
ACCEPT_BACKOFF_S = 0.1  # after accept() failed, e.g. out of file descriptors


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung client must not keep the process alive at exit
    request_queue_size = MAX_CONNECTIONS
    health: HealthCheck
    metrics: Metrics

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Refused before a thread is started: a thousand idle connections cost a thousand
        # descriptors for a moment, never a thousand threads holding them.
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("http.client_error", exc_info=True)

    def get_request(self) -> tuple[Any, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            # Out of descriptors (EMFILE): the stdlib drops this request and selects again at
            # once, so without a pause the server would spin on the pending connection.
            log.warning("http.accept_failed", error=exc.strerror or str(exc))
            time.sleep(ACCEPT_BACKOFF_S)
            raise


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = IDLE_TIMEOUT_S  # seconds a client may dawdle before the thread gives up

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/healthz":
            self._healthz()
        elif path == "/metrics":
            self._reply(200, METRICS_CONTENT_TYPE, self.server.metrics.render())
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found\n")

    def _healthz(self) -> None:
        try:
            healthy, summary = self.server.health()
            body = json.dumps(summary, default=str, sort_keys=True).encode()
        except Exception as exc:
            # A broken health check is itself unhealthy; its message stays in the log only.
            log.warning("http.health_check_failed", error=type(exc).__name__, exc_info=True)
            healthy, body = False, json.dumps({"error": "health check failed"}).encode()
        self._reply(200 if healthy else 503, "application/json", body)

    def _not_allowed(self) -> None:
        self._reply(405, "text/plain; charset=utf-8", b"method not allowed\n", allow=ALLOWED)

    # Every standard method other than GET is answered 405 with Allow: GET (the stdlib would
    # say 501, "not implemented", which reads as a server fault); unknown methods stay 501.
    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = _not_allowed

    def _reply(self, status: int, content_type: str, body: bytes, allow: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if allow is not None:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":  # a HEAD response announces a body it must not carry
            self.wfile.write(body)

    def version_string(self) -> str:
        return "runwatch"  # the Server header; no Python version for scanners to match

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("http.request", method=self.command, path=self.path, status=code)

    def log_message(self, format: str, *args: object) -> None:
        # The stdlib default writes prose to stderr; errors such as timeouts land here.
        log.debug("http.error", message=format % args)


class HealthServer:
    """Serves /healthz and /metrics on host:port (port 0 picks a free one) until `stop()`."""

    def __init__(self, host: str, port: int, *, health: HealthCheck, metrics: Metrics) -> None:
        self._host = host
        self._port = port
        self._health = health
        self._metrics = metrics
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL being served, e.g. http://127.0.0.1:9464; known once started."""
        if self._server is None:
            raise RuntimeError("the health server is not started")
        port = self._server.server_address[1]
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{port}"

    def start(self) -> None:
        if self._server is not None:
            return
        server_class = _Server6 if ":" in self._host else _Server
        try:
            server = server_class((self._host, self._port), _Handler)
        except OSError as exc:
            raise RunwatchError(
                f"cannot listen on {self._host}:{self._port} for /healthz and /metrics "
                f"({exc.strerror or exc}); choose another http.port or stop what holds it"
            ) from exc
        server.health = self._health
        server.metrics = self._metrics
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            # How often serve_forever looks for a shutdown request: stop() waits up to this.
            kwargs={"poll_interval": 0.1},
            name="runwatch-http",
            daemon=True,
        )
        self._thread.start()
        log.info("http.listening", url=self.url)

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice or before start."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()  # waits for serve_forever to return
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None
