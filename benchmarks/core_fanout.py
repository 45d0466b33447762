"""How many deliveries per second the core itself sustains, with no socket in the way.

Every connection has a transport that only counts the frames it takes, so the figure is
the cost of wsroom's own fan-out (encode once, queue to every member, wake each writer):
an upper bound for any adapter. The peer comparison over real sockets lives beside it.

    python benchmarks/core_fanout.py --clients 1000 --messages 100 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from wsroom import ConnectionManager, Handshake, Limits, Transport


class CountingTransport(Transport):
    """Takes every queued frame at the end of the loop iteration, like a real writer."""

    delivered = 0

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._scheduled = False

    def wake(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self.connection is not None:
            CountingTransport.delivered += len(self.connection.take_outgoing())

    async def close(self, code: int, reason: str) -> None:
        self._flush()

    def abort(self) -> None:
        pass


async def run_once(clients: int, messages: int) -> float:
    manager = ConnectionManager(limits=Limits.without_rate_limits())
    await manager.start()
    for _ in range(clients):
        # Anonymous, as in a plain broadcast: the figure is fan-out, not presence.
        conn = await manager.accept(CountingTransport(), Handshake("/"), None)
        await manager.receive(conn, '{"type":"join","room":"bench"}')
    await asyncio.sleep(0)
    CountingTransport.delivered = 0
    payload = {"text": "x" * 60}
    start = time.perf_counter()
    for _ in range(messages):
        await manager.broadcast("bench", payload)
        await asyncio.sleep(0)  # let the writers run, as the event loop would between frames
    await asyncio.sleep(0)
    elapsed = time.perf_counter() - start
    assert CountingTransport.delivered == clients * messages, CountingTransport.delivered
    await manager.shutdown(timeout=1)
    return CountingTransport.delivered / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    rates = [asyncio.run(run_once(args.clients, args.messages)) for _ in range(args.repeat)]
    print(
        f"core fan-out, {args.clients} clients x {args.messages} messages: "
        f"median {statistics.median(rates):,.0f} deliveries/s "
        f"(min {min(rates):,.0f}, max {max(rates):,.0f}, {args.repeat} runs)"
    )


if __name__ == "__main__":
    main()
