"""Load held: idle footprint, fan-out, many small rooms, churn, cross-process delivery.

Scenarios A1 to A5 of docs/reliability.md. Servers whose memory or CPU is measured run in
a process of their own (:mod:`tests.reliability.load_server`); the clients are real
``websockets`` clients in this process (:class:`tests.reliability.probes.MeasuringClient`).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import pytest
import websockets

from tests.helpers import ServerFactory, adapter_name, user_from_query, wait_for
from tests.redis_support import (
    PrivateRedis,
    delete_prefix,
    fresh_prefix,
    private_redis,
    shared_redis_url,
)
from tests.reliability.load_server import BASELINE, LoadServer, load_server, load_servers
from tests.reliability.probes import (
    DeliveryReport,
    HeapTracker,
    MeasuringClient,
    ProcessSnapshot,
    SequenceLog,
    close_all,
    connect_many,
    machine_snapshot,
    message_data,
    percentile,
    process_snapshot,
    sockets_to,
    task_count,
    thread_count,
)
from tests.reliability.suite import SOAK, record, scale, seconds
from wsroom import ConnectionManager, Limits, Room
from wsroom.backplane.redis import RedisBackplane

# At soak scale the phases are minutes long (and A1 opens 10,000 connections).
pytestmark = pytest.mark.timeout(seconds(ci=60, soak=1800))

KIB = 1024
# Round-trip criteria of the plan (join p99 < 5 ms...) are judged with this margin: the
# machine has 2 cores that the clients, the servers and other test runs share.
LATENCY_MARGIN = 2
BUSY_LIMIT = 90  # % CPU above which a step is not judged (see Step.overloaded)
JOIN_INTERVAL = 0.2  # A3: each of 10 probe clients joins and leaves a room every 0.2 s
ECHOED = 12  # frames the echo baseline sends each client: what a wsroom client gets in A1


def message_frame(src: str, seq: int) -> dict[str, Any]:
    """A wsroom ``message`` frame as a client receives it (for the echo baseline)."""
    return {
        "type": "message",
        "room": "room-0",
        "id": seq,
        "from": src,
        "data": message_data(seq, src),
        "ts": int(time.time() * 1000),
    }


# Shared helpers.


@asynccontextmanager
async def cluster(
    adapter: str, nodes: int, *, anonymous: bool = False
) -> AsyncIterator[tuple[list[LoadServer], PrivateRedis | None]]:
    """``nodes`` load servers for ``adapter``; more than one share a redis-server of the
    test's own (its CPU is then the cluster's alone)."""
    async with AsyncExitStack() as stack:
        redis = stack.enter_context(private_redis()) if nodes > 1 else None
        servers = await stack.enter_async_context(
            load_servers(
                adapter,
                nodes,
                redis_url=redis.url if redis else None,
                prefix=fresh_prefix(),
                anonymous=anonymous,
            )
        )
        yield servers, redis


async def connect_spread(
    servers: Sequence[LoadServer], count: int, *, prefix: str = "m", by_stream: bool = False
) -> list[MeasuringClient]:
    """``count`` anonymous clients, client ``i`` on server ``i % len(servers)``."""
    gate = asyncio.Semaphore(64)

    async def one(index: int) -> MeasuringClient:
        async with gate:
            return await MeasuringClient.connect(
                servers[index % len(servers)].url, f"{prefix}{index}", by_stream=by_stream
            )

    return list(await asyncio.gather(*(one(index) for index in range(count))))


def cpu_seconds(snapshots: Sequence[ProcessSnapshot]) -> float:
    return sum(snapshot.cpu for snapshot in snapshots)


def has_members(count: int, stats: dict[str, Any]) -> bool:
    """For ``LoadServer.wait_stats``: the server's rooms hold ``count`` members in all."""
    return bool(stats["memberships"] == count)


async def until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it holds (``True``) or ``timeout`` passes (``False``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def pubsub_numsub(url: str, channels: Sequence[str]) -> list[int]:
    from redis import asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        return [count for _, count in await client.pubsub_numsub(*channels)]
    finally:
        await client.aclose()


async def pubsub_channels(url: str, pattern: str) -> list[str]:
    from redis import asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        channels = await client.pubsub_channels(pattern)
        return sorted(c.decode() if isinstance(c, bytes) else str(c) for c in channels)
    finally:
        await client.aclose()


async def gather_limited(coroutines: Sequence[Awaitable[Any]], limit: int = 64) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(coroutine: Awaitable[Any]) -> Any:
        async with gate:
            return await coroutine

    return list(await asyncio.gather(*(one(c) for c in coroutines)))


# A1: idle connection footprint.


@dataclass
class Footprint:
    """What N idle connections cost a server process, per connection."""

    plain_kib: float
    deflate_kib: float
    fds: float
    threads: float
    idle_growth: float  # RSS growth over the idle phase, as a fraction


async def settle(server: LoadServer, connections: int) -> dict[str, Any]:
    """Wait until the server holds ``connections`` connections and has nothing queued."""
    return await server.wait_stats(
        lambda s: s["connections"] == connections and not s.get("queued_bytes")
    )


async def open_idle(
    server: LoadServer, count: int, first: int, *, wsroom: bool, compression: str | None
) -> list[MeasuringClient]:
    """``count`` connections, each in 1 of ``count / 10`` rooms with one message each:
    every client publishes once when all are in, and gets its room's 10 messages."""
    clients = await connect_many(
        server.url,
        count,
        prefix="c",
        start=first,
        users=False,
        compression=compression,
        bare=not wsroom,
    )
    rooms = max(1, count // 10)
    if wsroom:
        names = [f"room-{first + i % rooms}" for i in range(count)]
        pairs = list(zip(clients, names, strict=True))
        await asyncio.gather(*(client.join(room) for client, room in pairs))
        answers = await asyncio.gather(*(client.publish(room) for client, room in pairs))
        assert all(answer is not None and answer["type"] == "ack" for answer in answers)
        expected = count * (count // rooms)  # each client gets its room's messages
        assert await until(lambda: sum(c.frames["message"] for c in clients) == expected, 30)
    else:
        # The same traffic from an echo server: one message each, sent back as many times
        # as a wsroom client gets frames (welcome, joined and 10 messages).
        await asyncio.gather(
            *(client.ws.send(json.dumps(message_frame(client.name, 1))) for client in clients)
        )

        expected = count * ECHOED
        assert await until(lambda: sum(c.frames["message"] for c in clients) == expected, 30)
    await settle(server, first + count)
    return clients


async def footprint(server: LoadServer, n: int, idle: float, *, wsroom: bool) -> Footprint:
    # Warm-up: lazy imports and first-use allocations are not a connection's cost.
    warm = await open_idle(server, 10, 0, wsroom=wsroom, compression="deflate")
    await close_all(warm)
    await settle(server, 0)
    before = server.snapshot()
    plain = await open_idle(server, n, 0, wsroom=wsroom, compression=None)
    after_plain = server.snapshot()
    samples: list[ProcessSnapshot] = [after_plain]
    if idle:
        deadline = asyncio.get_running_loop().time() + idle
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(min(0.25, idle / 4))
            samples.append(server.snapshot())
    deflate = await open_idle(server, n, n, wsroom=wsroom, compression="deflate")
    after_deflate = server.snapshot()
    for client in plain + deflate:  # the server is discarded next: no closing handshakes
        client.abort()
    await asyncio.gather(*(client.stop() for client in plain + deflate))
    return Footprint(
        plain_kib=(after_plain.rss - before.rss) / n / KIB,
        deflate_kib=(after_deflate.rss - samples[-1].rss) / n / KIB,
        fds=(after_plain.fds - before.fds) / n,
        threads=(after_plain.threads - before.threads) / n,
        idle_growth=(samples[-1].rss - samples[0].rss) / samples[0].rss,
    )


@pytest.mark.parametrize("adapter", ["websockets", "websockets_sync", "starlette"])
async def test_a1_idle_connection_footprint(adapter: str) -> None:
    """N idle connections in rooms of 10 cost at most 8 KiB each above the raw transport,
    compressed or not, and hold still while idle."""
    # N connections without compression, then N more offering permessage-deflate: the
    # server holds 2N (1,000 at CI scale). The threading server holds 4 descriptors per
    # connection: 2,000 of them at soak scale stay under the machine's 20,000.
    n = scale(ci=500, soak=2000 if adapter == "websockets_sync" else 5000)
    idle = seconds(ci=0.5, soak=30)
    raw_name = BASELINE[adapter]
    async with load_server(raw_name, echo=ECHOED) as server:
        raw = await footprint(server, n, 0, wsroom=False)
        await server.kill()  # thousands of threads to join otherwise
    async with load_server(adapter, anonymous=True) as server:
        ours = await footprint(server, n, idle, wsroom=True)
        stats = await server.stats()
        await server.kill()
    print(f"{adapter}: {ours}; raw {raw}")
    for name, value in (("raw", raw), ("wsroom", ours)):
        context = {"adapter": adapter, "n": n, "server": name}
        record(
            "A1",
            "memory per connection, no compression",
            round(value.plain_kib, 1),
            "KiB",
            **context,
        )
        record(
            "A1",
            "memory per connection, permessage-deflate",
            round(value.deflate_kib, 1),
            "KiB",
            **context,
        )
        record("A1", "file descriptors per connection", round(value.fds, 2), "", **context)
        record("A1", "threads per connection", round(value.threads, 2), "", **context)
    record(
        "A1",
        "wsroom overhead, no compression",
        round(ours.plain_kib - raw.plain_kib, 1),
        "KiB",
        adapter=adapter,
        n=n,
    )
    record(
        "A1",
        "wsroom overhead, permessage-deflate",
        round(ours.deflate_kib - raw.deflate_kib, 1),
        "KiB",
        adapter=adapter,
        n=n,
    )
    record(
        "A1",
        "RSS growth while idle",
        round(100 * ours.idle_growth, 2),
        "%",
        adapter=adapter,
        n=n,
        idle_s=idle,
    )
    assert stats["errors"] == 0, stats["error_samples"]
    assert ours.plain_kib - raw.plain_kib <= 8, (ours, raw)
    assert ours.deflate_kib - raw.deflate_kib <= 8, (ours, raw)
    assert ours.idle_growth < 0.01, ours
    # Descriptors and threads: as many as the transport's own, nothing per room or message.
    assert abs(ours.fds - raw.fds) < 0.05, (ours, raw)
    assert abs(ours.threads - raw.threads) < 0.05, (ours, raw)


# A2: fan-out throughput and latency.


@dataclass
class Step:
    rate: float
    deliveries_per_s: float
    report: DeliveryReport
    cpu_percent: float  # the busiest server process, % of one core
    cluster_cpu_percent: float  # every server process together
    redis_cpu_percent: float | None
    client_cpu_percent: float
    machine_cpu_percent: float  # every process on the machine, % of all its cores
    late_p99_ms: float  # how late the publish loop ran
    loop_lag_p99_ms: float  # the publishing server's event loop (a 10 ms ticker)
    complete: bool  # every member got every message before the deadline

    @property
    def saturated(self) -> bool:
        """The plan's saturation: p99 above 200 ms, or a message lost."""
        return not self.complete or not self.report.clean or self.report.p99_ms > 200

    @property
    def overloaded(self) -> bool:
        """The plan judges the steps whose server CPU stays under 90%; the clients' process
        is held to the same bound (past it, they are the slow consumers wsroom evicts)."""
        return self.cpu_percent >= BUSY_LIMIT or self.client_cpu_percent >= BUSY_LIMIT

    @property
    def latency_judged(self) -> bool:
        """Whether the latency criterion applies: a step that other processes starved of
        CPU on the shared machine is not judged either (it is recorded)."""
        return not self.overloaded and self.machine_cpu_percent < BUSY_LIMIT


def all_reached(clients: Sequence[MeasuringClient], stream: str, last: int) -> bool:
    """Whether every client got message ``last`` (or a later one) of ``stream``."""
    return all((client.log.last(stream) or 0) >= last for client in clients)


async def fanout_steps(
    servers: list[LoadServer],
    clients: list[MeasuringClient],
    plan: Sequence[tuple[float, float]],
    redis: PrivateRedis | None,
    stream: str,
) -> list[Step]:
    """Publish from the first server at each (rate, seconds) of ``plan``; measure each step
    on ``stream`` of every client."""
    steps = []
    received = lost = duplicates = late = 0
    for rate, duration in plan:
        count = max(1, round(rate * duration))
        for client in clients:
            client.log.take_latencies()
        before = [server.snapshot() for server in servers]
        redis_before = process_snapshot(redis.process.pid) if redis and redis.process else None
        client_before = time.process_time()
        machine_before = machine_snapshot()
        await servers[0].stats()  # restarts its loop-lag figures
        started = time.monotonic()
        answer = await servers[0].command("publish", room="bench", count=count, rate=rate)
        published: int = answer["last"]
        complete = await until(partial(all_reached, clients, stream, published), 10 + duration)
        wall = time.monotonic() - started
        lag = (await servers[0].stats())["loop_lag_p99_ms"]
        after = [server.snapshot() for server in servers]
        redis_after = process_snapshot(redis.process.pid) if redis and redis.process else None
        for client in clients:
            client.log.expect(stream, published)
        total = SequenceLog.merge(client.log for client in clients)
        report = DeliveryReport(
            received=total.received - received,
            lost=total.lost - lost,
            duplicates=total.duplicates - duplicates,
            order_violations=total.order_violations - late,
            p50_ms=total.p50_ms,
            p95_ms=total.p95_ms,
            p99_ms=total.p99_ms,
            max_ms=total.max_ms,
        )
        received, lost = total.received, total.lost
        duplicates, late = total.duplicates, total.order_violations
        steps.append(
            Step(
                rate=rate,
                deliveries_per_s=len(clients) * count / wall,
                report=report,
                cpu_percent=max(a.cpu_percent_since(b) for a, b in zip(after, before, strict=True)),
                cluster_cpu_percent=100 * (cpu_seconds(after) - cpu_seconds(before)) / wall,
                redis_cpu_percent=(
                    redis_after.cpu_percent_since(redis_before)
                    if redis_after and redis_before
                    else None
                ),
                client_cpu_percent=100 * (time.process_time() - client_before) / wall,
                machine_cpu_percent=machine_snapshot().busy_percent_since(machine_before),
                late_p99_ms=answer["late_p99_ms"],
                loop_lag_p99_ms=lag,
                complete=complete,
            )
        )
    return steps


A2_CASES = [("websockets", 1), ("starlette", 1), ("websockets", 3), ("starlette", 3)]


@pytest.mark.parametrize(("adapter", "nodes"), A2_CASES, ids=[f"{a}-{n}" for a, n in A2_CASES])
async def test_a2_fanout_throughput_and_latency(adapter: str, nodes: int) -> None:
    """One room of N members, messages published at stepped rates: no loss, no duplicate,
    per-publisher order and p99 within 200 ms at every step the server is not saturated."""
    members = scale(ci=200, soak=1000)
    rates = [20.0, 100.0] if not SOAK else [10.0, 50.0, 100.0, 200.0, 500.0]
    duration = seconds(ci=1, soak=30)
    async with cluster(adapter, nodes, anonymous=True) as (servers, redis):
        clients = await connect_spread(servers, members)
        await asyncio.gather(*(client.join("bench") for client in clients))
        for index, server in enumerate(servers):
            await server.wait_stats(partial(has_members, len(range(index, members, nodes))))
        # The first step warms up (first-use allocations, Redis scripts loaded): not counted.
        plan = [(50.0, 0.4)] + [(rate, duration) for rate in rates]
        steps = await fanout_steps(servers, clients, plan, redis, "bench/node0")
        assert steps[0].complete and steps[0].report.clean, steps[0]
        steps = steps[1:]
        stats = [await server.stats() for server in servers]
        await close_all(clients)
    # The plan's CPU bound against raw broadcast(), measured in the same run: at soak
    # scale (the steps are then long enough for a CPU figure to mean something).
    baseline = await raw_fanout(plan, members) if SOAK and nodes == 1 else None
    context = {"adapter": adapter, "nodes": nodes, "members": members}
    saturated = next((step for step in steps if step.saturated), None)
    for step in steps:
        print(
            f"A2 {adapter} x{nodes} at {step.rate:g} msg/s: {step.report}; "
            f"{step.deliveries_per_s:.0f} deliveries/s, CPU {step.cpu_percent:.0f}% "
            f"(all servers {step.cluster_cpu_percent:.0f}%, client {step.client_cpu_percent:.0f}%, "
            f"machine {step.machine_cpu_percent:.0f}%)"
        )
        at = {**context, "rate": step.rate}
        record("A2", "deliveries per second", round(step.deliveries_per_s), "1/s", **at)
        record("A2", "latency p50", round(step.report.p50_ms, 1), "ms", **at)
        record("A2", "latency p95", round(step.report.p95_ms, 1), "ms", **at)
        record("A2", "latency p99", round(step.report.p99_ms, 1), "ms", **at)
        record("A2", "server CPU (busiest process)", round(step.cpu_percent), "%", **at)
        record(
            "A2",
            "machine CPU (all processes, all cores)",
            round(step.machine_cpu_percent),
            "%",
            **at,
        )
        record("A2", "publish loop late p99", round(step.late_p99_ms, 1), "ms", **at)
        record("A2", "server event-loop lag p99", round(step.loop_lag_p99_ms, 1), "ms", **at)
        if step.redis_cpu_percent is not None:
            record("A2", "Redis CPU", round(step.redis_cpu_percent), "%", **at)
        record(
            "A2",
            "lost + duplicated + out of order",
            step.report.lost + step.report.duplicates + step.report.order_violations,
            "",
            **at,
        )
    # What saturated first: the servers, or this process's clients (one core of Python
    # reads every delivery; at soak scale's top rates it is the limit).
    record(
        "A2",
        "saturation point",
        saturated.rate if saturated is not None else "not reached",
        "msg/s",
        **context,
        bound=(
            None
            if saturated is None
            else "clients"
            if saturated.client_cpu_percent > 80
            else "machine"
            if saturated.machine_cpu_percent >= BUSY_LIMIT
            else "server"
        ),
    )
    assert all(s["errors"] == 0 for s in stats), stats
    for step in steps:
        # No loss, duplicate or reordering short of overload; latency where it is judged.
        if not step.overloaded:
            assert step.complete, step
            assert step.report.clean, step
        if step.latency_judged:
            assert step.report.p99_ms <= 200, step
    if baseline is not None:
        for ours, raw in zip(steps, baseline, strict=True):
            record(
                "A2",
                "server CPU against raw broadcast()",
                round(ours.cluster_cpu_percent / max(raw.cluster_cpu_percent, 1), 2),
                "x",
                **context,
                rate=ours.rate,
            )
            if not (raw.overloaded or ours.overloaded):
                assert ours.cluster_cpu_percent <= 1.3 * raw.cluster_cpu_percent + 5, (ours, raw)


async def raw_fanout(plan: Sequence[tuple[float, float]], members: int) -> list[Step]:
    """The same steps from a raw ``websockets`` server publishing with ``broadcast()``
    (the first, warm-up step left out)."""
    async with load_server("raw_websockets") as server:
        clients = await connect_many(server.url, members, prefix="raw", users=False, bare=True)
        await server.wait_stats(lambda s: s["connections"] == members)
        steps = await fanout_steps([server], clients, plan, None, "bench/node0")
        await close_all(clients)
    return steps[1:]


# A3: many small rooms.


async def round_trips(
    clients: Sequence[MeasuringClient], cycles: int, interval: float
) -> tuple[list[float], list[float]]:
    """Each client joins a room of its own and leaves it, once every ``interval`` seconds
    (the clients spread over the interval), ``cycles`` times: an open-loop join rate of
    ``len(clients) / interval`` per second. The join and leave round trips, in seconds."""
    joins: list[float] = []
    leaves: list[float] = []

    async def run(index: int, client: MeasuringClient) -> None:
        begin = time.monotonic() + interval * index / len(clients)
        for cycle in range(cycles):
            await asyncio.sleep(max(0.0, begin + cycle * interval - time.monotonic()))
            room = f"probe-{client.name}-{cycle}"
            started = time.perf_counter()
            await client.join(room)
            joined = time.perf_counter()
            answer = await client.leave(room)
            joins.append(joined - started)
            leaves.append(time.perf_counter() - joined)
            assert answer["type"] == "left", answer

    await asyncio.gather(*(run(index, client) for index, client in enumerate(clients)))
    return joins, leaves


@dataclass
class RoomMemory:
    """What rooms and memberships cost the server's Python heap (A3), in bytes."""

    per_room: float
    per_membership: float
    per_personal_room: float  # a room with its only member
    linearity: float  # the second half of the personal rooms against the first


async def room_memory(
    server: LoadServer, clients: list[MeasuringClient], personal: list[str], groups: list[str]
) -> RoomMemory:
    """Join ``clients`` to their ``personal`` rooms, then their ``groups``, then their
    neighbour's personal room, reading the server's heap (``tracemalloc``) between steps."""
    n = len(clients)
    half = n // 2
    before = (await server.command("heap"))["traced"]
    await gather_limited([c.join(r) for c, r in zip(clients[:half], personal, strict=False)])
    middle = (await server.command("heap"))["traced"]
    await gather_limited([c.join(r) for c, r in zip(clients[half:], personal[half:], strict=True)])
    after_personal = (await server.command("heap"))["traced"]
    await gather_limited([c.join(r) for c, r in zip(clients, groups, strict=True)])
    after_groups = (await server.command("heap"))["traced"]
    # One more membership each, in a room that exists: the neighbour's personal room.
    neighbours = personal[1:] + personal[:1]
    await gather_limited([c.join(r) for c, r in zip(clients, neighbours, strict=True)])
    after_neighbours = (await server.command("heap"))["traced"]
    await server.command("heap_stop")
    per_membership = (after_neighbours - after_groups) / n
    rooms = len(set(groups))
    return RoomMemory(
        per_room=(after_groups - after_personal - n * per_membership) / rooms,
        per_membership=per_membership,
        per_personal_room=(after_personal - before) / n,
        linearity=round((after_personal - middle) / (middle - before), 2),
    )


@pytest.mark.parametrize("backplane", ["memory", "redis"])
async def test_a3_many_small_rooms(backplane: str) -> None:
    """Each connection in a personal room and a group of 10: memory linear in rooms and
    memberships, no loss at 1 msg/s per group, join and leave fast.

    The heap is measured on the in-memory backplane: over Redis, the client library's
    buffers move by more than a room costs."""
    n = scale(ci=1000, soak=5000)
    traffic = seconds(ci=2, soak=30)
    async with AsyncExitStack() as stack:
        redis = stack.enter_context(private_redis()) if backplane == "redis" else None
        prefix = fresh_prefix()
        server = await stack.enter_async_context(
            load_server("websockets", redis_url=redis.url if redis else None, prefix=prefix)
        )
        clients = await connect_many(server.url, n, prefix="u")
        personal = [f"user-{client.name}" for client in clients]
        groups = [f"group-{index // 10}" for index in range(n)]
        # Warm-up: the first rooms of each kind allocate what every later one reuses.
        await round_trips(clients[:10], 2, 0.01)
        await server.wait_stats(lambda s: s["rooms"] == 0)
        memory = await room_memory(server, clients, personal, groups) if not redis else None
        if redis:
            await gather_limited([c.join(r) for c, r in zip(clients, personal, strict=True)])
            await gather_limited([c.join(r) for c, r in zip(clients, groups, strict=True)])
        stats = await server.stats()
        assert (stats["rooms"], stats["memberships"]) == (n + n // 10, (3 if memory else 2) * n)

        # 1 message per second in each group, while 10 clients join and leave rooms of
        # their own, 50 times a second in all.
        publishers = clients[::10]
        rounds = max(1, round(traffic))
        redis_before = process_snapshot(redis.process.pid) if redis and redis.process else None

        async def publish(index: int, publisher: MeasuringClient) -> None:
            # Each group at its own moment of the second, as independent rooms would.
            begin = time.monotonic() + index / len(publishers)
            for round_ in range(rounds):
                await asyncio.sleep(max(0.0, begin + round_ - time.monotonic()))
                answer = await publisher.publish(groups[index * 10])
                assert answer is not None and answer["type"] == "ack", answer

        probes = clients[5 :: max(1, n // 10)][:10]
        machine_before = machine_snapshot()
        probing = asyncio.create_task(
            round_trips(probes, round(traffic / JOIN_INTERVAL), JOIN_INTERVAL)
        )
        await asyncio.gather(*(publish(i, p) for i, p in enumerate(publishers)))
        joins, leaves = await probing
        machine_busy = machine_snapshot().busy_percent_since(machine_before)
        delivered = await until(
            lambda: all(
                (c.log.last(f"{groups[i]}/{publishers[i // 10].name}") or 0) >= rounds
                for i, c in enumerate(clients)
            ),
            10,
        )
        redis_cpu = (
            process_snapshot(redis.process.pid).cpu_percent_since(redis_before)
            if redis and redis.process and redis_before
            else None
        )
        numsub = (
            await pubsub_numsub(
                redis.url, [f"{prefix}:room:{groups[0]}", f"{prefix}:room:{personal[0]}"]
            )
            if redis
            else None
        )
        stats = await server.stats()
        await close_all(clients)
    for i, client in enumerate(clients):
        client.log.expect(f"{groups[i]}/{publishers[i // 10].name}", rounds)
    report = SequenceLog.merge(c.log for c in clients)
    ids = SequenceLog.merge(c.room_log for c in clients)
    join_p99 = 1000 * percentile(joins, 0.99)
    leave_p99 = 1000 * percentile(leaves, 0.99)
    print(
        f"A3 {backplane}: {memory}; join p99 {join_p99:.2f} ms, leave p99 {leave_p99:.2f} ms; "
        f"{report}; NUMSUB {numsub}; Redis CPU {redis_cpu}"
    )
    context = {"backplane": backplane, "n": n}
    if memory is not None:
        record("A3", "memory per room", round(memory.per_room), "B", **context)
        record("A3", "memory per membership", round(memory.per_membership), "B", **context)
        record(
            "A3",
            "memory per personal room (room + its member)",
            round(memory.per_personal_room),
            "B",
            **context,
        )
        record(
            "A3", "memory, second half of the rooms / first half", memory.linearity, "x", **context
        )
    record("A3", "machine CPU while joining (all processes)", round(machine_busy), "%", **context)
    record("A3", "join p99", round(join_p99, 2), "ms", **context, joins=len(joins))
    record("A3", "leave p99", round(leave_p99, 2), "ms", **context, leaves=len(leaves))
    record(
        "A3",
        "lost + duplicated + out of order",
        report.lost + report.duplicates + report.order_violations,
        "",
        **context,
    )
    if numsub is not None:
        record("A3", "PUBSUB NUMSUB of a group and a personal room", str(numsub), "", **context)
    if redis_cpu is not None:
        record("A3", "Redis CPU at 1 msg/s per group", round(redis_cpu, 1), "%", **context)
    assert stats["errors"] == 0, stats["error_samples"]
    assert delivered and report.clean, report
    assert ids.clean, ids
    if memory is not None:
        assert 0.5 < memory.linearity < 2, memory
    # The plan's p99 bound (5 ms, over Redis 20 ms) with a margin, judged while other
    # processes leave the machine some CPU (the machine's load is recorded). At CI scale
    # there are 100 joins, whose p99 is the second-worst sample: one scheduler or
    # collector stall of the shared machine decides it, so CI holds p95 to the bound and
    # the soak run (1,500 joins) holds p99 to it.
    if machine_busy < BUSY_LIMIT:
        bound = (5 if backplane == "memory" else 20) * LATENCY_MARGIN
        judged = 0.99 if SOAK else 0.95
        assert 1000 * percentile(joins, judged) < bound, sorted(joins)[-5:]
        assert 1000 * percentile(leaves, judged) < bound, sorted(leaves)[-5:]


# A4: churn.


@dataclass
class Churn:
    cycles: int = 0  # connect ... close, done or cut short by a kick
    kicked: int = 0  # cycles cut short by the kicker
    resets: int = 0  # cycles ended with an RST instead of a closing handshake
    kicks: int = 0  # disconnect_user calls that closed a connection


async def churn(
    url: str, manager: ConnectionManager, workers: int, duration: float, *, seed: int = 0
) -> Churn:
    """``workers`` clients loop connect, join 3 rooms, publish, leave, close (one in four
    with an RST) for ``duration`` seconds, while a kicker disconnects random users."""
    result = Churn()
    rng = random.Random(seed)
    live: set[str] = set()
    stop = time.monotonic() + duration

    async def worker(index: int) -> None:
        cycle = 0
        while time.monotonic() < stop:
            cycle += 1
            user = f"w{index}-{cycle}"
            client = await MeasuringClient.connect(url, user, user=user)
            live.add(user)
            rooms = rng.sample(CHURN_ROOMS, 3)
            try:
                for room in rooms:
                    await client.join(room)
                answer = await client.publish(rooms[0])
                assert answer is not None and answer["type"] == "ack", answer
                for room in rooms:
                    answer = await client.leave(room)
                    assert answer["type"] == "left", answer
            except (ConnectionError, websockets.ConnectionClosed):
                result.kicked += 1  # the kicker got there first
            finally:
                live.discard(user)
            if rng.random() < 0.25:
                client.abort()
                result.resets += 1
                await client.stop()
            else:
                await client.close()
            result.cycles += 1

    async def kicker() -> None:
        while time.monotonic() < stop:
            await asyncio.sleep(0.02)
            if live:
                result.kicks += bool(await manager.disconnect_user(rng.choice(sorted(live))))

    await asyncio.gather(kicker(), *(worker(index) for index in range(workers)))
    return result


CHURN_ROOMS = [f"churn-{index}" for index in range(8)]


class ChurnRoom(Room):
    """A4's rooms: a short history, filled before the heap baseline in little time."""

    history_size = 10


async def fill_histories(url: str, rooms: Sequence[str], size: int) -> None:
    """Publish ``size`` measured messages in each room (one client, then it leaves)."""
    client = await MeasuringClient.connect(url, "filler", user="filler")
    for room in rooms:
        await client.join(room)
        answers = await asyncio.gather(*(client.publish(room, ack=True) for _ in range(size)))
        assert all(a is not None and a["type"] == "ack" for a in answers), answers
    await client.close()


def residue(manager: ConnectionManager) -> dict[str, int]:
    """What a manager still holds, counted every way it can be asked."""
    stats = manager.statistics()
    return {
        "connections": stats.connections,
        "users": stats.users,
        "rooms": stats.rooms,
        "queued_frames": stats.queued_frames,
        "queued_bytes": stats.queued_bytes,
        "connection list": len(manager.connections),
        "room list": len(manager.rooms()),
        "members": sum(len(manager.connections_in(room)) for room in CHURN_ROOMS),
    }


@pytest.mark.parametrize("backplane", ["memory", "redis"])
async def test_a4_churn_leaves_nothing_behind(start_server: ServerFactory, backplane: str) -> None:
    """After connect/join/publish/leave/close churn with RSTs and kicks, the server holds
    nothing: no connection, room or member, no task, thread, descriptor or heap left over,
    no Redis subscription for a room or user."""
    workers = 16
    duration = seconds(ci=1, soak=60)
    adapter = adapter_name(start_server)
    url_redis = shared_redis_url() if backplane == "redis" else None
    if backplane == "redis" and url_redis is None:
        pytest.skip("no Redis server (scripts/test.sh starts one)")
    prefix = fresh_prefix()
    manager = ConnectionManager(
        ChurnRoom,
        authenticate=user_from_query,
        limits=Limits.without_rate_limits(),
        backplane=RedisBackplane(url_redis, prefix=prefix) if url_redis else None,
    )
    try:
        async with start_server(manager) as url:
            # Warm-up: every code path once (first-use allocations, lazy imports).
            await churn(url, manager, 4, 0.2, seed=1)
            redis_port = urlsplit(url_redis).port or 6379 if url_redis else None

            def descriptors() -> int:
                """Open files, but the Redis client's pool: it keeps the connections it
                opened (up to RedisBackplane's max_connections, 100), counted apart."""
                fds = process_snapshot().fds
                return fds - sockets_to(redis_port) if redis_port else fds

            with HeapTracker() as heap:
                if not url_redis:
                    # Each room's history filled to its cap, while tracing: a room keeps it,
                    # bounded, when it empties, and what the churn adds then replaces
                    # traced entries. (Over Redis, the history is Redis's.)
                    await fill_histories(url, CHURN_ROOMS, ChurnRoom.history_size)
                await wait_for(lambda: not any(residue(manager).values()))
                tasks, threads, fds = task_count(), thread_count(), descriptors()
                pool = sockets_to(redis_port) if redis_port else 0
                heap.reset()
                started = time.monotonic()
                result = await churn(url, manager, workers, duration)
                elapsed = time.monotonic() - started
                # The plan's bound: everything released 5 s after the churn stops.
                settled = await until(
                    lambda: (
                        not any(residue(manager).values())
                        and task_count() <= tasks + 2
                        and thread_count() <= threads + 2
                        and descriptors() <= fds
                    ),
                    5,
                )
                growth = heap.growth()
                top = heap.top(8) if growth >= 1024 * 1024 else []
            left = residue(manager)
            extra = {
                "tasks": task_count() - tasks,
                "threads": thread_count() - threads,
                "fds": descriptors() - fds,
                "redis pool": (sockets_to(redis_port) if redis_port else 0) - pool,
            }
            channels = (
                await pubsub_channels(url_redis, f"{prefix}:room:*")
                + await pubsub_channels(url_redis, f"{prefix}:user:*")
                if url_redis
                else []
            )
    finally:
        if url_redis:
            await delete_prefix(url_redis, prefix)
    rate = result.cycles / elapsed
    print(
        f"A4 {adapter}/{backplane}: {result}, {rate:.0f} cycles/s; residue {left} {extra}; "
        f"heap +{growth} B; channels {channels}"
    )
    context = {"adapter": adapter, "backplane": backplane, "workers": workers}
    record(
        "A4",
        "churn sustained (connect, 3 joins, publish, 3 leaves, close; tracemalloc on)",
        round(rate),
        "cycles/s",
        **context,
    )
    record(
        "A4",
        "kicked by disconnect_user / closed with an RST",
        f"{result.kicked} / {result.resets}",
        "cycles",
        **context,
    )
    record(
        "A4",
        "residual connections, users, rooms, members, queued frames",
        sum(left.values()),
        "",
        **context,
    )
    record(
        "A4",
        "residual tasks / threads / file descriptors",
        f"{extra['tasks']} / {extra['threads']} / {extra['fds']}",
        "",
        **context,
    )
    record("A4", "heap growth after the churn", round(growth / 1024), "KiB", **context)
    if url_redis:
        record("A4", "Redis room and user subscriptions left", len(channels), "", **context)
        record(
            "A4", "Redis pool connections opened by the churn", extra["redis pool"], "", **context
        )
    assert settled, (left, extra)
    assert result.cycles > workers and result.kicks > 0 and result.resets > 0, result
    assert growth < 1024 * 1024, top
    assert channels == [], channels


# A5: cross-process delivery.


@pytest.mark.parametrize("adapter", ["websockets", "starlette"])
async def test_a5_cross_process_delivery(adapter: str) -> None:
    """Members on 3 processes, a publisher on each: every member gets every message once,
    in each publisher's order; a publisher gets its own message once."""
    nodes = 3
    per_node = scale(ci=10, soak=100)
    total_rate = 100.0
    duration = seconds(ci=1.5, soak=60)
    async with cluster(adapter, nodes, anonymous=True) as (servers, redis):
        assert redis is not None and redis.process is not None
        members = await connect_spread(servers, nodes * per_node, by_stream=True)
        await asyncio.gather(*(member.join("fanout") for member in members))
        for server in servers:
            await server.wait_stats(partial(has_members, per_node))
        publishers = members[:nodes]  # members m0, m1, m2: one on each node
        per_publisher = round(total_rate * duration / nodes)
        redis_before = process_snapshot(redis.process.pid)
        started = time.monotonic()

        async def publish(publisher: MeasuringClient) -> None:
            begin = time.monotonic()
            for index in range(per_publisher):
                delay = begin + index * nodes / total_rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                answer = await publisher.publish("fanout")
                assert answer is not None and answer["type"] == "ack", answer

        await asyncio.gather(*(publish(publisher) for publisher in publishers))
        sent = {publisher.name: publisher.published for publisher in publishers}
        done = await until(
            lambda: all(
                (member.log.last(f"fanout/{name}") or 0) >= count
                for member in members
                for name, count in sent.items()
            ),
            10,
        )
        wall = time.monotonic() - started
        redis_cpu = process_snapshot(redis.process.pid).cpu_percent_since(redis_before)
        stats = [await server.stats() for server in servers]
        await close_all(members)
    for member in members:
        for name, count in sent.items():
            member.log.expect(f"fanout/{name}", count)
        member.room_log.expect("fanout", sum(sent.values()))
    report = SequenceLog.merge(member.log for member in members)
    ids = SequenceLog.merge(member.room_log for member in members)
    local: list[float] = []
    remote: list[float] = []
    for index, member in enumerate(members):
        assert member.log.stream_latencies is not None
        for stream, values in member.log.stream_latencies.items():
            publisher_node = int(stream.rsplit("/m", 1)[1]) % nodes
            (local if publisher_node == index % nodes else remote).extend(values)
    local_p99, remote_p99 = 1000 * percentile(local, 0.99), 1000 * percentile(remote, 0.99)
    print(
        f"A5 {adapter}: {report}; ids {ids}; local p99 {local_p99:.1f} ms, "
        f"remote {remote_p99:.1f} ms, Redis CPU {redis_cpu:.0f}%"
    )
    context = {"adapter": adapter, "nodes": nodes, "members": len(members)}
    record("A5", "messages published", sum(sent.values()), "", **context)
    record(
        "A5",
        "lost + duplicated + out of order",
        report.lost + report.duplicates + report.order_violations,
        "",
        **context,
    )
    record(
        "A5", "latency p99, publisher on the member's node", round(local_p99, 1), "ms", **context
    )
    record("A5", "latency p99, publisher on another node", round(remote_p99, 1), "ms", **context)
    record("A5", "extra cross-process p99", round(remote_p99 - local_p99, 1), "ms", **context)
    record(
        "A5",
        "Redis CPU",
        round(redis_cpu, 1),
        "%",
        **context,
        rate=total_rate,
        seconds=round(wall, 1),
    )
    assert done, report
    assert report.clean, report
    assert ids.clean, ids
    assert report.received == len(members) * sum(sent.values()), report
    assert all(s["errors"] == 0 for s in stats), stats


async def test_a5_a_prebound_socket_sends_frames_without_delay() -> None:
    """Connections served from a socket the application bound itself (a common way to
    share a port between processes) write each frame at once, like those of a socket
    wsroom binds: TCP_NODELAY is on."""
    from wsroom.adapters.websockets import serve

    sock = socket.create_server(("127.0.0.1", 0))
    async with serve(ConnectionManager(), sock=sock) as server:
        client = await MeasuringClient.connect(f"ws://127.0.0.1:{sock.getsockname()[1]}", "c")
        try:
            (connection,) = server.server.connections
            accepted = connection.transport.get_extra_info("socket")
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            await client.close()
