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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from importlib.resources import files

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..adapters.websockets import Server, serve
from ..connection import Connection
from ..handshake import Handshake
from ..manager import ConnectionManager
from ..protocol import Message
from ..room import Room

__all__ = ["ChatRoom", "create_manager", "demo_server", "run"]

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


def create_manager() -> ConnectionManager:
    """The demo's manager: :class:`ChatRoom` rooms, users named by the query string."""
    return ConnectionManager(ChatRoom, authenticate=demo_user)


def _page() -> bytes:
    return files(__package__).joinpath("index.html").read_bytes()


def _serve_page(connection: ServerConnection, request: Request) -> Response | None:
    path = request.path.partition("?")[0]
    if path == "/ws":
        return None
    if path in ("/", "/index.html"):
        body = _page()
        headers = Headers(
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-cache"),
            ]
        )
        return Response(HTTPStatus.OK, "OK", headers, body)
    return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")


@asynccontextmanager
async def demo_server(
    host: str = "127.0.0.1", port: int = 8765, manager: ConnectionManager | None = None
) -> AsyncIterator[Server]:
    """Start the demo server; on exit, shut it down gracefully."""
    manager = manager if manager is not None else create_manager()
    async with serve(manager, host, port, process_request=_serve_page) as server:
        yield server


async def run(host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve the demo until SIGINT or SIGTERM, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _resolve, stop)
    async with demo_server(host, port) as server:
        for sock in server.sockets:
            address = sock.getsockname()
            print(f"wsroom demo: open http://{_url_host(address[0])}:{address[1]}/", flush=True)
        await stop
        print("wsroom demo: shutting down", flush=True)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
