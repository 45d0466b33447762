"""The admin view: ConnectionManager.admin_snapshot() over real clients, its bounds and its
close log, the backplane's status, and the HTTP answers of wsroom.admin on every adapter
(the application's check first, the page's policy, the public files, the snapshot)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.resources import files
from typing import Any

import pytest

from tests.helpers import (
    TIMEOUT,
    Client,
    connect_as,
    fall_behind,
    http_request,
    stuck_reader,
    user_from_query,
    wait_for,
    websockets_asyncio_server,
)
from wsroom import ConnectionManager, Handshake, HandshakeRejected, Limits
from wsroom.admin import AdminView, directory

# A server serving ``manager``'s admin view with ``authorize``, and its WebSocket; yields
# its port.
AdminServer = Callable[[ConnectionManager, Any], AbstractAsyncContextManager[int]]


@asynccontextmanager
async def websockets_admin(manager: ConnectionManager, authorize: Any) -> AsyncIterator[int]:
    from wsroom.adapters.websockets import admin_view, serve

    view = admin_view(manager, authorize)
    async with serve(manager, "127.0.0.1", 0, process_request=view) as server:
        yield server.sockets[0].getsockname()[1]


@asynccontextmanager
async def sync_admin(manager: ConnectionManager, authorize: Any) -> AsyncIterator[int]:
    """The threading server, with the manager on the test's loop as beside an asyncio app."""
    import threading

    from websockets.sync.server import serve as sync_serve

    from wsroom.adapters.websockets_sync import SyncAdapter, admin_view

    await manager.start()
    adapter = SyncAdapter(manager)
    options = adapter.options(admin_view(manager, authorize))
    server = sync_serve(adapter.handler, "127.0.0.1", 0, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()[1]
    finally:
        await manager.shutdown()
        await asyncio.to_thread(server.shutdown)
        await asyncio.to_thread(thread.join, TIMEOUT)


@asynccontextmanager
async def starlette_admin(manager: ConnectionManager, authorize: Any) -> AsyncIterator[int]:
    from starlette.applications import Starlette

    from tests.helpers import uvicorn_server
    from wsroom.adapters.starlette import admin_routes, routes

    app = Starlette(routes=[*admin_routes(manager, authorize), *routes("/ws", manager)])
    async with uvicorn_server(manager, app) as server:
        yield server.servers[0].sockets[0].getsockname()[1]


@asynccontextmanager
async def asgi_admin(manager: ConnectionManager, authorize: Any) -> AsyncIterator[int]:
    """The plain ASGI adapter: the rooms at /ws, the admin view behind them."""
    from tests.helpers import uvicorn_server
    from wsroom.adapters.asgi import WSRoomApp, admin_app

    app = WSRoomApp(manager, path="/ws", app=admin_app(manager, authorize))
    async with uvicorn_server(manager, app) as server:
        yield server.servers[0].sockets[0].getsockname()[1]


SERVERS = {
    "websockets": websockets_admin,
    "sync": sync_admin,
    "starlette": starlette_admin,
    "asgi": asgi_admin,
}


def operator(request: Handshake) -> bool:
    """The tests' check: an operator sends ``Authorization: Bearer secret``."""
    if request.headers.get("Authorization") is None:
        raise HandshakeRejected(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})
    return request.headers.get("Authorization") == "Bearer secret"


async def async_operator(request: Handshake) -> bool:
    await asyncio.sleep(0)
    return operator(request)


OPERATOR = "Authorization: Bearer secret\r\n"


async def get_json(port: int, path: str = "/admin/snapshot.json") -> dict[str, Any]:
    status, headers, body = await http_request(port, path, headers=OPERATOR)
    assert status == 200, (status, body)
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    snapshot: dict[str, Any] = json.loads(body)
    return snapshot


# 1. The snapshot, over real clients.


@pytest.mark.timeout(30)
async def test_snapshot_lists_the_biggest_rooms_newest_connections_and_closes() -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with websockets_asyncio_server(manager) as url:
        clients = []
        # Room "r<n>" gets n members; "big" gets every one of them.
        for n in range(1, 7):
            # Reading every presence frame, so that closing takes no wait.
            client = await connect_as(url, f"user{n}", max_queue=None)
            clients.append(client)
            await client.join("big")
            for size in range(n, 7):
                await client.join(f"r{size}")
        bye = await connect_as(url, "leaver")
        await bye.close()
        await wait_for(lambda: not manager.user_connections("leaver"))
        kicked = await connect_as(url, "kicked")
        await manager.disconnect_user("kicked", 4000, "banned for spam")
        slow = await connect_as(url, "slow")
        manager.evict(manager.user_connections("slow")[0])
        for client in (kicked, slow):
            await client.wait_closed()
        await wait_for(lambda: len(manager.connections) == 6)

        snapshot = await manager.admin_snapshot(connections=2, rooms=3, members=4, closes=2)
        json.dumps(snapshot, allow_nan=False)  # JSON types only
        assert snapshot["version"] == 1
        assert snapshot["statistics"]["connections"] == 6
        assert snapshot["statistics"]["rooms"] == 7
        assert snapshot["statistics"]["evictions"] == 1
        # Counts by a pair of labels are keyed by both, as JSON allows.
        assert snapshot["statistics"]["closes"]["server 1013"] == 1
        assert snapshot["statistics"]["closes"]["client 1000"] == 1
        assert [room["name"] for room in snapshot["rooms"]] == ["big", "r6", "r5"]
        big = snapshot["rooms"][0]
        assert big["members"] == 6 and big["connections"] == 6 and big["anonymous"] == 0
        assert big["users"] == ["user1", "user2", "user3", "user4"]
        assert [conn["user"] for conn in snapshot["connections"]] == ["user6", "user5"]
        newest = snapshot["connections"][0]
        assert newest["rooms"] == 2 and newest["address"] == "127.0.0.1"
        assert newest["queued_frames"] == 0 and newest["idle"] >= 0
        # Newest first; the server's closes are kept apart.
        closes = snapshot["closes"]
        assert [(c["user"], c["by"], c["code"], c["evicted"]) for c in closes] == [
            ("slow", "server", 1013, True),
            ("kicked", "server", 4000, False),
        ]
        assert closes[0]["reason"] == "client too slow"
        assert closes[1]["reason"] == "banned for spam"
        every = (await manager.admin_snapshot(closes=10))["closes"]
        assert every[2]["user"] == "leaver" and every[2]["by"] == "client"
        assert every[2]["code"] == 1000 and every[2]["reason"] == ""
        server = (await manager.admin_snapshot(closes=10))["server_closes"]
        assert [c["user"] for c in server] == ["slow", "kicked"]
        assert snapshot["backplane"] == {
            "kind": "memory",
            "available": True,
            "nodes": 1,
            "address": None,
            "last_error": None,
            "last_error_at": None,
            "dropped_messages": 0,
        }
        assert snapshot["limits"] == {
            "max_queue": manager.limits.max_queue,
            "max_queue_bytes": manager.limits.max_queue_bytes,
        }
        # Nothing asked, nothing listed; the totals still count everything.
        empty = await manager.admin_snapshot(connections=0, rooms=0, queues=0, closes=0)
        assert (empty["connections"], empty["rooms"], empty["closes"]) == ([], [], [])
        assert empty["statistics"]["connections"] == 6
        for client in clients:
            await client.close()


@pytest.mark.timeout(30)
async def test_snapshot_shows_the_fullest_queues_and_anonymous_members() -> None:
    manager = ConnectionManager()
    async with websockets_asyncio_server(manager) as url:
        readers = [await Client.connect(url) for _ in range(2)]
        for reader in readers:
            await reader.join("room")
        port = int(url.rsplit(":", 1)[1])
        stuck = await asyncio.to_thread(stuck_reader, port, "/ws", "mine")
        await wait_for(lambda: bool(manager.connections_in("mine")))
        conn = manager.connections_in("mine")[0]
        await fall_behind(manager, "mine", lambda: conn.queued_frames >= 2)
        assert not conn.closed
        snapshot = await manager.admin_snapshot(queues=5)
        assert snapshot["queues"][0] == {
            "id": conn.id,
            "user": None,
            "frames": conn.queued_frames,
            "bytes": conn.queued_bytes,
        }
        assert all(queue["frames"] > 0 for queue in snapshot["queues"])
        assert snapshot["statistics"]["queued_bytes"] >= conn.queued_bytes > 0
        assert snapshot["rooms"][0] == {
            "name": "room",
            "members": 2,
            "connections": 2,
            "users": [],
            "anonymous": 2,
        }
        assert (await manager.admin_snapshot(queues=0))["queues"] == []
        for reader in readers:
            await reader.close()
        stuck.close()


@pytest.mark.parametrize("size", [-1, 1001, 2.0, True, "3"])
async def test_snapshot_sizes_are_bounded(size: Any) -> None:
    manager = ConnectionManager()
    with pytest.raises(ValueError, match="rooms must be a whole number from 0 to 1000"):
        await manager.admin_snapshot(rooms=size)
    with pytest.raises(ValueError, match="members must be"):
        AdminView(manager, operator, members=size)


@pytest.mark.timeout(60)
async def test_the_close_log_is_bounded() -> None:
    from wsroom._snapshot import CLOSE_LOG_SIZE

    manager = ConnectionManager(limits=Limits.without_rate_limits())
    async with websockets_asyncio_server(manager) as url:
        for _ in range(CLOSE_LOG_SIZE + 5):
            client = await Client.connect(url)
            await client.close()
        await wait_for(lambda: not manager.connections)
        log = manager._dispatcher.closes
        assert len(log.everything) == CLOSE_LOG_SIZE and len(log.server) == 0
        closes = (await manager.admin_snapshot(closes=1000))["closes"]
        assert len(closes) == CLOSE_LOG_SIZE


# 2. The backplane's status.


@pytest.mark.timeout(60)
async def test_redis_status_counts_nodes_and_keeps_the_last_error() -> None:
    pytest.importorskip("redis")
    from tests.redis_support import private_redis
    from wsroom.backplane.redis import RedisBackplane

    with private_redis() as redis:
        url = redis.url.replace("redis://", "redis://:hunter2@")
        first = ConnectionManager(backplane=RedisBackplane(redis.url, heartbeat=0.2, timeout=1))
        second = ConnectionManager(backplane=RedisBackplane(redis.url, heartbeat=0.2, timeout=1))
        async with first, second:
            status = (await first.admin_snapshot())["backplane"]
            assert status["kind"] == "redis" and status["available"] is True
            assert status["nodes"] == 2
            assert status["address"] == redis.url and status["last_error"] is None
            redis.kill()
            await wait_for(lambda: not first.backplane.available, timeout=TIMEOUT * 2)
            status = (await first.admin_snapshot())["backplane"]
            assert status["available"] is False and status["nodes"] is None
            assert status["last_error"] and status["last_error_at"] is not None
        # The address never shows a password.
        assert (await RedisBackplane(url).status()).address == "redis://***@" + redis.url[8:]


# 3. The HTTP answers, on every adapter.


@pytest.mark.timeout(60)
@pytest.mark.parametrize("check", [operator, async_operator], ids=["def", "async def"])
@pytest.mark.parametrize("server", list(SERVERS))
async def test_admin_view_over_http(server: str, check: Any) -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with SERVERS[server](manager, check) as port:
        ann = await connect_as(f"ws://127.0.0.1:{port}", "ann")
        await ann.join("lobby")

        # The application's check guards the page and the snapshot.
        for path in ("/admin/", "/admin/snapshot.json"):
            status, headers, body = await http_request(port, path)
            assert (status, headers["www-authenticate"]) == (401, "Bearer"), path
            assert body == b"Unauthorized\n"
            status, _, body = await http_request(
                port, path, headers="Authorization: Bearer guess\r\n"
            )
            assert (status, body) == (403, b"Forbidden\n"), path
            assert b"ann" not in body

        status, headers, page = await http_request(port, "/admin/", headers=OPERATOR)
        assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
        assert page == files("wsroom.admin").joinpath("admin.html").read_bytes()
        assert headers["cache-control"] == "no-store"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        policy = headers["content-security-policy"]
        assert "script-src 'self';" in policy and "style-src 'self';" in policy
        assert "frame-ancestors 'none'" in policy and "unsafe" not in policy

        snapshot = await get_json(port)
        assert snapshot["statistics"]["connections"] == 1
        assert snapshot["rooms"][0]["users"] == ["ann"]

        # The page's own files are public, revalidated by their ETag.
        for name, kind in [
            ("admin.js", "text/javascript"),
            ("admin.css", "text/css"),
            ("favicon.svg", "image/svg+xml"),
        ]:
            status, headers, body = await http_request(port, f"/admin/{name}")
            assert status == 200 and headers["content-type"].startswith(kind), name
            assert body == (directory() / name).read_bytes()
            assert headers["cache-control"] == "no-cache"
            assert headers["x-content-type-options"] == "nosniff"
            etag = headers["etag"]
            status, headers, body = await http_request(
                port, f"/admin/{name}", headers=f"If-None-Match: W/{etag}\r\n"
            )
            assert (status, body) == (304, b""), name

        # The page is a folder: its files are named relative to it.
        status, headers, _ = await http_request(port, "/admin?x=1", headers=OPERATOR)
        assert (status, headers["location"]) == (307, "admin/?x=1")
        assert (await http_request(port, "/admin/missing"))[0] == 404
        assert (await http_request(port, "/admin/snapshot.json/x"))[0] == 404
        # Outside the view, the server answers as before.
        status, _, _ = await http_request(port, "/ws?user=bob")
        assert status == 426
        await ann.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("server", list(SERVERS))
async def test_admin_view_answers_head_and_refuses_other_methods(server: str) -> None:
    from websockets.http11 import Request

    if server in ("websockets", "sync") and "method" not in Request.__dataclass_fields__:
        pytest.skip("this websockets parses GET requests only")
    manager = ConnectionManager()
    async with SERVERS[server](manager, operator) as port:
        status, headers, body = await http_request(port, "/admin/admin.js", method="HEAD")
        assert status == 200 and body == b""
        assert int(headers["content-length"]) == len((directory() / "admin.js").read_bytes())
        status, _, _ = await http_request(port, "/admin/snapshot.json", method="POST")
        assert status == 405


@pytest.mark.timeout(30)
async def test_a_failing_check_is_a_500_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken(request: Handshake) -> bool:
        raise RuntimeError("session store down")

    def truthy(request: Handshake) -> Any:
        return "yes"  # only True lets a request in

    manager = ConnectionManager()
    async with websockets_admin(manager, broken) as port:
        status, _, body = await http_request(port, "/admin/snapshot.json")
        assert (status, body) == (500, b"Internal Server Error\n")
    assert "authorize check failed" in caplog.text
    async with websockets_admin(ConnectionManager(), truthy) as port:
        assert (await http_request(port, "/admin/snapshot.json"))[0] == 403


async def test_admin_view_needs_a_check_and_a_path() -> None:
    manager = ConnectionManager()
    with pytest.raises(TypeError, match="authorize must be"):
        AdminView(manager, None)  # type: ignore[arg-type]
    for path in ("admin", "/admin/", "/a?b", ""):
        with pytest.raises(ValueError, match="path must start with /"):
            AdminView(manager, operator, path=path)


async def test_snapshots_are_reused_within_the_interval() -> None:
    manager = ConnectionManager()
    view = AdminView(manager, operator, min_interval=60)
    first = await view.snapshot_json()
    assert await view.snapshot_json() is first
    fresh = AdminView(manager, operator, min_interval=0)
    assert await fresh.snapshot_json() is not await fresh.snapshot_json()


async def test_respond_ignores_other_paths() -> None:
    view = AdminView(ConnectionManager(), operator, path="/ops/admin")
    assert await view.respond(Handshake(path="/ops")) is None
    assert await view.respond(Handshake(path="/ops/administrator")) is None
    answer = await view.respond(Handshake(path="/ops/admin/admin.js"), "DELETE")
    assert answer is not None and answer.status == 405
    assert ("Allow", "GET, HEAD") in answer.headers


# 4. The page: nothing inline, nothing that turns data into markup.


def test_page_has_no_inline_code_and_builds_text_only() -> None:
    page = (directory() / "admin.html").read_text()
    script = (directory() / "admin.js").read_text()
    assert re.findall(r"<script\b[^>]*>", page) == ['<script type="module" src="admin.js">']
    assert re.findall(r"<script\b[^>]*>(.*?)</script>", page, re.DOTALL) == [""]
    assert "<style" not in page
    assert not re.search(r"\son[a-z]+\s*=", page)
    assert not re.search(r"\sstyle\s*=", page)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
