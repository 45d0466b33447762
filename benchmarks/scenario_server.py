"""One server of the slow-reader and join/leave benchmarks, in a process of its own.

    python benchmarks/scenario_server.py VARIANT [--rate R --size B --time-limit S]
    python benchmarks/scenario_server.py joins-wsroom-redis --redis-url URL --prefix P --cleanup

Started by slow_reader.py and joins.py. It speaks the command protocol of
fanout_server.py (``READY``, ``COUNT``, ``BURST``, ``CPU``, ``QUIT``), with two
differences:

- the ``paced-*`` variants publish ``BURST k`` as a **paced stream**: message *i* is due
  ``i / rate`` seconds after the start, carries that due time as its ``"t"`` field, and is
  published when due (back to back when the publisher runs late). The
  publication gives up after ``--time-limit`` seconds (a publisher stuck on a client that
  stopped reading), and it answers ``PUBLISHED n`` (the messages it did publish) before
  ``SENT``. After ``n`` come ``key=value`` words on the wall time of the publish calls
  (one per message: ``await manager.broadcast(...)``, ``manager.from_thread.broadcast(...)``,
  or a seed's whole send loop), in milliseconds: ``calls=``, ``p50_ms=``, ``p99_ms=``,
  ``max_ms=``, and ``stuck=1`` when the last call had not returned when the publisher gave
  up (its duration so far is then counted, a lower bound). A reader that only wants ``n``
  reads the second word, as before;
- the ``joins-*`` variants count connections, not members of one room, and lift the
  per-client rate limit so that a client's join/leave round trips are never throttled.

The paced variants: ``paced-wsroom`` and ``paced-seed-loop`` (websockets asyncio, published
from the event loop), ``paced-wsroom-sync`` and ``paced-seed-sync`` (websockets sync, a
thread per connection, published by a plain thread), ``paced-wsroom-starlette`` (wsroom's
Starlette endpoint under uvicorn, published from the event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fanout_server import (
    ROOM,
    SyncPeer,
    WebsocketsPeer,
    WsroomAsync,
    WsroomSync,
    listening_socket,
    raise_open_file_limit,
    start_control,
)


class Pacer:
    """A paced stream of ``size``-byte-ish messages at ``rate`` per second, and the wall
    time of each publish call."""

    def __init__(self, rate: float, size: int, time_limit: float) -> None:
        self.rate = rate
        self.pad = "x" * max(0, size - 45)  # the JSON object is about ``size`` bytes
        self.time_limit = time_limit
        self.sent = 0
        self.calls: list[float] = []  # seconds per publish call that returned
        self.calling_since: float | None = None  # perf_counter() of a call in progress
        self.errors: list[str] = []  # calls that raised (thread publishers only)

    def _reset(self) -> None:
        self.sent = 0
        self.calls = []
        self.calling_since = None
        self.errors = []

    async def run(self, messages: int, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Publish from the event loop; a call still pending at the time limit is cancelled."""
        self._reset()
        start = time.time()
        interval = 1.0 / self.rate
        clock = time.perf_counter
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.time_limit):
                for i in range(messages):
                    due = start + i * interval
                    delay = due - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    self.calling_since = began = clock()
                    await send({"t": due, "i": i, "p": self.pad})
                    self.calls.append(clock() - began)
                    self.calling_since = None
                    self.sent += 1

    def run_in_thread(self, messages: int, send: Callable[[dict[str, Any]], None]) -> None:
        """Publish from a plain thread of its own, and wait for it at most the time limit.

        A call that never returns (a blocking send to a client that stopped reading) leaves
        the thread behind, stuck; the process exits with it at ``QUIT``. What it does after
        the time limit is not counted.
        """
        self._reset()
        start = time.time()
        deadline = start + self.time_limit
        interval = 1.0 / self.rate
        clock = time.perf_counter
        lock = threading.Lock()
        calls: list[float] = []
        sent = 0
        calling_since: float | None = None

        def publish() -> None:
            nonlocal sent, calling_since
            for i in range(messages):
                due = start + i * interval
                now = time.time()
                if now >= deadline:
                    return
                if due > now:
                    time.sleep(due - now)
                began = clock()
                with lock:
                    calling_since = began
                try:
                    send({"t": due, "i": i, "p": self.pad})
                except Exception as exc:  # from_thread's TimeoutError, say: noted, not fatal
                    with lock:
                        self.errors.append(repr(exc))
                else:
                    with lock:
                        sent += 1
                ended = clock()
                with lock:
                    calls.append(ended - began)
                    calling_since = None

        publisher = threading.Thread(target=publish, name="publisher", daemon=True)
        publisher.start()
        publisher.join(max(0.0, deadline - time.time()) + 0.05)
        with lock:
            self.calls = list(calls)
            self.sent, self.calling_since = sent, calling_since

    def report(self) -> str:
        """The ``PUBLISHED`` answer: messages published, then the publish calls' times."""
        calls = list(self.calls)
        stuck = self.calling_since is not None
        if self.calling_since is not None:
            calls.append(time.perf_counter() - self.calling_since)  # a lower bound
        calls.sort()
        words = [f"PUBLISHED {self.sent}", f"calls={len(calls)}"]
        if calls:
            words += [
                f"p50_ms={1000 * percentile(calls, 0.50):.3f}",
                f"p99_ms={1000 * percentile(calls, 0.99):.3f}",
                f"max_ms={1000 * calls[-1]:.3f}",
            ]
        words.append(f"stuck={int(stuck)}")
        if self.errors:
            words.append(f"errors={len(self.errors)}")
            print(f"publish errors: {self.errors[:3]}", file=sys.stderr, flush=True)
        return " ".join(words)


def percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile of a sorted list, as fanout.py computes it."""
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


class PacedWsroom(WsroomAsync):
    def __init__(self, pacer: Pacer) -> None:
        super().__init__(None, None, False, pipelined=False)
        self.pacer = pacer

    async def publish(self, messages: int) -> None:
        manager = self.manager

        async def send(msg: dict[str, Any]) -> None:
            await manager.broadcast(ROOM, msg)

        await self.pacer.run(messages, send)

    def burst(self, messages: int) -> None:
        super().burst(messages)
        print(self.pacer.report(), flush=True)


class PacedWsroomStarlette(PacedWsroom):
    """wsroom's Starlette endpoint in a Starlette app under uvicorn (uvicorn's defaults,
    its WebSocket pings included)."""

    async def main(self) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import WebSocketRoute

        from wsroom.adapters.starlette import endpoint

        self.loop = asyncio.get_running_loop()
        app = Starlette(routes=[WebSocketRoute("/", endpoint(self.manager))])
        sock = listening_socket()
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False, backlog=4096
        )
        start_control(self, sock.getsockname()[1])
        await uvicorn.Server(config).serve(sockets=[sock])


class PacedSeedLoop(WebsocketsPeer):
    """The seeds' pattern, ``for ws in clients: await ws.send(json.dumps(msg))``, paced."""

    def __init__(self, pacer: Pacer) -> None:
        super().__init__("loop")
        self.pacer = pacer

    async def publish(self, messages: int) -> None:
        from websockets.exceptions import ConnectionClosed

        async def send(msg: dict[str, Any]) -> None:
            for ws in list(self.clients):
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps(msg))

        await self.pacer.run(messages, send)

    def burst(self, messages: int) -> None:
        super().burst(messages)
        print(self.pacer.report(), flush=True)


class PacedWsroomSync(WsroomSync):
    """The threading adapter; a plain thread publishes with ``manager.from_thread``."""

    def __init__(self, pacer: Pacer) -> None:
        super().__init__()
        self.pacer = pacer

    def burst(self, messages: int) -> None:
        broadcast = self.manager.from_thread.broadcast

        def send(msg: dict[str, Any]) -> None:
            broadcast(ROOM, msg)

        self.pacer.run_in_thread(messages, send)
        print(self.pacer.report(), flush=True)


class PacedSeedSync(SyncPeer):
    """The seeds' pattern on websockets sync (a thread per connection): a publishing thread
    does ``for ws in clients: ws.send(json.dumps(msg))``."""

    def __init__(self, pacer: Pacer) -> None:
        super().__init__()
        self.pacer = pacer

    def burst(self, messages: int) -> None:
        from websockets.exceptions import ConnectionClosed

        def send(msg: dict[str, Any]) -> None:
            with self.lock:
                clients = list(self.clients)
            for ws in clients:
                with contextlib.suppress(ConnectionClosed):
                    ws.send(json.dumps(msg))

        self.pacer.run_in_thread(messages, send)
        print(self.pacer.report(), flush=True)


class JoinsWsroom(WsroomAsync):
    """wsroom for the join/leave benchmark: COUNT counts connections."""

    def __init__(self, redis_url: str | None, prefix: str | None, cleanup: bool) -> None:
        super().__init__(redis_url, prefix, cleanup, pipelined=False)
        from wsroom import Limits

        self.manager.limits = Limits.without_rate_limits()

    def local_count(self) -> int:
        return len(self.manager.connections)


def build(args: argparse.Namespace) -> Callable[[], Coroutine[Any, Any, None] | None]:
    name: str = args.variant
    pacer = Pacer(args.rate, args.size, args.time_limit)
    if name == "paced-wsroom":
        return PacedWsroom(pacer).main
    if name == "paced-wsroom-starlette":
        return PacedWsroomStarlette(pacer).main
    if name == "paced-seed-loop":
        return PacedSeedLoop(pacer).main
    if name == "paced-wsroom-sync":
        return PacedWsroomSync(pacer).main
    if name == "paced-seed-sync":
        return PacedSeedSync(pacer).main
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
    result = build(args)()  # the threaded servers run here; the asyncio ones return a coroutine
    if result is not None:
        asyncio.run(result)


if __name__ == "__main__":
    main()
