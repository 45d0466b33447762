import logging
from collections import Counter

from wsroom import Connection, ConnectionManager, Handshake

online: Counter[str] = Counter()  # connections per user, in this process


def authenticate(handshake: Handshake) -> str | None:
    return handshake.query.get("user")  # placeholder: see authentication.md


def connected(conn: Connection) -> None:
    if conn.user is not None:
        online[conn.user] += 1
    conn.send_event("online", sorted(online))


async def disconnected(conn: Connection, code: int | None) -> None:
    if conn.user is not None:
        online[conn.user] -= 1
        if not online[conn.user]:
            del online[conn.user]
    logging.info("%r ended with close code %s", conn, code)


manager = ConnectionManager(
    authenticate=authenticate, on_connect=connected, on_disconnect=disconnected
)
