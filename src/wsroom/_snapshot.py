"""What the admin view shows: a bounded picture of one manager, ready for JSON.

Nothing here runs unless someone looks, except :meth:`CloseLog.record`, one append to a
bounded deque where a connection already ends. A snapshot takes the totals of
:meth:`ConnectionManager.statistics <wsroom.ConnectionManager.statistics>`, walks the
connections once more only when frames are queued, walks the rooms once, and keeps the top
of each list with :func:`heapq.nlargest`: whatever the number of rooms and connections,
what it returns holds at most the sizes it was asked for.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from .frames import CloseCode

if TYPE_CHECKING:
    from ._delivery import Statistics
    from ._state import Registry, RoomState
    from .backplane.base import BackplaneStatus
    from .connection import Connection
    from .limits import Limits

__all__ = [
    "MAX_SHOWN",
    "AdminSnapshot",
    "BackplaneInfo",
    "CloseInfo",
    "CloseLog",
    "ConnectionInfo",
    "QueueInfo",
    "RoomInfo",
    "build_snapshot",
    "check_sizes",
]

MAX_SHOWN = 1000
"""The most entries a snapshot may be asked for in any one list."""

CLOSE_LOG_SIZE = 200
"""Connection ends remembered, in each of the two logs (every end, and the server's)."""


class ConnectionInfo(TypedDict):
    """One connection, as the admin view lists it."""

    id: str
    user: str | None
    address: str | None
    """The client's IP address as the manager sees it, if known."""
    rooms: int
    """How many rooms it is in."""
    queued_frames: int
    queued_bytes: int
    idle: float
    """Seconds since its last frame."""


class RoomInfo(TypedDict):
    """One room with members in this process."""

    name: str
    members: int
    """Distinct identified users plus anonymous connections, here."""
    connections: int
    users: list[str]
    """Some of its identified users (at most the ``members`` asked for)."""
    anonymous: int
    """Its connections without a user id."""


class QueueInfo(TypedDict):
    """One connection with frames waiting to be written."""

    id: str
    user: str | None
    frames: int
    bytes: int


class CloseInfo(TypedDict):
    """One connection that ended."""

    time: float
    """When (seconds since the epoch)."""
    id: str
    user: str | None
    code: int | None
    """The close code: the server's when it closed, else the client's (1006: the TCP
    connection ended without one; ``None``: unknown)."""
    reason: str
    """The server's reason; empty when the client closed."""
    by: Literal["server", "client"]
    evicted: bool
    """Closed with 1013 because it did not read fast enough."""


class BackplaneInfo(TypedDict):
    """The backplane's state (:class:`~wsroom.backplane.base.BackplaneStatus`)."""

    kind: str
    available: bool
    nodes: int | None
    address: str | None
    last_error: str | None
    last_error_at: float | None
    dropped_messages: int
    """Malformed bus messages received and dropped."""


class AdminSnapshot(TypedDict):
    """What :meth:`ConnectionManager.admin_snapshot
    <wsroom.ConnectionManager.admin_snapshot>` returns: JSON types only, every list bounded."""

    version: int
    """1; a later version adds keys and keeps these."""
    time: float
    """When it was taken (seconds since the epoch)."""
    statistics: dict[str, Any]
    """:class:`~wsroom.Statistics`, as a dict of JSON types (the counters give rates, such
    as messages per second, between two snapshots); a count by a pair of labels, such as
    ``closes``, is keyed by the two labels and a space (``"server 1013"``)."""
    limits: dict[str, int]
    """The queue bounds, ``max_queue`` and ``max_queue_bytes``, to read the queues against."""
    connections: list[ConnectionInfo]
    """The newest connections first."""
    rooms: list[RoomInfo]
    """The rooms with the most members first."""
    queues: list[QueueInfo]
    """The fullest outgoing queues first (by bytes), only those holding frames."""
    closes: list[CloseInfo]
    """The connections that ended last, newest first."""
    server_closes: list[CloseInfo]
    """The connections the server closed last (evictions, timeouts, abuse), newest first:
    kept apart so that ordinary disconnects do not push them out."""
    backplane: BackplaneInfo


_Close = tuple[float, str, "str | None", "int | None", str, bool]


class CloseLog:
    """The latest connection ends, in two bounded logs: every end, and the server's."""

    __slots__ = ("everything", "server")

    def __init__(self, size: int = CLOSE_LOG_SIZE) -> None:
        self.everything: deque[_Close] = deque(maxlen=size)
        self.server: deque[_Close] = deque(maxlen=size)

    def record(self, conn: Connection, code: int | None, reason: str | None) -> None:
        """``conn`` ended: closed by the server for ``reason``, or by the client when
        ``reason`` is ``None``."""
        code = None if code is None else int(code)  # a CloseCode is shown as its number
        entry = (time.time(), conn.id, conn.user, code, reason or "", reason is not None)
        self.everything.append(entry)
        if reason is not None:
            self.server.append(entry)


def check_sizes(**sizes: int) -> None:
    """Refuse list sizes that are not whole numbers from 0 to :data:`MAX_SHOWN`."""
    for name, size in sizes.items():
        if type(size) is not int or not 0 <= size <= MAX_SHOWN:
            raise ValueError(f"{name} must be a whole number from 0 to {MAX_SHOWN}, not {size!r}")


def build_snapshot(
    registry: Registry,
    statistics: Statistics,
    limits: Limits,
    log: CloseLog,
    backplane: BackplaneStatus,
    dropped_messages: int,
    *,
    connections: int,
    rooms: int,
    members: int,
    queues: int,
    closes: int,
) -> AdminSnapshot:
    """The snapshot, from the manager's parts (see :class:`AdminSnapshot`)."""
    now = time.monotonic()
    newest = itertools.islice(reversed(registry.connections.values()), connections)
    fullest: list[Connection] = []
    if statistics.queued_frames and queues:  # else no queue holds a frame: no second walk
        waiting = (conn for conn in registry.connections.values() if conn.queued_frames)
        fullest = heapq.nlargest(queues, waiting, key=lambda c: (c.queued_bytes, c.queued_frames))
    biggest = heapq.nlargest(rooms, registry.rooms.values(), key=_member_count)
    return {
        "version": 1,
        "time": time.time(),
        "statistics": _plain(statistics),
        "limits": {"max_queue": limits.max_queue, "max_queue_bytes": limits.max_queue_bytes},
        "connections": [
            {
                "id": conn.id,
                "user": conn.user,
                "address": conn.handshake.client_address,
                "rooms": registry.room_count(conn),
                "queued_frames": conn.queued_frames,
                "queued_bytes": conn.queued_bytes,
                "idle": round(max(0.0, now - conn.last_seen), 1),
            }
            for conn in newest
        ],
        "rooms": [_room(state, members) for state in biggest],
        "queues": [
            {
                "id": conn.id,
                "user": conn.user,
                "frames": conn.queued_frames,
                "bytes": conn.queued_bytes,
            }
            for conn in fullest
        ],
        "closes": _closes(log.everything, closes),
        "server_closes": _closes(log.server, closes),
        "backplane": {
            "kind": backplane.kind,
            "available": backplane.available,
            "nodes": backplane.nodes,
            "address": backplane.address,
            "last_error": backplane.last_error,
            "last_error_at": backplane.last_error_at,
            "dropped_messages": dropped_messages,
        },
    }


def _plain(statistics: Statistics) -> dict[str, Any]:
    plain: dict[str, Any] = {}
    for field in fields(statistics):
        value = getattr(statistics, field.name)
        if isinstance(value, Mapping):
            value = {
                " ".join(map(str, key)) if isinstance(key, tuple) else str(key): count
                for key, count in value.items()
            }
        plain[field.name] = value
    return plain


def _member_count(state: RoomState) -> int:
    # RoomState.member_count without the property's call: it runs for every room.
    return len(state.users) + state.anonymous


def _room(state: RoomState, members: int) -> RoomInfo:
    return {
        "name": state.room.name,
        "members": state.member_count,
        "connections": len(state.connections),
        "users": list(itertools.islice(state.users, members)),
        "anonymous": state.anonymous,
    }


def _closes(entries: deque[_Close], count: int) -> list[CloseInfo]:
    return [
        {
            "time": at,
            "id": id_,
            "user": user,
            "code": code,
            "reason": reason,
            "by": "server" if by_server else "client",
            "evicted": by_server and code == CloseCode.TRY_AGAIN_LATER,
        }
        for at, id_, user, code, reason, by_server in itertools.islice(reversed(entries), count)
    ]
