"""Serve a :class:`~wsroom.ConnectionManager` from a Starlette or FastAPI application.

As a route::

    app = Starlette(routes=[WebSocketRoute("/ws", wsroom.adapters.starlette.endpoint(manager))])
    # or: app.router.add_websocket_route("/ws", endpoint(manager)); FastAPI:
    # app.add_api_websocket_route("/ws", endpoint(manager))

or from a FastAPI endpoint that authenticated the user itself::

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, user: str = Depends(current_user)):
        await wsroom.adapters.starlette.serve(websocket, manager, user=user)

Limits of ASGI: an application cannot abort the TCP connection of a client that stopped
reading. wsroom still evicts it on time (it leaves every room and nothing more is queued to
it), cancels its pending write and ends the handler; the socket itself is released by the
ASGI server's own timeouts (uvicorn: ``--ws-ping-interval``/``--ws-ping-timeout``, and a
reverse proxy's ``proxy_send_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

try:
    from starlette.responses import PlainTextResponse
    from starlette.websockets import WebSocket, WebSocketDisconnect
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "wsroom.adapters.starlette needs Starlette: pip install 'wsroom[starlette]'"
    ) from exc

from ..connection import Transport
from ..exceptions import HandshakeRejected
from ..handshake import Handshake, _ASGIHeaders
from ..manager import ConnectionManager

__all__ = ["StarletteTransport", "endpoint", "serve"]

logger = logging.getLogger("wsroom.transport")

# Sending after a close, or to a peer that went away, raises one of these depending on the
# Starlette and ASGI server versions (WebSocketDisconnect, Starlette's RuntimeError
# subclass WebSocketDisconnected, uvicorn's ClientDisconnected OSError).
_CLOSED = (WebSocketDisconnect, RuntimeError, OSError)

_UNSET: Any = object()


class StarletteTransport(Transport):
    """Moves one connection's queued frames onto a Starlette ``WebSocket``.

    ASGI has no synchronous write, so a writer task sends the queued frames one by one. It
    exists only while frames are queued: an idle connection holds no task, event or timer,
    only its receive. A send that stays blocked past ``Limits.write_timeout`` evicts the
    client (one timer per connection watches the sends while the writer runs); eviction
    cancels the blocked send, since the TCP connection cannot be aborted from an ASGI
    application.
    """

    __slots__ = (
        "_aborted",
        "_binary",
        "_receiver",
        "_send_started",
        "_watchdog",
        "_writer",
        "connection",
        "websocket",
    )

    def __init__(self, websocket: WebSocket, *, binary: bool = False) -> None:
        self.websocket = websocket
        self.connection = None
        self._binary = binary
        self._aborted = False
        # The task blocked in receive(), so that abort() can end its wait.
        self._receiver: asyncio.Task[Any] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._send_started: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    def wake(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        conn = self.connection
        assert conn is not None
        send = self.websocket.send
        loop = asyncio.get_running_loop()
        while frames := conn.take_outgoing():
            if self._watchdog is None:
                self._watchdog = loop.call_later(conn.manager.limits.write_timeout, self._watch)
            for frame in frames:
                message = (
                    {"type": "websocket.send", "bytes": frame}
                    if self._binary
                    else {"type": "websocket.send", "text": frame.decode("utf-8")}
                )
                # A timestamp per send, checked by one timer, costs far less than a
                # timeout context around every frame.
                self._send_started = loop.time()
                try:
                    await send(message)
                except _CLOSED:
                    # The receive loop sees the disconnect and releases. The finished task
                    # stays in _writer, so nothing more is written.
                    return
                self._send_started = None
        # Nothing queued: end the task, and its timer. The next wake() starts another.
        self._writer = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _watch(self) -> None:
        """Evict the client if one send has been blocked for ``write_timeout`` seconds."""
        self._watchdog = None
        started = self._send_started
        conn = self.connection
        if started is None or conn is None or self._writer is None:
            return  # idle: the next batch arms the timer again
        limit = conn.manager.limits.write_timeout
        loop = asyncio.get_running_loop()
        waited = loop.time() - started
        if waited >= limit:
            conn.manager.evict(conn, "client too slow: write timeout")
        else:
            self._watchdog = loop.call_later(limit - waited, self._watch)

    async def receive(self) -> str | bytes | None:
        """The next frame from the client, or ``None`` once it is gone (or aborted)."""
        if self._aborted:
            return None
        # Awaited directly, not in a task of its own raced against an abort signal: that
        # would cost every idle connection a task and a wait. abort() cancels this task
        # instead, and only while it waits here.
        task = asyncio.current_task()
        self._receiver = task
        try:
            message = await self.websocket.receive()
        except asyncio.CancelledError:
            if self._cancelled_by_abort(task):
                return None
            raise  # cancelled by someone else: that goes on
        except Exception:
            return None
        finally:
            self._receiver = None
        if message["type"] != "websocket.receive":
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        data = message.get("bytes")
        return bytes(data) if data is not None else None

    def _cancelled_by_abort(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether abort(), and nothing else, cancelled ``task``; if so, withdraw it."""
        return self._aborted and task is not None and task.uncancel() == 0

    async def close(self, code: int, reason: str) -> None:
        conn = self.connection
        if conn is not None and conn.queued_frames:
            self.wake()
        writer = self._writer
        if writer is not None and not writer.done():
            # Not awaited directly: the core's deadline cancels close(), and the writer
            # must then be stopped by abort(), not by that cancellation.
            await asyncio.wait((writer,))
        self._stop_writer()
        with contextlib.suppress(*_CLOSED):
            await self.websocket.close(code, reason)

    def abort(self) -> None:
        self._stop_writer()
        if not self._aborted:
            self._aborted = True
            if self._receiver is not None:
                self._receiver.cancel()

    def _stop_writer(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None


def endpoint(manager: ConnectionManager) -> Callable[[WebSocket], Awaitable[None]]:
    """A WebSocket endpoint for ``WebSocketRoute(path, ...)`` or ``app.router.add_websocket_route``.

    It runs the manager's checks (shutdown, origin, subprotocol, authenticate hook) before
    accepting, so refused clients get an HTTP status (503, 403, 400, 401...) where the
    ASGI server supports denial responses (uvicorn does), else a 403.
    """

    async def wsroom_endpoint(websocket: WebSocket) -> None:
        await serve(websocket, manager)

    return wsroom_endpoint


async def serve(
    websocket: WebSocket, manager: ConnectionManager, *, user: str | None = _UNSET
) -> None:
    """Serve one WebSocket until it disconnects; call it from your own endpoint.

    Args:
        websocket: The endpoint's ``WebSocket``, not accepted yet.
        manager: The manager to serve it.
        user: The user id when your endpoint authenticated the client itself (a FastAPI
            ``Depends()``); the manager's ``authenticate`` hook is then skipped, its other
            checks (shutdown, origin, subprotocol) still apply. Omit it to run the hook.
    """
    handshake = _handshake(websocket)
    try:
        if user is _UNSET:
            user = await manager.authorize(handshake)
        else:
            manager.admit(handshake)
    except HandshakeRejected as exc:
        await _refuse(websocket, exc)
        return
    try:
        await websocket.accept(subprotocol=manager.select_subprotocol(handshake.subprotocols))
    except _CLOSED:
        return  # the client left during the handshake
    transport = StarletteTransport(websocket, binary=manager.protocol.binary)
    try:
        await manager.serve(transport, handshake, user, transport.receive)
    finally:
        transport._stop_writer()


def _handshake(websocket: WebSocket) -> Handshake:
    scope = websocket.scope
    query = scope.get("query_string", b"").decode("latin-1")
    client = scope.get("client")
    address = (str(client[0]), int(client[1])) if client else None
    return Handshake._of(scope.get("path", "/"), query, _ASGIHeaders(scope["headers"]), address)


async def _refuse(websocket: WebSocket, exc: HandshakeRejected) -> None:
    with contextlib.suppress(*_CLOSED):
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            headers = {"WWW-Authenticate": 'Bearer realm="wsroom"'} if exc.status == 401 else None
            await websocket.send_denial_response(
                PlainTextResponse(exc.reason + "\n", status_code=exc.status, headers=headers)
            )
        else:
            # Closing before accepting makes the ASGI server answer 403.
            await websocket.close(code=1008)
