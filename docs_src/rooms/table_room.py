import random

from wsroom import Connection, ConnectionManager, Message, ProtocolError, Room


class TableRoom(Room):
    max_members = 4

    def __init__(self, name: str, manager: ConnectionManager) -> None:
        super().__init__(name, manager)
        self.seats: list[str | None] = [None] * 4

    def on_sit(self, conn: Connection, message: Message) -> int:
        # {"type": "sit", "room": "table:1", "ref": 1} -> {"type": "ack", "ref": 1, "data": 2}
        if conn.user is None:
            raise ProtocolError("forbidden", "sign in to play")
        if conn.user in self.seats:
            return self.seats.index(conn.user) + 1
        if None not in self.seats:
            raise ProtocolError("forbidden", "every seat is taken")
        seat = self.seats.index(None)
        self.seats[seat] = conn.user
        return seat + 1

    async def on_roll(self, conn: Connection, message: Message) -> list[int]:
        # {"type": "roll", "room": "table:1", "ref": 2} -> {"type": "ack", "ref": 2, "data": [6, 3]}
        dice = [random.randint(1, 6) for _ in range(2)]
        await self.broadcast_event("rolled", {"user": conn.user, "dice": dice}, exclude=conn)
        return dice


manager = ConnectionManager(TableRoom)
