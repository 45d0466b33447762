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
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.server import Server as WSServer, ServerConnection, serve as _serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from ..connection import Connection, Transport
from ..exceptions import HandshakeRejected
from ..handshake import Handshake
from ..manager import ConnectionManager
from ..protocol import CloseCode
from ._websockets_common import (
    AdapterBase,
    SharedFrames,
    handshake_of,
    refusal,
    reset_on_close,
)

__all__ = ["Server", "WebsocketsAdapter", "WebsocketsTransport", "serve"]

logger = logging.getLogger("wsroom.transport")

ProcessRequest = Callable[[ServerConnection, Request], Awaitable[Response | None] | Response | None]


class WebsocketsTransport(Transport):
    """Moves one connection's queued frames onto a ``websockets`` asyncio connection.

    Frames are written the way ``websockets.broadcast()`` writes them: straight into the
    connection's transport, without awaiting, all queued frames of a loop iteration in one
    go, each message framed once for all the connections that can take the same bytes
    (:class:`SharedFrames`). While the socket's write buffer is above its high-water mark, frames
    wait in the connection's bounded queue and one task waits for the buffer to drain; a
    client that keeps it full longer than ``Limits.write_timeout``, or overflows the queue, is
    evicted and its TCP connection aborted, since ``close()`` cannot complete on a peer that
    stopped reading.
    """

    def __init__(
        self, ws: ServerConnection, *, binary: bool = False, shared: SharedFrames | None = None
    ) -> None:
        self.ws = ws
        self._loop = asyncio.get_running_loop()
        self._flush_scheduled = False
        self._drain_task: asyncio.Task[None] | None = None
        self._frames = shared if shared is not None else SharedFrames(self._loop, binary=binary)

    def wake(self) -> None:
        if not self._flush_scheduled and self._drain_task is None:
            self._flush_scheduled = True
            # Deferred to the end of the loop iteration, so every frame queued meanwhile
            # leaves in the same write.
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        conn = self.connection
        if conn is None or self._drain_task is not None:
            return
        frames = conn.take_outgoing()
        if not frames:
            return
        ws = self.ws
        if ws.protocol.state is not State.OPEN:
            return
        try:
            chunks = self._frames.data_to_send(ws.protocol, frames)
            if all(chunks):
                # One write for all of them: a write per frame would leave as many small TCP
                # segments, each waiting on the peer's delayed acknowledgements.
                ws.transport.write(b"".join(chunks))
            else:
                # An empty chunk asks for a half-close (the protocol is closing): write
                # chunk by chunk, as websockets' own send_data() does.
                for chunk in chunks:
                    if chunk:
                        ws.transport.write(chunk)
                    elif ws.transport.can_write_eof():
                        ws.transport.write_eof()
                    else:
                        ws.transport.close()
        except Exception:
            # The transport is closing under us; the receive loop sees it and releases.
            logger.debug("write to %r failed", conn, exc_info=True)
            return
        if ws.paused:
            self._drain_task = self._loop.create_task(self._wait_writable(conn))

    async def _wait_writable(self, conn: Connection) -> None:
        try:
            async with asyncio.timeout(conn.manager.limits.write_timeout):
                await self.ws.drain()
        except TimeoutError:
            conn.manager.evict(conn, "client too slow: write timeout")
            return
        except Exception:
            return  # the connection is gone; the receive loop releases it
        finally:
            self._drain_task = None
        if conn.queued_frames:
            self._flush()

    async def close(self, code: int, reason: str) -> None:
        drain = self._drain_task
        if drain is not None:
            await asyncio.shield(drain)
        self._flush()
        await self.ws.close(code, reason)

    def abort(self) -> None:
        transport = self.ws.transport
        if transport is not None:
            reset_on_close(transport.get_extra_info("socket"))
            transport.abort()


class WebsocketsAdapter(AdapterBase):
    """Connects a :class:`~wsroom.ConnectionManager` to ``websockets.asyncio.server``.

    Pass :attr:`handler` as the server's handler and :meth:`options` as its keyword
    arguments.
    """

    def __init__(self, manager: ConnectionManager) -> None:
        super().__init__(manager)

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
            checks: ProcessRequest = self.process_request
        else:
            checks = _chain(process_request, self.process_request)
        options: dict[str, Any] = {
            "process_request": checks,
            "select_subprotocol": self.select_subprotocol,
            "max_size": self.manager.limits.max_frame_size,
        }
        options.update(overrides)
        return options

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Refuse the upgrade for a bad origin, subprotocol or credentials (HTTP 4xx)."""
        handshake = handshake_of(connection, request)
        try:
            user = await self.manager.authorize(handshake)
        except HandshakeRejected as exc:
            return refusal(connection, exc)
        self._handshakes.accepted(connection, handshake, user)
        return None

    async def handler(self, ws: ServerConnection) -> None:
        """The connection handler: runs one client until it disconnects."""
        checked = self._handshakes.take(ws)
        if isinstance(checked, Handshake):
            # process_request was not wired: check now, refuse with 1008 after the upgrade.
            handshake = checked
            try:
                user = await self.manager.authorize(handshake)
            except HandshakeRejected as exc:
                await ws.close(CloseCode.POLICY_VIOLATION, exc.reason[:120])
                return
        else:
            handshake, user = checked
        transport = WebsocketsTransport(
            ws,
            binary=self.manager.protocol.binary,
            shared=self.shared_frames(asyncio.get_running_loop()),
        )

        async def receive() -> str | bytes | None:
            try:
                return await ws.recv()
            except ConnectionClosed:
                return None

        await self.manager.serve(transport, handshake, user, receive)


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
