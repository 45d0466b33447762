"""What the asyncio and threading ``websockets`` adapters share: the handshake glue.

Both servers hand their ``process_request`` and ``select_subprotocol`` callbacks the same
``Request`` and a connection with the same ``respond()``, so the translation between
them and the manager is written once, here.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import weakref
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ..exceptions import HandshakeRejected
from ..handshake import Handshake
from ..manager import ConnectionManager

logger = logging.getLogger("wsroom.transport")


def handshake_of(connection: Any, request: Request | None) -> Handshake:
    """The :class:`~wsroom.Handshake` of a ``websockets`` server connection."""
    if request is None:  # pragma: no cover - websockets sets it before the handler runs
        return Handshake(path="/")
    remote = connection.remote_address
    address = (str(remote[0]), int(remote[1])) if remote else None
    return Handshake.from_target(request.path, request.headers.raw_items(), address)


def refusal(connection: Any, exc: HandshakeRejected) -> Response:
    """The HTTP response refusing an upgrade."""
    response: Response = connection.respond(HTTPStatus(exc.status), exc.reason + "\n")
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="wsroom"'
    return response


def chosen_subprotocol(
    manager: ConnectionManager, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """The subprotocol to accept: the manager's when offered, none when the client offers none.

    Clients that offer only others were already refused by ``process_request``.
    """
    wanted = manager.protocol.subprotocol
    return Subprotocol(wanted) if wanted in offered else None


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
    """The part of both ``websockets`` adapters that does not depend on the concurrency model."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        """The manager this adapter serves."""
        self._handshakes = PendingHandshakes(manager)

    def select_subprotocol(
        self, connection: Any, subprotocols: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        """Accept ``wsroom.v1`` when offered; serve clients that offer none."""
        return chosen_subprotocol(self.manager, subprotocols)


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
