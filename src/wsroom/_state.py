"""Who is connected and who is in which room, in this process.

Rules of this file:

1. Every change to membership (connections, users, rooms and their members, the rooms of
   each connection) happens here and nowhere else. ``Room`` instances and
   ``Connection.rooms`` only read it, so no second copy can drift.
2. Nothing here does I/O, awaits, or knows about transports or backplanes. Every method
   runs to completion, so callers on one event loop see each change whole. (A room's join
   lock lives here because it belongs to the room, but only the manager awaits it.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Connection
    from .room import Room


class RoomState:
    """One room with local members, or with a join in flight."""

    __slots__ = ("_join_lock", "anonymous", "connections", "pending", "room", "users")

    def __init__(self, room: Room) -> None:
        self.room = room
        # dict as an insertion-ordered set: fan-out order follows join order.
        self.connections: dict[Connection, None] = {}
        # identified user -> number of its connections in this room, here
        self.users: dict[str, int] = {}
        # connections without a user id, each counting as one member
        self.anonymous = 0
        self.pending = 0
        self._join_lock: asyncio.Lock | None = None

    @property
    def join_lock(self) -> asyncio.Lock:
        """Serializes the joins of this room on this node (created on first use)."""
        if self._join_lock is None:
            self._join_lock = asyncio.Lock()
        return self._join_lock

    @property
    def member_count(self) -> int:
        """Distinct users plus anonymous connections, here."""
        return len(self.users) + self.anonymous

    @property
    def idle(self) -> bool:
        return not self.connections and not self.pending


def _ignore(name: str) -> None:
    pass


class Registry:
    """Connections, users and rooms of one manager.

    The ``on_*`` callbacks tell the outside world (the backplane) when a room gets its first
    member here or loses its last, and likewise for users. They must not block.
    """

    __slots__ = (
        "connections",
        "memberships",
        "on_room_closed",
        "on_room_opened",
        "on_user_closed",
        "on_user_opened",
        "rooms",
        "users",
    )

    def __init__(
        self,
        on_room_opened: Callable[[str], None] = _ignore,
        on_room_closed: Callable[[str], None] = _ignore,
        on_user_opened: Callable[[str], None] = _ignore,
        on_user_closed: Callable[[str], None] = _ignore,
    ) -> None:
        self.connections: dict[str, Connection] = {}
        self.users: dict[str, dict[Connection, None]] = {}
        self.rooms: dict[str, RoomState] = {}
        # connection -> names of its rooms, only for connections in at least one room: an
        # idle connection costs no set.
        self.memberships: dict[Connection, set[str]] = {}
        self.on_room_opened = on_room_opened
        self.on_room_closed = on_room_closed
        self.on_user_opened = on_user_opened
        self.on_user_closed = on_user_closed

    # Connections.

    def add_connection(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        if conn.user is not None:
            conns = self.users.get(conn.user)
            if conns is None:
                conns = self.users[conn.user] = {}
                self.on_user_opened(conn.user)
            conns[conn] = None

    def remove_connection(self, conn: Connection) -> list[tuple[RoomState, bool]]:
        """Forget ``conn``; return each room it was in and whether its user left it."""
        left = [self.leave(conn, name) for name in list(self.memberships.get(conn, ()))]
        self.connections.pop(conn.id, None)
        if conn.user is not None:
            conns = self.users.get(conn.user)
            if conns is not None:
                conns.pop(conn, None)
                if not conns:
                    del self.users[conn.user]
                    self.on_user_closed(conn.user)
        return [item for item in left if item is not None]

    def user_connections(self, user: str) -> list[Connection]:
        return list(self.users.get(user, ()))

    def rooms_of(self, conn: Connection) -> frozenset[str]:
        """The names of the rooms ``conn`` is in."""
        return frozenset(self.memberships.get(conn, ()))

    def room_count(self, conn: Connection) -> int:
        """How many rooms ``conn`` is in."""
        return len(self.memberships.get(conn, ()))

    def is_member(self, conn: Connection, name: str) -> bool:
        """Whether ``conn`` is in the room ``name``."""
        return name in self.memberships.get(conn, ())

    # Rooms.

    def reserve(self, name: str, make_room: Callable[[str], Room]) -> RoomState:
        """Get or create the room ``name`` and hold it open while a join is decided."""
        state = self.rooms.get(name)
        if state is None:
            state = self.rooms[name] = RoomState(make_room(name))
            self.on_room_opened(name)
        state.pending += 1
        return state

    def release(self, state: RoomState) -> None:
        """End a :meth:`reserve`; drop the room if it ended up empty."""
        state.pending -= 1
        self._discard_if_idle(state)

    def join(self, conn: Connection, state: RoomState) -> bool:
        """Add ``conn`` to the room; ``True`` if it is its user's first connection there."""
        name = state.room.name
        if self.rooms.get(name) is not state:
            # Safety net: a pending join holds its room open, so this should never run.
            self.rooms[name] = state
            self.on_room_opened(name)
        state.connections[conn] = None
        self.memberships.setdefault(conn, set()).add(name)
        user = conn.user
        if user is None:
            state.anonymous += 1
            return False
        count = state.users.get(user, 0)
        state.users[user] = count + 1
        return count == 0

    def leave(self, conn: Connection, name: str) -> tuple[RoomState, bool] | None:
        """Remove ``conn`` from room ``name``; the room and whether its user left it.

        ``None`` when ``conn`` was not in the room. An emptied room is dropped (a pending
        join keeps it).
        """
        self._forget(conn, name)
        state = self.rooms.get(name)
        if state is None or conn not in state.connections:
            return None
        del state.connections[conn]
        last = False
        user = conn.user
        if user is None:
            state.anonymous -= 1
        else:
            count = state.users[user] - 1
            if count:
                state.users[user] = count
            else:
                del state.users[user]
                last = True
        self._discard_if_idle(state)
        return state, last

    def _forget(self, conn: Connection, name: str) -> None:
        names = self.memberships.get(conn)
        if names is not None:
            names.discard(name)
            if not names:
                del self.memberships[conn]

    def _discard_if_idle(self, state: RoomState) -> None:
        if state.idle and self.rooms.get(state.room.name) is state:
            del self.rooms[state.room.name]
            self.on_room_closed(state.room.name)
