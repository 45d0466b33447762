import asyncio
from typing import Any

from wsroom import ConnectionManager


async def publish(manager: ConnectionManager, ticks: list[dict[str, Any]]) -> list[int]:
    # From a coroutine: start them all, in order, then wait for them together.
    return await asyncio.gather(*(manager.broadcast("prices", tick) for tick in ticks))


def publish_from_thread(manager: ConnectionManager, ticks: list[dict[str, Any]]) -> None:
    # From a thread: hand each one over without waiting (see server-api.md).
    for tick in ticks:
        manager.from_thread.broadcast_nowait("prices", tick)
