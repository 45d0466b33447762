"""PROTOCOL.md, "anything else": custom types dispatched to the application's handlers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import (
    Client,
    ServerFactory,
    check_error,
    check_frame,
    connect_as,
    user_from_query,
)
from wsroom import Connection, ConnectionManager, Message, Room


class GameRoom(Room):
    def on_move(self, conn: Connection, message: Message) -> None:
        conn.send_event("moved", {"data": message.data, "ref": message.ref}, room=self.name)

    async def on_typing(self, conn: Connection, message: Message) -> None:
        await asyncio.sleep(0)
        await self.broadcast_event("typing", {"user": conn.user}, exclude=conn)


@pytest.mark.parametrize("ref", ["r", 5])
async def test_sync_room_method(start_server: ServerFactory, ref: str | int) -> None:
    manager = ConnectionManager(GameRoom)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("g")
        await client.send({"type": "move", "room": "g", "data": {"to": [1, 2]}, "ref": ref})
        event = await client.recv()
        assert event == {"type": "moved", "room": "g", "data": {"data": {"to": [1, 2]}, "ref": ref}}
        ack = check_frame(await client.recv(), "ack")
        assert ack == {"type": "ack", "ref": ref}
        await client.expect_nothing()
        await client.close()


async def test_async_room_method(start_server: ServerFactory) -> None:
    manager = ConnectionManager(GameRoom, authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")
        await alice.join("g")
        await bob.join("g")
        check_frame(await alice.recv(), "presence")
        await alice.send({"type": "typing", "room": "g", "ref": "t"})
        assert await alice.recv() == {"type": "ack", "ref": "t"}
        assert await bob.recv() == {"type": "typing", "room": "g", "data": {"user": "alice"}}
        await alice.expect_nothing()
        await alice.close()
        await bob.close()


async def test_custom_frame_without_ref_has_no_ack(start_server: ServerFactory) -> None:
    manager = ConnectionManager(GameRoom)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("g")
        await client.send({"type": "move", "room": "g", "data": 1})
        assert (await client.recv())["type"] == "moved"
        await client.expect_nothing()
        await client.close()


async def test_room_method_sees_the_whole_frame(start_server: ServerFactory) -> None:
    seen: list[Message] = []

    class Recorder(Room):
        def on_record(self, conn: Connection, message: Message) -> None:
            seen.append(message)

    manager = ConnectionManager(Recorder, authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        await alice.join("r")
        frame = {"type": "record", "room": "r", "data": [1], "ref": 9, "extra": {"k": "v"}}
        await alice.send(frame)
        assert await alice.recv() == {"type": "ack", "ref": 9}
        [message] = seen
        assert message.type == "record"
        assert message.room == "r"
        assert message.data == [1]
        assert message.ref == 9
        assert message.fields == frame
        assert message.user == "alice"
        await alice.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["def", "async def"])
async def test_registered_handler_for_frames_without_room(
    start_server: ServerFactory, is_async: bool
) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    calls: list[Any] = []

    def whoami(conn: Connection, message: Message) -> None:
        calls.append(message.data)
        conn.send_event("you", {"user": conn.user})

    async def whoami_async(conn: Connection, message: Message) -> None:
        await asyncio.sleep(0)
        whoami(conn, message)

    manager.handler("whoami")(whoami_async if is_async else whoami)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        await alice.send({"type": "whoami", "data": {"q": 1}, "ref": "w"})
        assert await alice.recv() == {"type": "you", "data": {"user": "alice"}}
        assert await alice.recv() == {"type": "ack", "ref": "w"}
        await alice.send({"type": "whoami"})
        assert await alice.recv() == {"type": "you", "data": {"user": "alice"}}
        await alice.expect_nothing()
        assert calls == [{"q": 1}, None]
        await alice.close()


async def test_registered_handler_serves_rooms_without_a_method(
    start_server: ServerFactory,
) -> None:
    manager = ConnectionManager(GameRoom)
    rooms: list[str | None] = []

    @manager.handler("vote")
    def vote(conn: Connection, message: Message) -> None:
        rooms.append(message.room)

    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("g")
        await client.send({"type": "vote", "room": "g", "ref": "v"})
        assert await client.recv() == {"type": "ack", "ref": "v"}
        assert rooms == ["g"]
        await client.close()


async def test_custom_frame_for_a_room_not_joined(start_server: ServerFactory) -> None:
    manager = ConnectionManager(GameRoom)

    @manager.handler("move")
    def move(conn: Connection, message: Message) -> None:
        raise AssertionError("must not be called for a room the client has not joined")

    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("g")
        await client.send({"type": "move", "room": "other", "data": 1, "ref": "n"})
        check_error(await client.recv(), "not_joined", "n")
        await client.request({"type": "leave", "room": "g"})
        await client.send({"type": "move", "room": "g", "data": 1, "ref": "left"})
        check_error(await client.recv(), "not_joined", "left")
        await client.expect_nothing()
        await client.close()


@pytest.mark.parametrize("with_room", [False, True], ids=["no room", "joined room"])
@pytest.mark.parametrize(
    "type_",
    [
        "nothing",
        "Move",
        "welcome",
        "joined",
        "left",
        "presence",
        "ack",
        "pong",
        "error",
        "_private",
        "__init__",
        "__class__",
        "can_join",
        "broadcast",
        "join ",
        "",
        "x" * 65,
        "on",
        "\u00e9",
    ],
)
async def test_unknown_type(start_server: ServerFactory, type_: str, with_room: bool) -> None:
    manager = ConnectionManager(GameRoom)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        frame: dict[str, Any] = {"type": type_, "data": 1, "ref": "u"}
        if with_room:
            await client.join("g")
            frame["room"] = "g"
        await client.send(frame)
        check_error(await client.recv(), "unknown_type", "u")
        await client.expect_nothing()
        await client.close()
