"""The Vi client's own transport: httpx's, with idle connections checked on the raw socket."""

from __future__ import annotations

import asyncio
import json

from test_decode import ORG, run_doc

from runwatch.vi.client import ViClient
from runwatch.vi.retry import RetryPolicy

KEY = "dtvi_" + "k" * 98


async def _serve_once_per_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[int]
) -> None:
    """Answer one request, say keep-alive, then close: a server that drops idle sockets."""
    seen.append(1)
    await reader.readuntil(b"\r\n\r\n")
    body = json.dumps(run_doc("run-1")).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    writer.close()


async def test_it_notices_an_idle_connection_the_server_closed() -> None:
    """A kept-alive connection the server has since closed is not reused: the next request
    goes out on a new connection and succeeds, with no retry spent on it."""
    seen: list[int] = []
    server = await asyncio.start_server(
        lambda r, w: _serve_once_per_connection(r, w, seen), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]

    async def no_sleep(_: float) -> None:
        raise AssertionError("no retry should be needed")

    retry = RetryPolicy(max_attempts=1, sleep=no_sleep)
    async with server, ViClient(
        endpoint=f"http://127.0.0.1:{port}", organization_id=ORG, secret_key=KEY, retry=retry
    ) as client:
        first = await client.get_run("run-1")
        second = await client.get_run("run-1")

    assert first is not None and second is not None and second.run_id == "run-1"
    assert len(seen) == 2
    assert client.requests_made == 2
