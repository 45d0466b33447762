"""The demo chat: a page at ``/``, the browser client at ``/wsroom.js``, the WebSocket at
``/ws`` and, with ``wsroom[metrics]`` installed, Prometheus metrics at ``/metrics`` (for
requests from this machine only), on one port.

Run it with ``wsroom demo`` or ``python -m wsroom demo``. For the demo only, the user is the
``name`` query parameter (``/ws?name=alice``), or a generated guest id without it: there is
no password, so never deploy it as is.

With ``--admin`` it also serves the admin view (:mod:`wsroom.admin`) at ``/admin/``, behind
a random token made at startup: the address it prints carries it (``/admin/?token=...``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from http import HTTPStatus
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ..adapters.websockets import Server, admin_view, client_script, serve
from ..admin import Authorize
from ..connection import Connection
from ..exceptions import HandshakeRejected
from ..handshake import Handshake
from ..manager import ConnectionManager
from ..protocol import Message
from ..room import Room

if TYPE_CHECKING:
    from ..adapters.asgi import WSRoomApp

__all__ = [
    "ChatRoom",
    "admin_token_check",
    "aiohttp_app",
    "asgi_app",
    "create_manager",
    "demo_server",
    "run",
    "run_aiohttp",
    "run_asgi",
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


# Labels the page itself shows: a user named like one would pass for it ("server" is how
# the page shows a server message; "(you)" marks the reader's own name).
RESERVED_NAMES = frozenset({"server", "anonymous", "wsroom", "system", "admin"})


def demo_user(handshake: Handshake) -> str:
    """The demo's stand-in for authentication: ``?name=`` or a guest id.

    Names are printable text (no control, formatting or bidirectional characters: a name
    must look like what it is), at most 32 characters, and none of the page's own labels.
    """
    name = " ".join(handshake.query.get("name", "").split())[:MAX_NAME_LENGTH]
    if not name:
        return f"guest-{secrets.token_hex(3)}"
    if not name.isprintable():
        raise HandshakeRejected(403, "Name not allowed: use printable characters only")
    folded = name.casefold()
    if folded in RESERVED_NAMES or folded.endswith("(you)") or folded.startswith("dm from"):
        raise HandshakeRejected(403, "Name not allowed: it is one of the page's own labels")
    return name


DEFAULT_PREFIX = "wsroom-demo"


def create_manager(
    redis_url: str | None = None, *, prefix: str = DEFAULT_PREFIX
) -> ConnectionManager:
    """The demo's manager: :class:`ChatRoom` rooms, users named by the query string.

    With ``redis_url``, rooms are shared with every other demo process on that Redis whose
    keys start with the same ``prefix`` (a test gives one of its own, so that it shares no
    room with a demo running on the same Redis and can delete its keys after).
    """
    backplane = None
    if redis_url is not None:
        from ..backplane.redis import RedisBackplane

        backplane = RedisBackplane(redis_url, prefix=prefix)
    return ConnectionManager(ChatRoom, authenticate=demo_user, backplane=backplane)


def _page() -> bytes:
    return files(__package__).joinpath("index.html").read_bytes()


def _favicon() -> bytes:
    return files(__package__).joinpath("favicon.svg").read_bytes()


def _inline_hashes(page: bytes, tag: bytes) -> str:
    """CSP sources allowing exactly the page's inline ``<tag>`` blocks, by their hash."""
    sources = []
    for block in re.findall(rb"<" + tag + rb"(?:\s[^>]*)?>(.*?)</" + tag + rb">", page, re.DOTALL):
        if not block:  # an external script (src=...) has no inline text to allow
            continue
        digest = base64.b64encode(hashlib.sha256(block).digest()).decode()
        sources.append(f"'sha256-{digest}'")
    return " ".join(sources) or "'none'"


def security_headers(page: bytes) -> list[tuple[str, str]]:
    """The headers the demo page is served with: a Content-Security-Policy that allows its
    own inline script and style and nothing else (no other script, no framing by other
    sites, WebSocket connections to this origin only), no MIME sniffing, no referrer."""
    policy = "; ".join(
        (
            "default-src 'none'",
            # 'self' for /wsroom.js, which the page's inline module imports.
            f"script-src 'self' {_inline_hashes(page, b'script')}",
            f"style-src {_inline_hashes(page, b'style')}",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return [
        ("Content-Security-Policy", policy),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    ]


def _route(path: str) -> tuple[HTTPStatus, bytes, str] | None:
    """What the demo answers on ``path`` over plain HTTP; ``None`` for the WebSocket."""
    path = path.partition("?")[0]
    if path == "/ws":
        return None
    if path in ("/", "/index.html"):
        return HTTPStatus.OK, _page(), "text/html; charset=utf-8"
    if path == "/favicon.svg":
        return HTTPStatus.OK, _favicon(), "image/svg+xml"
    if path == "/metrics":  # served here only when prometheus-client is missing
        return HTTPStatus.NOT_FOUND, _METRICS_MISSING, "text/plain; charset=utf-8"
    return HTTPStatus.NOT_FOUND, b"Not Found\n", "text/plain; charset=utf-8"


_serve_script = client_script()

_METRICS_MISSING = b"Not Found: /metrics needs prometheus-client: pip install 'wsroom[metrics]'\n"


def _from_this_machine(request: Handshake) -> bool:
    """Whether a request comes from a loopback address: the demo's metrics are for the
    machine it runs on, even when it listens on every interface."""
    peer = request.remote_address
    if peer is None:
        return False
    try:
        return ipaddress.ip_address(peer[0].partition("%")[0]).is_loopback
    except ValueError:
        return False


_ProcessRequest = Callable[[Any, Request], Response | None]


def _serve_metrics(manager: ConnectionManager) -> _ProcessRequest | None:
    try:
        from ..adapters.websockets import metrics_endpoint

        return metrics_endpoint(manager, authorize=_from_this_machine)
    except ImportError:
        return None


def _serve_pages(manager: ConnectionManager) -> _ProcessRequest:
    """websockets' ``process_request``, for both its asyncio and its threading server."""
    metrics = _serve_metrics(manager)

    def serve_page(connection: Any, request: Request) -> Response | None:
        if metrics is not None and (answer := metrics(connection, request)) is not None:
            return answer
        return _serve_page(connection, request)

    return serve_page


def _serve_page(connection: Any, request: Request) -> Response | None:
    script = _serve_script(connection, request)
    if script is not None:
        return script
    routed = _route(request.path)
    if routed is None:
        return None
    status, body, content_type = routed
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            *security_headers(body),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


# The demo's admin view: a token made at startup, in the address it prints.


def admin_token_check(token: str) -> Authorize:
    """The demo's check for the admin view: the request's ``token`` query parameter must be
    ``token`` (compared in constant time). Fit for a demo on one's own machine; an
    application checks its operators' own credentials."""
    expected = token.encode()

    def authorize(request: Handshake) -> bool:
        given = request.query.get("token", "").encode("utf-8", "surrogatepass")
        return hmac.compare_digest(given, expected)

    return authorize


def _new_token(admin: bool) -> str | None:
    return secrets.token_urlsafe(18) if admin else None


def _asyncio_requests(manager: ConnectionManager, admin_token: str | None) -> Any:
    """The demo's ``process_request`` on websockets asyncio: the admin view, if any, first."""
    pages = _serve_pages(manager)
    if admin_token is None:
        return pages
    admin = admin_view(manager, admin_token_check(admin_token))

    async def process_request(connection: Any, request: Request) -> Response | None:
        answer = await admin(connection, request)
        return answer if answer is not None else pages(connection, request)

    return process_request


@asynccontextmanager
async def demo_server(
    host: str = "127.0.0.1",
    port: int = 8765,
    manager: ConnectionManager | None = None,
    *,
    admin_token: str | None = None,
) -> AsyncIterator[Server]:
    """Start the demo server (websockets asyncio); on exit, shut it down gracefully.

    With ``admin_token``, the admin view is served at ``/admin/?token=<admin_token>``.
    """
    manager = manager if manager is not None else create_manager()
    process_request = _asyncio_requests(manager, admin_token)
    async with serve(manager, host, port, process_request=process_request) as server:
        yield server


def _announce(address: Any, admin_token: str | None = None) -> None:
    base = f"http://{_url_host(str(address[0]))}:{address[1]}"
    print(f"wsroom demo: open {base}/", flush=True)
    if admin_token is not None:
        print(f"wsroom demo: admin view at {base}/admin/?token={admin_token}", flush=True)


async def run(
    host: str = "127.0.0.1",
    port: int = 8765,
    redis_url: str | None = None,
    *,
    admin: bool = False,
) -> None:
    """Serve the demo on websockets asyncio until SIGINT or SIGTERM, then shut down gracefully.

    With ``admin``, the admin view too, behind a token printed with its address.
    """
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _resolve, stop)
    token = _new_token(admin)
    async with demo_server(host, port, create_manager(redis_url), admin_token=token) as server:
        for sock in server.sockets:
            _announce(sock.getsockname(), token)
        await stop
        print("wsroom demo: shutting down", flush=True)


def run_sync(
    host: str = "127.0.0.1",
    port: int = 8765,
    redis_url: str | None = None,
    *,
    admin: bool = False,
) -> None:
    """Serve the demo on a threaded websockets server until SIGINT or SIGTERM.

    With ``admin``, the admin view too, behind a token printed with its address.
    """
    from ..adapters import websockets_sync

    manager = create_manager(redis_url)
    token = _new_token(admin)
    process_request = _serve_pages(manager)
    if token is not None:
        pages = process_request
        admin_page = websockets_sync.admin_view(manager, admin_token_check(token))

        def process_request(connection: Any, request: Request) -> Response | None:
            answer = admin_page(connection, request)
            return answer if answer is not None else pages(connection, request)

    with websockets_sync.serve(manager, host, port, process_request=process_request) as server:

        def stop(signum: int, frame: object) -> None:
            # shutdown() waits for serve_forever() to return: call it from another thread.
            threading.Thread(target=server.shutdown, name="wsroom-demo-stop").start()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        _announce(server.socket.getsockname(), token)
        server.serve_forever()
        print("wsroom demo: shutting down", flush=True)


def starlette_app(
    manager: ConnectionManager | None = None, *, admin_token: str | None = None
) -> Any:
    """The demo as a Starlette application: the page at ``/``, the WebSocket at ``/ws``, and
    with ``admin_token`` the admin view at ``/admin/?token=<admin_token>``."""
    from starlette.applications import Starlette
    from starlette.requests import Request as HTTPRequest
    from starlette.responses import Response as HTTPResponse
    from starlette.routing import Route

    from ..adapters.starlette import admin_routes, client_route, routes

    manager = manager if manager is not None else create_manager()

    async def page(request: HTTPRequest) -> HTTPResponse:
        routed = _route(request.url.path)
        assert routed is not None
        status, body, content_type = routed
        headers = {"Cache-Control": "no-cache", **dict(security_headers(body))}
        return HTTPResponse(
            body, status_code=status.value, media_type=content_type, headers=headers
        )

    try:
        from ..adapters.starlette import metrics_route

        metrics = metrics_route(manager, authorize=_from_this_machine)
    except ImportError:
        metrics = Route("/metrics", page)
    app = Starlette(
        routes=[
            Route("/", page),
            Route("/index.html", page),
            Route("/favicon.svg", page),
            client_route(),
            metrics,
            *routes("/ws", manager),
            *(
                admin_routes(manager, admin_token_check(admin_token))
                if admin_token is not None
                else ()
            ),
        ]
    )
    app.state.manager = manager
    return app


def asgi_app(
    manager: ConnectionManager | None = None, *, admin_token: str | None = None
) -> WSRoomApp:
    """The demo as a plain ASGI application (:mod:`wsroom.adapters.asgi`, no framework):
    the page at ``/``, ``/wsroom.js``, the WebSocket at ``/ws``, ``/metrics`` for this
    machine, and with ``admin_token`` the admin view at ``/admin/?token=<admin_token>``."""
    from ..adapters.asgi import (
        ASGIApp,
        Receive,
        Scope,
        Send,
        WSRoomApp,
        _respond,
        admin_app,
        metrics_app,
    )
    from ..admin import ADMIN_PATH

    async def pages(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        routed = _route(str(scope.get("path", "/")))
        assert routed is not None
        status, body, content_type = routed
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            *security_headers(body),
        ]
        await _respond(send, status.value, headers, b"" if scope.get("method") == "HEAD" else body)

    manager = manager if manager is not None else create_manager()
    admin = admin_app(manager, admin_token_check(admin_token)) if admin_token else None
    try:
        metrics: ASGIApp | None = metrics_app(manager, authorize=_from_this_machine)
        from .. import metrics as _metrics  # noqa: F401  (prometheus-client installed?)
    except ImportError:
        metrics = None

    async def others(scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", "/"))
        if admin is not None and (path == ADMIN_PATH or path.startswith(ADMIN_PATH + "/")):
            await admin(scope, receive, send)
        elif path == "/metrics" and scope["type"] == "http":
            if metrics is not None:
                await metrics(scope, receive, send)
            else:
                await _respond(send, 404, [("Content-Type", "text/plain")], _METRICS_MISSING)
        else:
            await pages(scope, receive, send)

    return WSRoomApp(manager, path="/ws", app=others, client_path="/wsroom.js")


def run_starlette(
    host: str = "127.0.0.1",
    port: int = 8765,
    redis_url: str | None = None,
    *,
    admin: bool = False,
) -> None:
    """Serve the demo as a Starlette app under uvicorn until SIGINT or SIGTERM (with
    ``admin``, the admin view too, behind a token printed with its address).

    Through :mod:`wsroom.adapters.uvicorn`: uvicorn gets wsroom's frame limit, a deadline
    for request heads, quiet logging of client errors and a graceful shutdown.

    Raises:
        OSError: ``host``:``port`` cannot be listened on (a port in use, say), as with the
            other transports; uvicorn would log it and exit the process.
    """
    manager = create_manager(redis_url)
    token = _new_token(admin)
    _run_uvicorn(starlette_app(manager, admin_token=token), manager, host, port, token)


def run_asgi(
    host: str = "127.0.0.1",
    port: int = 8765,
    redis_url: str | None = None,
    *,
    admin: bool = False,
) -> None:
    """Serve the demo as a plain ASGI application (:func:`asgi_app`) under uvicorn until
    SIGINT or SIGTERM, through :mod:`wsroom.adapters.uvicorn` as :func:`run_starlette` does
    (with ``admin``, the admin view too, behind a token printed with its address).

    Raises:
        OSError: ``host``:``port`` cannot be listened on.
    """
    manager = create_manager(redis_url)
    token = _new_token(admin)
    _run_uvicorn(asgi_app(manager, admin_token=token), manager, host, port, token)


def _run_uvicorn(
    app: Any, manager: ConnectionManager, host: str, port: int, admin_token: str | None = None
) -> None:
    from ..adapters import uvicorn as wsroom_uvicorn

    sockets = _listen(host, port)

    class DemoServer(wsroom_uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            for server in self.servers:
                for sock in server.sockets:
                    _announce(sock.getsockname(), admin_token)

        def handle_exit(self, sig: int, frame: Any) -> None:
            print("wsroom demo: shutting down", flush=True)
            super().handle_exit(sig, frame)

    config = wsroom_uvicorn.config(
        app, manager, host=host, port=port, log_level="warning", lifespan="off"
    )
    DemoServer(config, manager).run(sockets=sockets)


def aiohttp_app(
    manager: ConnectionManager | None = None,
    *,
    admin_token: str | None = None,
    shutdown_timeout: float = 5.0,
) -> Any:
    """The demo as an ``aiohttp.web`` application: the page at ``/``, the WebSocket at
    ``/ws``, ``/metrics`` for this machine, with ``admin_token`` the admin view at
    ``/admin/?token=<admin_token>``; the manager started and shut down gracefully with the
    application."""
    from aiohttp import web

    from ..adapters import aiohttp as wsroom_aiohttp

    manager = manager if manager is not None else create_manager()

    async def page(request: web.Request) -> web.Response:
        routed = _route(request.path)
        assert routed is not None
        status, body, content_type = routed
        headers = {"Cache-Control": "no-cache", **dict(security_headers(body))}
        response = web.Response(body=body, status=status.value, headers=headers)
        response.headers["Content-Type"] = content_type
        return response

    async def metrics_missing(request: web.Request) -> web.Response:
        return web.Response(body=_METRICS_MISSING, status=404, content_type="text/plain")

    try:
        from .. import metrics as _metrics  # noqa: F401  (prometheus-client installed?)

        metrics = wsroom_aiohttp.metrics_route(manager, authorize=_from_this_machine)
    except ImportError:
        metrics = web.get("/metrics", metrics_missing)
    app = web.Application()
    app.add_routes(
        [
            web.get("/", page),
            web.get("/index.html", page),
            web.get("/favicon.svg", page),
            wsroom_aiohttp.client_route(),
            metrics,
            *(
                wsroom_aiohttp.admin_routes(manager, admin_token_check(admin_token))
                if admin_token is not None
                else ()
            ),
        ]
    )
    wsroom_aiohttp.setup(app, manager, "/ws", shutdown_timeout=shutdown_timeout)
    return app


async def run_aiohttp(
    host: str = "127.0.0.1",
    port: int = 8765,
    redis_url: str | None = None,
    *,
    admin: bool = False,
) -> None:
    """Serve the demo as an aiohttp application until SIGINT or SIGTERM, then shut down
    gracefully (the manager first: every client gets 1001, then aiohttp stops); with
    ``admin``, the admin view too, behind a token printed with its address.

    Raises:
        OSError: ``host``:``port`` cannot be listened on (a port in use, say).
    """
    from aiohttp import web

    sockets = _listen(host, port)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _resolve, stop)
    # No access log: the demo prints its address, then only warnings and errors.
    token = _new_token(admin)
    app = aiohttp_app(create_manager(redis_url), admin_token=token)
    runner = web.AppRunner(app, access_log=None)
    try:
        await runner.setup()  # starts the manager: an unreachable Redis fails here
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        for address in runner.addresses:
            _announce(address, token)
        await stop
        print("wsroom demo: shutting down", flush=True)
    finally:
        await runner.cleanup()
        for sock in sockets:
            sock.close()


def _listen(host: str, port: int, backlog: int = 2048) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to, as asyncio's
    ``create_server`` binds them; a failure raises ``OSError`` and leaves none open."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # One socket per family, as asyncio does: no IPv4 through the IPv6 one.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
