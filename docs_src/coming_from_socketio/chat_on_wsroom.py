import asyncio

from wsroom import Connection, ConnectionManager, Handshake, Message, ProtocolError, Room
from wsroom.adapters.websockets import serve

TOKENS = {"tok-ann": "ann", "tok-bob": "bob"}  # stand-in for your session store


def authenticate(handshake: Handshake) -> str | None:
    return TOKENS.get(handshake.query.get("token", ""))  # None: HTTP 401, before the upgrade


class ChatRoom(Room):
    history_size = 50  # joiners get the last 50 messages, and a reconnect what it missed

    async def on_message(self, conn: Connection, message: Message) -> None:
        if not isinstance(message.data, dict) or not isinstance(message.data.get("text"), str):
            raise ProtocolError("invalid_message", 'send {"text": "..."}')
        await self.broadcast(message)  # id, history, "from" the sender's user id

    def on_my_rooms(self, conn: Connection, message: Message) -> list[str]:
        return sorted(conn.rooms)  # the data of the frame's ack


async def main() -> None:
    manager = ConnectionManager(ChatRoom, authenticate=authenticate)
    async with serve(manager, "127.0.0.1", 8765) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
