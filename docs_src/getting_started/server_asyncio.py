import asyncio

from wsroom import ConnectionManager
from wsroom.adapters.websockets import serve

from server import ChatRoom, authenticate


async def main() -> None:
    manager = ConnectionManager(ChatRoom, authenticate=authenticate)
    async with serve(manager, "127.0.0.1", 8765) as server:
        print("listening on ws://127.0.0.1:8765/ws")
        await server.serve_forever()  # until Ctrl+C, then a graceful shutdown


if __name__ == "__main__":
    asyncio.run(main())
