"""Serve a :class:`~wsroom.ConnectionManager` from any ASGI application, with no framework.

A plain ASGI application, :class:`WSRoomApp`, that mounts wherever an ASGI application
can: in front of Django's or Quart's application, in a Channels ``URLRouter``, as a
Litestar or Starlette mount, or alone::

    rooms = WSRoomApp(manager)                                     # every path it is given
    application = WSRoomApp(manager, path="/ws", app=django_app)  # /ws, the rest to Django

For each ASGI connection it gets, it

* serves a ``websocket`` connection: the manager's checks run before the upgrade, and a
  refused client gets its HTTP status (401, 403, 429 with ``Retry-After``, 400, 503...)
  where the server supports the ASGI WebSocket Denial Response extension, else the
  WebSocket is closed before it is accepted, with code 1008, which the server answers with
  an HTTP 403;
* answers a plain HTTP ``GET`` or ``HEAD`` of its path with 426 Upgrade Required (after
  the same checks, whose refusal it returns instead);
* answers the ``lifespan`` protocol: the manager starts at the server's startup and shuts
  down (every client closed with 1001 after what is queued for it) at its shutdown,
  around the wrapped application's own lifespan when it has one.

Writes go through a writer task per connection (:class:`ASGITransport`): a client whose
send stays blocked past ``Limits.write_timeout``, or whose queue overflows, is evicted with
1013. Under :mod:`wsroom.adapters.uvicorn`'s ``Server`` its TCP connection is cut too; an
ASGI application alone cannot cut it (see :mod:`wsroom.adapters.starlette`, which is built
on this module).

This module needs no framework: only the ASGI server that runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeAlias

from .. import admin, browser
from ..exceptions import HandshakeRejected
from ..frames import CloseCode
from ..handshake import Handshake
from ..manager import ConnectionManager
from ._writer import WriterTaskTransport

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ..metrics import Authorize

__all__ = [
    "ASGIApp",
    "ASGITransport",
    "Receive",
    "Scope",
    "Send",
    "WSRoomApp",
    "admin_app",
    "client_app",
    "metrics_app",
    "serve",
]

Scope: TypeAlias = MutableMapping[str, Any]
"""An ASGI connection scope."""
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
"""The ASGI ``receive`` callable."""
Send: TypeAlias = Callable[[Message], Awaitable[None]]
"""The ASGI ``send`` callable."""
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]
"""An ASGI 3 application."""
# Frameworks type their scopes and messages each their own way (TypedDicts, mappings):
# the application wrapped is taken as any of them.
_AnyApp: TypeAlias = Callable[[Any, Any, Any], Awaitable[Any]]

_client_gone: Any
try:
    from . import uvicorn as _client_gone
except ImportError:  # no uvicorn: another ASGI server runs the application
    _client_gone = None

logger = logging.getLogger("wsroom.transport")

# What an ASGI server's send raises once the peer is gone or the socket closed: the ASGI
# spec asks for an OSError subclass (uvicorn's ClientDisconnected); servers raise a
# RuntimeError for a message after the close.
CLOSED_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, OSError)

# The close code of a refusal under a server without the denial-response extension: a
# close before the accept, which the server answers with HTTP 403 (the ASGI spec).
REFUSAL_CLOSE_CODE = CloseCode.POLICY_VIOLATION

_UNSET: Any = object()


class ASGITransport(WriterTaskTransport):
    """Moves one connection's queued frames onto an ASGI WebSocket (``receive``/``send``).

    ASGI has no synchronous write, so a writer task sends the queued frames one by one. It
    exists only while frames are queued: an idle connection holds no task, event or timer,
    only its receive. A send that stays blocked past ``Limits.write_timeout`` evicts the
    client (one timer per connection watches the sends while the writer runs); eviction
    cancels the blocked send, since an ASGI application cannot abort the TCP connection
    (under :mod:`wsroom.adapters.uvicorn`'s ``Server`` it is aborted too).

    Args:
        scope: The connection's ASGI ``websocket`` scope.
        receive: Its ASGI ``receive``.
        send: Its ASGI ``send``.
        binary: Send binary frames (``manager.protocol.binary``) rather than text.
    """

    __slots__ = (
        "_aborted",
        "_binary",
        "_peer_code",
        "_receive",
        "_receiver",
        "_send",
        "connection",
        "scope",
    )

    closed_errors = CLOSED_ERRORS

    def __init__(self, scope: Scope, receive: Receive, send: Send, *, binary: bool = False) -> None:
        super().__init__()
        self.scope = scope
        """The connection's ASGI scope."""
        self.connection = None
        self._receive = receive
        self._send = send
        self._binary = binary
        self._aborted = False
        self._peer_code: int | None = None
        # The task blocked in receive(), so that abort() can end its wait.
        self._receiver: asyncio.Task[Any] | None = None

    def sender(self) -> Callable[[bytes], Awaitable[None]]:
        """Sends one encoded frame as an ASGI ``websocket.send`` message."""
        send = self._send
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
            message = await self._receive()
        except asyncio.CancelledError:
            if self._cancelled_by_abort(task):
                return None
            raise  # cancelled by someone else: that goes on
        except Exception:
            return None
        finally:
            self._receiver = None
        kind = message.get("type")
        if kind != "websocket.receive":
            if kind == "websocket.disconnect":
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
        with contextlib.suppress(*self.closed_errors):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        # An ASGI close returns once the close frame is handed over (the server reports
        # the disconnect at once). Under wsroom's uvicorn Server, wait for the TCP
        # connection to end, so that a client that never answers is cut at the deadline.
        if _client_gone is not None:
            await _client_gone.wait(self.scope)

    def abort(self) -> None:
        self.stop_writing()
        if not self._aborted:
            self._aborted = True
            # Under wsroom.adapters.uvicorn's Server the TCP connection itself is cut; under
            # another ASGI server, the server's own timeouts release it.
            if _client_gone is not None:
                _client_gone.abort(self.scope)
            if self._receiver is not None:
                self._receiver.cancel()


async def serve(
    scope: Scope,
    receive: Receive,
    send: Send,
    manager: ConnectionManager,
    *,
    user: str | None = _UNSET,
) -> None:
    """Serve one ASGI ``websocket`` connection until it ends; call it from your own ASGI
    endpoint, for example one that authenticated the client itself.

    Args:
        scope: The ``websocket`` scope, whose ``websocket.connect`` was not received yet.
        receive: Its ASGI ``receive``.
        send: Its ASGI ``send``.
        manager: The manager to serve it.
        user: The user id when your endpoint authenticated the client itself; the
            manager's ``authenticate`` hook is then skipped, its other checks (shutdown,
            handshake rate, origin, subprotocol) still apply. Omit it to run the hook.
    """
    await _run_websocket(
        scope, receive, send, manager, user, _plain_transport(scope, receive, send)
    )


def _plain_transport(scope: Scope, receive: Receive, send: Send) -> Callable[[bool], ASGITransport]:
    return lambda binary: ASGITransport(scope, receive, send, binary=binary)


async def _run_websocket(
    scope: Scope,
    receive: Receive,
    send: Send,
    manager: ConnectionManager,
    user: str | None,
    transport: Callable[[bool], ASGITransport],
    *,
    closed: tuple[type[BaseException], ...] = CLOSED_ERRORS,
    connected: bool = False,
) -> None:
    """The whole life of one WebSocket, for every ASGI adapter: the handshake's checks,
    a refusal or the accept, then the manager serves it over ``transport(binary)``.

    ``user`` is ``_UNSET`` to run the authenticate hook. ``closed`` are the errors a send
    raises once the client is gone. ``connected`` tells that the ``websocket.connect``
    message was received already (by a framework's wrapper).
    """
    if not connected:
        try:
            message = await receive()
        except Exception:
            return
        if message.get("type") != "websocket.connect":
            return  # the client left before its handshake was done
    handshake = Handshake.from_asgi(scope)
    try:
        if user is _UNSET:
            user = await manager.authorize(handshake)
        else:
            manager.admit(handshake, user)
    except HandshakeRejected as exc:
        await _refuse(scope, send, exc, closed)
        return
    try:
        # The checks chose it (wsroom.v1.batch when offered): batching follows it.
        await send(
            {"type": "websocket.accept", "subprotocol": handshake.subprotocol, "headers": []}
        )
    except closed:
        return  # the client left during the handshake
    connection = transport(manager.protocol.binary)
    try:
        await manager.serve(connection, handshake, user, connection.receive)
    finally:
        # A send still in progress (to a peer that left) has nothing more to do.
        connection.stop_writing()


def _refusal(exc: HandshakeRejected) -> tuple[int, list[tuple[str, str]], bytes]:
    """The HTTP answer refusing a handshake: its status, headers and plain-text body."""
    body = (exc.reason + "\n").encode("utf-8")
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        *exc.headers.items(),
    ]
    if exc.status == 401 and not any(n.lower() == "www-authenticate" for n in exc.headers):
        headers.append(("WWW-Authenticate", 'Bearer realm="wsroom"'))
    return exc.status, headers, body


async def _refuse(
    scope: Scope,
    send: Send,
    exc: HandshakeRejected,
    closed: tuple[type[BaseException], ...] = CLOSED_ERRORS,
) -> None:
    """Refuse a WebSocket before accepting it: with its HTTP status where the server
    supports the denial-response extension, else with a close the server turns into 403."""
    with contextlib.suppress(*closed):
        if "websocket.http.response" in (scope.get("extensions") or {}):
            status, headers, body = _refusal(exc)
            await _respond(send, status, headers, body, prefix="websocket.http.response")
        else:
            await send({"type": "websocket.close", "code": REFUSAL_CLOSE_CODE, "reason": ""})


async def _respond(
    send: Send,
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    *,
    prefix: str = "http.response",
) -> None:
    """Send one whole HTTP response (``prefix`` ``websocket.http.response`` for a denial)."""
    raw = [(name.lower().encode("latin-1"), _header_value(value)) for name, value in headers]
    await send({"type": f"{prefix}.start", "status": status, "headers": raw})
    await send({"type": f"{prefix}.body", "body": body, "more_body": False})


def _header_value(value: str) -> bytes:
    # A value an application built from client input must not split the response.
    return "".join(c for c in value if c >= " " and c != "\x7f").encode("latin-1", "replace")


async def _text(
    send: Send, status: int, text: str, *, head: bool, extra: Iterable[tuple[str, str]] = ()
) -> None:
    body = text.encode("utf-8")
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        *extra,
    ]
    await _respond(send, status, headers, b"" if head else body)


async def _upgrade_required(scope: Scope, send: Send, manager: ConnectionManager) -> None:
    """Answer a plain HTTP request to the WebSocket's path: the handshake's checks first
    (their refusal: 401, 403, 429, 503...), else 426 Upgrade Required. A browser, which
    never sees the status of a refused upgrade, can ask this way whether reconnecting is
    worth it (wsroom.js does)."""
    method = scope.get("method")
    head = method == "HEAD"
    if method not in ("GET", "HEAD"):
        await _text(send, 405, "Method Not Allowed\n", head=False, extra=[("Allow", "GET, HEAD")])
        return
    try:
        await manager.authorize(Handshake.from_asgi(scope))
    except HandshakeRejected as exc:
        status, headers, body = _refusal(exc)
        await _respond(send, status, headers, b"" if head else body)
        return
    await _text(
        send,
        426,
        "Upgrade Required: this is a WebSocket endpoint; connect with a WebSocket client.\n",
        head=head,
        extra=[("Upgrade", "websocket"), ("Connection", "Upgrade")],
    )


class _HTTPOnly:
    """An ASGI application answering HTTP requests only: a WebSocket is refused before its
    upgrade, and other scopes (``lifespan``) are none of its business."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "websocket":
            await send({"type": "websocket.close", "code": REFUSAL_CLOSE_CODE, "reason": ""})
        elif kind == "http":
            await self.answer(scope, send)

    async def answer(self, scope: Scope, send: Send) -> None:
        """Answer one HTTP request."""
        raise NotImplementedError


class _ClientScript(_HTTPOnly):
    """The ASGI application serving ``wsroom.js`` (see :func:`client_app`)."""

    async def answer(self, scope: Scope, send: Send) -> None:
        method = scope.get("method")
        if method not in ("GET", "HEAD"):
            await _text(
                send, 405, "Method Not Allowed\n", head=False, extra=[("Allow", "GET, HEAD")]
            )
            return
        answer = browser.script_response(_header(scope, b"if-none-match"), head=method == "HEAD")
        await _respond(send, answer.status, answer.headers, answer.body)


def client_app() -> ASGIApp:
    """An ASGI application serving ``wsroom.js`` to ``GET`` and ``HEAD`` on any path it is
    given (mount it at ``/wsroom.js``), with its ``ETag`` and a 304 for a current copy;
    other methods get 405. :class:`WSRoomApp`'s ``client_path`` serves it too."""
    return _ClientScript()


class _Metrics(_HTTPOnly):
    """The ASGI application serving a manager's metrics (see :func:`metrics_app`)."""

    def __init__(
        self,
        manager: ConnectionManager,
        registry: CollectorRegistry | None,
        authorize: Authorize | None,
    ) -> None:
        self.manager = manager
        self.registry = registry
        self.authorize = authorize

    async def answer(self, scope: Scope, send: Send) -> None:
        from .. import metrics

        answer = metrics.metrics_response(
            self.manager,
            Handshake.from_asgi(scope),
            method=str(scope.get("method", "GET")),
            registry=self.registry,
            authorize=self.authorize,
        )
        await _respond(send, answer.status, answer.headers, answer.body)


def metrics_app(
    manager: ConnectionManager,
    *,
    registry: CollectorRegistry | None = None,
    authorize: Authorize | None = None,
) -> ASGIApp:
    """An ASGI application serving ``manager``'s Prometheus metrics on any path it is given
    (mount it at ``/metrics``; needs ``pip install "wsroom[metrics]"``).

    The metrics show no user data, but should not be public: serve them from an
    application only your network reaches, or pass ``authorize``. See
    :func:`wsroom.metrics.metrics_response` for ``registry`` and ``authorize``.
    """
    return _Metrics(manager, registry, authorize)


class _Admin(_HTTPOnly):
    """The ASGI application serving a manager's admin view (see :func:`admin_app`)."""

    def __init__(self, view: admin.AdminView) -> None:
        self.view = view

    async def answer(self, scope: Scope, send: Send) -> None:
        method = str(scope.get("method", "GET"))
        answer = await self.view.respond(Handshake.from_asgi(scope), method)
        if answer is None:
            await _text(send, 404, "Not Found\n", head=method == "HEAD")
            return
        await _respond(send, answer.status, answer.headers, answer.body)


def admin_app(
    manager: ConnectionManager,
    authorize: admin.Authorize,
    *,
    path: str = admin.ADMIN_PATH,
    **options: Any,
) -> ASGIApp:
    """An ASGI application serving the admin view (:mod:`wsroom.admin`) of ``manager``
    under ``path`` (the request's full path, ``root_path`` included, is matched): route
    ``path`` and everything below it to it; other paths get 404.

    Args:
        manager: The manager to show.
        authorize: The application's check of each request for the page or a snapshot
            (:data:`wsroom.admin.Authorize`), ``def`` or ``async def``; ``True`` lets it
            in, anything else is a 403.
        path: Where the view lives.
        options: The sizes of the lists and the snapshot's reuse interval, as
            :class:`~wsroom.admin.AdminView` takes them.
    """
    return _Admin(admin.AdminView(manager, authorize, path=path, **options))


def _header(scope: Scope, name: bytes) -> str | None:
    values = [value for key, value in scope.get("headers", ()) if bytes(key).lower() == name]
    return b", ".join(bytes(value) for value in values).decode("latin-1") if values else None


def _route_path(scope: Scope) -> str:
    """The path below the application's mount point: ``path`` without ``root_path``, as
    servers and frameworks that mount applications put them (the ASGI spec)."""
    path = str(scope.get("path", "/"))
    root = str(scope.get("root_path", "") or "")
    if root and path.startswith(root):
        path = path[len(root) :] or "/"
    return path


class WSRoomApp:
    """An ASGI application serving ``manager``'s rooms, alone or in front of another
    application.

    Args:
        manager: The manager to serve.
        path: Serve the rooms at this path only (``"/ws"``), and hand every other request
            to ``app``; ``None`` (the default) serves them at every path the application
            is given, for a framework's router that mounts it at the right one.
        app: The application that serves everything else (Django's, Quart's...). Without
            one, other paths get 404 (HTTP) or a refusal (WebSocket).
        client_path: Also serve ``wsroom.js`` at this path (``"/wsroom.js"``).
        shutdown_timeout: Seconds clients get, at the lifespan's shutdown, to receive what
            is queued for them before they are cut.

    The ``lifespan`` protocol starts the manager at startup and shuts it down at shutdown.
    Around an ``app`` that speaks it too, the manager starts once the application's startup
    is complete and shuts down before the application's shutdown begins (a hook that needs
    the application's resources, a database, still has them); an ``app`` that does not
    (Django's) is left out of it.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        *,
        path: str | None = None,
        app: _AnyApp | None = None,
        client_path: str | None = None,
        shutdown_timeout: float = 5.0,
    ) -> None:
        self.manager = manager
        """The manager served."""
        self.path = path
        """The path of the rooms, or ``None`` for every path."""
        self.app = app
        """The application serving everything else, or ``None``."""
        self.client_path = client_path
        """Where ``wsroom.js`` is served, or ``None``."""
        self.shutdown_timeout = shutdown_timeout
        self._script = _ClientScript()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection (``websocket``, ``http`` or ``lifespan``)."""
        kind = scope.get("type")
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind not in ("websocket", "http"):
            if self.app is not None:
                await self.app(scope, receive, send)
            return
        path = None if self.path is None and self.client_path is None else _route_path(scope)
        if self.path is None or path == self.path:
            if kind == "websocket":
                transport = _plain_transport(scope, receive, send)
                await _run_websocket(scope, receive, send, self.manager, _UNSET, transport)
            elif path is not None and path == self.client_path:
                await self._script(scope, receive, send)
            else:
                await _upgrade_required(scope, send, self.manager)
        elif path == self.client_path:
            await self._script(scope, receive, send)
        elif self.app is not None:
            await self.app(scope, receive, send)
        elif kind == "http":
            await _text(send, 404, "Not Found\n", head=scope.get("method") == "HEAD")
        else:
            await _refuse(scope, send, HandshakeRejected(404, "Not Found"))

    # The lifespan protocol.

    async def _start(self, send: Send) -> bool:
        try:
            await self.manager.start()
        except Exception as exc:
            # The server logs the message and does not serve (uvicorn exits).
            await send({"type": "lifespan.startup.failed", "message": f"wsroom: {exc}"})
            return False
        return True

    async def _stop(self) -> None:
        try:
            await self.manager.shutdown(self.shutdown_timeout)
        except Exception:
            logger.exception("wsroom's manager failed to shut down")

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app
        if app is None:
            await self._own_lifespan(receive, send)
            return
        received = False

        async def app_receive() -> Message:
            nonlocal received
            message = await receive()
            received = True
            if message.get("type") == "lifespan.shutdown":
                await self._stop()
            return message

        async def app_send(message: Message) -> None:
            if message.get("type") == "lifespan.startup.complete" and not await self._start(send):
                return
            await send(message)

        try:
            await app(scope, app_receive, app_send)
        except Exception:
            if received:
                raise
            # It refused the lifespan before reading a message (Django raises at once).
        if not received:
            await self._own_lifespan(receive, send)

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            kind = message.get("type")
            if kind == "lifespan.startup":
                if not await self._start(send):
                    return
                await send({"type": "lifespan.startup.complete"})
            elif kind == "lifespan.shutdown":
                await self._stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
