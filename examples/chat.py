"""The README's chat server, with a private staff room: ws://127.0.0.1:8765/?user=alice.

    python -m examples.chat [PORT]

It also serves the browser client at ``/wsroom.js``, so a page can import it; every other
path is the WebSocket. ``chat_threaded.py`` and ``chat_starlette.py`` serve these same
rooms (``ChatRoom`` and ``authenticate``, imported from here) on the other two adapters.
Ctrl+C shuts down gracefully: clients get what is queued for them, then close code 1001.
"""

import asyncio
import sys

from wsroom import Connection, ConnectionManager, Handshake, Message, Room
from wsroom.adapters.websockets import client_script, serve


class ChatRoom(Room):
    history_size = 100  # replayed to whoever joins, and used for recovery
    max_members = 500

    def can_join(self, conn: Connection, data: object) -> bool:
        return not self.name.startswith("staff:") or conn.user in {"alice"}

    async def on_typing(self, conn: Connection, message: Message) -> None:  # {"type": "typing"}
        await self.broadcast_event("typing", {"user": conn.user}, exclude=conn)


async def authenticate(handshake: Handshake) -> str | None:
    return handshake.query.get("user")  # your token check here; None refuses with HTTP 401


async def main(port: int = 8765) -> None:
    manager = ConnectionManager(ChatRoom, authenticate=authenticate)
    async with serve(manager, "127.0.0.1", port, process_request=client_script()) as server:
        port = server.sockets[0].getsockname()[1]  # the one chosen when PORT is 0
        print(f"chat on ws://127.0.0.1:{port}/?user=alice, wsroom.js at /wsroom.js", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
