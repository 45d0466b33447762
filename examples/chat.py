"""The README's example: a chat server on ws://127.0.0.1:8765/ with a private staff room."""

import asyncio

from wsroom import Connection, ConnectionManager, Handshake, Message, Room
from wsroom.adapters.websockets import serve


class ChatRoom(Room):
    history_size = 100  # replayed to whoever joins, and used for recovery
    max_members = 500

    def can_join(self, conn: Connection, data: object) -> bool:
        return not self.name.startswith("staff:") or conn.user in {"alice"}

    async def on_typing(self, conn: Connection, message: Message) -> None:  # {"type": "typing"}
        await self.broadcast_event("typing", {"user": conn.user}, exclude=conn)


async def authenticate(handshake: Handshake) -> str | None:
    return handshake.query.get("user")  # your token check here; None refuses with HTTP 401


async def main() -> None:
    manager = ConnectionManager(ChatRoom, authenticate=authenticate)
    async with serve(manager, "127.0.0.1", 8765) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
