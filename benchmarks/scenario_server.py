"""One server of the slow-reader and join/leave benchmarks, in a process of its own.

    python benchmarks/scenario_server.py VARIANT [--rate R --size B --time-limit S]
    python benchmarks/scenario_server.py joins-wsroom-redis --redis-url URL --prefix P --cleanup

Started by slow_reader.py and joins.py. It speaks the command protocol of
fanout_server.py (``READY``, ``COUNT``, ``BURST``, ``CPU``, ``QUIT``), with two
differences:

- the ``paced-*`` variants publish ``BURST k`` as a **paced stream**: message *i* is due
  ``i / rate`` seconds after the start, carries that due time as its ``"t"`` field, and is
  published when due (back to back when the loop runs late). The
  publication gives up after ``--time-limit`` seconds (a publisher stuck on a client that
  stopped reading), and it answers ``PUBLISHED n`` (the messages it did publish) before ``SENT``;
- the ``joins-*`` variants count connections, not members of one room, and lift the
  per-client rate limit so that a client's join/leave round trips are never throttled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fanout_server import (
    ROOM,
    WebsocketsPeer,
    WsroomAsync,
    raise_open_file_limit,
)


class Pacer:
    """A paced stream of ``size``-byte-ish messages at ``rate`` per second."""

    def __init__(self, rate: float, size: int, time_limit: float) -> None:
        self.rate = rate
        self.pad = "x" * max(0, size - 45)  # the JSON object is about ``size`` bytes
        self.time_limit = time_limit
        self.sent = 0

    async def run(self, messages: int, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self.sent = 0
        start = time.time()
        interval = 1.0 / self.rate
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.time_limit):
                for i in range(messages):
                    due = start + i * interval
                    delay = due - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await send({"t": due, "i": i, "p": self.pad})
                    self.sent += 1


class PacedWsroom(WsroomAsync):
    def __init__(self, pacer: Pacer) -> None:
        super().__init__(None, None, False)
        self.pacer = pacer

    async def publish(self, messages: int) -> None:
        manager = self.manager

        async def send(msg: dict[str, Any]) -> None:
            await manager.broadcast(ROOM, msg)

        await self.pacer.run(messages, send)

    def burst(self, messages: int) -> None:
        super().burst(messages)
        print(f"PUBLISHED {self.pacer.sent}", flush=True)


class PacedSeedLoop(WebsocketsPeer):
    """The seeds' pattern, ``for ws in clients: await ws.send(json.dumps(msg))``, paced."""

    def __init__(self, pacer: Pacer) -> None:
        super().__init__("loop")
        self.pacer = pacer

    async def publish(self, messages: int) -> None:
        import json

        from websockets.exceptions import ConnectionClosed

        async def send(msg: dict[str, Any]) -> None:
            for ws in list(self.clients):
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps(msg))

        await self.pacer.run(messages, send)

    def burst(self, messages: int) -> None:
        super().burst(messages)
        print(f"PUBLISHED {self.pacer.sent}", flush=True)


class JoinsWsroom(WsroomAsync):
    """wsroom for the join/leave benchmark: COUNT counts connections."""

    def __init__(self, redis_url: str | None, prefix: str | None, cleanup: bool) -> None:
        super().__init__(redis_url, prefix, cleanup)
        from wsroom import Limits

        self.manager.limits = Limits(rate=None)

    def local_count(self) -> int:
        return len(self.manager.connections)


def build(args: argparse.Namespace) -> Callable[[], Coroutine[Any, Any, None]]:
    name: str = args.variant
    pacer = Pacer(args.rate, args.size, args.time_limit)
    if name == "paced-wsroom":
        return PacedWsroom(pacer).main
    if name == "paced-seed-loop":
        return PacedSeedLoop(pacer).main
    if name == "joins-wsroom":
        return JoinsWsroom(None, None, False).main
    if name == "joins-wsroom-redis":
        return JoinsWsroom(args.redis_url, args.prefix, args.cleanup).main
    raise SystemExit(f"unknown server variant {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description="one server of the scenario benchmarks")
    parser.add_argument("variant")
    parser.add_argument("--rate", type=float, default=2000.0, help="paced messages per second")
    parser.add_argument("--size", type=int, default=1024, help="bytes per paced message")
    parser.add_argument("--time-limit", type=float, default=30.0, help="seconds per stream")
    parser.add_argument("--redis-url")
    parser.add_argument("--prefix")
    parser.add_argument("--cleanup", action="store_true", help="delete the prefix's keys on QUIT")
    args = parser.parse_args()
    raise_open_file_limit()
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(build(args)())


if __name__ == "__main__":
    main()
