"""PROTOCOL.md, "Errors": every error code, and the connection stays open after each."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from wsroom import (
    Connection,
    ConnectionManager,
    ErrorCode,
    Limits,
    Message,
    ProtocolError,
    Room,
)
from wsroom.conformance._client import Client, connect_as, user_from_query
from wsroom.conformance._frames import check_error, check_frame
from wsroom.conformance._marks import ONE_NODE
from wsroom.conformance._server import Server, single_node_only

SECRET = "s3cr3t-detail-/etc/passwd-0xdeadbeef"


async def assert_still_open(client: Client) -> None:
    """The connection still serves frames after an error (and nothing else was sent)."""
    await client.expect_nothing()
    answer = await client.request({"type": "ping"})
    assert answer["type"] == "pong"


# invalid_json, invalid_message, unknown_type


@ONE_NODE
async def test_invalid_json(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.send('{"type": "ping", "ref": "j"')
        check_error(await client.recv(), "invalid_json", None)
        await assert_still_open(client)
        await client.close()


@ONE_NODE
async def test_invalid_message(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.send({"type": "join", "room": "bad room", "ref": "i"})
        check_error(await client.recv(), "invalid_message", "i")
        await assert_still_open(client)
        await client.close()


@ONE_NODE
async def test_unknown_type(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.send({"type": "teleport", "ref": "u"})
        check_error(await client.recv(), "unknown_type", "u")
        await assert_still_open(client)
        await client.close()


# not_joined


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "message", "room": "r", "data": 1},
        {"type": "leave", "room": "r"},
        {"type": "poke", "room": "r"},
    ],
    ids=lambda frame: frame["type"],
)
async def test_not_joined(start_server: Server, frame: dict[str, Any]) -> None:
    class Pokable(Room):
        def on_poke(self, conn: Connection, message: Message) -> None:
            raise AssertionError("not joined: must not be called")

    manager = ConnectionManager(Pokable)
    async with start_server(manager) as url:
        member = await Client.connect(url)
        await member.join("r")
        client = await Client.connect(url)
        await client.send({**frame, "ref": "n"})
        check_error(await client.recv(), "not_joined", "n")
        await member.expect_nothing()
        await assert_still_open(client)
        await member.close()
        await client.close()


# forbidden


@pytest.mark.parametrize("is_async", [False, True], ids=["def", "async def"])
async def test_forbidden_by_can_join(start_server: Server, is_async: bool) -> None:
    class SyncGuarded(Room):
        def can_join(self, conn: Connection, data: Any) -> bool:
            return bool(data == "let me in")

    class AsyncGuarded(Room):
        async def can_join(self, conn: Connection, data: Any) -> bool:
            await asyncio.sleep(0)
            return bool(data == "let me in")

    manager = ConnectionManager(AsyncGuarded if is_async else SyncGuarded)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.send({"type": "join", "room": "vault", "data": "please", "ref": "f"})
        check_error(await client.recv(), "forbidden", "f")
        # Refused: not a member.
        await client.send({"type": "message", "room": "vault", "data": 1, "ref": "m"})
        check_error(await client.recv(), "not_joined", "m")
        await assert_still_open(client)
        joined = await client.join("vault", data="let me in")
        assert joined["room"] == "vault"
        await client.close()


async def test_forbidden_over_the_per_connection_room_limit(start_server: Server) -> None:
    manager = ConnectionManager(limits=Limits(max_rooms_per_connection=2))
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("a")
        await client.join("b")
        await client.send({"type": "join", "room": "c", "ref": "limit"})
        check_error(await client.recv(), "forbidden", "limit")
        # The limit is per connection: another client may join c.
        other = await Client.connect(url)
        await other.join("c")
        # Leaving a room makes space again.
        await client.request({"type": "leave", "room": "a"})
        joined = await client.join("c")
        assert joined["room"] == "c"
        await client.close()
        await other.close()


async def test_forbidden_by_can_direct(start_server: Server) -> None:
    def can_direct(conn: Connection, to: str, data: Any) -> bool:
        return to != "boss"

    manager = ConnectionManager(authenticate=user_from_query, can_direct=can_direct)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        boss = await connect_as(url, "boss")
        bob = await connect_as(url, "bob")
        await alice.send({"type": "direct", "to": "boss", "data": "hi", "ref": "d"})
        check_error(await alice.recv(), "forbidden", "d")
        await boss.expect_nothing()
        answer = await alice.request({"type": "direct", "to": "bob", "data": "hi"})
        assert answer["type"] == "ack"
        await assert_still_open(alice)
        for client in (alice, boss, bob):
            await client.close()


async def test_forbidden_for_a_room_no_class_serves(start_server: Server) -> None:
    def room_class(name: str) -> type[Room] | None:
        return Room if name.startswith("public/") else None

    manager = ConnectionManager(room_class)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.send({"type": "join", "room": "private/x", "ref": "p"})
        check_error(await client.recv(), "forbidden", "p")
        await client.join("public/x")
        await assert_still_open(client)
        await client.close()


async def test_forbidden_action_raised_by_a_hook(start_server: Server) -> None:
    class ReadOnly(Room):
        async def on_message(self, conn: Connection, message: Message) -> None:
            raise ProtocolError(ErrorCode.FORBIDDEN, "this room is read-only")

    manager = ConnectionManager(ReadOnly)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("news")
        await client.send({"type": "message", "room": "news", "data": "hi", "ref": "ro"})
        error = check_error(await client.recv(), "forbidden", "ro")
        assert error["message"] == "this room is read-only"
        await assert_still_open(client)
        await client.close()


# room_full


async def test_room_full(start_server: Server) -> None:
    class Pair(Room):
        max_members = 2

    manager = ConnectionManager(Pair, authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")
        carol = await connect_as(url, "carol")
        await alice.join("duo")
        await bob.join("duo")
        await carol.send({"type": "join", "room": "duo", "ref": "full"})
        check_error(await carol.recv(), "room_full", "full")
        # alice is not told about a join that did not happen.
        check_frame(await alice.recv(), "presence")  # bob
        await alice.expect_nothing()
        await assert_still_open(carol)
        # Another connection of a user already in the room is not one more member.
        alice2 = await connect_as(url, "alice")
        await alice2.join("duo")
        # A member leaving frees a place.
        await bob.request({"type": "leave", "room": "duo"})
        joined = await carol.join("duo")
        assert sorted(joined["members"]) == ["alice", "carol"]
        for client in (alice, alice2, bob, carol):
            await client.close()


async def test_room_full_counts_anonymous_connections(start_server: Server) -> None:
    single_node_only(start_server, "anonymous connections count toward max_members per node")

    class Solo(Room):
        max_members = 1

    manager = ConnectionManager(Solo)
    async with start_server(manager) as url:
        first = await Client.connect(url)
        second = await Client.connect(url)
        await first.join("solo")
        await second.send({"type": "join", "room": "solo", "ref": 1})
        check_error(await second.recv(), "room_full", 1)
        await assert_still_open(second)
        await first.close()
        await second.close()


# user_offline


async def test_user_offline(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        await alice.send({"type": "direct", "to": "ghost", "data": 1, "ref": "o"})
        check_error(await alice.recv(), "user_offline", "o")
        await assert_still_open(alice)
        await alice.close()


# rate_limited


async def test_rate_limited_frames_are_refused_and_the_connection_stays_open(
    start_server: Server,
) -> None:
    limits = Limits(rate=0.001, rate_burst=3, rate_abuse_strikes=100)
    manager = ConnectionManager(limits=limits)
    async with start_server(manager) as url:
        observer = await Client.connect(url)
        await observer.join("r")
        client = await Client.connect(url)
        await client.join("r")  # 1 of the burst
        await client.send({"type": "message", "room": "r", "data": "ok", "ref": 1})  # 2
        check_frame(await client.recv(), "message")
        assert (await client.recv())["type"] == "ack"
        await client.send({"type": "ping", "ref": 2})  # 3
        assert await client.recv() == {"type": "pong", "ref": 2}
        assert check_frame(await observer.recv(), "message")["data"] == "ok"

        await client.send({"type": "message", "room": "r", "data": "too fast", "ref": "x"})
        check_error(await client.recv(), "rate_limited", "x")
        await client.send({"type": "ping", "ref": 7})
        check_error(await client.recv(), "rate_limited", 7)
        await client.send("not even json")
        check_error(await client.recv(), "rate_limited", None)
        # The refused message was not processed.
        await observer.expect_nothing()
        # Still open: it keeps receiving.
        await manager.broadcast("r", "still here")
        message = check_frame(await client.recv(), "message")
        assert message["data"] == "still here"
        assert message["id"] == 2
        await client.close()
        await observer.close()


# internal_error


class Faulty(Room):
    def can_join(self, conn: Connection, data: Any) -> bool:
        if data == "explode":
            raise RuntimeError(SECRET)
        return True

    async def on_message(self, conn: Connection, message: Message) -> None:
        if message.data == "explode":
            raise ValueError(SECRET)
        await self.broadcast(message)

    def on_boom(self, conn: Connection, message: Message) -> None:
        raise KeyError(SECRET)

    async def on_aboom(self, conn: Connection, message: Message) -> None:
        await asyncio.sleep(0)
        raise LookupError(SECRET)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "join", "room": "other", "data": "explode"},
        {"type": "message", "room": "r", "data": "explode"},
        {"type": "boom", "room": "r"},
        {"type": "aboom", "room": "r"},
        {"type": "crash"},
        {"type": "direct", "to": "bob", "data": "explode"},
    ],
    ids=lambda frame: f"{frame['type']}-{frame.get('room')}",
)
async def test_internal_error_when_a_hook_raises(
    start_server: Server, frame: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    def can_direct(conn: Connection, to: str, data: Any) -> bool:
        raise RuntimeError(SECRET)

    manager = ConnectionManager(Faulty, authenticate=user_from_query, can_direct=can_direct)

    @manager.handler("crash")
    async def crash(conn: Connection, message: Message) -> None:
        raise ZeroDivisionError(SECRET)

    caplog.set_level(logging.ERROR, logger="wsroom")
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")
        await alice.join("r")
        await alice.send({**frame, "ref": "boom"})
        error = check_error(await alice.recv_answer(), "internal_error", "boom")
        text = error["message"]
        assert SECRET not in text
        for leak in ("Traceback", "Error:", "File ", ".py", "line "):
            assert leak not in text, text
        await assert_still_open(alice)
        # The exception is logged on the server.
        assert any(
            record.exc_info is not None and SECRET in str(record.exc_info[1])
            for record in caplog.records
        ), caplog.records
        await alice.close()
        await bob.close()


async def test_internal_error_in_on_message_stores_nothing(start_server: Server) -> None:
    manager = ConnectionManager(Faulty)
    async with start_server(manager) as url:
        alice = await Client.connect(url)
        await alice.join("r")
        await alice.send({"type": "message", "room": "r", "data": "explode", "ref": 1})
        check_error(await alice.recv(), "internal_error", 1)
        joined = await (await Client.connect(url)).join("r")
        assert joined["history"] == []
        assert joined["offset"] == 0
        await alice.close()


async def test_internal_error_in_can_join_does_not_join(start_server: Server) -> None:
    manager = ConnectionManager(Faulty, authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")
        await bob.join("r")
        await alice.send({"type": "join", "room": "r", "data": "explode", "ref": 1})
        check_error(await alice.recv(), "internal_error", 1)
        await bob.expect_nothing()
        await alice.send({"type": "message", "room": "r", "data": 1, "ref": 2})
        check_error(await alice.recv(), "not_joined", 2)
        await alice.close()
        await bob.close()
