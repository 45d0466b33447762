"""PROTOCOL.md: `direct` messages to every connection of a user, `ack` and `user_offline`."""

from __future__ import annotations

import asyncio
import time

from wsroom import ConnectionManager
from wsroom.conformance._client import TIMEOUT, Client, connect_as, user_from_query, wait_for
from wsroom.conformance._frames import check_error, check_frame
from wsroom.conformance._server import Server


async def test_direct_reaches_every_connection_of_the_user(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob_tabs = [await connect_as(url, "bob") for _ in range(3)]
        carol = await connect_as(url, "carol")
        before = int(time.time() * 1000)
        data = {"text": "psst \u2603", "n": [1, None]}
        await alice.send({"type": "direct", "to": "bob", "data": data, "ref": "d1"})
        ack = check_frame(await alice.recv(), "ack")
        assert ack["ref"] == "d1"
        assert "id" in ack
        frames = [check_frame(await tab.recv(), "direct") for tab in bob_tabs]
        after = int(time.time() * 1000)
        for frame in frames:
            assert frame == frames[0]
        direct = frames[0]
        assert direct["id"] == ack["id"]
        assert direct["from"] == "alice"
        assert direct["data"] == data
        assert before - 1000 <= direct["ts"] <= after + 1000
        await alice.expect_nothing()
        await carol.expect_nothing()
        for client in (alice, *bob_tabs, carol):
            await client.close()


async def test_direct_needs_no_room(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")
        await bob.join("somewhere")
        await alice.send({"type": "direct", "to": "bob", "data": 1})
        direct = check_frame(await bob.recv(), "direct")
        assert direct["data"] == 1
        assert "room" not in direct
        await alice.close()
        await bob.close()


async def test_direct_without_ref_has_no_ack(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")
        await alice.send({"type": "direct", "to": "bob", "data": None})
        assert check_frame(await bob.recv(), "direct")["data"] is None
        await alice.expect_nothing()
        await alice.close()
        await bob.close()


async def test_direct_ids_are_distinct(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")
        ids = []
        for i in range(5):
            answer = await alice.request({"type": "direct", "to": "bob", "data": i})
            ids.append(check_frame(answer, "ack")["id"])
            direct = check_frame(await bob.recv(), "direct")
            assert direct["id"] == ids[-1]
            assert direct["data"] == i
        assert len(set(ids)) == 5
        await alice.close()
        await bob.close()


async def test_direct_to_oneself_reaches_every_own_connection(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        tab1 = await connect_as(url, "alice")
        tab2 = await connect_as(url, "alice")
        await tab1.send({"type": "direct", "to": "alice", "data": "note", "ref": 1})
        mine = check_frame(await tab1.recv(), "direct")
        ack = check_frame(await tab1.recv(), "ack")
        other = check_frame(await tab2.recv(), "direct")
        assert mine == other
        assert ack["id"] == mine["id"]
        assert mine["from"] == "alice"
        await tab1.close()
        await tab2.close()


async def test_direct_from_an_anonymous_client(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        anonymous = await Client.connect(url)
        # Nobody has a user id here, so any target is offline.
        await anonymous.send({"type": "direct", "to": "bob", "data": 1, "ref": "x"})
        check_error(await anonymous.recv(), "user_offline", "x")
        await anonymous.close()


async def test_direct_to_an_offline_user(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        await alice.send({"type": "direct", "to": "nobody", "data": 1, "ref": "o"})
        check_error(await alice.recv(), "user_offline", "o")
        await alice.expect_nothing()
        # A user whose last connection closed is offline again.
        bob = await connect_as(url, "bob")
        answer = await alice.request({"type": "direct", "to": "bob", "data": 2})
        check_frame(answer, "ack")
        await bob.close()
        await wait_for(lambda: not manager.user_connections("bob"))
        if start_server.nodes > 1:
            # bob was on the other node: the test sees its disconnect only through the
            # answers, which turn to user_offline once that node has dropped him.
            async with asyncio.timeout(TIMEOUT):
                for _ in range(int(TIMEOUT * 100)):
                    answer = await alice.request({"type": "direct", "to": "bob", "data": 3})
                    if answer["type"] != "ack":
                        break
                    await asyncio.sleep(0.01)
        await alice.send({"type": "direct", "to": "bob", "data": 3, "ref": "gone"})
        check_error(await alice.recv(), "user_offline", "gone")
        await alice.close()
