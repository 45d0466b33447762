"""The admin view: a live, read-only page of what a server is doing, for its operators.

It shows the connections, the biggest rooms and their members, the fullest outgoing
queues, the latest closes and evictions, the backplane's state and a chart of messages per
second, from :meth:`ConnectionManager.admin_snapshot
<wsroom.ConnectionManager.admin_snapshot>`, polled once a second by the page.

The page, its script and its style ship inside the wheel, in this folder. :class:`AdminView`
answers every request under its path (``/admin`` by default) whatever the server; each
adapter has a helper around it:

- websockets asyncio: ``process_request=wsroom.adapters.websockets.admin_view(...)``
- websockets threading: ``process_request=wsroom.adapters.websockets_sync.admin_view(...)``
- Starlette/FastAPI: ``*wsroom.adapters.starlette.admin_routes(...)`` among your routes

**It names users, rooms and client addresses**, so ``authorize`` is required: the
application's own check of the request (an operator's session cookie, a token, HTTP
authentication), run for the page and for every snapshot. The script, the style and the
icon are public files, the same in every copy of wsroom, and are served to anyone.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from http import HTTPStatus
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from .._http import etag_matches, etag_of
from .._snapshot import (
    AdminSnapshot,
    BackplaneInfo,
    CloseInfo,
    ConnectionInfo,
    QueueInfo,
    RoomInfo,
    check_sizes,
)
from ..exceptions import HandshakeRejected
from ..handshake import Handshake

if TYPE_CHECKING:
    from ..manager import ConnectionManager

__all__ = [
    "ADMIN_PATH",
    "AdminResponse",
    "AdminSnapshot",
    "AdminView",
    "Authorize",
    "BackplaneInfo",
    "CloseInfo",
    "ConnectionInfo",
    "QueueInfo",
    "RoomInfo",
    "directory",
]

logger = logging.getLogger("wsroom.admin")

ADMIN_PATH = "/admin"
"""Where the adapters' helpers serve the admin view unless told otherwise."""

Authorize: TypeAlias = Callable[[Handshake], bool | Awaitable[bool]]
"""The application's check, ``def`` or ``async def``: it receives the request as a
:class:`~wsroom.Handshake` (path, query, headers, cookies, peer address) and returns
``True`` to let it see the admin view. Anything else answers 403; raising
:class:`~wsroom.HandshakeRejected` answers its status and headers instead (401 with a
``WWW-Authenticate`` header, for HTTP authentication)."""

# The page's policy: its own script, style and snapshot, nothing inline, no framing.
_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
_PRIVATE = [
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]
_PAGE_HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    *_PRIVATE,
    ("Content-Security-Policy", _POLICY),
    ("X-Frame-Options", "DENY"),
]
# The public files, by their name under the view's path.
_FILES = {
    "admin.js": "text/javascript; charset=utf-8",
    "admin.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_PAGE = "admin.html"
_SNAPSHOT = "snapshot.json"


def directory() -> Path:
    """The folder holding the page (``admin.html``), ``admin.js``, ``admin.css`` and
    ``favicon.svg``."""
    return Path(str(files(__package__)))


@dataclass(frozen=True)
class AdminResponse:
    """An HTTP answer of the admin view, whatever the server that sends it."""

    status: int
    headers: list[tuple[str, str]]
    """With ``Content-Length`` (the ``GET``'s, for a ``HEAD``), except on a 304."""
    body: bytes
    """Empty for a ``HEAD``, a 304 or a redirect."""


class AdminView:
    """Answers the requests for the admin view of ``manager`` under ``path``.

    Adapters call :meth:`respond` for each HTTP request and send back the
    :class:`AdminResponse`; ``None`` means the path is not the admin view's. Under ``path``:
    the page at ``path + "/"`` (``path`` itself redirects there), the snapshot at
    ``path + "/snapshot.json"``, and the page's public files.

    Args:
        manager: The manager to show.
        authorize: The application's check (:data:`Authorize`), run before the page and
            before every snapshot.
        path: Where the view lives, e.g. ``"/admin"``.
        connections: The newest connections listed.
        rooms: The rooms listed, those with the most members first.
        members: The users listed in each of those rooms.
        queues: The fullest outgoing queues listed.
        closes: The latest connection ends listed.
        min_interval: Seconds during which a snapshot is reused: however many pages are
            open (each polls once a second), the manager builds at most one snapshot per
            interval.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        authorize: Authorize,
        *,
        path: str = ADMIN_PATH,
        connections: int = 20,
        rooms: int = 20,
        members: int = 50,
        queues: int = 10,
        closes: int = 20,
        min_interval: float = 1.0,
    ) -> None:
        if not callable(authorize):
            raise TypeError(
                "authorize must be the application's check of a request (a function): "
                "the admin view names users and must never be public"
            )
        if not path.startswith("/") or path.endswith("/") or "?" in path or "#" in path:
            raise ValueError(f"path must start with / and not end with one, not {path!r}")
        check_sizes(
            connections=connections, rooms=rooms, members=members, queues=queues, closes=closes
        )
        self.manager = manager
        self.authorize = authorize
        self.path = path
        """Where the view lives."""
        self._sizes = {
            "connections": connections,
            "rooms": rooms,
            "members": members,
            "queues": queues,
            "closes": closes,
        }
        self.min_interval = min_interval
        self._cached: tuple[float, bytes] | None = None

    def handles(self, path: str) -> bool:
        """Whether ``path`` (without its query string) is the admin view's."""
        return path == self.path or path.startswith(self.path + "/")

    async def respond(
        self, request: Handshake, method: str = "GET", *, if_none_match: str | None = None
    ) -> AdminResponse | None:
        """The answer to one HTTP request, or ``None`` when its path is not the view's.

        Must run on the manager's event loop.

        Args:
            request: The request (``Handshake.from_target`` or ``Handshake.from_asgi``
                builds one from any server's).
            method: Its method; only ``GET`` and ``HEAD`` are answered (else 405).
            if_none_match: Its ``If-None-Match`` header (the headers of ``request`` are
                read when this is ``None``).
        """
        path = request.path
        if not self.handles(path):
            return None
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return _text(
                HTTPStatus.METHOD_NOT_ALLOWED, "Method Not Allowed", [("Allow", "GET, HEAD")]
            )
        name = path[len(self.path) + 1 :]
        if path == self.path:
            # The page's files are named relative to it: it must be served as a folder.
            target = self.path.rsplit("/", 1)[1] + "/"
            if request.query_string:
                target += "?" + request.query_string
            return _text(HTTPStatus.TEMPORARY_REDIRECT, "", [("Location", target)], head)
        if name in _FILES:
            if if_none_match is None:
                if_none_match = request.headers.get("If-None-Match")
            return _public(name, if_none_match, head)
        if name not in ("", _SNAPSHOT):
            return _text(HTTPStatus.NOT_FOUND, "Not Found", head=head)
        refusal = await self._check(request)
        if refusal is not None:
            return refusal
        if name == "":
            return _answer(200, _PAGE_HEADERS, _read(_PAGE), head)
        headers = [("Content-Type", "application/json"), *_PRIVATE]
        return _answer(200, headers, await self.snapshot_json(), head)

    async def snapshot_json(self) -> bytes:
        """The snapshot the page polls, encoded (reused for :attr:`min_interval`)."""
        now = time.monotonic()
        cached = self._cached
        if cached is not None and now - cached[0] < self.min_interval:
            return cached[1]
        snapshot = await self.manager.admin_snapshot(**self._sizes)
        body = json.dumps(snapshot, separators=(",", ":"), allow_nan=False).encode()
        self._cached = (time.monotonic(), body)
        return body

    async def _check(self, request: Handshake) -> AdminResponse | None:
        """``None`` when the application's check lets the request in, else the refusal."""
        try:
            allowed = self.authorize(request)
            if inspect.isawaitable(allowed):
                allowed = await allowed
        except HandshakeRejected as exc:
            headers = list(exc.headers.items())
            return _text(HTTPStatus(exc.status), exc.reason, headers)
        except Exception:
            logger.exception("the admin view's authorize check failed")
            return _text(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Server Error")
        if allowed is not True:
            return _text(HTTPStatus.FORBIDDEN, "Forbidden")
        return None


def _text(
    status: HTTPStatus,
    text: str,
    headers: list[tuple[str, str]] | None = None,
    head: bool = False,
) -> AdminResponse:
    body = (text + "\n").encode() if text else b""
    fields = [("Content-Type", "text/plain; charset=utf-8"), *_PRIVATE, *(headers or [])]
    return _answer(status.value, fields, body, head)


def _answer(status: int, headers: list[tuple[str, str]], body: bytes, head: bool) -> AdminResponse:
    fields = [*headers, ("Content-Length", str(len(body)))]
    return AdminResponse(status, fields, b"" if head else body)


def _public(name: str, if_none_match: str | None, head: bool) -> AdminResponse:
    body, etag = _file_and_etag(name)
    headers = [
        ("Content-Type", _FILES[name]),
        # Revalidated on every use: a page never runs a stale script after an upgrade.
        ("Cache-Control", "no-cache"),
        ("ETag", etag),
        ("X-Content-Type-Options", "nosniff"),
    ]
    if etag_matches(if_none_match, etag):
        return AdminResponse(304, headers, b"")
    return _answer(200, headers, body, head)


@cache
def _file_and_etag(name: str) -> tuple[bytes, str]:
    body = _read(name)
    return body, etag_of(body)


def _read(name: str) -> bytes:
    return files(__package__).joinpath(name).read_bytes()
