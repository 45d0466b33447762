import asyncio

from wsroom import Connection, ConnectionManager, Handshake, Message, ProtocolError, Room
from wsroom.adapters.websockets import serve


class ChatRoom(Room):
    history_size = 50  # messages replayed to whoever joins

    async def on_message(self, conn: Connection, message: Message) -> None:
        if not isinstance(message.data, str) or len(message.data) > 500:
            raise ProtocolError("invalid_message", "send text of at most 500 characters")
        await self.broadcast(message)  # store it and send it to every member


def authenticate(handshake: Handshake) -> str | None:
    # Placeholder: trusts ?user=. Replace it with a real check (see authentication.md).
    return handshake.query.get("user") or None  # None refuses the client with HTTP 401


async def main() -> None:
    manager = ConnectionManager(ChatRoom, authenticate=authenticate)
    async with serve(manager, "127.0.0.1", 8765) as server:
        print("listening on ws://127.0.0.1:8765/ws")
        await server.serve_forever()  # until Ctrl+C, then a graceful shutdown


if __name__ == "__main__":
    asyncio.run(main())
