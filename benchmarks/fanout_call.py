"""The CPU cost of one fan-out call, the part of a broadcast that runs once per recipient.

It times the delivery's ``deliver_room`` alone, for a room of N connections whose
transports do nothing: no event loop iteration, encoding or socket in the way. Each figure
is the fastest of many repeats, which a busy machine slows down but rarely speeds up, so
that two versions of the code can be compared on a shared machine. It reaches into the
core (``manager._delivery``): a tool to compare commits, not an API.

    python benchmarks/fanout_call.py --members 1,10,100,1000
    PYTHONPATH=<other checkout>/src python benchmarks/fanout_call.py   # the same, before
"""

from __future__ import annotations

import argparse
import asyncio
import time

from wsroom import ConnectionManager, Handshake, Limits, Transport


class IdleTransport(Transport):
    """Accepts frames and never writes them (the queue is emptied between repeats)."""

    def wake(self) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        pass

    def abort(self) -> None:
        pass


async def cost(members: int, calls: int, repeats: int) -> float:
    """Nanoseconds per ``deliver_room`` call (the fastest repeat)."""
    limits = Limits.without_rate_limits(max_queue=calls + 1, max_queue_bytes=2**40)
    manager = ConnectionManager(limits=limits)
    await manager.start()
    conns = []
    for _ in range(members):
        conn = await manager.accept(IdleTransport(), Handshake("/"), None)
        await manager.receive(conn, '{"type":"join","room":"bench"}')
        conns.append(conn)
    deliver = manager._delivery.deliver_room
    frame = b'{"type":"message","room":"bench","id":1,"from":null,"data":"' + b"x" * 60 + b'"}'
    best = float("inf")
    for _ in range(repeats):
        for conn in conns:
            conn.drop_queue()
        start = time.perf_counter_ns()
        for _ in range(calls):
            deliver("bench", frame, None)
        best = min(best, (time.perf_counter_ns() - start) / calls)
    for conn in conns:
        conn.drop_queue()
    await manager.shutdown(timeout=1)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--members", default="1,10,100,1000", help="room sizes, comma-separated")
    parser.add_argument("--deliveries", type=int, default=100_000, help="per repeat and size")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    for members in (int(size) for size in args.members.split(",")):
        calls = max(1, args.deliveries // members)
        ns = asyncio.run(cost(members, calls, args.repeat))
        per = ns / members
        print(f"{members:>5} members: {ns:>10,.0f} ns per call, {per:6.1f} ns per delivery")


if __name__ == "__main__":
    main()
