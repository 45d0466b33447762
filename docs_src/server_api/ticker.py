import asyncio
import logging
import random
import signal

from wsroom import ConnectionManager
from wsroom.adapters.websockets import serve


async def publish_prices(manager: ConnectionManager) -> None:
    price = 100.0
    while True:
        await asyncio.sleep(1)
        price = round(price * random.uniform(0.99, 1.01), 2)
        # Stored in the room's history, so a client that joins late sees recent prices.
        await manager.broadcast("prices", {"symbol": "ACME", "price": price})


async def report(manager: ConnectionManager) -> None:
    while True:
        await asyncio.sleep(10)
        stats = manager.statistics()
        logging.info(
            "%d connections, %d rooms, %d bytes queued, %d evictions",
            stats.connections,
            stats.rooms,
            stats.queued_bytes,
            stats.evictions,
        )


async def main() -> None:
    manager = ConnectionManager()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve(manager, "127.0.0.1", 8765):  # serve() starts the manager
        tasks = [asyncio.create_task(publish_prices(manager)), asyncio.create_task(report(manager))]
        await stop.wait()
        for task in tasks:  # stop using the manager before leaving the block shuts it down
            task.cancel()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
