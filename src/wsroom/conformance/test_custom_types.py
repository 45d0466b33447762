"""PROTOCOL.md, "anything else": custom types dispatched to the application's handlers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import pytest

from wsroom import Connection, ConnectionManager, Limits, Message, Room
from wsroom.conformance._client import Client, connect_as, user_from_query
from wsroom.conformance._frames import check_error, check_frame
from wsroom.conformance._marks import ONE_NODE
from wsroom.conformance._server import Server


class GameRoom(Room):
    def on_move(self, conn: Connection, message: Message) -> None:
        conn.send_event("moved", {"data": message.data, "ref": message.ref}, room=self.name)

    async def on_typing(self, conn: Connection, message: Message) -> None:
        await asyncio.sleep(0)
        await self.broadcast_event("typing", {"user": conn.user}, exclude=conn)


@pytest.mark.parametrize("ref", ["r", 5])
async def test_sync_room_method(start_server: Server, ref: str | int) -> None:
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


async def test_async_room_method(start_server: Server) -> None:
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


async def test_custom_frame_without_ref_has_no_ack(start_server: Server) -> None:
    manager = ConnectionManager(GameRoom)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("g")
        await client.send({"type": "move", "room": "g", "data": 1})
        assert (await client.recv())["type"] == "moved"
        await client.expect_nothing()
        await client.close()


async def test_room_method_sees_the_whole_frame(start_server: Server) -> None:
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
    start_server: Server, is_async: bool
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
    start_server: Server,
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


async def test_custom_frame_for_a_room_not_joined(start_server: Server) -> None:
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


@ONE_NODE
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
async def test_unknown_type(start_server: Server, type_: str, with_room: bool) -> None:
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


# Answers with data: what a handler returns travels back in the ack.


class AnswerRoom(Room):
    def on_seat(self, conn: Connection, message: Message) -> int:
        return 3

    async def on_roll(self, conn: Connection, message: Message) -> list[int]:
        await asyncio.sleep(0)
        return [4, 2]

    def on_later(self, conn: Connection, message: Message) -> Awaitable[dict[str, Any]]:
        # A def hook that returns an awaitable: it is awaited, its result is the answer.
        return self._later(message)

    async def _later(self, message: Message) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"echo": message.data}

    def on_echo(self, conn: Connection, message: Message) -> Any:
        return message.data

    def on_quiet(self, conn: Connection, message: Message) -> None:
        conn.send_event("quiet", message.data, room=self.name)

    async def on_post(self, conn: Connection, message: Message) -> dict[str, Any]:
        stored = await self.broadcast(message)
        return {"stored": stored, "members": await self.members()}

    def on_set(self, conn: Connection, message: Message) -> Any:
        return {1, 2}

    def on_nan(self, conn: Connection, message: Message) -> Any:
        return float("nan")

    def on_huge(self, conn: Connection, message: Message) -> Any:
        return "x" * 4096


@pytest.mark.parametrize(
    ("type_", "data"),
    [("seat", 3), ("roll", [4, 2]), ("later", {"echo": "hi"})],
    ids=["def", "async def", "def returning an awaitable"],
)
async def test_room_method_answers_with_data(start_server: Server, type_: str, data: Any) -> None:
    manager = ConnectionManager(AnswerRoom)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("g")
        await client.send({"type": type_, "room": "g", "data": "hi", "ref": "a"})
        ack = check_frame(await client.recv(), "ack")
        assert ack == {"type": "ack", "ref": "a", "data": data}
        await client.expect_nothing()
        await client.close()


@pytest.mark.parametrize("value", [0, False, "", [], {}, "\u00e9\u4e16", {"nested": [1.5, None]}])
async def test_every_json_value_but_null_is_an_answer(start_server: Server, value: Any) -> None:
    manager = ConnectionManager(AnswerRoom)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("g")
        answer = await client.request({"type": "echo", "room": "g", "data": value})
        assert "data" in check_frame(answer, "ack")
        assert answer["data"] == value and type(answer["data"]) is type(value)
        # null (or no data at all) is no answer: the ack is as before.
        assert "data" not in await client.request({"type": "echo", "room": "g", "data": None})
        assert "data" not in await client.request({"type": "echo", "room": "g"})
        await client.close()


async def test_an_answer_without_ref_sends_nothing(start_server: Server) -> None:
    manager = ConnectionManager(AnswerRoom)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("g")
        await client.send({"type": "seat", "room": "g"})
        await client.send({"type": "set", "room": "g"})  # unencodable, but nothing to send
        await client.send({"type": "quiet", "room": "g", "data": 1})
        assert await client.recv() == {"type": "quiet", "room": "g", "data": 1}
        await client.expect_nothing()
        await client.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["def", "async def"])
async def test_registered_handler_answers_with_data(start_server: Server, is_async: bool) -> None:
    manager = ConnectionManager(AnswerRoom, authenticate=user_from_query)

    def whoami(conn: Connection, message: Message) -> dict[str, Any]:
        return {"user": conn.user, "rooms": sorted(conn.rooms), "room": message.room}

    async def whoami_async(conn: Connection, message: Message) -> dict[str, Any]:
        await asyncio.sleep(0)
        return whoami(conn, message)

    manager.handler("whoami")(whoami_async if is_async else whoami)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        await alice.send({"type": "whoami", "ref": 1})
        assert await alice.recv() == {
            "type": "ack",
            "ref": 1,
            "data": {"user": "alice", "rooms": [], "room": None},
        }
        # A frame naming a room whose class has no method falls back to the handler.
        await alice.join("g")
        answer = await alice.request({"type": "whoami", "room": "g"})
        assert answer["data"] == {"user": "alice", "rooms": ["g"], "room": "g"}
        await alice.close()


async def test_an_answer_that_stored_the_frame_has_its_id_and_data(
    start_server: Server,
) -> None:
    """Over two nodes, the handler runs on the node holding the sender's connection: the
    message comes back through Redis before the ack, and members() reads every node."""
    manager = ConnectionManager(AnswerRoom, authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")
        await alice.join("g")
        await bob.join("g")
        check_frame(await alice.recv(), "presence")
        await bob.send({"type": "post", "room": "g", "data": {"text": "hi"}, "ref": "p"})
        message = check_frame(await bob.recv(), "message")
        assert (message["from"], message["data"]) == ("bob", {"text": "hi"})
        ack = check_frame(await bob.recv(), "ack")
        assert ack == {
            "type": "ack",
            "ref": "p",
            "id": message["id"],
            "data": {"stored": message["id"], "members": ["alice", "bob"]},
        }
        assert check_frame(await alice.recv(), "message")["id"] == message["id"]
        await alice.expect_nothing()
        await alice.close()
        await bob.close()


@pytest.mark.parametrize("type_", ["set", "nan", "huge"])
async def test_an_answer_that_cannot_be_sent_is_an_internal_error(
    start_server: Server, type_: str, caplog: pytest.LogCaptureFixture
) -> None:
    manager = ConnectionManager(AnswerRoom, limits=Limits(max_queue_bytes=4096))
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("g")
        with caplog.at_level(logging.ERROR, "wsroom"):
            await client.send({"type": type_, "room": "g", "ref": "x"})
            error = check_error(await client.recv(), "internal_error", "x")
        assert error["message"] == "internal server error"
        # The connection lives on, and answers that fit are still sent.
        assert (await client.request({"type": "seat", "room": "g"}))["data"] == 3
        await client.expect_nothing()
        await client.close()
    [record] = [r for r in caplog.records if "cannot answer" in r.getMessage()]
    text = record.getMessage()
    assert f"AnswerRoom.on_{type_}" in text and f"'{type_}' frame" in text
    if type_ == "huge":
        assert "Limits.max_queue_bytes" in text
    else:
        assert "cannot encode" in text
    assert record.exc_info is None  # the reason, not a traceback
