"""A client that stops reading must not slow anyone down, and must be evicted.

The stuck client is a raw TCP socket with a tiny receive buffer: it completes the
WebSocket handshake, joins two rooms, and never reads again, which is what a frozen
browser tab or a dead mobile link looks like to a server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time

import psutil

from wsroom import Connection, ConnectionManager, Limits
from wsroom.conformance._client import TIMEOUT, Client, wait_for
from wsroom.conformance._server import ABORT, Server, single_node_only

PAYLOAD = "x" * 2000
ROOMS = ("alpha", "beta")


def _masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    length = len(payload)
    if length < 126:
        header += bytes([0x80 | length])
    elif length < 65536:
        header += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during handshake")
        data += chunk
    return data


def _stuck_client(url: str) -> socket.socket:
    """Handshake, join ROOMS, then never read again (a 4 KiB receive buffer)."""
    host, port = url.removeprefix("ws://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = _read_until(sock, b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101"), response[:100]
    for index, room in enumerate(ROOMS):
        sock.sendall(_masked_text_frame(json.dumps({"type": "join", "room": room, "ref": index})))
    return sock


def _here(manager: ConnectionManager, room: str) -> list[Connection]:
    """This process's connections in ``room`` (none once the room is gone)."""
    instance = manager.room(room)
    return instance.connections if instance is not None else []


def _wait_reset(sock: socket.socket, timeout: float) -> float:
    """Read until the server cut the connection; how long it took."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, TimeoutError):
        pass
    return time.monotonic() - start


async def test_stuck_reader_is_evicted_and_others_keep_receiving(
    start_server: Server,
) -> None:
    single_node_only(start_server, "reads the queues and rooms of one node")
    limits = Limits(max_queue=256, max_queue_bytes=256 * 1024, write_timeout=30)
    manager = ConnectionManager(limits=limits)
    process = psutil.Process()
    async with start_server(manager) as url:
        fast = [await Client.connect(url) for _ in range(5)]
        for client in fast:
            for room in ROOMS:
                await client.join(room)
        stuck = await asyncio.to_thread(_stuck_client, url)
        await wait_for(
            lambda: (
                len(manager.connections) == 6 and all(len(_here(manager, r)) == 6 for r in ROOMS)
            )
        )
        fast_ids = {client.welcome["connection"] for client in fast}
        stuck_conn = next(c for c in manager.connections if c.id not in fast_ids)
        rss_before = process.memory_info().rss

        received = [0] * len(fast)
        last_ids = [0] * len(fast)

        async def read(index: int, client: Client) -> None:
            while True:
                frame = await client.recv()
                if frame["type"] == "message" and frame["room"] == "alpha":
                    assert frame["id"] == last_ids[index] + 1, "a fast client missed a message"
                    last_ids[index] = frame["id"]
                    received[index] += 1

        readers = [asyncio.create_task(read(i, c)) for i, c in enumerate(fast)]
        started = time.monotonic()
        peak_queued = 0
        sent = 0
        evicted_after = None
        # Publish until the stuck client is evicted, bounded in count and time.
        while sent < 20_000 and time.monotonic() - started < 20:
            await manager.broadcast("alpha", PAYLOAD)
            sent += 1
            if sent % 20 == 0:
                peak_queued = max(peak_queued, manager.statistics().queued_bytes)
                await asyncio.sleep(0)
            if stuck_conn.closed and evicted_after is None:
                evicted_after = time.monotonic() - started
                # Keep publishing a little: the fast clients must be unaffected after it too.
                extra = sent + 500
                while sent < extra:
                    await manager.broadcast("alpha", PAYLOAD)
                    sent += 1
                    if sent % 20 == 0:
                        await asyncio.sleep(0)
                break

        assert evicted_after is not None, f"not evicted after {sent} messages"
        print(
            f"evicted after {evicted_after:.3f} s and {sent} messages; peak queued {peak_queued} B"
        )
        assert evicted_after < 10
        assert stuck_conn.close_code == 1013
        assert manager.statistics().evictions == 1
        # Removed from every room at once, whatever the socket does later.
        for room in ROOMS:
            assert stuck_conn not in _here(manager, room)
        assert stuck_conn.rooms == frozenset()

        # Every fast client gets every message, in order.
        await wait_for(lambda: all(count == sent for count in received), timeout=TIMEOUT * 2)
        for task in readers:
            task.cancel()

        # Memory stayed bounded: queues never exceed their limits; no runaway growth.
        assert (
            peak_queued
            <= limits.max_queue_bytes * len(manager.connections) + limits.max_queue_bytes
        )
        assert process.memory_info().rss - rss_before < 64 * 1024 * 1024

        # Nothing more was queued to it after the eviction.
        assert stuck_conn.queued_frames == 0 and stuck_conn.queued_bytes == 0
        # An adapter that lacks ABORT (an ASGI application cannot reach its socket)
        # evicts the client from the rooms and cancels its writes only.
        if start_server.can(ABORT):
            # The TCP connection is really cut, though the peer never read the close frame.
            waited = await asyncio.to_thread(_wait_reset, stuck, TIMEOUT * 2)
            assert waited < TIMEOUT * 2
        stuck.close()
        await wait_for(lambda: len(manager.connections) == 5)
        for client in fast:
            await client.close()


async def test_stuck_reader_is_evicted_by_the_write_timeout(start_server: Server) -> None:
    """A reader that stalls with little traffic never fills its queue: the timeout evicts it."""
    single_node_only(start_server, "reads the queues and rooms of one node")
    limits = Limits(max_queue=100_000, max_queue_bytes=64 * 1024 * 1024, write_timeout=0.5)
    manager = ConnectionManager(limits=limits)
    async with start_server(manager) as url:
        stuck = await asyncio.to_thread(_stuck_client, url)
        await wait_for(lambda: len(_here(manager, "alpha")) == 1)
        stuck_conn = manager.connections[0]
        # Enough to fill the socket buffers, far from filling the queue.
        for sent in range(1, 5_001):
            await manager.broadcast("alpha", PAYLOAD)
            if sent % 50 == 0:
                await asyncio.sleep(0)
        assert not stuck_conn.closed
        await wait_for(lambda: stuck_conn.closed, timeout=TIMEOUT)
        assert stuck_conn.close_code == 1013
        assert manager.statistics().evictions == 1
        assert stuck_conn not in _here(manager, "alpha")
        assert manager.rooms() == []
        assert stuck_conn.queued_frames == 0
        if start_server.can(ABORT):
            waited = await asyncio.to_thread(_wait_reset, stuck, TIMEOUT * 2)
            assert waited < TIMEOUT * 2
        stuck.close()
