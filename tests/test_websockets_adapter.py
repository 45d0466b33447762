"""What only the websockets asyncio adapter does: its Server, and unwired handshakes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import websockets
from websockets.asyncio.server import serve as ws_serve

from tests.helpers import TIMEOUT, Client, connect_as, user_from_query, websockets_handler_server
from wsroom import (
    ConnectionManager,
    Handshake,
    HandshakeRejected,
    Limits,
    MemoryBackplane,
)
from wsroom.adapters.websockets import WebsocketsAdapter, serve
from wsroom.backplane.base import BusReceiver


async def test_cancelling_serve_forever_shuts_down_gracefully() -> None:
    manager = ConnectionManager()
    async with serve(manager, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        runner = asyncio.create_task(server.serve_forever())
        client = await Client.connect(url)
        await client.join("r")
        await manager.broadcast("r", "before the end")
        runner.cancel()  # what Ctrl-C does to the main task under asyncio.run
        assert (await client.recv_type("message"))["data"] == "before the end"
        assert await client.wait_closed() == 1001
        assert client.ws.close_reason == "server shutting down"
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(runner, TIMEOUT)


async def test_close_makes_serve_forever_return() -> None:
    manager = ConnectionManager()
    async with serve(manager, "127.0.0.1", 0) as server:
        runner = asyncio.create_task(server.serve_forever())
        server.close()
        await asyncio.wait_for(runner, TIMEOUT)
        assert manager.closing


async def test_unwired_handler_checks_after_the_upgrade_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def authenticate(handshake: object) -> str | None:
        return "ann"

    manager = ConnectionManager(authenticate=authenticate)
    adapter = WebsocketsAdapter(manager)
    with caplog.at_level(logging.WARNING, "wsroom"):
        async with ws_serve(adapter.handler, "127.0.0.1", 0) as ws_server:
            url = f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}"
            refused = await Client.connect(url, subprotocols=["other"], welcome=False)
            assert await refused.wait_closed() == 1008
            accepted = await Client.connect(url, subprotocols=[])
            assert accepted.welcome["user"] == "ann"
            await accepted.close()
            await manager.shutdown()
    assert "adapter.options()" in caplog.text


async def test_options_keep_overrides_and_chain_process_request() -> None:
    manager = ConnectionManager()
    adapter = WebsocketsAdapter(manager)
    calls: list[str] = []

    async def health(
        connection: object, request: websockets.http11.Request
    ) -> websockets.http11.Response | None:
        calls.append(request.path)
        return None

    options = adapter.options(health, max_size=1234, ping_interval=None)
    assert options["max_size"] == 1234 and options["ping_interval"] is None
    async with ws_serve(adapter.handler, "127.0.0.1", 0, **options) as ws_server:
        url = f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}"
        client = await Client.connect(url, "/ws?x=1")
        await client.close()
    assert calls == ["/ws?x=1"]
    await manager.shutdown()


# Close codes of a server built by hand around the handler (the conformance suite covers
# the others on every adapter).


@pytest.mark.parametrize("refusal", ["no credentials", "access denied", "origin"])
async def test_1008_when_authentication_fails_after_accept(refusal: str) -> None:
    # Without WebsocketsAdapter.options(), nothing runs before the upgrade: the handler
    # authenticates once the connection is accepted and refuses with 1008.

    def authenticate(handshake: Handshake) -> str | None:
        if refusal == "access denied":
            raise HandshakeRejected(403, "Forbidden")
        return handshake.query.get("user") if refusal == "origin" else None

    manager = ConnectionManager(authenticate=authenticate)
    async with websockets_handler_server(manager) as url:
        kwargs: dict[str, Any] = {}
        if refusal == "origin":
            kwargs["origin"] = "https://evil.example"
        client = await Client.connect(url, "/ws?user=alice", welcome=False, **kwargs)
        assert await client.expect_close() == 1008
        assert manager.connections == []


async def test_handler_without_options_still_serves_valid_clients() -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with websockets_handler_server(manager) as url:
        client = await connect_as(url, "alice")
        assert client.welcome["user"] == "alice"
        await client.join("r")
        await client.close()


async def test_1009_is_enforced_by_the_core_too() -> None:
    # A server started without WebsocketsAdapter.options() keeps websockets' own 1 MiB
    # limit; the manager still closes with 1009 above Limits.max_frame_size.
    manager = ConnectionManager(limits=Limits(max_frame_size=1024))
    async with websockets_handler_server(manager) as url:
        client = await Client.connect(url)
        await client.send({"type": "ping", "pad": "a" * 2000})
        assert await client.expect_close() == 1009


class BrokenBackplane(MemoryBackplane):
    async def start(self, receiver: BusReceiver) -> None:
        raise RuntimeError("the backplane is down")


async def test_1011_on_unexpected_server_failure() -> None:
    # The adapter's serve() starts the manager up front and would fail to start at all;
    # a server built by hand starts it on the first connection, whose accept then fails.
    manager = ConnectionManager(backplane=BrokenBackplane())
    async with websockets_handler_server(manager, checks=True) as url:
        client = await Client.connect(url, welcome=False)
        assert await client.expect_close() == 1011
