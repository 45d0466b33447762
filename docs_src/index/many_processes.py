import asyncio
import os

from wsroom import ConnectionManager, Room
from wsroom.adapters.websockets import serve
from wsroom.backplane.redis import RedisBackplane


class ChatRoom(Room):
    history_size = 100


async def main() -> None:
    # Alone, a process keeps its rooms in memory. With REDIS_URL set, every process
    # started this way serves the same rooms: only the manager's constructor changes.
    redis_url = os.environ.get("REDIS_URL")
    backplane = RedisBackplane(redis_url) if redis_url else None
    manager = ConnectionManager(ChatRoom, backplane=backplane)
    async with serve(manager, "", 8765) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
