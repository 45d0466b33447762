"""Application code in other threads reaches the rooms, whatever the server's model."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import TIMEOUT, Client, websockets_asyncio_server
from wsroom import ConnectionManager
from wsroom.adapters import websockets_sync


def in_thread(func: Callable[[], Any]) -> Any:
    """Run ``func`` in a plain thread (not the default executor) and return its result."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(func())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    if errors:
        raise errors[0]
    return result[0]


async def test_thread_broadcasts_into_rooms_of_an_asyncio_server() -> None:
    manager = ConnectionManager()
    async with websockets_asyncio_server(manager) as url:
        client = await Client.connect(url)
        await client.join("news")
        portal = manager.from_thread
        message_id = await asyncio.to_thread(
            in_thread, lambda: portal.broadcast("news", "from a thread")
        )
        frame = await client.recv_type("message")
        assert (frame["id"], frame["data"]) == (message_id, "from a thread")
        conn_id = client.welcome["connection"]
        assert await asyncio.to_thread(in_thread, lambda: portal.send_event(conn_id, "nudge", 1))
        assert await client.recv_type("nudge") == {"type": "nudge", "data": 1}
        assert (
            await asyncio.to_thread(in_thread, lambda: portal.send_event("nobody", "nudge"))
            is False
        )
        assert await asyncio.to_thread(in_thread, lambda: portal.members("news")) == []
        # On the manager's own loop the blocking API would deadlock: it refuses clearly.
        with pytest.raises(RuntimeError, match="await the manager"):
            portal.broadcast("news", "x")
        await client.close()


def test_from_thread_before_the_manager_runs_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        ConnectionManager().from_thread.broadcast("news", 1)


async def test_thread_broadcasts_into_rooms_of_a_threading_server() -> None:
    manager = ConnectionManager()
    ready = threading.Event()
    holder: dict[str, websockets_sync.Server] = {}

    def run_server() -> None:
        with websockets_sync.serve(manager, "127.0.0.1", 0) as server:
            holder["server"] = server
            ready.set()
            server.serve_forever()

    thread = threading.Thread(target=run_server, name="threading-server")
    thread.start()
    try:
        assert await asyncio.to_thread(ready.wait, TIMEOUT)
        server = holder["server"]
        url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
        alice = await Client.connect(url, "/ws")
        await alice.join("news")
        # The manager runs on the adapter's own background loop, not this test's.
        assert manager.loop is not asyncio.get_running_loop()
        ids = await asyncio.to_thread(
            in_thread, lambda: [manager.from_thread.broadcast("news", index) for index in range(3)]
        )
        frames = [await alice.recv_type("message") for _ in range(3)]
        assert [(f["id"], f["data"]) for f in frames] == list(zip(ids, range(3), strict=True))
        await asyncio.to_thread(server.shutdown)
        assert await alice.wait_closed() == 1001
    finally:
        running = holder.get("server")
        if running is not None:
            await asyncio.to_thread(running.shutdown)  # a second call does nothing
        await asyncio.to_thread(thread.join, TIMEOUT)
    assert not thread.is_alive()
    assert manager.loop is not None and manager.loop.is_closed()


def test_threading_server_left_without_serving_shuts_down() -> None:
    manager = ConnectionManager()
    with websockets_sync.serve(manager, "127.0.0.1", 0) as server:
        assert server.socket.getsockname()[1] > 0
    assert manager.closing


async def test_threading_shutdown_from_the_serving_thread_does_not_deadlock() -> None:
    manager = ConnectionManager()
    done = threading.Event()

    def run() -> None:
        with websockets_sync.serve(manager, "127.0.0.1", 0) as server:
            original = server.server.serve_forever

            def serve_then_stop() -> None:
                # What a signal handler does: shutdown() on the thread that serves.
                server.shutdown()
                original()

            server.server.serve_forever = serve_then_stop  # type: ignore[method-assign]
            server.serve_forever()
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert await asyncio.to_thread(done.wait, TIMEOUT)
    await asyncio.to_thread(thread.join, TIMEOUT)
