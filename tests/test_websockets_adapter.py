"""What only the websockets asyncio adapter does: its Server, and unwired handshakes."""

from __future__ import annotations

import asyncio
import logging

import pytest
import websockets
from websockets.asyncio.server import serve as ws_serve

from tests.helpers import TIMEOUT, Client
from wsroom import ConnectionManager
from wsroom.adapters.websockets import WebsocketsAdapter, serve


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
