"""Application code in other threads reaches the rooms, whatever the server's model."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import TIMEOUT, Client, websockets_asyncio_server
from wsroom import ConnectionManager, EncodeError
from wsroom.adapters import websockets_sync
from wsroom.threads import BlockingPortal


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


async def test_broadcasts_from_threads_keep_each_threads_order_waiting_or_not() -> None:
    manager = ConnectionManager()
    async with websockets_asyncio_server(manager) as url:
        client = await Client.connect(url)
        await client.join("feed")
        portal = manager.from_thread
        per_thread = 300

        def publish(name: str) -> list[int]:
            ids: list[int] = []
            futures = []
            for index in range(per_thread):
                if index % 50 == 49:  # a waiting call in the middle of a stream
                    ids.append(portal.broadcast("feed", [name, index]))
                else:
                    futures.append((index, portal.broadcast_nowait("feed", [name, index])))
            ids.extend(future.result(TIMEOUT) or 0 for _, future in futures)
            return sorted(ids)

        published = await asyncio.gather(
            asyncio.to_thread(in_thread, lambda: publish("a")),
            asyncio.to_thread(in_thread, lambda: publish("b")),
        )
        frames = [await client.recv_type("message") for _ in range(2 * per_thread)]
        ids = [frame["id"] for frame in frames]
        assert ids == sorted(ids) == sorted(published[0] + published[1])
        for name in ("a", "b"):
            indexes = [f["data"][1] for f in frames if f["data"][0] == name]
            assert indexes == list(range(per_thread))
        await client.close()


async def test_broadcast_nowait_reports_errors_to_the_caller_or_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = ConnectionManager()
    async with websockets_asyncio_server(manager) as url:
        client = await Client.connect(url)
        await client.join("feed")
        portal = manager.from_thread
        with pytest.raises(ValueError, match="invalid room name"):
            await asyncio.to_thread(in_thread, lambda: portal.broadcast_nowait("bad room", 1))
        with caplog.at_level("ERROR", "wsroom"):
            failed = await asyncio.to_thread(
                in_thread, lambda: portal.broadcast_nowait("feed", object())
            )
            with pytest.raises(EncodeError, match="cannot encode"):
                await asyncio.to_thread(failed.result, TIMEOUT)
        assert "broadcast_nowait to room 'feed' failed" in caplog.text
        # The stream goes on after a failure.
        after = await asyncio.to_thread(in_thread, lambda: portal.broadcast_nowait("feed", 2))
        message_id = await asyncio.to_thread(after.result, TIMEOUT)
        frame = await client.recv_type("message")
        assert (frame["id"], frame["data"]) == (message_id, 2)
        await client.close()


async def test_broadcast_nowait_waits_for_room_when_the_loop_is_stuck() -> None:
    manager = ConnectionManager()
    async with websockets_asyncio_server(manager) as url:
        client = await Client.connect(url)
        await client.join("feed")
        portal = BlockingPortal(manager, timeout=0.2, max_pending=3)
        loop_blocked = threading.Event()
        release_loop = threading.Event()

        def block_the_loop() -> None:
            loop_blocked.set()
            release_loop.wait(TIMEOUT)

        def publish() -> tuple[list[concurrent.futures.Future[int | None]], str]:
            manager_loop = manager.loop
            assert manager_loop is not None
            manager_loop.call_soon_threadsafe(block_the_loop)
            assert loop_blocked.wait(TIMEOUT)
            try:
                futures = [portal.broadcast_nowait("feed", index) for index in range(3)]
                try:
                    portal.broadcast_nowait("feed", 3)
                except TimeoutError as exc:
                    return futures, str(exc)
                return futures, "no error"
            finally:
                release_loop.set()

        futures, error = await asyncio.to_thread(in_thread, publish)
        assert "3 broadcasts were still waiting" in error
        ids = [await asyncio.to_thread(future.result, TIMEOUT) for future in futures]
        frames = [await client.recv_type("message") for _ in range(3)]
        assert [(f["id"], f["data"]) for f in frames] == list(zip(ids, range(3), strict=True))
        await client.close()
