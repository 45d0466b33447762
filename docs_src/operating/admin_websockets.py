import asyncio

from wsroom import ConnectionManager
from wsroom.adapters.websockets import admin_view, serve

from admin_check import is_operator


async def main() -> None:
    manager = ConnectionManager()
    # The rooms at /ws (or any path), the admin view at /admin/.
    admin = admin_view(manager, is_operator)
    async with serve(manager, "127.0.0.1", 8765, process_request=admin) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
