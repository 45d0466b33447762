import asyncio

from websockets.asyncio.server import serve

from wsroom import ConnectionManager

from taskadapter import TaskAdapter  # the adapter above, saved as taskadapter.py


async def main(manager: ConnectionManager, stop: asyncio.Event) -> None:
    adapter = TaskAdapter(manager)
    async with serve(
        adapter.handler,
        "127.0.0.1",
        8765,
        process_request=adapter.process_request,
        select_subprotocol=adapter.select_subprotocol,
        max_size=manager.limits.max_frame_size,
    ):
        await manager.start()
        await stop.wait()  # until it is time to stop
        await manager.shutdown()
