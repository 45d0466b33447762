"""Serve a :class:`~wsroom.ConnectionManager` from an ``aiohttp.web`` application.

In one call, the WebSocket at ``/ws`` and the manager tied to the application's lifecycle
(started with it, shut down gracefully before aiohttp closes anything)::

    app = web.Application()
    wsroom.adapters.aiohttp.setup(app, manager)
    web.run_app(app)

or piece by piece::

    app.add_routes([client_route(), *routes(manager, "/ws")])
    lifecycle(app, manager)

or from a handler of your own that authenticated the client itself::

    async def ws(request: web.Request) -> web.StreamResponse:
        return await wsroom.adapters.aiohttp.serve(request, manager, user=request["user"])

Handshakes are checked before the upgrade, so a refused client gets its HTTP status (401,
403, 429 with ``Retry-After``, 400, 503); aiohttp gets wsroom's frame limit
(``max_msg_size``) and close timeout, and sends keepalive pings (``heartbeat``, 20 s, as the
other adapters' servers do). A client wsroom evicts has its TCP connection aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import weakref
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

try:
    from aiohttp import WSCloseCode, WSMsgType, web
    from aiohttp.abc import AbstractStreamWriter
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "wsroom.adapters.aiohttp needs aiohttp: pip install 'wsroom[aiohttp]'"
    ) from exc

from .. import browser
from ..connection import Connection, Transport
from ..exceptions import HandshakeRejected
from ..handshake import Handshake
from ..manager import ConnectionManager
from ._quiet import QUIET_CLIENT_ERRORS
from ._websockets_common import reset_on_close, send_at_once
from ._websockets_fastpath import frame
from ._writer import WriterTaskTransport

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ..admin import Authorize as AdminAuthorize
    from ..metrics import Authorize as MetricsAuthorize

__all__ = [
    "AiohttpTransport",
    "Handler",
    "admin_routes",
    "client_route",
    "handler",
    "lifecycle",
    "metrics_route",
    "routes",
    "serve",
    "setup",
]

logger = logging.getLogger("wsroom.transport")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
"""An ``aiohttp.web`` request handler."""

HEARTBEAT = 20.0
"""Seconds between keepalive pings, as ``websockets`` and uvicorn send them by default."""

_UNSET: Any = object()

# What a send raises once the connection is closing or gone: aiohttp's
# ClientConnectionResetError (a ConnectionResetError), and RuntimeError from a response
# that is closed.
_CLOSED = (ConnectionError, RuntimeError)

# What ends the receive loop: the client's close frame, aiohttp's own close under way, the
# connection gone, or a protocol error aiohttp already answered with its close code.
_ENDED = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})


class AiohttpTransport(WriterTaskTransport):
    """Moves one connection's queued frames onto an ``aiohttp`` ``WebSocketResponse``.

    A writer task sends the queued frames while there are some (an idle connection holds no
    task, event or timer), each with the response's ``send_frame()``, which frames the
    encoded bytes as they are. A send that stays blocked past ``Limits.write_timeout``
    evicts the client, and an eviction aborts its TCP connection.
    """

    __slots__ = ("_opcode", "_request", "connection", "ws")

    closed_errors = _CLOSED

    def __init__(
        self, ws: web.WebSocketResponse, request: web.BaseRequest, *, binary: bool
    ) -> None:
        super().__init__()
        self.ws = ws
        """The ``WebSocketResponse``, prepared."""
        self.connection = None
        self._request = request
        self._opcode = WSMsgType.BINARY if binary else WSMsgType.TEXT

    def sender(self) -> Callable[[bytes], Awaitable[None]]:
        """Sends one encoded frame with ``WebSocketResponse.send_frame()``."""
        send_frame = self.ws.send_frame
        opcode = self._opcode
        return lambda frame: send_frame(frame, opcode)

    def peer_close_code(self) -> int | None:
        """The close code of the connection's end, as aiohttp records it (1006: none)."""
        return self.ws.close_code

    async def close(self, code: int, reason: str) -> None:
        await self.flush()
        with contextlib.suppress(*_CLOSED):
            # aiohttp waits for the client's close frame at most its ``timeout`` seconds
            # (Limits.close_timeout, set by serve()); the core's deadline aborts before.
            await self.ws.close(code=code, message=_reason(reason))

    def abort(self) -> None:
        self.stop_writing()
        transport = self._request.transport
        if isinstance(transport, asyncio.Transport):
            _abort(transport)


async def _receive(ws: web.WebSocketResponse) -> str | bytes | None:
    """The next data frame from the client, or ``None`` once it is closing or gone."""
    while True:
        try:
            message = await ws.receive()
        except RuntimeError:  # read again after the end (aiohttp counts those)
            return None
        kind = message.type
        if kind is WSMsgType.TEXT:
            return str(message.data)
        if kind is WSMsgType.BINARY:
            return bytes(message.data)
        if kind in _ENDED:
            return None
        # PING and PONG: aiohttp answers them itself (autoping).


class _WebSocketResponse(web.WebSocketResponse):
    """aiohttp's response, closing a connection whose frames it could not read with the
    code RFC 6455 gives. aiohttp closes with 1000 after any error that is not its own
    ``WebSocketError`` (corrupt compressed data raises ``zlib.error``), which would tell a
    broken client that all went well."""

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        failure = self.exception()
        if code == WSCloseCode.OK and failure is not None:
            code = (
                WSCloseCode.INVALID_TEXT
                if isinstance(failure, zlib.error)
                else WSCloseCode.PROTOCOL_ERROR
            )
        return await super().close(code=code, message=message, drain=drain)


def _reason(reason: str) -> bytes:
    """A close reason within the 123 bytes a close frame holds, cut between characters."""
    return reason.encode()[:123].decode("utf-8", "ignore").encode()


def _abort(transport: asyncio.Transport) -> None:
    """Cut the TCP connection now, with a reset: the client stopped reading, so its unsent
    bytes are dropped rather than kept in the kernel behind a FIN."""
    with contextlib.suppress(Exception):
        reset_on_close(transport.get_extra_info("socket"))
        transport.abort()


FASTPATH_VARIABLE = "WSROOM_AIOHTTP_FASTPATH"
"""Set it to ``0`` before wsroom is imported to send every frame with ``send_frame()``."""

FASTPATH = os.environ.get(FASTPATH_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off")
"""Whether uncompressed connections get frames framed once for all of them (see
:class:`_FramingTransport`)."""

if not FASTPATH:
    logger.debug(
        "aiohttp shared framing off (%s=0): every frame through send_frame()", FASTPATH_VARIABLE
    )


class _SharedFrames:
    """Each message framed once for every uncompressed connection of the event loop, kept
    until the end of the loop iteration in which the members' transports flush it."""

    __slots__ = ("_frames", "_opcode", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, binary: bool) -> None:
        self.loop = loop
        self._opcode = 0x82 if binary else 0x81
        self._frames: dict[bytes, bytes] = {}

    def join(self, payloads: list[bytes]) -> bytes:
        """The frames of ``payloads``, in order, as one chunk to write."""
        frames = self._frames
        if not frames:
            self.loop.call_soon(frames.clear)
        framed = [frames.get(payload) or self._frame(payload) for payload in payloads]
        return b"".join(framed) if len(framed) > 1 else framed[0]

    def join_own(self, payloads: list[bytes]) -> bytes:
        """The frames of ``payloads`` that no other connection sends (batches), in order."""
        opcode = self._opcode
        return b"".join(frame(opcode, payload) for payload in payloads)

    def _frame(self, payload: bytes) -> bytes:
        framed = self._frames[payload] = frame(self._opcode, payload)
        return framed


class _FramingTransport(Transport):
    """Moves one uncompressed connection's queued frames onto its TCP transport, without
    awaiting: the frames queued during a loop iteration leave at its end in one write, each
    message framed once for all the connections (aiohttp's ``send_frame()`` frames it again
    for each, one write per frame).

    Only public APIs are used: the request's ``transport`` (written to and aborted), the
    ``drain()`` of the writer ``prepare()`` returns (flow control), the response's
    ``closed`` and ``compress`` (a compressed connection never gets here), and the frame
    layout of RFC 6455. aiohttp writes its own frames (pongs, pings, the close frame) whole
    with one synchronous write, so they never interleave with these; nothing is written
    once ``closed`` is true, which aiohttp sets before it writes the close frame.

    While the socket's buffer is above its high-water mark, frames wait in the
    connection's bounded queue and one task awaits ``drain()``; a client that keeps it
    full past ``Limits.write_timeout``, or overflows the queue, is evicted and its TCP
    connection aborted.
    """

    __slots__ = (
        "_drain_task",
        "_frames",
        "_scheduled",
        "_stream",
        "_transport",
        "connection",
        "ws",
    )

    def __init__(
        self,
        ws: web.WebSocketResponse,
        stream: AbstractStreamWriter,
        transport: asyncio.Transport,
        frames: _SharedFrames,
    ) -> None:
        self.ws = ws
        self.connection = None
        self._stream = stream
        self._transport = transport
        self._frames = frames
        self._scheduled = False
        self._drain_task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._frames.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        conn = self.connection
        if conn is None or self._drain_task is not None:
            return  # the drain's end writes what is queued
        frames = conn.take_outgoing()
        if not frames:
            return
        transport = self._transport
        if self.ws.closed or transport.is_closing():
            return  # closing: aiohttp ends the connection within its close timeout
        if len(frames) > 1 and conn.batched:
            # A batch is this connection's own: framed for it alone, never cached.
            transport.write(self._frames.join_own(conn.pack(frames)))
        else:
            transport.write(self._frames.join(frames))
        if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
            self._drain_task = self._frames.loop.create_task(self._wait_writable(conn))

    async def _wait_writable(self, conn: Connection) -> None:
        try:
            async with asyncio.timeout(conn.manager.limits.write_timeout):
                await self._stream.drain()
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
        with contextlib.suppress(*_CLOSED):
            await self.ws.close(code=code, message=_reason(reason))

    def abort(self) -> None:
        self.stop_writing()
        _abort(self._transport)

    def stop_writing(self) -> None:
        """Stop waiting for the socket to drain; write nothing more."""
        self._scheduled = True  # no flush will be scheduled again
        if self._drain_task is not None:
            self._drain_task.cancel()

    def peer_close_code(self) -> int | None:
        """The close code of the connection's end, as aiohttp records it (1006: none)."""
        return self.ws.close_code


def handshake_of(request: web.BaseRequest) -> Handshake:
    """The :class:`~wsroom.Handshake` of an aiohttp request (the socket's peer address:
    what ``request.remote`` says can be rewritten by a middleware from headers)."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    address = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else None
    headers = [
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers
    ]
    return Handshake.from_target(request.raw_path, headers, address)


def refusal(exc: HandshakeRejected) -> web.Response:
    """The HTTP response refusing an upgrade (or a plain request to the endpoint)."""
    response = web.Response(status=exc.status, text=exc.reason + "\n")
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="wsroom"'
    for name, value in exc.headers.items():
        response.headers[name] = value
    # The client asked to leave HTTP on this connection: it is not kept for another request.
    response.force_close()
    return response


def _upgrade_required() -> web.Response:
    return web.Response(
        status=426,
        text="Upgrade Required: this is a WebSocket endpoint; connect with a WebSocket client.\n",
        headers={"Upgrade": "websocket", "Connection": "Upgrade"},
    )


async def serve(
    request: web.Request,
    manager: ConnectionManager,
    *,
    user: str | None = _UNSET,
    heartbeat: float | None = HEARTBEAT,
    compress: bool = True,
) -> web.StreamResponse:
    """Serve one request to the WebSocket endpoint until the client disconnects; return
    what the handler returns.

    The handshake's checks run first, before the upgrade: a refused client gets its HTTP
    status (503, 429, 403, 400, 401...). A plain HTTP request (no upgrade, such as a browser
    opening the URL) that passes them gets 426 Upgrade Required.

    Args:
        request: The request, as your handler received it.
        manager: The manager to serve it.
        user: The user id when your application authenticated the client itself (a
            middleware, a session); the manager's ``authenticate`` hook is then skipped,
            its other checks (shutdown, origin, subprotocol) still apply. Omit it to run
            the hook.
        heartbeat: Seconds between the pings aiohttp sends to the client, which it closes
            when a pong does not come back within half of that; ``None``: no pings.
        compress: Negotiate permessage-deflate with clients that offer it (browsers do).
            A compressed connection costs the server far more CPU per message.
    """
    handshake = handshake_of(request)
    try:
        if user is _UNSET:
            user = await manager.authorize(handshake)
        else:
            manager.admit(handshake, user)
    except HandshakeRejected as exc:
        return refusal(exc)
    if request.headers.get("Upgrade", "").strip().lower() != "websocket":
        return _upgrade_required()
    # The checks chose it (wsroom.v1.batch when offered): batching follows it. Given only
    # that one, aiohttp cannot pick another by the order of the client's offer.
    chosen = handshake.subprotocol
    limits = manager.limits
    ws = _WebSocketResponse(
        protocols=(chosen,) if chosen is not None else (),
        # aiohttp refuses a frame of exactly max_msg_size bytes; wsroom allows that size.
        # (A compressed one may then inflate to one byte more, which the core refuses.)
        max_msg_size=limits.max_frame_size + 1,
        timeout=limits.close_timeout,
        heartbeat=heartbeat,
        compress=compress,
    )
    # A malformed upgrade (a missing key, another version) raises aiohttp's HTTP 400.
    stream = await ws.prepare(request)
    # What aiohttp really accepted decides whether the connection gets batches.
    handshake.subprotocol = ws.ws_protocol
    transport = _transport(ws, request, stream, manager)
    if request.transport is not None:
        send_at_once(request.transport.get_extra_info("socket"))
    try:
        await manager.serve(transport, handshake, user, functools.partial(_receive, ws))
    finally:
        # A send still in progress (to a peer that left) has nothing more to do.
        transport.stop_writing()
    return ws


# One frame cache per event loop: a frame depends only on its payload and opcode.
_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[bool, _SharedFrames]] = (
    weakref.WeakKeyDictionary()
)


def _transport(
    ws: web.WebSocketResponse,
    request: web.BaseRequest,
    stream: AbstractStreamWriter,
    manager: ConnectionManager,
) -> AiohttpTransport | _FramingTransport:
    binary = manager.protocol.binary
    tcp = request.transport
    if not FASTPATH or ws.compress or not isinstance(tcp, asyncio.Transport):
        return AiohttpTransport(ws, request, binary=binary)
    loop = asyncio.get_running_loop()
    caches = _SHARED.setdefault(loop, {})
    frames = caches.get(binary)
    if frames is None:
        frames = caches[binary] = _SharedFrames(loop, binary=binary)
    return _FramingTransport(ws, stream, tcp, frames)


def handler(
    manager: ConnectionManager, *, heartbeat: float | None = HEARTBEAT, compress: bool = True
) -> Handler:
    """The request handler serving ``manager``, for ``web.get(path, ...)`` or
    ``app.router.add_get(path, ...)``: see :func:`serve` for what it does and its options.

    It also adds :data:`~wsroom.adapters.uvicorn.QUIET_CLIENT_ERRORS` to the
    ``aiohttp.server`` logger (once per process): aiohttp logs a traceback at ERROR for
    every malformed request, which a client could send in a loop to fill the log."""
    logging.getLogger("aiohttp.server").addFilter(QUIET_CLIENT_ERRORS)

    async def wsroom_handler(request: web.Request) -> web.StreamResponse:
        return await serve(request, manager, heartbeat=heartbeat, compress=compress)

    return wsroom_handler


def routes(
    manager: ConnectionManager,
    path: str = "/ws",
    *,
    heartbeat: float | None = HEARTBEAT,
    compress: bool = True,
) -> list[web.RouteDef]:
    """The routes serving ``manager`` at ``path``: ``GET`` (and ``HEAD``) to :func:`handler`::

    app.add_routes(wsroom.adapters.aiohttp.routes(manager, "/ws"))
    """
    return [web.get(path, handler(manager, heartbeat=heartbeat, compress=compress))]


def _answer(status: int, headers: Iterable[tuple[str, str]], body: bytes) -> web.Response:
    """An aiohttp response for one of wsroom's transport-neutral answers, given for a GET:
    aiohttp sets ``Content-Length`` from the body, and drops the body of a HEAD itself."""
    fields = {name: value for name, value in headers if name.lower() != "content-length"}
    return web.Response(body=body, status=status, headers=fields)


def client_route(path: str = browser.SCRIPT_PATH) -> web.RouteDef:
    """A route serving ``wsroom.js`` at ``path`` (``GET`` and ``HEAD``, with its ``ETag`` and a
    304 for a current copy)::

        app.add_routes([client_route(), *routes(manager)])
    """

    async def wsroom_js(request: web.Request) -> web.Response:
        answer = browser.script_response(request.headers.get("If-None-Match"))
        return _answer(answer.status, answer.headers, answer.body)

    return web.get(path, wsroom_js)


def metrics_route(
    manager: ConnectionManager,
    path: str = "/metrics",
    *,
    registry: CollectorRegistry | None = None,
    authorize: MetricsAuthorize | None = None,
) -> web.RouteDef:
    """A route serving ``manager``'s Prometheus metrics at ``path`` (``GET`` and ``HEAD``;
    needs ``pip install "wsroom[metrics]"``)::

        app.add_routes([metrics_route(manager), *routes(manager)])

    The metrics show no user data, but should not be public: serve them from an
    application only your network reaches, or pass ``authorize``. See
    :func:`wsroom.metrics.metrics_response` for ``registry`` and ``authorize``.
    """
    from .. import metrics

    async def wsroom_metrics(request: web.Request) -> web.Response:
        answer = metrics.metrics_response(
            manager, handshake_of(request), method="GET", registry=registry, authorize=authorize
        )
        return _answer(answer.status, answer.headers, answer.body)

    return web.get(path, wsroom_metrics)


def admin_routes(
    manager: ConnectionManager,
    authorize: AdminAuthorize,
    *,
    path: str = "/admin",
    **options: Any,
) -> list[web.RouteDef]:
    """The routes of the admin view (:mod:`wsroom.admin`) of ``manager``: ``path`` and
    everything below it (``GET`` and ``HEAD``)::

        app.add_routes([*admin_routes(manager, check), *routes(manager)])

    Args:
        manager: The manager to show.
        authorize: The application's check of each request for the page or a snapshot
            (:data:`wsroom.admin.Authorize`), ``def`` or ``async def``; ``True`` lets it
            in, anything else is a 403.
        path: Where the view lives.
        options: The sizes of the lists and the snapshot's reuse interval, as
            :class:`~wsroom.admin.AdminView` takes them.
    """
    from .. import admin

    view = admin.AdminView(manager, authorize, path=path, **options)

    async def wsroom_admin(request: web.Request) -> web.Response:
        answer = await view.respond(handshake_of(request), "GET")
        if answer is None:
            raise web.HTTPNotFound()
        return _answer(answer.status, answer.headers, answer.body)

    return [web.get(path, wsroom_admin), web.get(path + "/{tail:.*}", wsroom_admin)]


def lifecycle(
    app: web.Application, manager: ConnectionManager, *, shutdown_timeout: float = 5.0
) -> None:
    """Tie ``manager`` to ``app``'s lifecycle: it starts with the application (so a backplane
    that cannot start fails at startup), and shuts down gracefully in ``on_shutdown``, before
    aiohttp waits for its handlers: every client receives what is queued for it, then a
    close frame with 1001, within ``shutdown_timeout`` seconds; new handshakes get 503.
    ``web.run_app`` runs that shutdown on SIGINT and SIGTERM.
    """

    async def start(app: web.Application) -> None:
        await manager.start()

    async def shut_down(app: web.Application) -> None:
        await manager.shutdown(shutdown_timeout)

    app.on_startup.append(start)
    app.on_shutdown.append(shut_down)


def setup(
    app: web.Application,
    manager: ConnectionManager,
    path: str = "/ws",
    *,
    shutdown_timeout: float = 5.0,
    heartbeat: float | None = HEARTBEAT,
    compress: bool = True,
) -> None:
    """Serve ``manager`` at ``path`` in ``app`` (:func:`routes`) and tie it to the
    application's lifecycle (:func:`lifecycle`)::

        app = web.Application()
        wsroom.adapters.aiohttp.setup(app, manager)
        web.run_app(app)
    """
    app.add_routes(routes(manager, path, heartbeat=heartbeat, compress=compress))
    lifecycle(app, manager, shutdown_timeout=shutdown_timeout)
