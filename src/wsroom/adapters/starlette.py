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
from ..handshake import Handshake
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

    ASGI has no synchronous write, so a writer task per connection sends the queued frames
    one by one. A send that stays blocked past ``Limits.write_timeout`` evicts the client
    (one timer per connection watches the sends); eviction cancels the blocked send, since
    the TCP connection cannot be aborted from an ASGI application.
    """

    def __init__(self, websocket: WebSocket, *, binary: bool = False) -> None:
        self.websocket = websocket
        self._binary = binary
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._aborted = asyncio.get_running_loop().create_future()
        self._writer: asyncio.Task[None] | None = None
        self._send_started: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    def wake(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        self._idle.clear()
        self._wakeup.set()

    async def _write_loop(self) -> None:
        conn = self.connection
        assert conn is not None
        send = self.websocket.send
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
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
                        return  # the receive loop sees the disconnect and releases
                    self._send_started = None
            self._idle.set()

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
        receiving = asyncio.ensure_future(self.websocket.receive())
        try:
            await asyncio.wait((receiving, self._aborted), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not receiving.done():
                receiving.cancel()
        if not receiving.done() or receiving.cancelled() or receiving.exception() is not None:
            return None
        message = receiving.result()
        if message["type"] != "websocket.receive":
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        data = message.get("bytes")
        return bytes(data) if data is not None else None

    async def close(self, code: int, reason: str) -> None:
        self.wake()
        await self._idle.wait()
        self._stop_writer()
        with contextlib.suppress(*_CLOSED):
            await self.websocket.close(code, reason)

    def abort(self) -> None:
        self._stop_writer()
        if not self._aborted.done():
            self._aborted.set_result(None)

    def _stop_writer(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        self._idle.set()


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
    headers = [
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]
    ]
    query = scope.get("query_string", b"").decode("latin-1")
    client = scope.get("client")
    address = (str(client[0]), int(client[1])) if client else None
    target = scope.get("path", "/") + (f"?{query}" if query else "")
    return Handshake.from_target(target, headers, address)


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
