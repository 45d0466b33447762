"""Queueing frames to this process's connections: the fan-out, replies, and eviction.

:class:`Delivery` is the only place that hands frames to connections. It never waits: a
frame is encoded once and appended to each recipient's bounded queue; a recipient whose
queue overflows is evicted (DESIGN.md, rule 2). It is also the :class:`BackplaneNode` the
cluster layer delivers through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import frames
from .connection import Connection
from .frames import CloseCode
from .limits import ABUSE_CLOSE_GRACE

if TYPE_CHECKING:
    from ._state import Registry
    from .protocol import MessageProtocol

__all__ = ["Counters", "Delivery", "Statistics"]


@dataclass(frozen=True, slots=True)
class Statistics:
    """A snapshot of a manager's counters, from :meth:`ConnectionManager.statistics`."""

    connections: int
    """Open connections in this process."""
    users: int
    """Distinct identified users connected to this process."""
    rooms: int
    """Rooms with members in this process."""
    queued_frames: int
    """Frames waiting in all outgoing queues."""
    queued_bytes: int
    """Bytes waiting in all outgoing queues."""
    frames_received: int
    """Client frames received since start."""
    messages_published: int
    """Room messages stored and broadcast since start."""
    errors_sent: int
    """``error`` frames sent since start."""
    dropped_frames: int
    """Frames dropped from full queues (``overflow="drop_oldest"``)."""
    evictions: int
    """Clients closed with 1013 because they did not read fast enough."""
    rate_limited: int = 0
    """Client frames refused with ``rate_limited`` (a connection's, a user's or an
    address's budget was spent)."""
    handshakes_refused: int = 0
    """Handshakes refused with HTTP 429 (an address opening connections too fast)."""


class Counters:
    """The running totals behind :class:`Statistics`, updated where each event happens."""

    __slots__ = (
        "dropped_frames",
        "errors_sent",
        "evictions",
        "frames_received",
        "handshakes_refused",
        "rate_limited",
    )

    def __init__(self) -> None:
        self.frames_received = 0
        self.errors_sent = 0
        self.dropped_frames = 0
        self.evictions = 0
        self.rate_limited = 0
        self.handshakes_refused = 0

    def handshake_refused(self) -> None:
        """Count one handshake refused with HTTP 429."""
        self.handshakes_refused += 1


class Delivery:
    """Hands encoded frames to this process's connections.

    Args:
        registry: Who is connected and in which room.
        protocol: Encodes the frames.
    """

    __slots__ = ("_encode", "_protocol", "_registry", "counters")

    def __init__(self, registry: Registry, protocol: MessageProtocol) -> None:
        self._registry = registry
        self._protocol = protocol
        self._encode = protocol.dumps
        self.counters = Counters()
        """What was received, sent, dropped and evicted since start."""

    def encode(self, frame: dict[str, Any]) -> bytes:
        """Encode a frame with the manager's protocol."""
        return self._encode(frame)

    def encode_message(self, room: str, id: int, envelope: bytes) -> bytes:
        """Encode a ``message`` frame from its envelope (see
        :meth:`MessageProtocol.encode_message`)."""
        return self._protocol.encode_message(room, id, envelope)

    def decode(self, data: bytes) -> Any:
        """Decode bytes made by :meth:`encode`."""
        protocol = self._protocol
        return protocol.loads(data if protocol.binary else data.decode("utf-8"))

    # One connection.

    def send(self, conn: Connection, frame: dict[str, Any]) -> None:
        """Queue ``frame`` to ``conn`` (evicting it if its queue overflows)."""
        if not conn.push(self._encode(frame)):
            self.evict(conn)

    def send_bytes(self, conn: Connection, frame: bytes) -> None:
        """Queue an encoded frame to ``conn`` (evicting it if its queue overflows)."""
        if not conn.push(frame):
            self.evict(conn)

    def send_error(self, conn: Connection, code: str, text: str, ref: frames.Ref) -> None:
        """Queue an ``error`` frame to ``conn``."""
        self.counters.errors_sent += 1
        self.send(conn, self._protocol.error_frame(code, text, ref))

    def evict(self, conn: Connection, reason: str = "client too slow") -> None:
        """Close a client that does not read fast enough with 1013, dropping what is queued.

        It leaves every room at once; its socket is aborted if it does not close within a
        second.
        """
        if conn.closed:
            return
        self.counters.evictions += 1
        conn.drop_queue()
        conn.begin_close(CloseCode.TRY_AGAIN_LATER, reason, grace=ABUSE_CLOSE_GRACE)

    # BackplaneNode: what the cluster layer calls to reach this process's connections.

    def deliver_room(self, room: str, frame: bytes, exclude: str | None) -> None:
        """Queue an encoded frame to this process's members of ``room``."""
        state = self._registry.rooms.get(room)
        if state is None:
            return
        # The fan-out loop: the method looked up once, the exclusion tested only when
        # there is one. Evicting changes the room's members, so the connections whose
        # queue overflowed are evicted after the loop.
        push = Connection.push
        if exclude is None:
            overflowed = [conn for conn in state.connections if not push(conn, frame)]
        else:
            overflowed = [
                conn for conn in state.connections if conn.id != exclude and not push(conn, frame)
            ]
        for conn in overflowed:
            self.evict(conn)

    def deliver_user(self, user: str, frame: bytes) -> int:
        """Queue an encoded frame to this process's connections of ``user``."""
        conns = self._registry.user_connections(user)
        for conn in conns:
            self.send_bytes(conn, frame)
        return len(conns)

    def deliver_all(self, frame: bytes) -> None:
        """Queue an encoded frame to every connection of this process."""
        for conn in list(self._registry.connections.values()):
            self.send_bytes(conn, frame)

    def local_members(self, room: str) -> list[str]:
        """Identified users with a connection in ``room`` in this process."""
        state = self._registry.rooms.get(room)
        return list(state.users) if state is not None else []

    def local_user_count(self, user: str) -> int:
        """Connections of ``user`` in this process."""
        return len(self._registry.users.get(user, ()))

    def disconnect_local_user(self, user: str, code: int, reason: str) -> int:
        """Close this process's connections of ``user``."""
        conns = self._registry.user_connections(user)
        for conn in conns:
            conn.begin_close(code, reason)
        return len(conns)

    def statistics(self, messages_published: int) -> Statistics:
        """A snapshot of the counters and of the queues."""
        registry = self._registry
        queued_frames = queued_bytes = 0
        for conn in registry.connections.values():
            queued_frames += conn.queued_frames
            queued_bytes += conn.queued_bytes
        counters = self.counters
        return Statistics(
            connections=len(registry.connections),
            users=len(registry.users),
            rooms=len(registry.rooms),
            queued_frames=queued_frames,
            queued_bytes=queued_bytes,
            frames_received=counters.frames_received,
            messages_published=messages_published,
            errors_sent=counters.errors_sent,
            dropped_frames=counters.dropped_frames,
            evictions=counters.evictions,
            rate_limited=counters.rate_limited,
            handshakes_refused=counters.handshakes_refused,
        )
