"""Serve a :class:`~wsroom.ConnectionManager` with a ``websockets`` asyncio server.

Either let wsroom start the server::

    async with wsroom.adapters.websockets.serve(manager, "", 8765) as server:
        await server.serve_forever()   # on Ctrl-C: graceful shutdown, then KeyboardInterrupt

or plug it into a server you create yourself::

    adapter = WebsocketsAdapter(manager)
    async with websockets.asyncio.server.serve(adapter.handler, "", 8765, **adapter.options()):
        ...

``options()`` carries the handshake checks (origin, authentication, subprotocol) and the
frame size limit; without them the handler still authenticates, but can only refuse a
client after accepting it (close code 1008).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.server import Server as WSServer, ServerConnection, serve as _serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from ..admin import ADMIN_PATH, AdminView, Authorize
from ..connection import Transport
from ..exceptions import HandshakeRejected
from ..manager import ConnectionManager
from ..protocol import CloseCode
from . import _websockets_fastpath as fastpath
from ._websockets_common import (
    AdapterBase,
    admin_response,
    client_script,
    handshake_of,
    metrics_endpoint,
    policy_violation,
    send_at_once,
)
from ._writer import WriterTaskTransport

__all__ = [
    "Server",
    "WebsocketsAdapter",
    "WebsocketsTransport",
    "admin_view",
    "client_script",
    "metrics_endpoint",
    "serve",
]

ProcessRequest = Callable[[ServerConnection, Request], Awaitable[Response | None] | Response | None]


class WebsocketsTransport(WriterTaskTransport):
    """Moves one connection's queued frames onto a ``websockets`` asyncio connection with its
    public ``send()``.

    The adapter uses it when the fast path is off (``wsroom.adapters._websockets_fastpath``;
    otherwise frames are built once per broadcast and written without awaiting). A writer
    task, which exists only while frames are queued, awaits ``send()`` for each frame; a send
    blocked past ``Limits.write_timeout`` evicts the client. ``websockets`` has no public way
    to abort a connection at once: an evicted client's TCP connection is aborted by
    ``websockets`` itself, ``close_timeout`` seconds after its closing handshake began.
    """

    closed_errors = (ConnectionClosed,)

    def __init__(self, ws: ServerConnection, *, binary: bool = False) -> None:
        super().__init__()
        self.ws = ws
        self._text = not binary
        self._close: tuple[int, str] = (CloseCode.GOING_AWAY, "")
        self._closing: set[asyncio.Task[None]] = set()

    def peer_close_code(self) -> int | None:
        """The close code the client sent (1006: none), once the connection is closed."""
        return self.ws.close_code

    def sender(self) -> Callable[[bytes], Awaitable[None]]:
        """Sends one encoded frame with the connection's ``send()``."""
        send, text = self.ws.send, self._text
        return lambda frame: send(frame, text=text)

    async def close(self, code: int, reason: str) -> None:
        self._close = (code, reason)
        await self.flush()
        await self.ws.close(code, reason)

    def abort(self) -> None:
        self.stop_writing()
        if not self._closing:
            self._start(self._closed_by_websockets())

    async def _closed_by_websockets(self) -> None:
        """Have ``websockets`` abort the TCP connection, as its public API alone allows.

        ``close()`` waits without a limit while a peer that stopped reading leaves the close
        frame unsent; a ``close()`` made once the closing handshake has begun waits only
        until ``close_timeout`` has passed since it began, then aborts the connection.
        """
        if self.ws.state is State.OPEN:
            self._start(self.ws.close(*self._close))
            await asyncio.sleep(0)  # that close() begins the closing handshake
        await self.ws.close()

    def _start(self, closing: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


class WebsocketsAdapter(AdapterBase):
    """Connects a :class:`~wsroom.ConnectionManager` to ``websockets.asyncio.server``.

    Pass :attr:`handler` as the server's handler and :meth:`options` as its keyword
    arguments.
    """

    def __init__(self, manager: ConnectionManager) -> None:
        super().__init__(manager)
        self._framing = fastpath.ENABLED
        self._shared: fastpath.SharedFrames | None = None

    def options(
        self, process_request: ProcessRequest | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """Keyword arguments for ``websockets.asyncio.server.serve``.

        Args:
            process_request: Your own ``process_request``, run first (to serve other
                paths, for instance); when it returns a response, wsroom does not run.
            overrides: Any other ``serve`` argument, which wins over wsroom's.
        """
        if process_request is None:
            return self._options(self.process_request, overrides)
        return self._options(_chain(process_request, self.process_request), overrides)

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Refuse the upgrade for a bad origin, subprotocol or credentials (HTTP 4xx)."""
        return await self._check(connection, request)

    async def handler(self, ws: ServerConnection) -> None:
        """The connection handler: runs one client until it disconnects."""
        admitted = await self._admitted(ws)
        if isinstance(admitted, HandshakeRejected):
            await ws.close(*policy_violation(admitted))
            return
        handshake, user = admitted
        if ws.transport is not None:
            send_at_once(ws.transport.get_extra_info("socket"))

        async def receive() -> str | bytes | None:
            try:
                return await ws.recv()
            except ConnectionClosed:
                return None

        await self.manager.serve(self._transport(ws), handshake, user, receive)

    def _transport(self, ws: ServerConnection) -> Transport:
        binary = self.manager.protocol.binary
        if not self._framing:
            return WebsocketsTransport(ws, binary=binary)
        loop = asyncio.get_running_loop()
        if self._shared is None or self._shared.loop is not loop:
            self._shared = fastpath.SharedFrames(loop, binary=binary)
        return fastpath.FramingTransport(ws, self._shared)


class Server:
    """A running ``websockets`` server serving a manager, as :func:`serve` yields it.

    Stopping it is always graceful: first :meth:`ConnectionManager.shutdown
    <wsroom.ConnectionManager.shutdown>` (queued frames delivered, close code 1001), then the
    ``websockets`` server closes.
    """

    def __init__(
        self, server: WSServer, manager: ConnectionManager, shutdown_timeout: float
    ) -> None:
        self.server = server
        """The underlying ``websockets.asyncio.server.Server``."""
        self.manager = manager
        """The manager this server serves."""
        self.shutdown_timeout = shutdown_timeout
        """Seconds clients get to receive what is queued before they are aborted."""
        self._stop = asyncio.Event()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (``server.sockets[0].getsockname()`` gives the port)."""
        return tuple(self.server.sockets)

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called or this task is cancelled (Ctrl-C under
        ``asyncio.run``), then shut down gracefully."""
        try:
            await self._stop.wait()
        finally:
            # Runs on cancellation too, before websockets closes the connections itself.
            await self.aclose()

    def close(self) -> None:
        """Ask :meth:`serve_forever` to return after a graceful shutdown."""
        self._stop.set()

    async def aclose(self) -> None:
        """Shut down gracefully now: the manager first, then the ``websockets`` server."""
        self._stop.set()
        await self.manager.shutdown(self.shutdown_timeout)
        self.server.close()
        await self.server.wait_closed()


@asynccontextmanager
async def serve(
    manager: ConnectionManager,
    host: str | None = None,
    port: int | None = None,
    *,
    process_request: ProcessRequest | None = None,
    shutdown_timeout: float = 5.0,
    **kwargs: Any,
) -> AsyncIterator[Server]:
    """Start a ``websockets`` server for ``manager``; shut both down gracefully on exit.

    On exit, or when :meth:`Server.serve_forever` is cancelled, clients get what is queued
    for them and a close frame with 1001 within ``shutdown_timeout`` seconds. Other keyword
    arguments go to ``websockets.asyncio.server.serve``.
    """
    adapter = WebsocketsAdapter(manager)
    options = adapter.options(process_request, **kwargs)
    async with _serve(adapter.handler, host, port, **options) as ws_server:
        await manager.start()
        server = Server(ws_server, manager, shutdown_timeout)
        try:
            yield server
        finally:
            await manager.shutdown(shutdown_timeout)


def admin_view(
    manager: ConnectionManager,
    authorize: Authorize,
    *,
    path: str = ADMIN_PATH,
    **options: Any,
) -> Callable[[ServerConnection, Request], Awaitable[Response | None]]:
    """A ``process_request`` serving the admin view (:mod:`wsroom.admin`) of ``manager``
    under ``path`` and letting every other request through::

        serve(manager, host, port, process_request=admin_view(manager, is_operator))

    Args:
        manager: The manager to show.
        authorize: The application's check of each request for the page or a snapshot
            (:data:`wsroom.admin.Authorize`); ``True`` lets it in, anything else is a 403.
        path: Where the view lives.
        options: The sizes of the lists and the snapshot's reuse interval, as
            :class:`~wsroom.admin.AdminView` takes them.
    """
    view = AdminView(manager, authorize, path=path, **options)

    async def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if not view.handles(request.path.partition("?")[0]):
            return None
        # Recent websockets parse other methods than GET (HEAD, POST); older ones refuse them.
        answer = await view.respond(
            handshake_of(connection, request), getattr(request, "method", "GET")
        )
        return admin_response(answer) if answer is not None else None

    return process_request


def _chain(first: ProcessRequest, second: ProcessRequest) -> ProcessRequest:
    async def process_request(connection: ServerConnection, request: Request) -> Response | None:
        for step in (first, second):
            response = step(connection, request)
            if asyncio.iscoroutine(response) or isinstance(response, Awaitable):
                response = await response
            if response is not None:
                return response
        return None

    return process_request
