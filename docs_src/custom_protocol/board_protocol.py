"""A board game whose `move` frames are checked by the protocol before any room sees them."""

from __future__ import annotations

from typing import Any

from wsroom import Connection, ConnectionManager, Message, MessageProtocol, ProtocolError, Room

BOARD_SIZE = 8


class BoardProtocol(MessageProtocol):
    """The JSON protocol, plus the shape of this application's own frames."""

    def validate_custom(self, message: Message) -> None:
        if message.type == "move":
            data = message.data
            if not isinstance(data, dict) or set(data) != {"x", "y"}:
                raise ProtocolError("invalid_message", 'a move is {"x": int, "y": int}')
            for axis in ("x", "y"):
                value = data[axis]
                # bool is an int in Python, never a coordinate.
                if type(value) is not int or not 0 <= value < BOARD_SIZE:
                    raise ProtocolError(
                        "invalid_message", f"{axis} must be an integer from 0 to {BOARD_SIZE - 1}"
                    )


class BoardRoom(Room):
    max_members = 2

    def on_move(self, conn: Connection, message: Message) -> dict[str, Any]:
        # The protocol has checked the shape: the hook only plays the move.
        return {"played": [message.data["x"], message.data["y"]], "by": conn.user}


def create_manager() -> ConnectionManager:
    return ConnectionManager(
        BoardRoom,
        protocol=BoardProtocol(),
        authenticate=lambda handshake: handshake.query.get("user"),
    )
