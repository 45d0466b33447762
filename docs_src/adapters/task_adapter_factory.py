# In tests/helpers.py of a clone of wsroom, beside the other server factories.
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tests.helpers import ADAPTERS

from wsroom import ConnectionManager


@asynccontextmanager
async def task_adapter_server(manager: ConnectionManager) -> AsyncIterator[str]:
    from websockets.asyncio.server import serve

    from taskadapter import TaskAdapter

    adapter = TaskAdapter(manager)
    async with serve(
        adapter.handler,
        "127.0.0.1",
        0,
        process_request=adapter.process_request,
        select_subprotocol=adapter.select_subprotocol,
        max_size=manager.limits.max_frame_size,
    ) as server:
        await manager.start()
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"ws://127.0.0.1:{port}"
        finally:
            await manager.shutdown()


ADAPTERS["task"] = task_adapter_server
