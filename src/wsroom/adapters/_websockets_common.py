"""What the asyncio and threading ``websockets`` adapters share: the handshake glue and
the framing of outgoing messages.

Both servers hand their ``process_request`` and ``select_subprotocol`` callbacks the same
``Request`` and a connection with the same ``respond()``, and both run the same sans-I/O
protocol object, so the translation between them and the manager is written once, here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import weakref
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from websockets.http11 import Request, Response
from websockets.protocol import Protocol
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


class SharedFrames:
    """Frames each outgoing message once for every connection that can take the same bytes.

    A server frame without compression is the same bytes for every recipient: the payload
    behind a two-to-ten-byte header, unmasked. ``websockets`` frames each message again
    for each connection (a ``Frame`` object, checks, ``struct`` packing), which costs more
    than the rest of a fan-out. The frames built here are kept until the end of the event
    loop iteration, which is when the transports of every member of a room flush what one
    broadcast queued for them. The connection's own protocol object frames instead when
    anything could make the bytes differ or the frame unsafe to write directly: an
    extension (permessage-deflate compresses per connection), a fragmented message in
    progress, or frame logging switched on. Callers write only to open connections.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, binary: bool) -> None:
        self._loop = loop
        self._binary = binary
        self._opcode = 0x82 if binary else 0x81
        self._frames: dict[bytes, bytes] = {}

    def data_to_send(self, protocol: Protocol, payloads: Sequence[bytes]) -> list[bytes]:
        """Frame ``payloads`` for ``protocol``'s connection; the chunks to write, in order,
        as ``protocol.data_to_send()`` gives them (an empty chunk asks for a half-close)."""
        if protocol.extensions or protocol.expect_continuation_frame or protocol.debug:
            send = protocol.send_binary if self._binary else protocol.send_text
            for payload in payloads:
                send(payload)
            return protocol.data_to_send()
        # Whatever the protocol has queued (nothing, normally) leaves first.
        chunks = protocol.data_to_send()
        if not payloads:
            return chunks
        frames = self._frames
        if not frames:
            self._loop.call_soon(frames.clear)
        framed = [frames.get(payload) or self._frame(payload) for payload in payloads]
        chunks.append(b"".join(framed) if len(framed) > 1 else framed[0])
        return chunks

    def _frame(self, payload: bytes) -> bytes:
        length = len(payload)
        if length < 126:
            header = bytes((self._opcode, length))
        elif length < 65536:
            header = struct.pack("!BBH", self._opcode, 126, length)
        else:
            header = struct.pack("!BBQ", self._opcode, 127, length)
        frame = header + payload
        self._frames[payload] = frame
        return frame


class AdapterBase:
    """The part of both ``websockets`` adapters that does not depend on the concurrency model."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        """The manager this adapter serves."""
        self._handshakes = PendingHandshakes(manager)
        self._shared_frames: SharedFrames | None = None

    def shared_frames(self, loop: asyncio.AbstractEventLoop) -> SharedFrames:
        """The adapter's :class:`SharedFrames` for the manager's event loop."""
        shared = self._shared_frames
        if shared is None or shared._loop is not loop:
            shared = self._shared_frames = SharedFrames(loop, binary=self.manager.protocol.binary)
        return shared

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
