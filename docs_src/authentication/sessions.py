import asyncio
from typing import Any

from wsroom import Connection, ConnectionManager, Handshake, HandshakeRejected, Room
from wsroom.adapters.websockets import serve

# Stand-in for your session store: session token -> (user id, roles).
SESSIONS = {"tok-alice": ("alice", {"admin"}), "tok-bob": ("bob", set()), "tok-eve": ("eve", set())}
SUSPENDED = {"eve"}


async def authenticate(handshake: Handshake) -> str | None:
    token = handshake.cookies.get("session")  # browsers: a cookie set at login
    if token is None:  # other clients: an Authorization header
        scheme, _, value = handshake.headers.get("authorization", "").partition(" ")
        token = value if scheme.lower() == "bearer" else None
    session = SESSIONS.get(token) if token else None  # await your session store here
    if session is None:
        return None  # HTTP 401
    user, roles = session
    if user in SUSPENDED:
        raise HandshakeRejected(403, "account suspended")
    handshake.state["roles"] = roles  # becomes conn.state["roles"]
    return user


class AppRoom(Room):
    def can_join(self, conn: Connection, data: Any) -> bool:
        return not self.name.startswith("admin:") or "admin" in conn.state["roles"]


def can_direct(conn: Connection, to_user: str, data: Any) -> bool:
    return to_user != conn.user  # no notes to self


async def main() -> None:
    manager = ConnectionManager(
        AppRoom,
        authenticate=authenticate,
        allowed_origins=["https://app.example.com"],
        can_direct=can_direct,
    )
    async with serve(manager, "127.0.0.1", 8765) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
