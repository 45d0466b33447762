"""Framing each broadcast once for every uncompressed connection of the websockets adapters."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from tests.helpers import ADAPTERS, TIMEOUT, Client
from wsroom import ConnectionManager
from wsroom.adapters._websockets_fastpath import SharedFrames

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def open_protocol() -> ServerProtocol:
    protocol = ServerProtocol()
    protocol.state = State.OPEN
    return protocol


def framed_by_websockets(payload: bytes, *, binary: bool) -> bytes:
    protocol = open_protocol()
    (protocol.send_binary if binary else protocol.send_text)(payload)
    return b"".join(protocol.data_to_send())


@pytest.mark.parametrize("binary", [False, True])
async def test_frames_are_the_bytes_websockets_would_write(binary: bool) -> None:
    shared = SharedFrames(asyncio.get_running_loop(), binary=binary)
    for size in SIZES:
        payload = b"x" * size
        chunks = shared.data_to_send(open_protocol(), [payload])
        assert b"".join(chunks) == framed_by_websockets(payload, binary=binary), size
    payloads = [b"a" * size for size in SIZES]
    chunks = shared.data_to_send(open_protocol(), payloads)
    expected = b"".join(framed_by_websockets(p, binary=binary) for p in payloads)
    assert b"".join(chunks) == expected


async def test_one_frame_serves_every_connection_until_the_loop_turns() -> None:
    shared = SharedFrames(asyncio.get_running_loop(), binary=False)
    payload = b'{"type":"message"}'
    first = shared.data_to_send(open_protocol(), [payload])[-1]
    second = shared.data_to_send(open_protocol(), [payload])[-1]
    assert first is second  # framed once, the same bytes object written twice
    await asyncio.sleep(0)  # the end of the loop iteration forgets it
    assert not shared._frames
    third = shared.data_to_send(open_protocol(), [payload])[-1]
    assert third == first and third is not first


async def test_connections_that_could_differ_are_framed_by_their_own_protocol() -> None:
    shared = SharedFrames(asyncio.get_running_loop(), binary=False)
    payload = b"y" * 300

    compressed = open_protocol()
    compressed.extensions = [PerMessageDeflate(False, False, 15, 15)]
    chunks = shared.data_to_send(compressed, [payload])
    assert b"".join(chunks)[0] & 0x40  # RSV1: compressed for this connection alone
    assert not shared._frames

    fragmenting = open_protocol()
    fragmenting.send_frame(Frame(Opcode.TEXT, b"part", fin=False))
    fragmenting.expect_continuation_frame = True
    with pytest.raises(Exception, match="continuation"):
        # Never write a whole frame in the middle of someone else's fragmented message.
        shared.data_to_send(fragmenting, [payload])

    logging_frames = open_protocol()
    logging_frames.debug = True
    chunks = shared.data_to_send(logging_frames, [payload])
    assert b"".join(chunks) == framed_by_websockets(payload, binary=False)
    assert not shared._frames


async def test_pending_protocol_output_leaves_first() -> None:
    shared = SharedFrames(asyncio.get_running_loop(), binary=False)
    protocol = open_protocol()
    protocol.send_ping(b"p")
    ping = framed_by_websockets_ping(b"p")
    chunks = shared.data_to_send(protocol, [b"after"])
    assert b"".join(chunks) == ping + framed_by_websockets(b"after", binary=False)


def framed_by_websockets_ping(data: bytes) -> bytes:
    protocol = open_protocol()
    protocol.send_ping(data)
    return b"".join(protocol.data_to_send())


@pytest.mark.parametrize("adapter", ["websockets", "websockets_sync", "aiohttp"])
async def test_compressed_and_plain_members_of_one_room_get_every_message(adapter: str) -> None:
    manager = ConnectionManager()
    async with ADAPTERS[adapter](manager) as url:
        plain = [await Client.connect(url, compression=None) for _ in range(3)]
        compressed = [await Client.connect(url, compression="deflate") for _ in range(3)]
        clients = plain + compressed
        for client in clients:
            await client.join("mixed")
        assert all(not c.ws.protocol.extensions for c in plain)
        assert all(c.ws.protocol.extensions for c in compressed)
        sizes = [10, 200, 70000, 3]
        for size in sizes:
            await manager.broadcast("mixed", {"pad": "z" * size})
        for client in clients:
            received: list[Any] = []
            while len(received) < len(sizes):
                frame = await asyncio.wait_for(client.ws.recv(), TIMEOUT)
                message = json.loads(frame)
                if message["type"] == "message":
                    received.append(len(message["data"]["pad"]))
            assert received == sizes
        for client in clients:
            await client.close()
