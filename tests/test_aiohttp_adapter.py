"""What the aiohttp adapter does besides the protocol (which tests/conformance checks on it):
refusals as HTTP statuses before the upgrade, the application's lifecycle, keepalive pings,
the script route, and its writer without the shared-framing path."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

import wsroom.browser
from tests.helpers import TIMEOUT, Client, aiohttp_server, http_request, user_from_query
from wsroom import ConnectionManager, Handshake, HandshakeRejected, Limits
from wsroom.adapters import aiohttp as wsroom_aiohttp
from wsroom.conformance import Server, test_slow_client

UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_refusals_are_http_statuses_before_the_upgrade() -> None:
    limits = Limits(handshake_rate=0.01, handshake_burst=2)
    manager = ConnectionManager(authenticate=user_from_query, limits=limits)
    async with aiohttp_server(manager) as url:
        port = _port(url)
        status, headers, body = await http_request(port, "/ws", headers=UPGRADE)
        assert status == 401 and headers["www-authenticate"] == 'Bearer realm="wsroom"'
        assert body == b"Unauthorized\n"
        status, _, body = await http_request(
            port, "/ws?user=a", headers=UPGRADE + "Sec-WebSocket-Protocol: other.v2\r\n"
        )
        assert status == 400 and b"wsroom.v1" in body
        status, headers, _ = await http_request(port, "/ws?user=a", headers=UPGRADE)
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert manager.connections == []


async def test_a_plain_request_gets_426_or_its_refusal() -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with aiohttp_server(manager) as url:
        port = _port(url)
        assert (await http_request(port, "/ws"))[0] == 401
        status, headers, _ = await http_request(port, "/ws?user=a")
        assert status == 426 and headers["upgrade"] == "websocket"
        assert (await http_request(port, "/ws?user=a", method="HEAD"))[0] == 426
        # A broken upgrade request is aiohttp's 400, not a crash.
        broken = UPGRADE.replace("Version: 13", "Version: 99")
        assert (await http_request(port, "/ws?user=a", headers=broken))[0] == 400


async def test_the_application_shutdown_closes_clients_with_1001_after_their_frames() -> None:
    """AppRunner.cleanup(), which web.run_app runs on SIGINT and SIGTERM, shuts the rooms
    down before aiohttp waits for its handlers."""
    manager = ConnectionManager()
    async with aiohttp_server(manager) as url:
        client = await Client.connect(url)
        await client.join("r")
        for i in range(200):
            await manager.broadcast("r", {"n": i, "pad": "x" * 500})
        # Leaving the block runs runner.cleanup(), while the client reads.
        reading = asyncio.create_task(_read_until_closed(client))
    numbers, code = await reading
    assert numbers == list(range(200))
    assert code == 1001
    assert manager.closing and manager.connections == []


async def _read_until_closed(client: Client) -> tuple[list[int], int | None]:
    numbers = []
    try:
        while True:
            frame = await client.recv()
            numbers.append(frame["data"]["n"])
    except Exception:  # the connection closed
        pass
    code = await client.wait_closed()
    return numbers, code


async def test_new_handshakes_get_503_during_shutdown() -> None:
    manager = ConnectionManager()
    async with aiohttp_server(manager) as url:
        client = await Client.connect(url)
        await client.join("r")
        # The manager shuts down, aiohttp still listens (another on_shutdown hook first).
        await asyncio.gather(manager.shutdown(TIMEOUT), client.wait_closed())
        status, _, _ = await http_request(_port(url), "/ws", headers=UPGRADE)
        assert status == 503


async def test_keepalive_pings_are_sent() -> None:
    manager = ConnectionManager()
    async with aiohttp_server(manager, heartbeat=0.2) as url:
        sock = await asyncio.to_thread(_open_raw, _port(url))
        try:
            data = await asyncio.wait_for(asyncio.to_thread(_until_ping, sock), TIMEOUT)
            assert b"\x89" in data
        finally:
            sock.close()


def _open_raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            + UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", key)
            + "\r\n"
        ).encode()
    )
    return sock


def _until_ping(sock: socket.socket) -> bytes:
    """What the server sent up to a ping frame (opcode 9) after the welcome."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before a ping")
        data += chunk
        frames = data.partition(b"\r\n\r\n")[2]
        if frames.rfind(b"\x89") > frames.find(b'"welcome"') >= 0:
            return frames


async def test_client_route_serves_the_script() -> None:
    app = web.Application()
    app.add_routes([wsroom_aiohttp.client_route("/static/wsroom.js")])
    async with _running(app) as port:
        status, headers, body = await http_request(port, "/static/wsroom.js")
        assert status == 200 and body == wsroom.browser.script()
        assert headers["content-type"] == "text/javascript; charset=utf-8"
        etag = headers["etag"]
        status, headers, body = await http_request(
            port, "/static/wsroom.js", headers=f"If-None-Match: {etag}\r\n"
        )
        assert (status, body) == (304, b"")
        status, headers, body = await http_request(port, "/static/wsroom.js", method="HEAD")
        assert status == 200 and body == b""
        assert int(headers["content-length"]) == len(wsroom.browser.script())


async def test_serve_from_a_handler_that_authenticated_the_client() -> None:
    manager = ConnectionManager()

    async def ws(request: web.Request) -> web.StreamResponse:
        user = request.headers.get("X-User")
        if user is None:
            raise web.HTTPUnauthorized()
        return await wsroom_aiohttp.serve(request, manager, user=user)

    app = web.Application()
    app.router.add_get("/ws", ws)
    wsroom_aiohttp.lifecycle(app, manager)
    async with _running(app) as port:
        client = await Client.connect(
            f"ws://127.0.0.1:{port}", additional_headers={"X-User": "carol"}
        )
        assert client.welcome["user"] == "carol"
        await client.close()


async def test_an_authenticate_hook_that_raises_gets_its_status() -> None:
    def deny(handshake: Handshake) -> str:
        raise HandshakeRejected(403, "Forbidden: not today")

    async with aiohttp_server(ConnectionManager(authenticate=deny)) as url:
        status, _, body = await http_request(_port(url), "/ws", headers=UPGRADE)
        assert (status, body) == (403, b"Forbidden: not today\n")


async def test_the_send_frame_writer_evicts_a_stuck_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compressed connections (and every one with WSROOM_AIOHTTP_FASTPATH=0) are written by
    a writer task through send_frame(): a client that stops reading is evicted and cut."""
    monkeypatch.setattr(wsroom_aiohttp, "FASTPATH", False)
    await test_slow_client.test_stuck_reader_is_evicted_by_the_write_timeout(
        Server(aiohttp_server, name="aiohttp")
    )


@asynccontextmanager
async def _running(app: web.Application) -> AsyncIterator[int]:
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=TIMEOUT)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def test_the_adapter_without_aiohttp_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['aiohttp'] = None  # as if aiohttp were not installed\n"
        "try:\n"
        "    import wsroom.adapters.aiohttp\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert "pip install 'wsroom[aiohttp]'" in output.stdout
