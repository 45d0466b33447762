"""Queueing frames to this process's connections: the fan-out, replies, and eviction.

:class:`Delivery` is the only place that hands frames to connections. It never waits: a
frame is encoded once and appended to each recipient's bounded queue; a recipient whose
queue overflows is evicted (DESIGN.md, rule 2). It is also the :class:`BackplaneNode` the
cluster layer delivers through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import frames
from .connection import Connection
from .frames import CloseCode, ErrorCode
from .limits import ABUSE_CLOSE_GRACE

if TYPE_CHECKING:
    from ._state import Registry
    from .backplane.cluster import Cluster
    from .protocol import MessageProtocol

__all__ = ["Counters", "Delivery", "Statistics", "close_label"]


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
    memberships: int = 0
    """Room memberships in this process: each connection counted once per room it is in."""
    bytes_received: int = 0
    """Bytes of the client frames received since start (UTF-8 for text frames)."""
    frames_sent: int = 0
    """Frames queued to clients since start: fan-out deliveries, and the answers, errors
    and events sent to one connection. Frames later dropped from a full queue, or
    discarded when their client is evicted or gone, are counted too."""
    bytes_sent: int = 0
    """Bytes of the frames counted in :attr:`frames_sent`."""
    deliveries: int = 0
    """Frames queued to connections by a fan-out (a room's messages and events, a user's
    direct messages, frames to everyone): one per recipient."""
    write_timeouts: int = 0
    """Of :attr:`evictions`, those whose socket stayed unwritable past
    ``Limits.write_timeout`` (the others overflowed their queue)."""
    closes: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """Connections ended since start, by who closed first (``"server"`` or ``"client"``)
    and close code: ``"1000"`` to ``"1015"``, ``"application"`` (3000 to 4999), ``"none"``
    (no code known) or ``"other"``."""
    handshakes_refused_by_status: Mapping[int, int] = field(default_factory=dict)
    """Handshakes refused since start, every reason, by HTTP status (400 to 599; any
    other status an application refuses with is counted under 0)."""
    errors_by_code: Mapping[str, int] = field(default_factory=dict)
    """``error`` frames sent since start, by code: an :class:`~wsroom.ErrorCode` value,
    or ``"other"`` for a code an application made up."""
    backplane: str = "memory"
    """The kind of backplane (:attr:`Backplane.kind <wsroom.Backplane.kind>`)."""
    backplane_available: bool = True
    """Whether the backplane answered its last operation."""
    backplane_round_trip: float | None = None
    """Seconds the backplane's last health check took to be answered (a
    ``RedisBackplane`` heartbeat); ``None`` when it measures none."""
    backplane_reconnects: int = 0
    """Times the backplane's bus came back after it was lost."""
    backplane_dropped: int = 0
    """Malformed messages received on the backplane's bus and dropped."""
    gaps: int = 0
    """``gap`` frames fanned out to rooms: messages a room's members missed (the
    backplane lost them, or its store restarted)."""


def close_label(code: int | None) -> str:
    """The close code a connection ended with, as :attr:`Statistics.closes` counts it.

    The codes of RFC 6455 (1000 to 1015) stay themselves; the codes applications choose
    (3000 to 4999) are ``"application"``, a connection that ended without any is
    ``"none"``, and anything else ``"other"``: a client choosing its close code cannot
    make the set grow.
    """
    if code is None:
        return "none"
    if 1000 <= code <= 1015:
        return str(code)
    if 3000 <= code <= 4999:
        return "application"
    return "other"


_ERROR_CODES = frozenset(code.value for code in ErrorCode)
_HTTP_ERRORS = frozenset(range(400, 600))


class Counters:
    """The running totals behind :class:`Statistics`, updated where each event happens.

    Plain integers and small dictionaries whose keys come from bounded sets; reading them
    (a metrics scrape) costs the hot path nothing.
    """

    __slots__ = (
        "bytes_received",
        "closes",
        "delivered_bytes",
        "deliveries",
        "dropped_frames",
        "errors",
        "errors_sent",
        "evictions",
        "frames_received",
        "handshakes_refused",
        "rate_limited",
        "refusals",
        "replies",
        "reply_bytes",
        "write_timeouts",
    )

    def __init__(self) -> None:
        self.frames_received = 0
        self.bytes_received = 0
        # Frames queued by a fan-out, and the others (answers, errors, events to one
        # connection): a fan-out pays for two additions, not four.
        self.deliveries = 0
        self.delivered_bytes = 0
        self.replies = 0
        self.reply_bytes = 0
        self.errors_sent = 0
        self.dropped_frames = 0
        self.evictions = 0
        self.write_timeouts = 0
        self.rate_limited = 0
        self.handshakes_refused = 0
        self.refusals: dict[int, int] = {}
        self.errors: dict[str, int] = {}
        self.closes: dict[tuple[str, str], int] = {}

    def handshake_refused(self, status: int) -> None:
        """Count one handshake refused with HTTP ``status``."""
        if status == 429:
            self.handshakes_refused += 1
        # An application's hook chooses the status: whatever it is, the keys stay few.
        key = status if status in _HTTP_ERRORS else 0
        self.refusals[key] = self.refusals.get(key, 0) + 1

    def error_sent(self, code: str) -> None:
        """Count one ``error`` frame with ``code``."""
        self.errors_sent += 1
        key = code if code in _ERROR_CODES else "other"
        self.errors[key] = self.errors.get(key, 0) + 1

    def closed(self, by_server: bool, code: int | None) -> None:
        """Count one connection that ended with ``code``, closed first by the server or
        by the client."""
        key = ("server" if by_server else "client", close_label(code))
        self.closes[key] = self.closes.get(key, 0) + 1


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
        self.send_bytes(conn, self._encode(frame))

    def send_bytes(self, conn: Connection, frame: bytes) -> None:
        """Queue an encoded frame to ``conn`` (evicting it if its queue overflows)."""
        if conn.push(frame):
            counters = self.counters
            counters.replies += 1
            counters.reply_bytes += len(frame)
        else:
            self.evict(conn)

    def send_error(self, conn: Connection, code: str, text: str, ref: frames.Ref) -> None:
        """Queue an ``error`` frame to ``conn``."""
        self.counters.error_sent(code)
        self.send(conn, self._protocol.error_frame(code, text, ref))

    def evict(
        self, conn: Connection, reason: str = "client too slow", *, write_timeout: bool = False
    ) -> None:
        """Close a client that does not read fast enough with 1013, dropping what is queued.

        It leaves every room at once; its socket is aborted if it does not close within a
        second. ``write_timeout`` tells that its socket stayed unwritable, rather than its
        queue overflowing (for the counters).
        """
        if conn.closed:
            return
        self.counters.evictions += 1
        if write_timeout:
            self.counters.write_timeouts += 1
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
        members = state.connections
        if exclude is None:
            overflowed = [conn for conn in members if not push(conn, frame)]
            queued = len(members) - len(overflowed)
        else:
            overflowed = [conn for conn in members if conn.id != exclude and not push(conn, frame)]
            queued = len(members) - len(overflowed)
            if self._registry.connections.get(exclude) in members:
                queued -= 1  # the excluded connection is a member: it got nothing
        # Counted once per fan-out, not once per recipient: the loop above stays as it was.
        counters = self.counters
        counters.deliveries += queued
        counters.delivered_bytes += queued * len(frame)
        for conn in overflowed:
            self.evict(conn)

    def deliver_user(self, user: str, frame: bytes) -> int:
        """Queue an encoded frame to this process's connections of ``user``."""
        conns = self._registry.user_connections(user)
        self._deliver_each(conns, frame)
        return len(conns)

    def deliver_all(self, frame: bytes) -> None:
        """Queue an encoded frame to every connection of this process."""
        self._deliver_each(list(self._registry.connections.values()), frame)

    def _deliver_each(self, conns: list[Connection], frame: bytes) -> None:
        overflowed = [conn for conn in conns if not conn.push(frame)]
        queued = len(conns) - len(overflowed)
        counters = self.counters
        counters.deliveries += queued
        counters.delivered_bytes += queued * len(frame)
        for conn in overflowed:
            self.evict(conn)

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

    def statistics(self, cluster: Cluster) -> Statistics:
        """A snapshot of the counters, of the queues, and of ``cluster``'s backplane."""
        registry = self._registry
        queued_frames = queued_bytes = 0
        for conn in registry.connections.values():
            queued_frames += conn.queued_frames
            queued_bytes += conn.queued_bytes
        memberships = sum(len(state.connections) for state in registry.rooms.values())
        counters = self.counters
        backplane = cluster.backplane
        return Statistics(
            connections=len(registry.connections),
            users=len(registry.users),
            rooms=len(registry.rooms),
            queued_frames=queued_frames,
            queued_bytes=queued_bytes,
            frames_received=counters.frames_received,
            messages_published=cluster.messages_published,
            errors_sent=counters.errors_sent,
            dropped_frames=counters.dropped_frames,
            evictions=counters.evictions,
            rate_limited=counters.rate_limited,
            handshakes_refused=counters.handshakes_refused,
            memberships=memberships,
            bytes_received=counters.bytes_received,
            frames_sent=counters.deliveries + counters.replies,
            bytes_sent=counters.delivered_bytes + counters.reply_bytes,
            deliveries=counters.deliveries,
            write_timeouts=counters.write_timeouts,
            closes=dict(counters.closes),
            handshakes_refused_by_status=dict(counters.refusals),
            errors_by_code=dict(counters.errors),
            backplane=backplane.kind,
            backplane_available=backplane.available,
            backplane_round_trip=backplane.round_trip,
            backplane_reconnects=backplane.reconnects,
            backplane_dropped=cluster.dropped_messages,
            gaps=cluster.gaps,
        )
