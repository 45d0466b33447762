# task_adapter_server.py, beside conftest.py: a real server running TaskAdapter.
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from websockets.asyncio.server import serve

from wsroom import ConnectionManager

from taskadapter import TaskAdapter


@asynccontextmanager
async def task_adapter_server(manager: ConnectionManager) -> AsyncIterator[str]:
    adapter = TaskAdapter(manager)
    async with serve(
        adapter.handler,
        "127.0.0.1",
        0,  # a free port
        process_request=adapter.process_request,
        select_subprotocol=adapter.select_subprotocol,
        max_size=manager.limits.max_frame_size,
    ) as server:
        await manager.start()
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"ws://127.0.0.1:{port}"  # the base URL: the tests connect to /ws
        finally:
            await manager.shutdown()
