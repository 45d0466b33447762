"""PROTOCOL.md: `presence` frames, per user (not per connection), and anonymous clients."""

from __future__ import annotations

from wsroom import ConnectionManager
from wsroom.conformance._client import Client, connect_as, user_from_query, wait_for
from wsroom.conformance._frames import check_frame
from wsroom.conformance._server import Server, single_node_only


def presence(room: str, event: str, user: str) -> dict[str, str]:
    return {"type": "presence", "room": room, "event": event, "user": user}


async def test_presence_join_and_leave_frames(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        bob = await connect_as(url, "bob")
        alice = await connect_as(url, "alice")
        await bob.join("r")
        await alice.join("r")
        assert check_frame(await bob.recv(), "presence") == presence("r", "join", "alice")
        await alice.request({"type": "leave", "room": "r"})
        assert check_frame(await bob.recv(), "presence") == presence("r", "leave", "alice")
        await bob.expect_nothing()
        await alice.close()
        await bob.close()


async def test_two_tabs_of_one_user(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        bob = await connect_as(url, "bob")
        await bob.join("r")
        tab1 = await connect_as(url, "alice")
        tab2 = await connect_as(url, "alice")

        await tab1.join("r")
        assert await bob.recv() == presence("r", "join", "alice")
        # The second tab joining: alice is already present, so no presence frame.
        await tab2.join("r")
        await bob.expect_nothing()
        # One tab leaving: alice is still present through the other.
        await tab1.request({"type": "leave", "room": "r"})
        await bob.expect_nothing()
        await tab2.expect_nothing()
        # The last tab leaving, by disconnecting.
        await tab2.close()
        assert await bob.recv() == presence("r", "leave", "alice")
        await bob.expect_nothing()
        await tab1.close()
        await bob.close()


async def test_first_tab_disconnecting_sends_no_presence(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        bob = await connect_as(url, "bob")
        await bob.join("r")
        tab1 = await connect_as(url, "alice")
        tab2 = await connect_as(url, "alice")
        await tab1.join("r")
        await tab2.join("r")
        assert await bob.recv() == presence("r", "join", "alice")
        await tab1.close()
        await wait_for(lambda: len(manager.user_connections("alice")) == 1)
        await bob.expect_nothing()
        await tab2.request({"type": "leave", "room": "r"})
        assert await bob.recv() == presence("r", "leave", "alice")
        await tab2.close()
        await bob.close()


async def test_presence_when_the_server_closes_the_last_connection(
    start_server: Server,
) -> None:
    single_node_only(start_server, "closes connection objects of one node")
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        bob = await connect_as(url, "bob")
        alice = await connect_as(url, "alice")
        await bob.join("r")
        await alice.join("r")
        assert await bob.recv() == presence("r", "join", "alice")
        conn = manager.connection(alice.welcome["connection"])
        assert conn is not None
        await conn.close()
        assert await alice.wait_closed() == 1000
        assert await bob.recv() == presence("r", "leave", "alice")
        await bob.close()


async def test_presence_is_per_room(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        bob = await connect_as(url, "bob")
        alice = await connect_as(url, "alice")
        await bob.join("a")
        await alice.join("b")
        await bob.expect_nothing()
        await alice.join("a")
        assert await bob.recv() == presence("a", "join", "alice")
        await alice.request({"type": "leave", "room": "b"})
        await bob.expect_nothing()
        await alice.close()
        assert await bob.recv() == presence("a", "leave", "alice")
        await bob.close()


async def test_presence_reaches_every_member(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        names = ("bob", "carol", "dave")
        watchers = [await connect_as(url, name) for name in names]
        for watcher in watchers:
            await watcher.join("r")
        # Each watcher saw the ones who joined after it.
        for index, watcher in enumerate(watchers):
            for name in names[index + 1 :]:
                assert await watcher.recv() == presence("r", "join", name)
        alice = await connect_as(url, "alice")
        await alice.join("r")
        for watcher in watchers:
            assert await watcher.recv() == presence("r", "join", "alice")
        for client in (*watchers, alice):
            await client.close()


async def test_anonymous_users_have_no_presence(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        first = await Client.connect(url)
        assert first.welcome["user"] is None
        await first.join("r")
        second = await Client.connect(url)
        joined = await second.join("r")
        assert joined["members"] == []
        await first.expect_nothing()
        await second.request({"type": "leave", "room": "r"})
        await first.expect_nothing()
        await second.join("r")
        await second.close()
        await wait_for(lambda: len(manager.connections) == 1)
        await first.expect_nothing()
        await first.close()
