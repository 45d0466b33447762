"""The demo chat: a page at ``/`` and the WebSocket at ``/ws`` on one port.

Run it with ``wsroom demo`` or ``python -m wsroom demo``. For the demo only, the user is the
``name`` query parameter (``/ws?name=alice``), or a generated guest id without it: there is
no password, so never deploy it as is.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from importlib.resources import files
from typing import Any

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..adapters.websockets import Server, serve
from ..connection import Connection
from ..handshake import Handshake
from ..manager import ConnectionManager
from ..protocol import Message
from ..room import Room

__all__ = [
    "ChatRoom",
    "create_manager",
    "demo_server",
    "run",
    "run_starlette",
    "run_sync",
    "starlette_app",
]

logger = logging.getLogger("wsroom.demo")

MAX_NAME_LENGTH = 32


class ChatRoom(Room):
    """The demo's room: history, presence, and a typing indicator."""

    history_size = 100
    max_members = 500

    async def on_typing(self, conn: Connection, message: Message) -> None:
        """Relay ``{"type": "typing"}`` to the other members."""
        await self.broadcast_event("typing", {"user": conn.user}, exclude=conn)


def demo_user(handshake: Handshake) -> str:
    """The demo's stand-in for authentication: ``?name=`` or a guest id."""
    name = " ".join(handshake.query.get("name", "").split())[:MAX_NAME_LENGTH]
    return name or f"guest-{secrets.token_hex(3)}"


def create_manager(redis_url: str | None = None) -> ConnectionManager:
    """The demo's manager: :class:`ChatRoom` rooms, users named by the query string.

    With ``redis_url``, rooms are shared with every other demo process on that Redis.
    """
    backplane = None
    if redis_url is not None:
        from ..backplane.redis import RedisBackplane

        backplane = RedisBackplane(redis_url, prefix="wsroom-demo")
    return ConnectionManager(ChatRoom, authenticate=demo_user, backplane=backplane)


def _page() -> bytes:
    return files(__package__).joinpath("index.html").read_bytes()


def _route(path: str) -> tuple[HTTPStatus, bytes, str] | None:
    """What the demo answers on ``path`` over plain HTTP; ``None`` for the WebSocket."""
    path = path.partition("?")[0]
    if path == "/ws":
        return None
    if path in ("/", "/index.html"):
        return HTTPStatus.OK, _page(), "text/html; charset=utf-8"
    return HTTPStatus.NOT_FOUND, b"Not Found\n", "text/plain; charset=utf-8"


def _serve_page(connection: Any, request: Request) -> Response | None:
    # websockets' process_request, for both its asyncio and its threading server.
    routed = _route(request.path)
    if routed is None:
        return None
    status, body, content_type = routed
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


@asynccontextmanager
async def demo_server(
    host: str = "127.0.0.1", port: int = 8765, manager: ConnectionManager | None = None
) -> AsyncIterator[Server]:
    """Start the demo server (websockets asyncio); on exit, shut it down gracefully."""
    manager = manager if manager is not None else create_manager()
    async with serve(manager, host, port, process_request=_serve_page) as server:
        yield server


def _announce(address: Any) -> None:
    print(f"wsroom demo: open http://{_url_host(str(address[0]))}:{address[1]}/", flush=True)


async def run(host: str = "127.0.0.1", port: int = 8765, redis_url: str | None = None) -> None:
    """Serve the demo on websockets asyncio until SIGINT or SIGTERM, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _resolve, stop)
    async with demo_server(host, port, create_manager(redis_url)) as server:
        for sock in server.sockets:
            _announce(sock.getsockname())
        await stop
        print("wsroom demo: shutting down", flush=True)


def run_sync(host: str = "127.0.0.1", port: int = 8765, redis_url: str | None = None) -> None:
    """Serve the demo on a threaded websockets server until SIGINT or SIGTERM."""
    from ..adapters import websockets_sync

    manager = create_manager(redis_url)
    with websockets_sync.serve(manager, host, port, process_request=_serve_page) as server:

        def stop(signum: int, frame: object) -> None:
            # shutdown() waits for serve_forever() to return: call it from another thread.
            threading.Thread(target=server.shutdown, name="wsroom-demo-stop").start()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        _announce(server.socket.getsockname())
        server.serve_forever()
        print("wsroom demo: shutting down", flush=True)


def starlette_app(manager: ConnectionManager | None = None) -> Any:
    """The demo as a Starlette application: the page at ``/``, the WebSocket at ``/ws``."""
    from starlette.applications import Starlette
    from starlette.requests import Request as HTTPRequest
    from starlette.responses import Response as HTTPResponse
    from starlette.routing import Route, WebSocketRoute

    from ..adapters.starlette import endpoint

    manager = manager if manager is not None else create_manager()

    async def page(request: HTTPRequest) -> HTTPResponse:
        routed = _route(request.url.path)
        assert routed is not None
        status, body, content_type = routed
        return HTTPResponse(body, status_code=status.value, media_type=content_type)

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/index.html", page),
            WebSocketRoute("/ws", endpoint(manager)),
        ]
    )
    app.state.manager = manager
    return app


def run_starlette(host: str = "127.0.0.1", port: int = 8765, redis_url: str | None = None) -> None:
    """Serve the demo as a Starlette app under uvicorn until SIGINT or SIGTERM."""
    import uvicorn

    manager = create_manager(redis_url)

    class DemoServer(uvicorn.Server):
        # uvicorn closes WebSockets with 1012 and runs the lifespan shutdown only after
        # they are gone; shut the rooms down first, so clients get their frames and 1001.
        draining = False
        drain_task: asyncio.Task[None] | None = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            loop = manager.loop
            if self.draining or loop is None:
                super().handle_exit(sig, frame)
                return
            self.draining = True
            loop.call_soon_threadsafe(self.start_drain, loop)

        def start_drain(self, loop: asyncio.AbstractEventLoop) -> None:
            self.drain_task = loop.create_task(self.drain())

        async def drain(self) -> None:
            print("wsroom demo: shutting down", flush=True)
            await manager.shutdown()
            # Not super().handle_exit(): uvicorn would re-raise the signal once stopped.
            self.should_exit = True

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            await manager.start()
            for server in self.servers:
                for sock in server.sockets:
                    _announce(sock.getsockname())

    config = uvicorn.Config(
        starlette_app(manager), host=host, port=port, log_level="warning", lifespan="off"
    )
    DemoServer(config).run()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
