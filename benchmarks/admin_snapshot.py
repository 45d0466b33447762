"""What one admin snapshot costs the event loop, against the size of the process.

The connections have a transport that takes nothing (frames stay queued, as for readers
that fell behind), each joins one of ``--rooms`` rooms, and a share of them has frames
waiting. The figure is the time ``ConnectionManager.admin_snapshot()`` holds the loop with
the admin view's default list sizes, and the time ``json.dumps`` takes on it: what an open
admin page costs per second (the admin view reuses a snapshot for a second, whoever asks).
``statistics()`` alone, which every monitoring scrape pays, is timed beside it for scale.

    python benchmarks/admin_snapshot.py --clients 100000 --rooms 100000 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from wsroom import ConnectionManager, Handshake, Limits, Transport


class IdleTransport(Transport):
    """Never writes: what the core queues stays queued."""

    def wake(self) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        pass

    def abort(self) -> None:
        pass


async def measure(
    clients: int, rooms: int, backlog: float, repeat: int
) -> tuple[list[float], list[float], list[float]]:
    manager = ConnectionManager(limits=Limits.without_rate_limits())
    await manager.start()
    for n in range(clients):
        conn = await manager.accept(IdleTransport(), Handshake("/"), f"user{n}")
        await manager.receive(conn, json.dumps({"type": "join", "room": f"room{n % rooms}"}))
    # The welcomes, joins and presence frames read; then a share of the clients lag.
    for n, conn in enumerate(manager.connections):
        conn.take_outgoing()
        if n < clients * backlog:
            conn.push(b"x" * (1 + n % 500))
    snapshots, encodings, totals = [], [], []
    for _ in range(repeat):
        # statistics() alone, the walk every monitoring scrape already pays, for scale.
        start = time.perf_counter()
        manager.statistics()
        totals.append(time.perf_counter() - start)
        start = time.perf_counter()
        snapshot = await manager.admin_snapshot()
        snapshots.append(time.perf_counter() - start)
        start = time.perf_counter()
        json.dumps(snapshot, separators=(",", ":"))
        encodings.append(time.perf_counter() - start)
    assert len(snapshot["rooms"]) == min(20, rooms)
    await manager.shutdown(timeout=1)
    return snapshots, encodings, totals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--rooms", type=int, default=10_000)
    parser.add_argument("--backlog", type=float, default=0.1, help="share with frames queued")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    took, encoded, totals = asyncio.run(
        measure(args.clients, args.rooms, args.backlog, args.repeat)
    )
    print(
        f"admin snapshot, {args.clients:,} connections in {args.rooms:,} rooms: "
        f"{min(took) * 1000:.1f} ms to take (median {statistics.median(took) * 1000:.1f}), "
        f"{min(encoded) * 1000:.2f} ms to encode; statistics() alone "
        f"{min(totals) * 1000:.1f} ms ({args.repeat} runs, best and median)"
    )


if __name__ == "__main__":
    main()
