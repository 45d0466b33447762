"""A game lobby: tables of four players who need an invitation, seats and dice.

    python -m examples.game_lobby [PORT]

Clients connect to ``ws://127.0.0.1:8765/ws?user=NAME`` (``PORT`` defaults to 8765; 0 picks a
free one, which is printed). The name is the user id: there is no password, so it is an
example, not something to deploy. Clients speak the wsroom protocol.
The lobby's own frame types answer with data, in the ``ack`` of a frame that has a ``ref``:

- ``{"type": "open_table", "ref": 1}``: opens a table; the answer is its room and its
  invitation code, ``{"type": "ack", "ref": 1, "data": {"room": "table:3f9c2a",
  "invite": "..."}}``.
- ``{"type": "join", "room": "table:3f9c2a", "data": {"invite": "..."}, "ref": 2}``: sits
  down at the table's room; without the code the answer is ``forbidden``, and a fifth
  player gets ``room_full``.
- ``{"type": "sit", "room": "table:3f9c2a", "ref": 3}``: takes a seat (``"data": 2`` asks
  for seat 2); the answer is the seat's number.
- ``{"type": "roll", "room": "table:3f9c2a", "data": {"dice": 3}, "ref": 4}``: rolls dice
  (two by default); the answer is their values, and the other players get a ``rolled``
  event.
- ``{"type": "status", "room": "table:3f9c2a", "ref": 5}``: the answer is the table's state.
- ``{"type": "who", "ref": 6}``: the answer is who is connected to the lobby, which the
  manager's ``on_connect`` and ``on_disconnect`` hooks keep track of.

Players chat at a table with ``message`` frames, as in any wsroom room.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import sys
from collections import Counter
from typing import Any, ClassVar

from wsroom import Connection, ConnectionManager, Handshake, Message, ProtocolError, Room
from wsroom.adapters.websockets import serve

SEATS = 4
MAX_DICE = 5

logger = logging.getLogger("game_lobby")


class Invitations:
    """Invitation codes signed with a secret: whoever holds a table's code may join it, and
    nothing about a table needs storing before its first player arrives. Every process of
    a lobby served by several must share the secret (load it from your configuration)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def code(self, table: str) -> str:
        """The invitation code of the room ``table``."""
        return hmac.new(self._secret, table.encode(), hashlib.sha256).hexdigest()[:16]

    def check(self, table: str, code: object) -> bool:
        """Whether ``code`` is the invitation code of ``table``."""
        return isinstance(code, str) and hmac.compare_digest(code, self.code(table))


class LobbyRoom(Room):
    """A table: at most four players, who join it with its invitation code."""

    max_members = SEATS
    history_size = 20  # the table's chat, replayed to whoever sits down
    invitations: ClassVar[Invitations] = Invitations()

    def __init__(self, name: str, manager: ConnectionManager) -> None:
        super().__init__(name, manager)
        # Lives while the table has players in this process.
        self.seats: list[str | None] = [None] * SEATS
        self.rolls: dict[str, list[int]] = {}

    def can_join(self, conn: Connection, data: Any) -> bool:
        code = data.get("invite") if isinstance(data, dict) else None
        return self.invitations.check(self.name, code)

    async def on_leave(self, conn: Connection) -> None:
        # A player whose last connection left the table gives the seat up.
        user = conn.user
        if user is None or user not in self.seats:
            return
        if all(other.user != user for other in self.connections):
            self.seats[self.seats.index(user)] = None
            self.rolls.pop(user, None)
            await self.broadcast_event("stood", {"user": user})

    async def on_sit(self, conn: Connection, message: Message) -> int:
        user = conn.user
        if user is None:  # authenticate() lets no anonymous player in; a later one might
            raise ProtocolError("forbidden", "sign in to play")
        if user in self.seats:
            return self.seats.index(user) + 1
        wanted = message.data
        if wanted is None:
            if None not in self.seats:
                raise ProtocolError("forbidden", "every seat is taken")
            seat = self.seats.index(None) + 1
        elif type(wanted) is not int or not 1 <= wanted <= SEATS:
            raise ProtocolError("invalid_message", f"a seat is a number from 1 to {SEATS}")
        elif self.seats[wanted - 1] is not None:
            raise ProtocolError("forbidden", f"seat {wanted} is taken")
        else:
            seat = wanted
        self.seats[seat - 1] = user
        await self.broadcast_event("seated", {"user": user, "seat": seat}, exclude=conn)
        return seat

    async def on_roll(self, conn: Connection, message: Message) -> list[int]:
        if conn.user is None or conn.user not in self.seats:
            raise ProtocolError("forbidden", "take a seat first")
        count = message.data.get("dice", 2) if isinstance(message.data, dict) else 2
        if type(count) is not int or not 1 <= count <= MAX_DICE:
            raise ProtocolError("invalid_message", f"roll 1 to {MAX_DICE} dice")
        dice = [secrets.randbelow(6) + 1 for _ in range(count)]
        self.rolls[conn.user] = dice
        await self.broadcast_event("rolled", {"user": conn.user, "dice": dice}, exclude=conn)
        return dice

    async def on_status(self, conn: Connection, message: Message) -> dict[str, Any]:
        return {
            "table": self.name,
            "players": await self.members(),
            "seats": self.seats,
            "free": self.seats.count(None),
            "rolls": self.rolls,
        }


def tables_only(name: str) -> type[Room] | None:
    """Only ``table:<id>`` rooms exist: joining any other name is ``forbidden``."""
    return LobbyRoom if name.startswith("table:") else None


def authenticate(handshake: Handshake) -> str | None:
    return handshake.query.get("user") or None  # your token check here; None: HTTP 401


class Lobby:
    """What the lobby knows beyond its tables: who is connected, through the manager's
    connection hooks; and the handlers of the frames that name no room."""

    def __init__(self) -> None:
        self.online: Counter[str] = Counter()

    def connected(self, conn: Connection) -> None:
        if conn.user is not None:
            self.online[conn.user] += 1

    def disconnected(self, conn: Connection, code: int | None) -> None:
        if conn.user is not None:
            self.online[conn.user] -= 1
            if not self.online[conn.user]:
                del self.online[conn.user]
        logger.info("%s left (close code %s)", conn.user, code)

    def who(self, conn: Connection, message: Message) -> list[str]:
        return sorted(self.online)

    def open_table(self, conn: Connection, message: Message) -> dict[str, str]:
        room = f"table:{secrets.token_hex(4)}"
        logger.info("%s opened %s", conn.user, room)
        return {"room": room, "invite": LobbyRoom.invitations.code(room)}


def create_manager() -> ConnectionManager:
    lobby = Lobby()
    manager = ConnectionManager(
        tables_only,
        authenticate=authenticate,
        on_connect=lobby.connected,
        on_disconnect=lobby.disconnected,
    )
    manager.handler("who")(lobby.who)
    manager.handler("open_table")(lobby.open_table)
    return manager


async def main(port: int = 8765) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    async with serve(create_manager(), "127.0.0.1", port) as server:
        port = server.sockets[0].getsockname()[1]  # the one chosen when PORT is 0
        print(f"game lobby on ws://127.0.0.1:{port}/ws?user=NAME", flush=True)
        await server.serve_forever()  # Ctrl+C: players get 1001, then the process ends


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
