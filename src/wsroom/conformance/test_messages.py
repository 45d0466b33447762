"""PROTOCOL.md: `message` frames, ids, `from`, `data`, `ts`, echo, `ack` and history."""

from __future__ import annotations

import time
from typing import Any

import pytest

from wsroom import Connection, ConnectionManager, Message, Room
from wsroom.conformance._client import Client, connect_as, user_from_query
from wsroom.conformance._frames import check_frame
from wsroom.conformance._server import Server

JSON_VALUES: list[Any] = [
    None,
    0,
    -17,
    2**53 + 1,
    3.25,
    -1e-300,
    True,
    False,
    "",
    "plain",
    "unicode: \u00e9\u00e8 \u4e2d\u6587 \u05e2\u05d1 \U0001f600 \u2603",
    'quotes " and \\ and \n newlines \t',
    [],
    {},
    [1, "two", None, [3, [4, [5]]]],
    {"a": {"b": {"c": [None, True, {"d": "\u00fc"}]}}, "": "empty key"},
]


def now_ms() -> int:
    return int(time.time() * 1000)


async def post(client: Client, room: str, data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send a message with a ref; return the echoed `message` and the `ack`."""
    ref = client.next_ref()
    await client.send({"type": "message", "room": room, "data": data, "ref": ref})
    echo = check_frame(await client.recv(), "message")
    ack = check_frame(await client.recv(), "ack")
    assert ack["ref"] == ref
    return echo, ack


async def test_message_frame_fields(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")
        await alice.join("r")
        await bob.join("r")
        check_frame(await alice.recv(), "presence")
        before = now_ms()
        await alice.send({"type": "message", "room": "r", "data": {"text": "hi"}, "ref": "m1"})
        received = check_frame(await bob.recv(), "message")
        after = now_ms()
        assert received["room"] == "r"
        assert received["id"] == 1
        assert received["from"] == "alice"
        assert received["data"] == {"text": "hi"}
        assert before - 1000 <= received["ts"] <= after + 1000
        echo = check_frame(await alice.recv(), "message")
        assert echo == received
        assert await alice.recv() == {"type": "ack", "ref": "m1", "id": 1}
        await alice.close()
        await bob.close()


async def test_ts_is_unix_milliseconds(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("r")
        echo, _ = await post(client, "r", 1)
        # Milliseconds, not seconds or microseconds: within a minute of now.
        assert abs(echo["ts"] - now_ms()) < 60_000
        await client.close()


async def test_ids_strictly_increase_per_room_from_one(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        one = await Client.connect(url)
        two = await Client.connect(url)
        await one.join("a")
        await one.join("b")
        await two.join("a")
        ids: dict[str, list[int]] = {"a": [], "b": []}
        for i in range(5):
            for room, sender, other in (("a", one, two), ("a", two, one), ("b", one, None)):
                echo, ack = await post(sender, room, i)
                assert ack["id"] == echo["id"]
                ids[room].append(echo["id"])
                if other is not None:
                    assert await other.recv() == echo
        assert ids["a"] == list(range(1, 11))
        assert ids["b"] == list(range(1, 6))
        # Every member sees each room's messages in id order.
        seen: dict[str, list[int]] = {"a": [], "b": []}
        for room in ("a", "b"):
            joined = await (await Client.connect(url)).join(room)
            seen[room] = [m["id"] for m in joined["history"]]
        assert seen == ids
        for client in (one, two):
            await client.close()


async def test_ids_from_the_server_share_the_sequence(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("r")
        first, _ = await post(client, "r", "client")
        server_id = await manager.broadcast("r", {"from": "server"})
        from_server = check_frame(await client.recv(), "message")
        assert from_server["id"] == server_id == first["id"] + 1
        assert from_server["from"] is None
        assert from_server["data"] == {"from": "server"}
        third, _ = await post(client, "r", "client")
        assert third["id"] == server_id + 1
        await client.close()


async def test_from_is_null_for_anonymous_senders(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("r")
        echo, _ = await post(client, "r", "anon")
        assert echo["from"] is None
        await client.close()


@pytest.mark.parametrize("data", JSON_VALUES, ids=repr)
async def test_data_is_any_json_value(start_server: Server, data: Any) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        sender = await Client.connect(url)
        receiver = await Client.connect(url)
        await sender.join("r")
        await receiver.join("r")
        echo, _ = await post(sender, "r", data)
        received = check_frame(await receiver.recv(), "message")
        for frame in (echo, received):
            assert frame["data"] == data
            assert type(frame["data"]) is type(data)
        history = (await (await Client.connect(url)).join("r"))["history"]
        assert history[-1]["data"] == data
        await sender.close()
        await receiver.close()


async def test_lone_surrogate_in_data_round_trips(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("r")
        # json.dumps escapes it as \ud800: valid JSON text, not encodable as UTF-8.
        echo, _ = await post(client, "r", "a\ud800b")
        assert echo["data"] == "a\ud800b"
        await client.close()


async def test_missing_data_is_null(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("r")
        await client.send({"type": "message", "room": "r"})
        assert check_frame(await client.recv(), "message")["data"] is None
        await client.close()


async def test_sender_receives_its_own_message_by_default(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("r")
        await client.send({"type": "message", "room": "r", "data": "me"})
        assert check_frame(await client.recv(), "message")["data"] == "me"
        await client.expect_nothing()
        await client.close()


async def test_echo_false_skips_the_sender(start_server: Server) -> None:
    class Quiet(Room):
        echo = False

    manager = ConnectionManager(Quiet, authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        alice2 = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")
        for client in (alice, alice2, bob):
            await client.join("r")
        for client in (alice, alice2):
            assert check_frame(await client.recv(), "presence")["user"] == "bob"
        await alice.send({"type": "message", "room": "r", "data": "quiet", "ref": "q"})
        assert await alice.recv() == {"type": "ack", "ref": "q", "id": 1}
        await alice.expect_nothing()
        # Only the sending connection is skipped, not the user's other tabs.
        for other in (alice2, bob):
            message = check_frame(await other.recv(), "message")
            assert message["id"] == 1
            assert message["from"] == "alice"
        await alice.send({"type": "message", "room": "r", "data": "no ref"})
        assert check_frame(await bob.recv(), "message")["id"] == 2
        await alice.expect_nothing()
        for client in (alice, alice2, bob):
            await client.close()


async def test_no_ack_without_ref(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("r")
        await client.send({"type": "message", "room": "r", "data": 1})
        check_frame(await client.recv(), "message")
        await client.expect_nothing()
        await client.close()


async def test_ack_without_id_when_nothing_was_stored(start_server: Server) -> None:
    class Sink(Room):
        async def on_message(self, conn: Connection, message: Message) -> None:
            pass

    manager = ConnectionManager(Sink)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("r")
        await client.send({"type": "message", "room": "r", "data": 1, "ref": "s"})
        assert check_frame(await client.recv(), "ack") == {"type": "ack", "ref": "s"}
        await client.expect_nothing()
        await client.close()


async def test_every_member_receives_the_same_frame(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        clients = [await Client.connect(url) for _ in range(4)]
        for client in clients:
            await client.join("r")
        outsider = await Client.connect(url)
        await outsider.join("other")
        await clients[0].send({"type": "message", "room": "r", "data": [1, 2]})
        frames = [check_frame(await client.recv(), "message") for client in clients]
        assert all(frame == frames[0] for frame in frames)
        await outsider.expect_nothing()
        for client in [*clients, outsider]:
            await client.close()


# history


async def test_history_is_replayed_oldest_first(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        sender = await Client.connect(url)
        await sender.join("r")
        sent = [(await post(sender, "r", f"m{i}"))[0] for i in range(5)]
        joined = check_frame(await (await Client.connect(url)).join("r"), "joined")
        assert joined["history"] == sent
        assert [m["data"] for m in joined["history"]] == ["m0", "m1", "m2", "m3", "m4"]
        assert joined["offset"] == 5
        await sender.close()


async def test_history_is_bounded_by_history_size(start_server: Server) -> None:
    class Short(Room):
        history_size = 3

    manager = ConnectionManager(Short)
    async with start_server(manager) as url:
        sender = await Client.connect(url)
        await sender.join("r")
        sent = [(await post(sender, "r", i))[0] for i in range(7)]
        joined = check_frame(await (await Client.connect(url)).join("r"), "joined")
        assert joined["history"] == sent[-3:]
        assert [m["id"] for m in joined["history"]] == [5, 6, 7]
        assert joined["offset"] == 7
        await sender.close()


async def test_history_size_zero_keeps_nothing(start_server: Server) -> None:
    class NoHistory(Room):
        history_size = 0

    manager = ConnectionManager(NoHistory)
    async with start_server(manager) as url:
        sender = await Client.connect(url)
        await sender.join("r")
        for i in range(3):
            await post(sender, "r", i)
        joined = check_frame(await (await Client.connect(url)).join("r"), "joined")
        assert joined["history"] == []
        assert joined["offset"] == 3
        await sender.close()


async def test_history_includes_server_messages(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        await manager.broadcast("r", "from the server")
        client = await Client.connect(url)
        joined = check_frame(await client.join("r"), "joined")
        assert len(joined["history"]) == 1
        message = joined["history"][0]
        assert message["from"] is None
        assert message["data"] == "from the server"
        assert message["id"] == joined["offset"] == 1
        await client.close()
