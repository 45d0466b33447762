import asyncio

from wsroom import ConnectionManager
from wsroom.adapters.websockets import client_script, serve

from server import ChatRoom, authenticate


async def main() -> None:
    manager = ConnectionManager(ChatRoom, authenticate=authenticate)
    async with serve(manager, "127.0.0.1", 8765, process_request=client_script()) as server:
        await server.serve_forever()  # /wsroom.js and the WebSocket on one port


if __name__ == "__main__":
    asyncio.run(main())
