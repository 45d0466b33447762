"""PROTOCOL.md, "Close codes": 1000, 1001, 1008 and 1009.

1013 (a client that reads too slowly) is covered by test_slow_client.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import websockets

from wsroom import (
    ConnectionManager,
    Limits,
)
from wsroom.conformance._client import TIMEOUT, Client, connect_as, user_from_query, wait_for
from wsroom.conformance._frames import check_error, check_frame
from wsroom.conformance._server import Server, single_node_only


async def read_until_closed(client: Client) -> tuple[list[dict[str, Any]], int | None]:
    """Every frame until the server closes, and its close code."""
    frames: list[dict[str, Any]] = []
    try:
        while True:
            frames.append(await client.recv())
    except websockets.ConnectionClosed:
        pass
    rcvd = client.ws.protocol.close_rcvd
    return frames, rcvd.code if rcvd is not None else None


# 1000


async def test_1000_when_the_server_closes_a_connection(start_server: Server) -> None:
    single_node_only(start_server, "closes a connection object of one node")
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        alice = await connect_as(url, "alice")
        bob = await connect_as(url, "bob")
        await alice.join("r")
        conn = manager.connection(alice.welcome["connection"])
        assert conn is not None
        conn.send_event("goodbye", {"reason": "done"})
        await conn.close()
        assert conn.closed
        frames, code = await read_until_closed(alice)
        assert frames == [{"type": "goodbye", "data": {"reason": "done"}}]
        assert code == 1000
        # The others are untouched.
        await bob.expect_nothing()
        assert manager.connection(bob.welcome["connection"]) is not None
        await bob.close()


# 1001


async def test_1001_on_graceful_shutdown_after_queued_frames(start_server: Server) -> None:
    single_node_only(start_server, "shuts down one node")
    manager = ConnectionManager(authenticate=user_from_query)
    async with start_server(manager) as url:
        clients = [await connect_as(url, name) for name in ("alice", "bob")]
        for client in clients:
            await client.join("r")
        await clients[0].recv()  # presence: bob
        for i in range(50):
            await manager.broadcast("r", {"n": i, "pad": "x" * 200})
        # shutdown() returns once every client completed the closing handshake, which
        # takes clients that read: run it while they do.
        shutdown = asyncio.create_task(manager.shutdown(timeout=TIMEOUT))
        for client in clients:
            frames, code = await read_until_closed(client)
            assert [check_frame(f, "message")["data"]["n"] for f in frames] == list(range(50))
            assert code == 1001
        await shutdown
        assert manager.connections == []


# 1008


async def test_1008_on_repeated_rate_limit_abuse(start_server: Server) -> None:
    limits = Limits(rate=0.001, rate_burst=2, rate_abuse_strikes=3)
    manager = ConnectionManager(limits=limits)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("r")
        await client.send({"type": "ping", "ref": 0})
        assert await client.recv() == {"type": "pong", "ref": 0}
        for ref in (1, 2, 3):
            await client.send({"type": "ping", "ref": ref})
        for ref in (1, 2, 3):
            check_error(await client.recv(), "rate_limited", ref)
        assert await client.expect_close() == 1008
        await wait_for(lambda: not manager.connections)
        assert manager.rooms() == []


# 1009


async def test_1009_for_a_frame_above_max_frame_size(start_server: Server) -> None:
    manager = ConnectionManager(limits=Limits(max_frame_size=1024))
    async with start_server(manager) as url:
        client = await Client.connect(url)
        prefix = '{"type":"ping","ref":"fits","pad":"'
        exact = prefix + "a" * (1024 - len(prefix) - 2) + '"}'
        assert len(exact.encode()) == 1024
        await client.send(exact)
        assert await client.recv() == {"type": "pong", "ref": "fits"}
        await client.send(exact.replace('"a', '"aa', 1))
        assert await client.expect_close() == 1009
        await wait_for(lambda: not manager.connections)


async def test_1009_counts_bytes_not_characters(start_server: Server) -> None:
    manager = ConnectionManager(limits=Limits(max_frame_size=1024))
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("r")
        text = "\u00e9" * 600  # 600 characters, 1200 bytes
        await client.send('{"type":"message","room":"r","data":"' + text + '"}')
        assert await client.expect_close() == 1009
