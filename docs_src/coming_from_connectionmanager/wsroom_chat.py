from fastapi import FastAPI

from wsroom import Connection, ConnectionManager, Handshake, Message, ProtocolError, Room
from wsroom.adapters import uvicorn as wsroom_uvicorn
from wsroom.adapters.starlette import client_route, routes


class ChatRoom(Room):
    history_size = 50  # replayed to whoever joins, and recovered after a reconnect

    async def on_message(self, conn: Connection, message: Message) -> None:
        if not isinstance(message.data, str) or len(message.data) > 500:
            raise ProtocolError("invalid_message", "send text of at most 500 characters")
        await self.broadcast(message)  # every member, the sender included, gets it


def authenticate(handshake: Handshake) -> str | None:
    # Placeholder: trusts ?user=. Replace it with a real check (see authentication.md).
    return handshake.query.get("user") or None  # None refuses the upgrade with HTTP 401


manager = ConnectionManager(ChatRoom, authenticate=authenticate)
app = FastAPI()
# The WebSocket at /ws (a plain GET of it: the refusal's status, or 426), and wsroom.js.
app.router.routes.extend([*routes("/ws", manager), client_route()])

if __name__ == "__main__":
    # Not `uvicorn app:app`: this gives uvicorn wsroom's frame limit, the cut of stuck
    # clients and a graceful shutdown (1001 after the queued frames, not 1012).
    wsroom_uvicorn.run(app, manager, host="127.0.0.1", port=8000)
