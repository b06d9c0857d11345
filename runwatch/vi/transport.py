"""The HTTP transport of the Vi client: httpx's own, with a cheaper check of idle connections.

Theory: before every request httpcore's pool asks each idle connection whether its socket
has become readable (a server that closed a keep-alive connection leaves it readable at
EOF), and the anyio stream answers `get_extra_info("is_readable")` by rebuilding its whole
table of typed attributes to find the raw socket: some 12 % of a steady poll's CPU. The
raw socket of a connection never changes (TLS wraps the same one), so `_Stream` looks it up
once and answers with httpcore's own `is_socket_readable`. Everything else is passed
through untouched, exceptions included.

How it fails safe: if httpx's transport does not hold an httpcore pool with a network
backend where this version of httpx keeps it, the transport is used as it is.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx
from httpcore._utils import is_socket_readable


class _Stream(httpcore.AsyncNetworkStream):
    __slots__ = ("_inner", "_sock")

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._sock = inner.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._sock is not None:
            return is_socket_readable(self._sock)
        return self._inner.get_extra_info(info)


class _Backend(httpcore.AsyncNetworkBackend):
    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _Stream(stream)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def http_transport(
    *, verify: ssl.SSLContext | bool, max_connections: int
) -> httpx.AsyncHTTPTransport:
    """httpx's default transport for these settings, with `_Stream`s under its pool."""
    transport = httpx.AsyncHTTPTransport(
        verify=verify, limits=httpx.Limits(max_connections=max_connections)
    )
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(pool, httpcore.AsyncConnectionPool) and isinstance(
        backend, httpcore.AsyncNetworkBackend
    ):
        pool._network_backend = _Backend(backend)
    return transport
