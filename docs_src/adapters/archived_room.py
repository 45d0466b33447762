import asyncio

from wsroom import Connection, Message, Room


def save_to_database(room: str, user: str | None, data: object) -> None:
    """A call of a blocking driver."""


class ArchivedRoom(Room):
    async def on_message(self, conn: Connection, message: Message) -> None:
        await asyncio.to_thread(save_to_database, self.name, conn.user, message.data)
        await self.broadcast(message)
