"""FastAPI: log in over HTTP for a signed token, then present it to open the WebSocket.

    CHAT_SECRET=change-me python -m examples.fastapi_chat [PORT]

``POST /login`` with ``{"name": "alice"}`` answers ``{"token": ...}``, a token signed with
HMAC-SHA256 (standard library only) that expires after five minutes. Connect to
``ws://127.0.0.1:8000/ws?token=...``, or send ``Authorization: Bearer ...`` instead, offering
the subprotocol ``wsroom.v1``. A FastAPI dependency checks the token before the handshake
is answered: a missing, forged or expired one gets HTTP 401, and wsroom never sees that
client. ``POST /announce`` (same token) posts into a room as the server.

Without ``CHAT_SECRET`` the tokens are signed with a development secret, with a warning:
anyone who reads this file could forge them.

That runs uvicorn through ``wsroom.adapters.uvicorn``, which gives it wsroom's frame limit,
a deadline for request heads, quiet logging of client errors, a graceful shutdown (clients
get 1001 after what is queued for them) and lets wsroom cut clients it evicts. Plain
``uvicorn examples.fastapi_chat:app`` serves too, without those.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import sys
import time
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Query, WebSocket
from pydantic import BaseModel

from wsroom import ConnectionManager, Room, is_valid_user_id
from wsroom.adapters import uvicorn as wsroom_uvicorn
from wsroom.adapters.starlette import serve

SECRET = os.environ.get("CHAT_SECRET", "").encode()
if not SECRET:
    SECRET = b"development only: set CHAT_SECRET"
    logging.getLogger(__name__).warning(
        "CHAT_SECRET is not set: tokens are signed with a development secret anyone can forge"
    )
# Browsers cannot set headers on a WebSocket, so their token travels in the query string,
# which ends up in access logs: keep tokens short-lived.
TOKEN_SECONDS = 300


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")  # URL-safe, no padding


def _sign(payload: str) -> str:
    return _b64(hmac.new(SECRET, payload.encode(), hashlib.sha256).digest())


def issue_token(user: str) -> str:
    payload = _b64(f"{int(time.time()) + TOKEN_SECONDS}:{user}".encode())
    return f"{payload}.{_sign(payload)}"


def user_of(token: str) -> str | None:
    """The user a valid, unexpired token names, or ``None``."""
    payload, _, signature = token.partition(".")
    if not hmac.compare_digest(signature.encode(), _sign(payload).encode()):
        return None  # forged or damaged
    padded = payload + "=" * (-len(payload) % 4)
    expires, _, user = base64.urlsafe_b64decode(padded).decode().partition(":")
    return user if int(expires) > time.time() else None


async def current_user(
    token: Annotated[str | None, Query()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> str:
    """The user behind ``Authorization: Bearer`` or ``?token=``; HTTP 401 otherwise.

    Shared by the WebSocket and the HTTP endpoints. HTTPException, unlike
    WebSocketException (which uvicorn turns into a 403), gives the refused handshake its
    status: uvicorn sends it as a WebSocket denial response.
    """
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "bearer":
        token = credentials
    user = user_of(token) if token else None
    if user is None:
        raise HTTPException(401, "invalid or missing token", {"WWW-Authenticate": "Bearer"})
    return user


class ChatRoom(Room):
    history_size = 50
    max_members = 1000


manager = ConnectionManager(ChatRoom, allowed_origins=["https://chat.example.com"])
app = FastAPI()


class Login(BaseModel):
    name: str


@app.post("/login")
async def login(login: Login) -> dict[str, str | int]:
    # A real application checks a password or a session here; this one trusts the name.
    if not is_valid_user_id(login.name) or len(login.name) > 32:
        raise HTTPException(422, "a name of 1 to 32 printable characters")
    return {"token": issue_token(login.name), "expires_in": TOKEN_SECONDS}


@app.websocket("/ws")
async def chat(websocket: WebSocket, user: Annotated[str, Depends(current_user)]) -> None:
    # FastAPI authenticated the user; wsroom still applies the origin policy.
    await serve(websocket, manager, user=user)


class Announcement(BaseModel):
    room: str
    text: str


@app.post("/announce")
async def announce(
    announcement: Announcement, user: Annotated[str, Depends(current_user)]
) -> dict[str, int]:
    """An HTTP endpoint posting into a room, as the server (``from`` is null)."""
    message_id = await manager.broadcast(announcement.room, {"text": announcement.text, "by": user})
    return {"id": message_id}


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    wsroom_uvicorn.run(app, manager, host="127.0.0.1", port=port)
