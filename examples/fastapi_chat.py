"""FastAPI: authenticate with Depends(), then hand the WebSocket to wsroom.

Run with ``python -m examples.fastapi_chat`` and connect to
``ws://127.0.0.1:8000/ws?token=s3cr3t-alice`` offering the subprotocol ``wsroom.v1``.

That runs uvicorn through ``wsroom.adapters.uvicorn``, which gives it wsroom's frame limit,
a deadline for request heads, quiet logging of client errors, a graceful shutdown (clients
get 1001 after what is queued for them) and lets wsroom cut clients it evicts. Plain
``uvicorn examples.fastapi_chat:app`` serves too, without those.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Query, WebSocket, WebSocketException, status
from pydantic import BaseModel

from wsroom import ConnectionManager, Room
from wsroom.adapters import uvicorn as wsroom_uvicorn
from wsroom.adapters.starlette import serve

# Stand-in for your user store or token verification (JWT, session lookup...). Browsers
# cannot set headers on a WebSocket, hence the query parameter: keep such tokens
# short-lived, since query strings end up in access logs.
TOKENS = {"s3cr3t-alice": "alice", "s3cr3t-bob": "bob"}


async def current_user(token: str | None = Query(default=None)) -> str:
    """The user behind ``?token=``; refuses the handshake (HTTP 403) otherwise."""
    user = TOKENS.get(token or "")
    if user is None:
        raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION, reason="invalid token")
    return user


class ChatRoom(Room):
    history_size = 50
    max_members = 1000


manager = ConnectionManager(ChatRoom, allowed_origins=["https://chat.example.com"])
app = FastAPI()


@app.websocket("/ws")
async def chat(websocket: WebSocket, user: str = Depends(current_user)) -> None:
    # FastAPI authenticated the user; wsroom still applies the origin policy.
    await serve(websocket, manager, user=user)


class Announcement(BaseModel):
    room: str
    text: str


@app.post("/announce")
async def announce(announcement: Announcement, user: str = Depends(current_user)) -> dict[str, int]:
    """An HTTP endpoint posting into a room, as the server (``from`` is null)."""
    message_id = await manager.broadcast(announcement.room, {"text": announcement.text, "by": user})
    return {"id": message_id}


if __name__ == "__main__":
    wsroom_uvicorn.run(app, manager, host="127.0.0.1", port=8000)
