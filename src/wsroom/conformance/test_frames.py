"""PROTOCOL.md, "Frames": JSON objects in text frames, `type`, `ref`, extra fields, welcome."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wsroom import Connection, ConnectionManager, Message, Room
from wsroom.conformance._client import Client, connect_as, connect_raw, user_from_query
from wsroom.conformance._frames import check_error, check_frame
from wsroom.conformance._marks import ONE_NODE
from wsroom.conformance._server import Server, single_node_only

VALID_REFS: list[str | int] = [
    "req-1",
    "",
    "x" * 64,
    "r\u00e9f \u2603 \U0001f600",
    0,
    7,
    -3,
    10**63,  # 64 digits
]
INVALID_REFS: list[Any] = ["x" * 65, 10**64, 1.5, True, False, [1], {"ref": 1}]


class PokeRoom(Room):
    def on_poke(self, conn: Connection, message: Message) -> None:
        conn.send_event("poked", message.data, room=self.name)


def same_ref(frame: dict[str, Any], ref: str | int | None) -> None:
    assert frame["ref"] == ref, frame
    assert type(frame["ref"]) is type(ref), frame


# welcome


async def test_welcome_is_the_first_frame(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        ws = await connect_raw(url)
        welcome = json.loads(await ws.recv())
        check_frame(welcome, "welcome")
        assert welcome["protocol"] == 1
        assert welcome["user"] is None
        assert welcome["heartbeat"] is None
        await ws.close()


async def test_welcome_names_the_connection_and_user(start_server: Server) -> None:
    single_node_only(start_server, "looks connections up on one node")
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        tab1 = await connect_as(url, "alice")
        tab2 = await connect_as(url, "alice")
        for client in (tab1, tab2):
            check_frame(client.welcome, "welcome")
            assert client.welcome["user"] == "alice"
            assert client.welcome["protocol"] == 1
            conn = manager.connection(client.welcome["connection"])
            assert conn is not None
            assert conn.user == "alice"
        assert tab1.welcome["connection"] != tab2.welcome["connection"]
        await tab1.close()
        await tab2.close()


async def test_welcome_announces_the_heartbeat(start_server: Server) -> None:
    manager = ConnectionManager(heartbeat=30)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        check_frame(client.welcome, "welcome")
        assert client.welcome["heartbeat"] == 30
        await client.close()


# ref


@pytest.mark.parametrize("ref", VALID_REFS, ids=repr)
async def test_every_direct_answer_echoes_ref(start_server: Server, ref: str | int) -> None:
    manager = ConnectionManager(PokeRoom, authenticate=user_from_query)

    @manager.handler("whoami")
    def whoami(conn: Connection, message: Message) -> None:
        conn.send_event("you", {"user": conn.user})

    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")

        await alice.send({"type": "join", "room": "r", "ref": ref})
        joined = check_frame(await alice.recv_answer(), "joined")
        same_ref(joined, ref)

        await alice.send({"type": "message", "room": "r", "data": 1, "ref": ref})
        echo = check_frame(await alice.recv(), "message")
        ack = check_frame(await alice.recv(), "ack")
        same_ref(ack, ref)
        assert ack["id"] == echo["id"]

        await alice.send({"type": "direct", "to": "bob", "data": 2, "ref": ref})
        ack = check_frame(await alice.recv_answer(), "ack")
        same_ref(ack, ref)
        assert "id" in ack

        await alice.send({"type": "poke", "room": "r", "ref": ref})
        ack = check_frame(await alice.recv_answer(), "ack")
        same_ref(ack, ref)

        await alice.send({"type": "whoami", "ref": ref})
        ack = check_frame(await alice.recv_answer(), "ack")
        same_ref(ack, ref)

        await alice.send({"type": "ping", "ref": ref})
        pong = check_frame(await alice.recv_answer(), "pong")
        same_ref(pong, ref)

        await alice.send({"type": "message", "room": "elsewhere", "data": 3, "ref": ref})
        error = check_error(await alice.recv_answer(), "not_joined", ref)
        same_ref(error, ref)

        await alice.send({"type": "leave", "room": "r", "ref": ref})
        left = check_frame(await alice.recv_answer(), "left")
        same_ref(left, ref)
        assert left["room"] == "r"

        await alice.close()
        await bob.close()


async def test_answers_without_ref_carry_null_ref(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.send({"type": "ping"})
        assert check_frame(await client.recv(), "pong") == {"type": "pong", "ref": None}
        await client.send({"type": "join", "room": "r"})
        assert check_frame(await client.recv(), "joined")["ref"] is None
        await client.send({"type": "leave", "room": "r"})
        assert check_frame(await client.recv(), "left") == {
            "type": "left",
            "room": "r",
            "ref": None,
        }
        await client.send({"type": "leave", "room": "r"})
        check_error(await client.recv(), "not_joined", None)
        await client.close()


@ONE_NODE
@pytest.mark.parametrize("ref", INVALID_REFS, ids=repr)
async def test_invalid_ref_is_invalid_message(start_server: Server, ref: Any) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.send({"type": "join", "room": "r", "ref": ref})
        check_error(await client.recv(), "invalid_message", None)
        # The frame was not served: no join happened.
        await client.send({"type": "message", "room": "r", "data": 1, "ref": "m"})
        check_error(await client.recv(), "not_joined", "m")
        await client.send({"type": "ping", "ref": ref})
        check_error(await client.recv(), "invalid_message", None)
        await client.expect_nothing()
        await client.close()


# extra fields


async def test_unknown_extra_fields_are_ignored(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    extra = {"extra": {"nested": [1, 2]}, "x-custom": None, "since_v2": "later"}
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")
        joined = await alice.join("r", **extra)
        check_frame(joined, "joined")
        await bob.join("r")
        check_frame(await alice.recv(), "presence")

        await alice.send({"type": "message", "room": "r", "data": "hi", "ref": 1, **extra})
        for client in (alice, bob):
            message = check_frame(await client.recv(), "message")
            assert message["data"] == "hi"
        assert check_frame(await alice.recv(), "ack")["ref"] == 1

        await alice.send({"type": "direct", "to": "bob", "data": "psst", "ref": 2, **extra})
        direct = check_frame(await bob.recv(), "direct")
        assert direct["data"] == "psst"
        assert check_frame(await alice.recv(), "ack")["ref"] == 2

        await alice.send({"type": "ping", "ref": 3, **extra})
        assert await alice.recv() == {"type": "pong", "ref": 3}

        await alice.send({"type": "leave", "room": "r", "ref": 4, **extra})
        assert await alice.recv() == {"type": "left", "room": "r", "ref": 4}
        await alice.close()
        await bob.close()


# invalid frames


@ONE_NODE
@pytest.mark.parametrize(
    "raw",
    [
        "",
        "{",
        "not json",
        '{"type": "ping",}',
        "{'type': 'ping'}",
        '{"type": "ping", "x": NaN}',
        '{"type": "ping", "x": Infinity}',
        '{"type": "ping"} trailing',
    ],
)
async def test_invalid_json(start_server: Server, raw: str) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.send(raw)
        check_error(await client.recv(), "invalid_json", None)
        await client.expect_nothing()
        await client.close()


@ONE_NODE
@pytest.mark.parametrize("raw", ["[]", '[{"type": "ping"}]', '"ping"', "42", "null", "true"])
async def test_frame_must_be_an_object(start_server: Server, raw: str) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.send(raw)
        check_error(await client.recv(), "invalid_message", None)
        await client.expect_nothing()
        await client.close()


@ONE_NODE
@pytest.mark.parametrize(
    "frame",
    [{}, {"type": None}, {"type": 5}, {"type": ["ping"]}, {"type": {"t": "ping"}}, {"room": "r"}],
    ids=repr,
)
async def test_frame_needs_a_string_type(start_server: Server, frame: dict[str, Any]) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.send({**frame, "ref": "t"})
        check_error(await client.recv(), "invalid_message", "t")
        await client.expect_nothing()
        await client.close()


@ONE_NODE
@pytest.mark.parametrize(
    "frame",
    [
        {"type": "join"},
        {"type": "join", "room": None},
        {"type": "join", "room": "r", "since": "1"},
        {"type": "join", "room": "r", "since": 1.5},
        {"type": "join", "room": "r", "since": -1},
        {"type": "join", "room": "r", "since": True},
        {"type": "join", "room": "r", "epoch": 5},
        {"type": "join", "room": "r", "epoch": ["e"]},
        {"type": "leave"},
        {"type": "message", "data": 1},
        {"type": "direct", "data": 1},
        {"type": "direct", "to": 5, "data": 1},
        {"type": "direct", "to": None, "data": 1},
        {"type": "direct", "to": "", "data": 1},
        {"type": "direct", "to": ["bob"], "data": 1},
    ],
    ids=repr,
)
async def test_field_of_the_wrong_type(start_server: Server, frame: dict[str, Any]) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.send({**frame, "ref": "w"})
        check_error(await client.recv(), "invalid_message", "w")
        await client.expect_nothing()
        await client.close()


@ONE_NODE
async def test_binary_frame_is_invalid_message(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.send(b'{"type": "ping", "ref": "b"}')
        error = check_error(await client.recv(), "invalid_message", None)
        assert "binary" in error["message"]
        await client.expect_nothing()
        await client.close()


@ONE_NODE
async def test_invalid_utf8_text_frame_closes_1007(start_server: Server) -> None:
    # Deviation from PROTOCOL.md ("invalid_json ... or not valid UTF-8", connection stays
    # open): the websockets library validates UTF-8 in text frames itself and fails the
    # connection with 1007 (invalid frame payload data) before wsroom sees the frame.
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.ws.send(b"\xff\xfe", text=True)
        assert await client.expect_close() == 1007


async def test_server_sends_text_frames_of_json_objects(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        ws = await connect_raw(url)
        await ws.send(json.dumps({"type": "join", "room": "r", "ref": 1}))
        await ws.send(json.dumps({"type": "message", "room": "r", "data": "\u00e9", "ref": 2}))
        await ws.send(json.dumps({"type": "ping", "ref": 3}))
        types = []
        while True:
            raw = await ws.recv()
            assert isinstance(raw, str)
            frame = json.loads(raw)
            assert isinstance(frame, dict)
            assert isinstance(frame["type"], str)
            check_frame(frame)
            types.append(frame["type"])
            if frame["type"] == "pong":
                break
        assert types == ["welcome", "joined", "message", "ack", "pong"]
        await ws.close()


async def test_connection_survives_every_error(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        for raw in ("{", "[]", '{"type": 1}', '{"type": "nope"}', b"\x00"):
            await client.send(raw)
            check_frame(await client.recv(), "error")
        joined = await client.join("r")
        assert joined["room"] == "r"
        await client.expect_nothing()
        await client.close()


@ONE_NODE
@pytest.mark.parametrize("room", [123, "not a room name", ["r"]], ids=repr)
async def test_room_is_an_unknown_field_of_ping_and_direct(start_server: Server, room: Any) -> None:
    # `ping` has no fields and `direct` has `to` and `data`: a `room` on them is one more
    # unknown field, ignored like any other.
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")
        await alice.send({"type": "ping", "room": room, "ref": "p"})
        assert await alice.recv() == {"type": "pong", "ref": "p"}
        await alice.send({"type": "direct", "to": "bob", "room": room, "data": 1, "ref": "d"})
        ack = check_frame(await alice.recv(), "ack")
        assert ack["ref"] == "d"
        assert check_frame(await bob.recv(), "direct")["data"] == 1
        await alice.close()
        await bob.close()
