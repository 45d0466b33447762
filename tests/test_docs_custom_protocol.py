"""docs/custom-protocol.md's programs over real sockets: a protocol that checks an
application's frames, and the same protocol in MessagePack binary frames."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import pytest
import websockets
from websockets.typing import Subprotocol

from tests.helpers import TIMEOUT, websockets_asyncio_server, websockets_sync_server

FOLDER = Path(__file__).resolve().parent.parent / "docs_src" / "custom_protocol"


@pytest.fixture
def page() -> Iterator[ModuleType]:
    sys.path.insert(0, str(FOLDER))
    try:
        import board_protocol

        yield board_protocol
    finally:
        sys.path.remove(str(FOLDER))


@pytest.fixture
def msgpack_page() -> Iterator[ModuleType]:
    sys.path.insert(0, str(FOLDER))
    try:
        import msgpack_protocol

        yield msgpack_protocol
    finally:
        sys.path.remove(str(FOLDER))


async def _answer(ws: Any, ref: int, decode: Any) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = decode(await ws.recv())
        if frame.get("ref") == ref:
            return frame


async def test_the_protocol_refuses_bad_moves_before_the_room_sees_them(page: ModuleType) -> None:
    async with (
        websockets_asyncio_server(page.create_manager()) as url,
        websockets.connect(
            f"{url}/?user=alice", subprotocols=[Subprotocol("wsroom.v1")], open_timeout=TIMEOUT
        ) as ws,
    ):
        await ws.send(json.dumps({"type": "join", "room": "table", "ref": 1}))
        assert (await _answer(ws, 1, json.loads))["type"] == "joined"
        for ref, data in enumerate(
            [{"x": 8, "y": 0}, {"x": True, "y": 1}, {"x": 1}, [1, 2]], start=2
        ):
            await ws.send(json.dumps({"type": "move", "room": "table", "data": data, "ref": ref}))
            error = await _answer(ws, ref, json.loads)
            assert (error["type"], error["code"]) == ("error", "invalid_message"), data
        await ws.send(
            json.dumps({"type": "move", "room": "table", "data": {"x": 3, "y": 4}, "ref": 9})
        )
        ack = await _answer(ws, 9, json.loads)
        assert ack == {"type": "ack", "ref": 9, "data": {"played": [3, 4], "by": "alice"}}


async def _next(ws: Any, type_: str) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = msgpack.unpackb(await ws.recv())
        if frame["type"] == type_:
            return frame


@pytest.mark.parametrize("server", [websockets_asyncio_server, websockets_sync_server])
async def test_msgpack_clients_chat_in_binary_frames(msgpack_page: ModuleType, server: Any) -> None:
    async with server(msgpack_page.create_manager()) as url:
        offer = [Subprotocol("wsroom.v1.msgpack")]
        async with (
            websockets.connect(f"{url}/?user=alice", subprotocols=offer) as alice,
            websockets.connect(f"{url}/?user=bob", subprotocols=offer) as bob,
        ):
            assert alice.subprotocol == "wsroom.v1.msgpack"
            welcome = msgpack.unpackb(await alice.recv())
            assert (welcome["type"], welcome["user"]) == ("welcome", "alice")
            for ref, ws in enumerate((alice, bob), start=1):
                await ws.send(msgpack.packb({"type": "join", "room": "lobby", "ref": ref}))
                assert (await _answer(ws, ref, msgpack.unpackb))["type"] == "joined"
            await alice.send(
                msgpack.packb({"type": "message", "room": "lobby", "data": b"\x00", "ref": 5})
            )
            # bytes are not a protocol value: refused, not crashed on. A frame that does not
            # decode has no readable ref, so the error's ref is null, as with bad JSON.
            assert (await _next(alice, "error"))["code"] == "invalid_json"
            await alice.send(
                msgpack.packb({"type": "message", "room": "lobby", "data": {"t": "hi"}, "ref": 6})
            )
            frame = await _next(bob, "message")
            assert (frame["from"], frame["data"]) == ("alice", {"t": "hi"})
            # A text frame, or a client that offers only JSON, is told what to do.
            await alice.send(json.dumps({"type": "ping", "ref": 7}))
            assert (await _next(alice, "error"))["code"] == "invalid_message"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(
                f"{url}/?user=carol", subprotocols=[Subprotocol("wsroom.v1")], open_timeout=TIMEOUT
            )
        assert refused.value.response.status_code == 400
