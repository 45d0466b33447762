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

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

try:
    from starlette.routing import BaseRoute, Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "wsroom.adapters.starlette needs Starlette: pip install 'wsroom[starlette]'"
    ) from exc

from .. import admin, browser
from ..admin import ADMIN_PATH
from ..manager import ConnectionManager
from . import asgi
from .asgi import ASGITransport

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ..metrics import Authorize

__all__ = [
    "StarletteTransport",
    "admin_routes",
    "client_route",
    "endpoint",
    "metrics_route",
    "routes",
    "serve",
]

# Sending after a close, or to a peer that went away, raises one of these depending on the
# Starlette and ASGI server versions (WebSocketDisconnect, Starlette's RuntimeError
# subclass WebSocketDisconnected, uvicorn's ClientDisconnected OSError).
_CLOSED: tuple[type[BaseException], ...] = (WebSocketDisconnect, *asgi.CLOSED_ERRORS)

_UNSET: Any = object()


class StarletteTransport(ASGITransport):
    """Moves one connection's queued frames onto a Starlette ``WebSocket``.

    The ASGI transport of :mod:`wsroom.adapters.asgi` over the ``WebSocket``'s own
    ``receive`` and ``send`` (so that Starlette's view of the connection stays right): a
    writer task exists only while frames are queued, a send blocked past
    ``Limits.write_timeout`` evicts the client, and eviction cancels the blocked send, since
    the TCP connection cannot be aborted from an ASGI application (under
    :mod:`wsroom.adapters.uvicorn`'s ``Server`` it is).
    """

    __slots__ = ("websocket",)

    closed_errors = _CLOSED

    def __init__(self, websocket: WebSocket, *, binary: bool = False) -> None:
        super().__init__(websocket.scope, websocket.receive, websocket.send, binary=binary)
        self.websocket = websocket
        """The Starlette ``WebSocket`` carried."""


def endpoint(manager: ConnectionManager) -> Callable[[WebSocket], Awaitable[None]]:
    """A WebSocket endpoint for ``WebSocketRoute(path, ...)`` or ``app.router.add_websocket_route``.

    It runs the manager's checks (shutdown, origin, subprotocol, authenticate hook) before
    accepting, so refused clients get an HTTP status (503, 403, 400, 401...) where the
    ASGI server supports denial responses (uvicorn does), else a 403.
    """

    async def wsroom_endpoint(websocket: WebSocket) -> None:
        await serve(websocket, manager)

    return wsroom_endpoint


class _UpgradeRequired:
    """The ASGI application answering plain HTTP requests to the WebSocket's path."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        await asgi._upgrade_required(scope, send, self.manager)


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
    return [
        WebSocketRoute(path, endpoint(manager)),
        # An ASGI application (a class instance), not a request-response function.
        Route(path, _UpgradeRequired(manager), methods=["GET", "HEAD"]),
    ]


def client_route(path: str = browser.SCRIPT_PATH) -> Route:
    """A route serving ``wsroom.js`` at ``path`` (``GET`` and ``HEAD``, with its ``ETag`` and a
    304 for a current copy)::

        app = Starlette(routes=[client_route(), *routes("/ws", manager)])
    """
    return Route(path, asgi.client_app(), methods=["GET", "HEAD"])


def metrics_route(
    manager: ConnectionManager,
    path: str = "/metrics",
    *,
    registry: CollectorRegistry | None = None,
    authorize: Authorize | None = None,
) -> Route:
    """A route serving the manager's Prometheus metrics at ``path`` (``GET`` and ``HEAD``;
    needs ``pip install "wsroom[metrics]"``)::

        app = Starlette(routes=[metrics_route(manager), *routes("/ws", manager)])

    The metrics show no user data, but should not be public: serve them from an
    application only your network reaches, or pass ``authorize``. See
    :func:`wsroom.metrics.metrics_response` for ``registry`` and ``authorize``.
    """
    return Route(
        path,
        asgi.metrics_app(manager, registry=registry, authorize=authorize),
        methods=["GET", "HEAD"],
    )


def admin_routes(
    manager: ConnectionManager,
    authorize: admin.Authorize,
    *,
    path: str = ADMIN_PATH,
    **options: Any,
) -> list[BaseRoute]:
    """The routes of the admin view (:mod:`wsroom.admin`) of ``manager`` under ``path``
    (``GET`` and ``HEAD``), on :func:`wsroom.adapters.asgi.admin_app`::

        app = Starlette(routes=[*admin_routes(manager, is_operator), *routes("/ws", manager)])

    Args:
        manager: The manager to show.
        authorize: The application's check of each request for the page or a snapshot
            (:data:`wsroom.admin.Authorize`), ``def`` or ``async def``, given the request
            as a :class:`~wsroom.Handshake`; ``True`` lets it in, anything else is a 403.
        path: Where the view lives.
        options: The sizes of the lists and the snapshot's reuse interval, as
            :class:`~wsroom.admin.AdminView` takes them.
    """
    app = asgi.admin_app(manager, authorize, path=path, **options)
    methods = ["GET", "HEAD"]
    return [
        Route(path, app, methods=methods),
        Route(path + "/{name:path}", app, methods=methods),
    ]


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
    await asgi._run_websocket(
        websocket.scope,
        websocket.receive,
        websocket.send,
        manager,
        asgi._UNSET if user is _UNSET else user,
        lambda binary: StarletteTransport(websocket, binary=binary),
        closed=_CLOSED,
        # A framework's code may have read the websocket.connect message already.
        connected=websocket.client_state is not WebSocketState.CONNECTING,
    )
