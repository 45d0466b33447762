"""Serve a :class:`~wsroom.ConnectionManager` from a Starlette or FastAPI application.

As routes (the WebSocket, and a 426 for plain HTTP requests to its path)::

    app = Starlette(routes=wsroom.adapters.starlette.routes("/ws", manager))
    # or only the WebSocket route:
    app = Starlette(routes=[WebSocketRoute("/ws", wsroom.adapters.starlette.endpoint(manager))])
    # or: app.router.add_websocket_route("/ws", endpoint(manager)); FastAPI:
    # app.add_api_websocket_route("/ws", endpoint(manager))

or from a FastAPI endpoint that authenticated the user itself::

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, user: str = Depends(current_user)):
        await wsroom.adapters.starlette.serve(websocket, manager, user=user)

Run it under uvicorn with :mod:`wsroom.adapters.uvicorn`, which gives uvicorn wsroom's
frame limit, a deadline for request heads, quiet logging of client errors and a graceful
shutdown, and lets wsroom cut the TCP connection of a client it evicts or closes for abuse.

Limits of ASGI: under another ASGI server (or plain ``uvicorn app:app``), an application
cannot abort the TCP connection of a client that stopped reading. wsroom still evicts it on
time (it leaves every room and nothing more is queued to it), cancels its pending write and
ends the handler; the socket itself is released by the ASGI server's own timeouts
(uvicorn: ``--ws-ping-interval``/``--ws-ping-timeout``, and a reverse proxy's
``proxy_send_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

try:
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import BaseRoute, Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "wsroom.adapters.starlette needs Starlette: pip install 'wsroom[starlette]'"
    ) from exc

from .. import browser
from ..exceptions import HandshakeRejected
from ..handshake import Handshake
from ..manager import ConnectionManager
from ._writer import WriterTaskTransport

__all__ = ["StarletteTransport", "client_route", "endpoint", "routes", "serve"]

_client_gone: Any
try:
    from . import uvicorn as _client_gone
except ImportError:  # no uvicorn: another ASGI server runs the application
    _client_gone = None

logger = logging.getLogger("wsroom.transport")

# Sending after a close, or to a peer that went away, raises one of these depending on the
# Starlette and ASGI server versions (WebSocketDisconnect, Starlette's RuntimeError
# subclass WebSocketDisconnected, uvicorn's ClientDisconnected OSError).
_CLOSED = (WebSocketDisconnect, RuntimeError, OSError)

_UNSET: Any = object()


class StarletteTransport(WriterTaskTransport):
    """Moves one connection's queued frames onto a Starlette ``WebSocket``.

    ASGI has no synchronous write, so a writer task sends the queued frames one by one. It
    exists only while frames are queued: an idle connection holds no task, event or timer,
    only its receive. A send that stays blocked past ``Limits.write_timeout`` evicts the
    client (one timer per connection watches the sends while the writer runs); eviction
    cancels the blocked send, since the TCP connection cannot be aborted from an ASGI
    application.
    """

    __slots__ = ("_aborted", "_binary", "_peer_code", "_receiver", "connection", "websocket")

    closed_errors = _CLOSED

    def __init__(self, websocket: WebSocket, *, binary: bool = False) -> None:
        super().__init__()
        self.websocket = websocket
        self.connection = None
        self._binary = binary
        self._aborted = False
        self._peer_code: int | None = None
        # The task blocked in receive(), so that abort() can end its wait.
        self._receiver: asyncio.Task[Any] | None = None

    def sender(self) -> Callable[[bytes], Awaitable[None]]:
        """Sends one encoded frame as an ASGI ``websocket.send`` message."""
        send = self.websocket.send
        if self._binary:
            return lambda frame: send({"type": "websocket.send", "bytes": frame})
        return lambda frame: send({"type": "websocket.send", "text": frame.decode("utf-8")})

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
            if message["type"] == "websocket.disconnect":
                code = message.get("code")
                self._peer_code = code if type(code) is int else None
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        data = message.get("bytes")
        return bytes(data) if data is not None else None

    def peer_close_code(self) -> int | None:
        """The close code of the ASGI server's ``websocket.disconnect`` message, if any."""
        return self._peer_code

    def _cancelled_by_abort(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether abort(), and nothing else, cancelled ``task``; if so, withdraw it."""
        return self._aborted and task is not None and task.uncancel() == 0

    async def close(self, code: int, reason: str) -> None:
        await self.flush()
        with contextlib.suppress(*_CLOSED):
            await self.websocket.close(code, reason)
        # An ASGI close returns once the close frame is handed over (the server reports
        # the disconnect at once). Under wsroom's uvicorn Server, wait for the TCP
        # connection to end, so that a client that never answers is cut at the deadline.
        if _client_gone is not None:
            await _client_gone.wait(self.websocket.scope)

    def abort(self) -> None:
        self.stop_writing()
        if not self._aborted:
            self._aborted = True
            # Under wsroom.adapters.uvicorn's Server the TCP connection itself is cut; under
            # another ASGI server, the server's own timeouts release it.
            if _client_gone is not None:
                _client_gone.abort(self.websocket.scope)
            if self._receiver is not None:
                self._receiver.cancel()


def endpoint(manager: ConnectionManager) -> Callable[[WebSocket], Awaitable[None]]:
    """A WebSocket endpoint for ``WebSocketRoute(path, ...)`` or ``app.router.add_websocket_route``.

    It runs the manager's checks (shutdown, origin, subprotocol, authenticate hook) before
    accepting, so refused clients get an HTTP status (503, 403, 400, 401...) where the
    ASGI server supports denial responses (uvicorn does), else a 403.
    """

    async def wsroom_endpoint(websocket: WebSocket) -> None:
        await serve(websocket, manager)

    return wsroom_endpoint


def routes(path: str, manager: ConnectionManager) -> list[BaseRoute]:
    """The routes serving ``manager`` at ``path``: the WebSocket endpoint, and for a plain
    HTTP request to the same path (no upgrade) a 426 "Upgrade Required", as the
    websockets adapters answer, instead of a 404 that would send a developer looking for a
    missing route::

        app = Starlette(routes=[*wsroom.adapters.starlette.routes("/ws", manager), ...])

    The plain request goes through the handshake's checks first and gets their refusal
    (401, 403, 429, 503) when they refuse it, as the websockets adapters answer too: a
    browser, which never sees the status of a refused upgrade, can ask this way whether
    reconnecting is worth it (wsroom.js does).
    """

    async def upgrade_required(request: Request) -> Response:
        try:
            await manager.authorize(Handshake.from_asgi(request.scope))
        except HandshakeRejected as exc:
            return _refusal(exc)
        return PlainTextResponse(
            "Upgrade Required: this is a WebSocket endpoint; connect with a WebSocket client.\n",
            status_code=426,
            headers={"Upgrade": "websocket", "Connection": "Upgrade"},
        )

    return [
        WebSocketRoute(path, endpoint(manager)),
        Route(path, upgrade_required, methods=["GET", "HEAD"]),
    ]


def client_route(path: str = browser.SCRIPT_PATH) -> Route:
    """A route serving ``wsroom.js`` at ``path`` (``GET`` and ``HEAD``, with its ``ETag`` and a
    304 for a current copy)::

        app = Starlette(routes=[client_route(), *routes("/ws", manager)])
    """

    async def wsroom_js(request: Request) -> Response:
        answer = browser.script_response(
            request.headers.get("if-none-match"), head=request.method == "HEAD"
        )
        headers = dict(answer.headers)
        # Starlette sets Content-Length from the body; a HEAD keeps the GET's length.
        length = headers.pop("Content-Length", None)
        response = Response(answer.body, status_code=answer.status, headers=headers)
        if length is not None:
            response.headers["content-length"] = length
        return response

    return Route(path, wsroom_js, methods=["GET", "HEAD"])


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
    handshake = Handshake.from_asgi(websocket.scope)
    try:
        if user is _UNSET:
            user = await manager.authorize(handshake)
        else:
            manager.admit(handshake, user)
    except HandshakeRejected as exc:
        await _refuse(websocket, exc)
        return
    try:
        # The checks chose it (wsroom.v1.batch when offered): batching follows it.
        await websocket.accept(subprotocol=handshake.subprotocol)
    except _CLOSED:
        return  # the client left during the handshake
    transport = StarletteTransport(websocket, binary=manager.protocol.binary)
    try:
        await manager.serve(transport, handshake, user, transport.receive)
    finally:
        # A send still in progress (to a peer that left) has nothing more to do.
        transport.stop_writing()


def _refusal(exc: HandshakeRejected) -> Response:
    headers = dict(exc.headers)
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="wsroom"'
    return PlainTextResponse(exc.reason + "\n", status_code=exc.status, headers=headers)


async def _refuse(websocket: WebSocket, exc: HandshakeRejected) -> None:
    with contextlib.suppress(*_CLOSED):
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(_refusal(exc))
        else:
            # Closing before accepting makes the ASGI server answer 403.
            await websocket.close(code=1008)
