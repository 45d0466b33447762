import asyncio
import signal

from aiohttp import web

from wsroom import ConnectionManager
from wsroom.adapters import aiohttp as wsroom_aiohttp


async def main(host: str = "127.0.0.1", port: int = 8765) -> None:
    manager = ConnectionManager()
    app = web.Application()
    wsroom_aiohttp.setup(app, manager, "/ws")
    runner = web.AppRunner(app)
    await runner.setup()  # on_startup: the manager starts
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        # on_shutdown first: every client gets what is queued for it, then 1001.
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
