"""One node of a chat served by several processes: python chat_node.py PORT."""

import asyncio
import os
import signal
import sys

from wsroom import ConnectionManager, Handshake, Room
from wsroom.adapters.websockets import serve
from wsroom.backplane.redis import RedisBackplane

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


class ChatRoom(Room):
    history_size = 100


def authenticate(handshake: Handshake) -> str | None:
    return handshake.query.get("user") or None  # placeholder: see authentication.md


async def main(port: int) -> None:
    backplane = RedisBackplane(REDIS_URL, prefix="chat")
    manager = ConnectionManager(ChatRoom, authenticate=authenticate, backplane=backplane)
    # serve() starts the manager at once: BackplaneError here if Redis does not answer.
    async with serve(manager, "127.0.0.1", port) as server:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, server.close)
        print(f"node {backplane.node_id} on ws://127.0.0.1:{port}/ws", flush=True)
        await server.serve_forever()  # until Ctrl+C or SIGTERM, then a graceful shutdown


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
