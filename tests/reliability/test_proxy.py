"""Behind a real nginx (docs/operating.md's configuration, tests/nginx_support.py): the
reverse-proxy settings docs/deployment.md recommends close what
an ASGI server leaves open (slow request heads, slow keep-alive requests), and wsroom's
per-address limits count the address nginx reports (docs/reliability.md, E25).

nginx comes from Debian's package (``scripts/test.sh`` installs it); without it the tests
are skipped.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.helpers import TIMEOUT, Client, uvicorn_server, wait_for
from tests.nginx_support import NGINX, Nginx, nginx as documented_nginx
from tests.reliability.suite import record
from wsroom import ConnectionManager, Handshake, Limits

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx)"
)

HEADER_TIMEOUT = 2  # seconds; docs/deployment.md recommends 10 in production


def nginx(upstream: int) -> AbstractContextManager[int]:
    """nginx with docs/operating.md's configuration in front of ``upstream``, with short
    client timeouts for the test; yields its port."""
    return _port_of(
        documented_nginx(
            [upstream],
            timeouts={
                "client_header_timeout": HEADER_TIMEOUT,
                "client_body_timeout": HEADER_TIMEOUT,
                "keepalive_timeout": HEADER_TIMEOUT,
            },
        )
    )


@contextmanager
def _port_of(proxy: AbstractContextManager[Nginx]) -> Iterator[int]:
    with proxy as running:
        yield running.port


@asynccontextmanager
async def plain_uvicorn_app(manager: ConnectionManager) -> AsyncIterator[int]:
    """The Starlette adapter under plain uvicorn, which has no request-head timeout."""
    import uvicorn
    from starlette.applications import Starlette

    from wsroom.adapters.starlette import routes

    config = uvicorn.Config(
        Starlette(routes=routes("/ws", manager)),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    await manager.start()
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        await manager.shutdown()
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            connection.shutdown()
        await wait_for(lambda: not server.server_state.tasks, interval=0.01)


def drip(port: int, first: bytes, interval: float, limit: float) -> float | None:
    """Send ``first`` at once, then a request head one byte every ``interval`` seconds;
    the seconds until the peer closed, or ``None`` when still open after ``limit``."""
    head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 200
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.settimeout(interval)
        if first:
            sock.sendall(first)
        started = time.monotonic()
        for byte in head:
            if time.monotonic() - started > limit:
                return None
            try:
                sock.send(bytes([byte]))
                while data := sock.recv(65536):
                    del data  # a response to ``first``: read on
                return time.monotonic() - started
            except TimeoutError:
                continue
            except OSError:
                return time.monotonic() - started
    return None


COMPLETE_REQUEST = b"GET /missing HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.mark.parametrize("first", [b"", COMPLETE_REQUEST], ids=["first-request", "keep-alive"])
async def test_nginx_closes_slow_request_heads_plain_uvicorn_holds(first: bytes) -> None:
    manager = ConnectionManager()
    async with plain_uvicorn_app(manager) as upstream:
        direct = asyncio.to_thread(drip, upstream, first, 0.25, HEADER_TIMEOUT + 2.0)
        with nginx(upstream) as port:
            proxied = asyncio.to_thread(drip, port, first, 0.25, HEADER_TIMEOUT + 5.0)
            held, closed = await asyncio.gather(direct, proxied)
    kind = "keep-alive request" if first else "first request"
    record(
        "E25",
        f"nginx client_header_timeout={HEADER_TIMEOUT}s: slow {kind} closed after",
        round(closed, 2) if closed is not None else "not closed",
        "s",
    )
    record(
        "E25",
        f"plain uvicorn: slow {kind} still open after {HEADER_TIMEOUT + 2} s",
        held is None,
        "",
    )
    assert held is None
    assert closed is not None and closed < HEADER_TIMEOUT + 1.5


async def test_through_nginx_the_limits_count_the_address_nginx_reports() -> None:
    addresses: list[str | None] = []

    def authenticate(handshake: Handshake) -> str:
        addresses.append(handshake.client_address)
        return "alice"

    limits = Limits(handshake_rate=0.1, handshake_burst=2)
    manager = ConnectionManager(
        authenticate=authenticate, limits=limits, client_address_header="X-Forwarded-For"
    )
    from starlette.applications import Starlette

    from wsroom.adapters.starlette import routes

    async with uvicorn_server(manager, Starlette(routes=routes("/ws", manager))) as server:
        upstream = server.servers[0].sockets[0].getsockname()[1]
        with nginx(upstream) as port:
            url = f"ws://127.0.0.1:{port}"
            # A client claiming other addresses: nginx appends the one it sees, which counts.
            spoofed: dict[str, Any] = {"additional_headers": {"X-Forwarded-For": "203.0.113.9"}}
            first = await Client.connect(url, "/ws", **spoofed)
            second = await Client.connect(url, "/ws")
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(url + "/ws", open_timeout=TIMEOUT, **spoofed)
            assert refused.value.response.status_code == 429
            assert refused.value.response.headers["Retry-After"] == "10"
            await first.close()
            await second.close()
    assert addresses == ["127.0.0.1", "127.0.0.1"]
