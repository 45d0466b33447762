"""The manager's on_connect and on_disconnect hooks, over every adapter and two Redis nodes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import websockets

from tests.helpers import (
    TIMEOUT,
    Client,
    ServerFactory,
    check_frame,
    connect_as,
    user_from_query,
)
from tests.redis_support import two_nodes_over_redis
from wsroom import Connection, ConnectionManager, Limits, Message, Room


class Hooks:
    """Records both hooks (on_connect a plain def, on_disconnect an async def) and the
    on_leave of the rooms of :meth:`room_class`, in the order they ran."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._changed = asyncio.Event()

    def connected(self, conn: Connection) -> None:
        self.events.append(("connect", conn.id, conn.user))
        conn.send_event("hello", {"connection": conn.id})

    async def disconnected(self, conn: Connection, code: int | None) -> None:
        await asyncio.sleep(0)
        self.events.append(("disconnect", conn.id, code, conn.rooms, conn.closed))
        self._changed.set()

    def room_class(self) -> type[Room]:
        events = self.events

        class Tracked(Room):
            def on_leave(self, conn: Connection) -> None:
                events.append(("leave", conn.id, self.name))

        return Tracked

    def manager(self, **options: Any) -> ConnectionManager:
        return ConnectionManager(
            self.room_class(),
            authenticate=user_from_query,
            on_connect=self.connected,
            on_disconnect=self.disconnected,
            **options,
        )

    def of(self, connection: str) -> list[tuple[Any, ...]]:
        """What happened to one connection."""
        return [event for event in self.events if event[1] == connection]

    def disconnects(self) -> int:
        return sum(event[0] == "disconnect" for event in self.events)

    async def wait_disconnects(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT):
            while self.disconnects() < count:
                self._changed.clear()
                await self._changed.wait()


async def connect(url: str, user: str) -> Client:
    """A client whose on_connect has run: its 'hello' comes right after the 'welcome'."""
    client = await connect_as(url, user)
    assert await client.recv() == {
        "type": "hello",
        "data": {"connection": client.welcome["connection"]},
    }
    return client


async def test_a_client_that_closes_is_reported_with_its_code_after_leaving(
    start_server: ServerFactory,
) -> None:
    hooks = Hooks()
    manager = hooks.manager()
    async with start_server(manager) as url:
        alice = await connect(url, "alice")
        bob = await connect(url, "bob")
        a, b = alice.welcome["connection"], bob.welcome["connection"]
        await alice.join("r1")
        await alice.join("r2")
        await bob.join("r1")
        await alice.ws.close(4000, "bye")
        await hooks.wait_disconnects(1)
        first, *leaves, last = hooks.of(a)
        assert first == ("connect", a, "alice")
        assert sorted(leaves) == [("leave", a, "r1"), ("leave", a, "r2")]  # in any order
        assert last == ("disconnect", a, 4000, frozenset(), True)
        # Bob saw alice leave and is served as before.
        presence = await bob.recv_type("presence")
        assert (presence["event"], presence["user"]) == ("leave", "alice")
        await bob.expect_nothing()
        assert hooks.of(b) == [("connect", b, "bob")]
        await bob.close()
        await hooks.wait_disconnects(2)
        assert hooks.of(b)[-1] == ("disconnect", b, 1000, frozenset(), True)


@pytest.mark.parametrize("how", ["close", "disconnect_user"])
async def test_a_close_by_the_server_is_reported_with_its_code(
    start_server: ServerFactory, how: str
) -> None:
    hooks = Hooks()
    manager = hooks.manager()
    async with start_server(manager) as url:
        alice = await connect(url, "alice")
        await alice.join("r")
        if how == "close":
            conn = manager.connection(alice.welcome["connection"])
            assert conn is not None
            await conn.close(4001, "done")
            expected = 4001
        else:
            assert await manager.disconnect_user("alice", 4003, "banned") == 1
            expected = 4003
        assert await alice.wait_closed() == expected
        await hooks.wait_disconnects(1)
        a = alice.welcome["connection"]
        assert hooks.of(a) == [
            ("connect", a, "alice"),
            ("leave", a, "r"),
            ("disconnect", a, expected, frozenset(), True),
        ]


async def test_a_server_shutdown_reports_1001_before_it_returns(
    start_server: ServerFactory,
) -> None:
    hooks = Hooks()
    manager = hooks.manager()
    async with start_server(manager) as url:
        clients = [await connect(url, name) for name in ("alice", "bob", "carol")]
        await clients[0].join("r")
        shutdown = asyncio.create_task(manager.shutdown(timeout=TIMEOUT))
        for client in clients:
            assert await client.wait_closed() == 1001
        await shutdown
        # shutdown() returned after every on_disconnect did.
        assert hooks.disconnects() == 3
        for client in clients:
            connection = client.welcome["connection"]
            assert hooks.of(connection)[-1] == ("disconnect", connection, 1001, frozenset(), True)
        assert ("leave", clients[0].welcome["connection"], "r") in hooks.events


async def test_an_eviction_reports_1013(start_server: ServerFactory) -> None:
    hooks = Hooks()
    manager = hooks.manager(limits=Limits(max_queue_bytes=4096))
    async with start_server(manager) as url:
        alice = await connect(url, "alice")
        bob = await connect(url, "bob")
        await alice.join("r")
        await bob.join("r")
        conn = manager.connection(alice.welcome["connection"])
        assert conn is not None
        conn.send_event("big", "x" * 5000)  # cannot fit its queue: the client is evicted
        await hooks.wait_disconnects(1)
        a = alice.welcome["connection"]
        assert hooks.of(a) == [
            ("connect", a, "alice"),
            ("leave", a, "r"),
            ("disconnect", a, 1013, frozenset(), True),
        ]
        assert await alice.wait_closed() in (1013, None)  # None: aborted, no close frame
        presence = await bob.recv_type("presence")
        assert (presence["event"], presence["user"]) == ("leave", "alice")
        await bob.expect_nothing()
        await bob.close()


async def test_not_called_for_a_handshake_refused_before_the_upgrade(
    start_server: ServerFactory,
) -> None:
    hooks = Hooks()
    manager = hooks.manager()
    async with start_server(manager) as url:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(url, "/ws")  # no user: the authenticate hook refuses
        assert refused.value.response.status_code == 401
        with pytest.raises(websockets.InvalidStatus):
            await connect_as(url, "alice", subprotocols=["other.v2"])
        # A client served afterwards is the first the hooks hear of.
        bob = await connect(url, "bob")
        assert hooks.events == [("connect", bob.welcome["connection"], "bob")]
        await bob.close()
        await hooks.wait_disconnects(1)
        assert len(hooks.events) == 2


async def test_exceptions_in_the_hooks_are_logged_and_break_nothing(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    disconnected = asyncio.Event()

    async def on_connect(conn: Connection) -> None:
        await asyncio.sleep(0)
        raise RuntimeError(f"on_connect failed for {conn.user}")

    def on_disconnect(conn: Connection, code: int | None) -> None:
        disconnected.set()
        raise RuntimeError(f"on_disconnect failed for {conn.user}")

    manager = ConnectionManager(
        authenticate=user_from_query, on_connect=on_connect, on_disconnect=on_disconnect
    )
    with caplog.at_level(logging.ERROR, "wsroom"):
        async with start_server(manager) as url:
            alice = await connect_as(url, "alice")
            bob = await connect_as(url, "bob")
            await alice.join("r")
            await bob.join("r")
            await alice.close()
            await asyncio.wait_for(disconnected.wait(), TIMEOUT)
            # Bob's connection, and the server, go on.
            check_frame(await bob.recv(), "presence")
            await bob.send({"type": "message", "room": "r", "data": "still here", "ref": 1})
            assert (await bob.recv())["data"] == "still here"
            assert check_frame(await bob.recv(), "ack")["ref"] == 1
            carol = await connect_as(url, "carol")
            await carol.join("r")
            await carol.close()
            await bob.close()
    texts = [record.getMessage() for record in caplog.records]
    for user in ("alice", "bob", "carol"):
        assert sum("on_connect hook for <Connection" in t and user in t for t in texts) == 1
        assert sum("on_disconnect hook for <Connection" in t and user in t for t in texts) == 1
    assert "on_connect failed for alice" in caplog.text


async def test_hooks_on_two_nodes_sharing_rooms_through_redis() -> None:
    hooks = Hooks()
    manager = hooks.manager()
    async with two_nodes_over_redis(manager) as url:
        alice = await connect(url, "alice")  # node A
        bob = await connect(url, "bob")  # node B
        await alice.join("r")
        await bob.join("r")
        assert (await alice.recv_type("presence"))["event"] == "join"
        nodes = {
            manager.connection(client.welcome["connection"]) is not None for client in (alice, bob)
        }
        assert nodes == {True, False}, "the clients are on different nodes"
        await bob.close()
        await hooks.wait_disconnects(1)
        b = bob.welcome["connection"]
        assert hooks.of(b) == [
            ("connect", b, "bob"),
            ("leave", b, "r"),
            ("disconnect", b, 1000, frozenset(), True),
        ]
        presence = await alice.recv_type("presence")
        assert (presence["event"], presence["user"]) == ("leave", "bob")
        await alice.close()
        await hooks.wait_disconnects(2)


async def test_frames_are_handled_once_on_connect_returned(start_server: ServerFactory) -> None:
    gate = asyncio.Event()

    async def on_connect(conn: Connection) -> None:
        await gate.wait()
        conn.state["ready"] = True

    manager = ConnectionManager(on_connect=on_connect)

    @manager.handler("ready")
    def ready(conn: Connection, message: Message) -> bool:
        return bool(conn.state.get("ready"))

    async with start_server(manager) as url:
        client = await Client.connect(url)  # its welcome is sent while on_connect waits
        await client.send({"type": "ready", "ref": 1})
        gate.set()
        assert await client.recv() == {"type": "ack", "ref": 1, "data": True}
        await client.close()
