"""docs/operating.md's nginx configuration (docs_src/operating/wsroom.conf), run by a real
nginx in front of real servers: it cuts a client that trickles its request head while it
serves the others, and it hands wsroom the client's address, so that the per-address limits
count each client, not nginx. (The conformance suite runs the whole protocol through it,
see tests/conftest.py.)
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.helpers import TIMEOUT, Client, check_frame, user_from_query
from tests.nginx_support import NGINX, SITE, nginx
from wsroom import ConnectionManager, Handshake, Limits
from wsroom.adapters.websockets import serve

pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (scripts/test.sh installs it)"
)

HEADER_TIMEOUT = 10.0  # the documented client_header_timeout


def test_the_documented_header_timeout_is_the_one_tested() -> None:
    assert f"client_header_timeout {HEADER_TIMEOUT:.0f}s;" in SITE.read_text(encoding="utf-8")


def trickle(port: int, interval: float, limit: float) -> float | None:
    """Send a request head one byte every ``interval`` seconds; the seconds until nginx
    closed the connection, or ``None`` when still open after ``limit``."""
    head = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 500
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.settimeout(interval)
        started = time.monotonic()
        for byte in head:
            if time.monotonic() - started > limit:
                return None
            try:
                sock.send(bytes([byte]))
                sock.recv(65536)  # a 408, or the end: nginx gave up on this client
                return time.monotonic() - started
            except TimeoutError:
                continue
            except OSError:
                return time.monotonic() - started
    return None


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_a_slow_request_head_is_cut_while_other_clients_are_served() -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with serve(manager, "127.0.0.1", 0) as server:
        upstream = server.sockets[0].getsockname()[1]
        with nginx([upstream]) as proxy:
            url = f"ws://127.0.0.1:{proxy.port}"
            slow = asyncio.create_task(
                asyncio.to_thread(trickle, proxy.port, 0.5, HEADER_TIMEOUT + 10)
            )
            # Meanwhile, clients connect and talk, again and again.
            rounds = 0
            while not slow.done():
                ann = await Client.connect(url, "/ws?user=ann")
                await ann.join("lobby")
                await ann.send({"type": "message", "room": "lobby", "data": f"round {rounds}"})
                message = check_frame(await ann.recv_type("message"), "message")
                assert message["data"] == f"round {rounds}"
                await ann.close()
                rounds += 1
                await asyncio.wait([slow], timeout=0.5)
            cut_after = await slow
    assert cut_after is not None, "nginx let the slow client hold its connection"
    assert HEADER_TIMEOUT - 1 < cut_after < HEADER_TIMEOUT + 3, cut_after
    assert rounds >= 5
    print(f"slow request head cut after {cut_after:.2f} s; {rounds} chats meanwhile")


async def connect_from(url: str, address: str, **kwargs: Any) -> Client:
    """A client whose connection to nginx comes from ``address`` (127.0.0.0/8 on Linux)."""
    return await Client.connect(url, "/ws", local_addr=(address, 0), **kwargs)


@pytest.mark.timeout(30)
async def test_the_limits_count_the_client_s_address_not_nginx_s() -> None:
    addresses: list[str | None] = []

    def authenticate(handshake: Handshake) -> str:
        addresses.append(handshake.client_address)
        return "alice"

    # Two handshakes per address, then 429 for a while.
    limits = Limits(handshake_rate=0.1, handshake_burst=2)
    manager = ConnectionManager(
        authenticate=authenticate, limits=limits, client_address_header="X-Forwarded-For"
    )
    async with serve(manager, "127.0.0.1", 0) as server:
        upstream = server.sockets[0].getsockname()[1]
        with nginx([upstream]) as proxy:
            url = f"ws://127.0.0.1:{proxy.port}"
            # A client claiming another address: nginx appends the one it sees, which counts.
            spoofed: dict[str, Any] = {"additional_headers": {"X-Forwarded-For": "203.0.113.9"}}
            first = await connect_from(url, "127.0.0.2", **spoofed)
            second = await connect_from(url, "127.0.0.2")
            with pytest.raises(InvalidStatus) as refused:
                await websockets.connect(
                    url + "/ws", open_timeout=TIMEOUT, local_addr=("127.0.0.2", 0)
                )
            assert refused.value.response.status_code == 429
            # Another client, through the same nginx, has a budget of its own.
            other = await connect_from(url, "127.0.0.3")
            for client in (first, second, other):
                await client.close()
    assert addresses == ["127.0.0.2", "127.0.0.2", "127.0.0.3"]


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_the_recipe_nginx_in_front_of_uvicorn_workers() -> None:
    # node_app.py under uvicorn --workers 2, trusting the header nginx sets, as
    # docs/operating.md runs it: each worker sees the client's address.
    from tests.test_deployment import SERVERS, running

    command, workers = SERVERS["uvicorn --workers 2"]
    env = {"CLIENT_ADDRESS_HEADER": "X-Forwarded-For"}
    async with running(command, workers, env=env) as process:
        with nginx([process.port]) as proxy:
            url = f"ws://127.0.0.1:{proxy.port}"
            pids = set()
            # Kept open until both workers answered: the kernel picks the worker of each
            # connection, and one that closes at once leaves the same worker free again.
            clients = []
            for number in range(100):
                # Addresses of their own: nginx passes each one on, and the recipe keeps
                # wsroom's handshake rate per address.
                address = f"127.0.0.{2 + number % 50}"
                client = await Client.connect(url, f"/ws?user=u{number}", local_addr=(address, 0))
                clients.append(client)
                ack = await client.request({"type": "node"})
                assert ack["data"]["address"] == address
                pids.add(ack["data"]["pid"])
                if len(pids) == workers and number >= 3:
                    break
            for client in clients:
                await client.close()
            assert len(pids) == workers
            # SIGTERM to uvicorn behind nginx: the client gets wsroom's 1001 through it.
            client = await Client.connect(url, "/ws?user=ann")
            await client.join("lobby")
            await process.stop(signal.SIGTERM)
            assert await client.wait_closed() == 1001
