"""PROTOCOL.md: `join`, `leave`, `joined`, `left`, room names and member lists."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from wsroom import Connection, ConnectionManager, Message, Room
from wsroom.conformance._client import TIMEOUT, Client, connect_as, user_from_query, wait_for
from wsroom.conformance._frames import check_error, check_frame
from wsroom.conformance._marks import ONE_NODE
from wsroom.conformance._server import Server

VALID_NAMES = [
    "a",
    "Z",
    "0",
    "_",
    "-",
    ".",
    ":",
    "@",
    "/",
    "lobby",
    "team-1/chan_2:topic@host.example",
    "a" * 128,
    "A" * 64 + "9" * 64,
]
INVALID_NAMES: list[Any] = [
    "",
    "a" * 129,
    "a b",
    " a",
    "a\n",
    "a\t",
    "a\x00",
    "room#1",
    "a,b",
    "a?b",
    "\uff41",  # fullwidth 'a'
    "\u0130",  # 'I' with a dot above
    "caf\u00e9",
    "\uff11",  # fullwidth '1'
    "\u0661",  # Arabic-Indic digit one
    "\u212a",  # Kelvin sign, lowercases to ASCII 'k'
    5,
    1.5,
    True,
    ["a"],
    {"name": "a"},
]


class EchoTypesRoom(Room):
    def on_poke(self, conn: Connection, message: Message) -> None:
        conn.send_event("poked", room=self.name)


@pytest.mark.parametrize("name", VALID_NAMES)
async def test_valid_room_names(start_server: Server, name: str) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        joined = check_frame(await client.join(name), "joined")
        assert joined["room"] == name
        await client.send({"type": "message", "room": name, "data": "x", "ref": "m"})
        assert check_frame(await client.recv(), "message")["room"] == name
        assert check_frame(await client.recv(), "ack")["ref"] == "m"
        left = await client.request({"type": "leave", "room": name})
        assert check_frame(left, "left")["room"] == name
        await client.close()


@ONE_NODE
@pytest.mark.parametrize("name", INVALID_NAMES, ids=repr)
@pytest.mark.parametrize("type_", ["join", "leave", "message", "poke"])
async def test_invalid_room_names(start_server: Server, name: Any, type_: str) -> None:
    manager = ConnectionManager(EchoTypesRoom)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.send({"type": type_, "room": name, "data": 1, "ref": "n"})
        check_error(await client.recv(), "invalid_message", "n")
        await client.expect_nothing()
        await client.close()


async def test_joined_fields_for_a_new_room(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.send({"type": "join", "room": "fresh", "ref": "j"})
        joined = check_frame(await client.recv(), "joined")
        assert joined["room"] == "fresh"
        assert joined["ref"] == "j"
        assert joined["members"] == []
        assert joined["history"] == []
        assert joined["offset"] == 0
        assert isinstance(joined["epoch"], str)
        assert "recovered" not in joined
        await client.expect_nothing()
        await client.close()


async def test_join_data_reaches_can_join(start_server: Server) -> None:
    seen: list[Any] = []

    class Guarded(Room):
        def can_join(self, conn: Connection, data: Any) -> bool:
            seen.append(data)
            return True

    manager = ConnectionManager(Guarded)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("r", data={"password": "open sesame", "n": [1, None]})
        assert seen == [{"password": "open sesame", "n": [1, None]}]
        await client.close()


async def test_members_lists_identified_users(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")
        alice2 = await connect_as(url, "alice")
        assert (await alice.join("r"))["members"] == ["alice"]
        assert sorted((await bob.join("r"))["members"]) == ["alice", "bob"]
        members = (await alice2.join("r"))["members"]
        assert sorted(members) == ["alice", "bob"], "a user is listed once"
        await bob.request({"type": "leave", "room": "r"})
        carol = await connect_as(url, "carol")
        assert sorted((await carol.join("r"))["members"]) == ["alice", "carol"]
        for client in (alice, bob, alice2, carol):
            await client.close()


async def test_leave_answers_left_and_stops_delivery(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        stay = await Client.connect(url)
        go = await Client.connect(url)
        await stay.join("r")
        await go.join("r")
        await go.send({"type": "leave", "room": "r", "ref": "bye"})
        assert check_frame(await go.recv(), "left") == {"type": "left", "room": "r", "ref": "bye"}
        await stay.send({"type": "message", "room": "r", "data": "after", "ref": 1})
        check_frame(await stay.recv(), "message")
        check_frame(await stay.recv(), "ack")
        await go.expect_nothing()
        # Leaving again, or sending to the room, is not_joined.
        await go.send({"type": "leave", "room": "r", "ref": 2})
        check_error(await go.recv(), "not_joined", 2)
        await go.send({"type": "message", "room": "r", "data": 1, "ref": 3})
        check_error(await go.recv(), "not_joined", 3)
        await stay.close()
        await go.close()


async def test_leave_then_join_again(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        stay = await Client.connect(url)
        first = await client.join("r")
        await stay.join("r")
        await client.request({"type": "leave", "room": "r"})
        # The epoch a join created holds while anyone is in the room.
        again = check_frame(await client.join("r"), "joined")
        assert (again["epoch"], again["offset"]) == (first["epoch"], 0)
        # A room that never had a message keeps nothing once emptied: joined afresh.
        await client.request({"type": "leave", "room": "r"})
        await stay.request({"type": "leave", "room": "r"})
        fresh = check_frame(await client.join("r", since=0, epoch=first["epoch"]), "joined")
        assert (fresh["offset"], fresh["history"]) == (0, [])
        await client.close()
        await stay.close()


async def test_one_connection_in_many_rooms(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        other = await Client.connect(url)
        for name in ("a", "b", "c"):
            await client.join(name)
        await other.join("b")
        await other.send({"type": "message", "room": "b", "data": "to b"})
        check_frame(await other.recv(), "message")
        message = check_frame(await client.recv(), "message")
        assert message["room"] == "b"
        assert message["data"] == "to b"
        await client.request({"type": "leave", "room": "b"})
        await other.send({"type": "message", "room": "b", "data": "gone", "ref": "g"})
        check_frame(await other.recv(), "message")
        check_frame(await other.recv(), "ack")
        await client.expect_nothing()
        await client.close()
        await other.close()


async def test_disconnect_leaves_every_room(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        await alice.join("a")
        await alice.join("b")
        alice_id = alice.welcome["connection"]
        await alice.close()
        await wait_for(lambda: manager.connection(alice_id) is None)
        # Over Redis, alice's node may be another one, and her leave takes a round trip.
        async with asyncio.timeout(TIMEOUT):
            while await manager.members("a") or await manager.members("b"):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        bob = await connect_as(url, "bob")
        assert (await bob.join("a"))["members"] == ["bob"]
        assert (await bob.join("b"))["members"] == ["bob"]
        await bob.close()
