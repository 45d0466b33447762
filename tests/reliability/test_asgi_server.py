"""The Starlette adapter under uvicorn, run the supported way (``wsroom.adapters.uvicorn``),
against the doors plain uvicorn leaves open: frames read whole up to 16 MiB, slow request
heads held forever, a traceback logged per frame of invalid UTF-8, and evicted clients
whose TCP connection lingers (docs/reliability.md, E21, E25, E23, B6).

Where it shows what changed, a test runs the same client against plain ``uvicorn.Server``
too, and records both.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from tests.helpers import TIMEOUT, Client, uvicorn_server, wait_for
from tests.reliability.suite import record
from wsroom import ConnectionManager, Limits

pytest.importorskip("uvicorn")


def app_for(manager: ConnectionManager) -> Any:
    from starlette.applications import Starlette

    from wsroom.adapters.starlette import routes

    return Starlette(routes=routes("/ws", manager))


@asynccontextmanager
async def plain_uvicorn(manager: ConnectionManager) -> AsyncIterator[Any]:
    """The same application under ``uvicorn.Server`` with uvicorn's defaults: the "before"."""
    import uvicorn

    config = uvicorn.Config(
        app_for(manager), host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    await manager.start()
    try:
        yield server
    finally:
        await manager.shutdown()
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            connection.shutdown()
        await wait_for(lambda: not server.server_state.tasks, interval=0.01)


def port_of(server: Any) -> int:
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return port


@asynccontextmanager
async def either(kind: str, manager: ConnectionManager, **options: Any) -> AsyncIterator[Any]:
    if kind == "wsroom":
        async with uvicorn_server(manager, app_for(manager), **options) as server:
            yield server
    else:
        async with plain_uvicorn(manager) as server:
            yield server


# E21/E22: the frame limit reaches uvicorn.


@pytest.mark.parametrize("kind", ["wsroom", "plain"])
async def test_uvicorn_refuses_a_frame_past_wsroom_s_limit_before_reading_it_whole(
    kind: str,
) -> None:
    manager = ConnectionManager(limits=Limits(max_frame_size=64 * 1024))
    async with either(kind, manager) as server:
        ws = await websockets.connect(
            f"ws://127.0.0.1:{port_of(server)}/ws", open_timeout=TIMEOUT, compression="deflate"
        )
        await ws.recv()  # welcome
        started = time.monotonic()
        # 4 MiB of zeros: a few kilobytes on the wire once compressed.
        with pytest.raises(ConnectionClosed):
            await ws.send("0" * (4 << 20))
            async with asyncio.timeout(TIMEOUT):
                await ws.recv()
        elapsed = time.monotonic() - started
        assert ws.close_code == 1009
        received = manager.statistics().frames_received
    record("E21", "compressed 4 MiB frame: time to 1009", round(elapsed, 3), "s", server=kind)
    record("E21", "compressed 4 MiB frame: reached the application", received, "", server=kind)
    if kind == "wsroom":
        # uvicorn refused it while decompressing: wsroom never saw it (only the client's
        # first frame, none here, would count).
        assert received == 0
    else:
        # uvicorn read and decompressed all 4 MiB (its limit is 16 MiB) before wsroom did.
        assert received == 1


async def test_a_larger_uvicorn_frame_limit_is_reported_at_startup(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = ConnectionManager()
    with caplog.at_level(logging.WARNING, logger="wsroom.transport"):
        async with uvicorn_server(manager, app_for(manager), ws_max_size=16 << 20):
            pass
    assert any("ws_max_size" in r.getMessage() for r in caplog.records)


# E25: slowloris.


def drip(port: int, interval: float, limit: float) -> float | None:
    """Send an upgrade request one byte every ``interval`` seconds; the seconds until the
    server closed the socket, or ``None`` if it was still open after ``limit`` seconds."""
    request = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.settimeout(interval)
        started = time.monotonic()
        for byte in request * 100:
            if time.monotonic() - started > limit:
                return None
            try:
                sock.send(bytes([byte]))
                if sock.recv(1024) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                continue  # nothing from the server yet: the next byte
            except OSError:
                return time.monotonic() - started
    return None


async def test_a_slow_request_head_is_cut_at_the_handshake_timeout() -> None:
    manager = ConnectionManager()
    async with uvicorn_server(manager, app_for(manager), handshake_timeout=1.0) as server:
        port = port_of(server)
        drippers = [asyncio.to_thread(drip, port, 0.2, 6.0) for _ in range(20)]
        waiting = asyncio.gather(*drippers)
        # Meanwhile a real client connects at once.
        started = time.monotonic()
        client = await Client.connect(f"ws://127.0.0.1:{port}", "/ws")
        legit = time.monotonic() - started
        await client.close()
        closed_after = await waiting
    assert all(t is not None and t < 3.0 for t in closed_after), closed_after
    worst = max(t for t in closed_after if t is not None)
    record("E25", "uvicorn (wsroom Server): dripper closed after", round(worst, 2), "s")
    record(
        "E25", "uvicorn (wsroom Server): legitimate connect under 20 drippers", round(legit, 3), "s"
    )
    assert legit < 1.0


async def test_plain_uvicorn_holds_a_slow_request_head() -> None:
    # The control: what the handshake timeout changes. uvicorn has no such timeout.
    manager = ConnectionManager()
    async with plain_uvicorn(manager) as server:
        closed_after = await asyncio.to_thread(drip, port_of(server), 0.2, 3.0)
    record("E25", "plain uvicorn: dripper still open after 3 s", closed_after is None, "")
    assert closed_after is None


# E23: invalid UTF-8 does not flood the log.


async def test_invalid_utf8_frames_log_one_line_not_a_traceback_each() -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(handler)
    manager = ConnectionManager(limits=Limits.without_rate_limits())
    try:
        async with uvicorn_server(manager, app_for(manager)) as server:
            url = f"ws://127.0.0.1:{port_of(server)}/ws"
            codes = []
            for _ in range(50):
                ws = await websockets.connect(url, open_timeout=TIMEOUT, compression=None)
                await ws.recv()
                ws.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe invalid"))
                assert ws.transport is not None
                ws.transport.write(b"".join(ws.protocol.data_to_send()))
                await ws.wait_closed()
                codes.append(ws.close_code)
    finally:
        uvicorn_log.removeHandler(handler)
    assert codes == [1007] * 50
    errors = [r for r in records if r.levelno >= logging.WARNING]
    record("E23", "uvicorn log lines for 50 invalid UTF-8 frames", len(errors), "lines")
    assert len(errors) <= 1
    assert all(r.exc_info is None for r in errors)


# B6: an evicted client's TCP connection is cut.


def _masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        header = struct.pack("!BB", 0x81, 0x80 | len(payload))
    else:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, len(payload))
    return header + mask + masked


def non_reader(port: int) -> socket.socket:
    """A client that completes the handshake, joins room "r", then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(_masked(b'{"type":"join","room":"r"}'))
    return sock


@pytest.mark.parametrize("kind", ["wsroom", "plain"])
async def test_an_evicted_non_reader_s_tcp_connection_is_cut(kind: str) -> None:
    limits = Limits(write_timeout=1.0, max_queue_bytes=512 * 1024)
    manager = ConnectionManager(limits=limits)
    async with either(kind, manager) as server:
        sock = await asyncio.to_thread(non_reader, port_of(server))
        try:
            await wait_for(lambda: bool(manager.connections_in("r")))
            started = time.monotonic()
            while manager.connections_in("r"):
                await manager.broadcast("r", "x" * 60_000)
                await asyncio.sleep(0.05)  # a paced publisher, 1.2 MB/s
                assert time.monotonic() - started < TIMEOUT * 2
            evicted_after = time.monotonic() - started
            gone: float | None = None
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                if not server.server_state.connections:
                    gone = time.monotonic() - started
                    break
                await asyncio.sleep(0.05)
        finally:
            sock.close()
    assert manager.statistics().evictions == 1
    record("B6", "Starlette non-reader: evicted after", round(evicted_after, 2), "s", server=kind)
    record(
        "B6",
        "Starlette non-reader: TCP connection released after",
        round(gone, 2) if gone is not None else "> 3 s after eviction",
        "s",
        server=kind,
    )
    if kind == "wsroom":
        assert gone is not None and gone < evicted_after + 2.0
    else:
        assert gone is None  # plain uvicorn keeps it until its own timeouts
