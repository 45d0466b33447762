"""What the asyncio and threading ``websockets`` adapters share: the handshake glue, their
options, and how a stuck client's socket is cut.

Both servers hand their ``process_request`` and ``select_subprotocol`` callbacks the same
``Request`` and a connection with the same ``respond()``, and both run the same sans-I/O
protocol object, so the translation between them and the manager is written once, here.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import weakref
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from .. import browser
from ..admin import AdminResponse
from ..exceptions import HandshakeRejected
from ..handshake import Handshake
from ..manager import ConnectionManager
from ..protocol import CloseCode

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ..metrics import Authorize

logger = logging.getLogger("wsroom.transport")


def handshake_of(connection: Any, request: Request | None) -> Handshake:
    """The :class:`~wsroom.Handshake` of a ``websockets`` server connection."""
    if request is None:  # pragma: no cover - websockets sets it before the handler runs
        return Handshake(path="/")
    remote = connection.remote_address
    address = (str(remote[0]), int(remote[1])) if remote else None
    return Handshake.from_target(request.path, request.headers.raw_items(), address)


def client_script(
    path: str = browser.SCRIPT_PATH,
) -> Callable[[Any, Request], Response | None]:
    """A ``process_request`` that serves ``wsroom.js`` at ``path`` (with its ``ETag``, and a
    304 for a current copy) and lets every other request through::

        serve(manager, host, port, process_request=client_script())

    Requests for ``path`` with a query string are served too; the script is the same.
    """

    def process_request(connection: Any, request: Request) -> Response | None:
        if request.path.partition("?")[0] != path:
            return None
        answer = browser.script_response(request.headers.get("If-None-Match"))
        status = HTTPStatus(answer.status)
        return Response(status.value, status.phrase, Headers(answer.headers), answer.body)

    return process_request


def admin_response(answer: AdminResponse) -> Response:
    """The ``websockets`` response for an answer of the admin view."""
    status = HTTPStatus(answer.status)
    return Response(status.value, status.phrase, Headers(answer.headers), answer.body)


def metrics_endpoint(
    manager: ConnectionManager,
    path: str = "/metrics",
    *,
    registry: CollectorRegistry | None = None,
    authorize: Authorize | None = None,
) -> Callable[[Any, Request], Response | None]:
    """A ``process_request`` that serves the manager's Prometheus metrics at ``path`` and
    lets every other request through (needs ``pip install "wsroom[metrics]"``)::

        serve(manager, host, port, process_request=metrics_endpoint(manager))

    The metrics show no user data, but should not be public: serve them from a server
    only your network reaches, or pass ``authorize``. See :func:`wsroom.metrics.metrics_response`
    for ``registry`` and ``authorize``.
    """
    from .. import metrics

    def process_request(connection: Any, request: Request) -> Response | None:
        if request.path.partition("?")[0] != path:
            return None
        answer = metrics.metrics_response(
            manager, handshake_of(connection, request), registry=registry, authorize=authorize
        )
        status = HTTPStatus(answer.status)
        return Response(status.value, status.phrase, Headers(answer.headers), answer.body)

    return process_request


def refusal(connection: Any, exc: HandshakeRejected) -> Response:
    """The HTTP response refusing an upgrade."""
    response: Response = connection.respond(HTTPStatus(exc.status), exc.reason + "\n")
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="wsroom"'
    for name, value in exc.headers.items():
        response.headers[name] = value
    return response


def chosen_subprotocol(
    manager: ConnectionManager, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """The subprotocol to accept: the manager's choice (batched frames first), none when the
    client offers none of the manager's.

    Clients that offer only others were already refused by ``process_request``.
    """
    protocol = manager.protocol
    for wanted in (protocol.batch_subprotocol, protocol.subprotocol):
        if wanted is not None and wanted in offered:
            return Subprotocol(wanted)
    return None


class PendingHandshakes:
    """Handshakes ``process_request`` accepted, until their connection's handler runs."""

    def __init__(self, manager: ConnectionManager) -> None:
        self._manager = manager
        self._accepted: weakref.WeakKeyDictionary[Any, tuple[Handshake, str | None]] = (
            weakref.WeakKeyDictionary()
        )
        self._warned = False

    def accepted(self, connection: Any, handshake: Handshake, user: str | None) -> None:
        """``process_request`` accepted this connection as ``user``."""
        self._accepted[connection] = (handshake, user)

    def take(self, connection: Any) -> tuple[Handshake, str | None] | Handshake:
        """The accepted handshake and user; or, when ``process_request`` was not wired,
        the handshake still to check (the handler refuses it with 1008 after the upgrade)."""
        accepted = self._accepted.pop(connection, None)
        if accepted is not None:
            return accepted
        if not self._warned:
            self._warned = True
            logger.warning(
                "wsroom checks handshakes after the upgrade: pass **adapter.options() to "
                "websockets' serve() to refuse bad clients with HTTP 401/403 and to "
                "negotiate the %s subprotocol browsers ask for",
                self._manager.protocol.subprotocol,
            )
        return handshake_of(connection, connection.request)


class AdapterBase:
    """The part of both ``websockets`` adapters that does not depend on the concurrency model.

    The handshake checks run as coroutines on the manager's event loop in both: the
    threading adapter hands them to that loop and waits.
    """

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        """The manager this adapter serves."""
        self._handshakes = PendingHandshakes(manager)

    def select_subprotocol(
        self, connection: Any, subprotocols: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        """Accept ``wsroom.v1.batch`` or ``wsroom.v1`` when offered (batches first); serve
        clients that offer none."""
        return chosen_subprotocol(self.manager, subprotocols)

    def _options(self, checks: Callable[..., Any], overrides: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for ``websockets``' ``serve()``, ``overrides`` winning."""
        options: dict[str, Any] = {
            "process_request": checks,
            "select_subprotocol": self.select_subprotocol,
            "max_size": self.manager.limits.max_frame_size,
            # A close websockets starts itself (a keepalive timeout, a protocol error)
            # must end as soon as wsroom's own closes do, not after websockets' 10 s.
            "close_timeout": self.manager.limits.close_timeout,
        }
        options.update(overrides)
        return options

    async def _check(self, connection: Any, request: Request) -> Response | None:
        """What ``process_request`` answers: a refusal (HTTP 4xx or 503), or ``None``."""
        handshake = handshake_of(connection, request)
        try:
            user = await self.manager.authorize(handshake)
        except HandshakeRejected as exc:
            return refusal(connection, exc)
        self._handshakes.accepted(connection, handshake, user)
        return None

    async def _admitted(self, ws: Any) -> tuple[Handshake, str | None] | HandshakeRejected:
        """The handshake and user of a connection whose handler starts.

        When ``process_request`` was not wired, the checks run now, after the upgrade; the
        refusal they give is returned for the handler to close the connection with 1008.
        """
        checked = self._handshakes.take(ws)
        if not isinstance(checked, Handshake):
            handshake, user = checked
        else:
            try:
                handshake, user = checked, await self.manager.authorize(checked)
            except HandshakeRejected as exc:
                return exc
        # What websockets accepted, which is what the client reads: without the options'
        # select_subprotocol it accepted none, and the client must then get no batch.
        handshake.subprotocol = ws.subprotocol
        return handshake, user


def policy_violation(exc: HandshakeRejected) -> tuple[int, str]:
    """The close code and reason refusing a client after the upgrade."""
    return CloseCode.POLICY_VIOLATION, exc.reason[:120]


_LINGER_RESET = struct.pack("ii", 1, 0)


def reset_on_close(sock: socket.socket | None) -> None:
    """Make closing ``sock`` send a TCP reset and drop its unsent data.

    An evicted client stopped reading: a normal close would keep its unsent bytes (up to
    megabytes) in the kernel and the client would see only a late EOF, mid-frame.
    """
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


def send_at_once(sock: socket.socket | None) -> None:
    """Turn Nagle's algorithm off on a client's TCP socket.

    asyncio does it only for connections accepted from a listening socket it knows to be
    TCP; one an application made with ``socket.create_server()`` (protocol 0) leaves it on,
    and a frame written right after another then waits for the client's delayed ACK (40 ms).
    """
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def shut_down(sock: socket.socket | None) -> None:
    """Cut ``sock`` now, with a reset: this unblocks every thread reading or writing it."""
    if sock is None:
        return
    reset_on_close(sock)
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)
