from collections.abc import Iterator

from wsroom import ConnectionManager


def feed(manager: ConnectionManager, prices: Iterator[dict[str, float]]) -> None:
    for price in prices:
        manager.from_thread.broadcast_nowait("prices", price)
