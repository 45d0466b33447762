"""Hygiene and long runs: the soak (G35) and a warnings-clean run (G36).

At CI scale the soak is short (200 clients, 15 s, 2 nodes over Redis); the long one runs
with::

    WSROOM_RELIABILITY=soak pytest tests/reliability/test_soak.py

2,000 clients on 3 nodes for 1 h per adapter (asyncio and Starlette), Redis killed and
restarted at half time: a little over 2 h in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import websockets

from tests.redis_support import fresh_prefix, private_redis
from tests.reliability.load_server import LoadServer, load_server
from tests.reliability.probes import (
    MeasuringClient,
    SequenceLog,
    close_all,
    percentile,
    sockets_to,
)
from tests.reliability.suite import SOAK, record, scale, seconds

ROOT = Path(__file__).resolve().parents[2]

CLIENTS = scale(ci=200, soak=2000)
NODES = scale(ci=2, soak=3)
DURATION = seconds(ci=15, soak=3600)
WARMUP = seconds(ci=3, soak=600)  # RSS, descriptors and tasks are judged after it
RATE = 50.0  # messages per second, all rooms together
CHURNERS = scale(ci=10, soak=20)  # clients that connect, publish and leave in a loop
CHURN_RATE = scale(ci=10, soak=5)  # their connections per second, all together
SAMPLE_EVERY = seconds(ci=1, soak=10)
BUCKET = seconds(ci=5, soak=300)  # latency p99 per bucket
ROOM_SIZE = 10
BIG = "x" * 2000  # every fifth message carries 2 KB
OUTAGE = 5.0  # seconds Redis stays down at half time (soak scale only)


@dataclass
class Sample:
    at: float  # seconds since the start
    rss: int  # all nodes, bytes
    fds: int  # all nodes, without their Redis pool connections
    tasks: int  # all nodes
    connections: int  # all nodes


@dataclass
class Traffic:
    published: int = 0  # room messages acknowledged
    refused: int = 0  # publishes answered with an error (Redis down)
    directs: int = 0  # direct messages acknowledged
    churn_cycles: int = 0
    churn_published: list[tuple[str, str]] = field(default_factory=list)  # (room, churner)
    p99_ms: list[float] = field(default_factory=list)  # per bucket
    samples: list[Sample] = field(default_factory=list)


async def sample(servers: Sequence[LoadServer], redis_port: int, started: float) -> Sample:
    stats = [await server.stats() for server in servers]
    snapshots = [server.snapshot() for server in servers]
    return Sample(
        at=round(time.monotonic() - started, 1),
        rss=sum(s.rss for s in snapshots),
        fds=sum(
            s.fds - sockets_to(redis_port, server.pid)
            for s, server in zip(snapshots, servers, strict=True)
        ),
        tasks=sum(s["tasks"] for s in stats),
        connections=sum(s["connections"] for s in stats),
    )


def slope_per_hour(samples: Sequence[Sample]) -> float:
    """The least-squares slope of RSS over time, as a fraction of the mean per hour."""
    if len(samples) < 2:
        return 0.0
    xs = [s.at for s in samples]
    ys = [float(s.rss) for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if not var:
        return 0.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
    return slope * 3600 / my


@pytest.mark.parametrize("adapter", ["websockets", "starlette"] if SOAK else ["websockets"])
@pytest.mark.timeout(DURATION + WARMUP + 600)
async def test_g35_soak(adapter: str) -> None:
    """Clients in rooms of 10 on several nodes, mixed traffic (room messages of two sizes,
    direct messages), churn with RSTs; at soak scale Redis restarts at half time. No loss
    outside the restart, flat descriptors and tasks, RSS flat, no unhandled exception."""
    rng = random.Random(35)
    stable_count = CLIENTS - CHURNERS
    rooms = [f"soak-{index}" for index in range(stable_count // ROOM_SIZE)]
    traffic = Traffic()
    async with AsyncExitStack() as stack:
        redis = stack.enter_context(private_redis())
        redis_port = urlsplit(redis.url).port or 6379
        prefix = fresh_prefix()
        servers = [
            await stack.enter_async_context(
                load_server(adapter, redis_url=redis.url, prefix=prefix, name=f"node{index}")
            )
            for index in range(NODES)
        ]
        stable = await connect_stable(servers, stable_count)
        await asyncio.gather(
            *(client.join(rooms[index // ROOM_SIZE]) for index, client in enumerate(stable))
        )
        await settle(servers, stable_count)
        started = time.monotonic()
        quiet = await sample(servers, redis_port, started)  # before any traffic or churn
        stop = started + DURATION
        restart_window: tuple[float, float] | None = None

        async def restart_redis() -> None:
            nonlocal restart_window
            await asyncio.sleep(DURATION / 2)
            down = time.monotonic()
            redis.kill()
            await asyncio.sleep(OUTAGE)
            await asyncio.to_thread(redis.start)
            restart_window = (down, time.monotonic())

        tasks = [
            asyncio.create_task(publish_loop(stable, rooms, traffic, stop, rng)),
            asyncio.create_task(churn_loop(servers, rooms, traffic, stop, rng)),
            asyncio.create_task(sample_loop(servers, redis_port, stable, traffic, started, stop)),
        ]
        if SOAK:
            tasks.append(asyncio.create_task(restart_redis()))
        await asyncio.gather(*tasks)
        # Everything published is delivered, then the churners' traces are gone.
        expected = expectations(stable, rooms, traffic)
        delivered = await until_delivered(stable, expected, 15)
        settled = await settle(servers, stable_count)
        end = await sample(servers, redis_port, started)
        stats = [await server.stats() for server in servers]
        stderr = [server.stderr() for server in servers]
        await close_all(stable)
    judged = [s for s in traffic.samples if s.at >= WARMUP] or traffic.samples[-1:]
    base = judged[0]  # RSS is judged from the end of the warm-up on
    print(
        f"G35 {adapter}: {traffic.published} published ({traffic.refused} refused), "
        f"{traffic.directs} directs, {traffic.churn_cycles} churn cycles; "
        f"p99 per bucket {[round(p, 1) for p in traffic.p99_ms]}; quiet {quiet}, "
        f"after warm-up {base}, end {end}"
    )
    # Loss: members that were told of a gap (the Redis restart) are judged on nothing
    # else; every other member must have every message of every publisher of its room.
    told = [client for client in stable if client.room_log.gaps_signalled]
    untold = [client for client in stable if not client.room_log.gaps_signalled]
    for client in stable:
        for stream, last in expected[client.name].items():
            client.log.expect(stream, last)
    report = SequenceLog.merge(client.log for client in untold)
    ids = SequenceLog.merge(client.room_log for client in untold)
    told_report = SequenceLog.merge(client.log for client in told)
    directs = sum(client.frames["direct"] for client in stable)
    context = {"adapter": adapter, "clients": CLIENTS, "nodes": NODES, "seconds": DURATION}
    record("G35", "messages published", traffic.published, "", **context)
    record(
        "G35",
        "lost + duplicated + out of order (members not told of a gap)",
        report.lost + report.duplicates + report.order_violations,
        "",
        **context,
    )
    record(
        "G35",
        "lost by members told of a gap (Redis restart)",
        told_report.lost,
        "",
        **context,
        members=len(told),
    )
    record(
        "G35",
        "direct messages delivered / acknowledged",
        f"{directs} / {traffic.directs}",
        "",
        **context,
    )
    record("G35", "churn cycles", traffic.churn_cycles, "", **context)
    record(
        "G35",
        "latency p99 per bucket",
        json.dumps([round(p, 1) for p in traffic.p99_ms]),
        "ms",
        **context,
        bucket_s=BUCKET,
    )
    record(
        "G35", "RSS slope after warm-up", round(100 * slope_per_hour(judged), 2), "%/h", **context
    )
    record(
        "G35",
        "RSS, descriptors, tasks series",
        json.dumps([[s.at, s.rss, s.fds, s.tasks] for s in traffic.samples]),
        "",
        **context,
    )
    record(
        "G35",
        "descriptors / tasks, end against start",
        f"{end.fds - quiet.fds} / {end.tasks - quiet.tasks}",
        "",
        **context,
    )
    record("G35", "unhandled exceptions logged", sum(s["errors"] for s in stats), "", **context)
    assert delivered, report
    assert report.clean, report
    assert ids.clean, ids
    assert directs == traffic.directs, (directs, traffic.directs)
    assert settled, end
    # Flat: the churners come and go (a descriptor and a few tasks each); once they are
    # gone, the nodes hold what they held before any traffic.
    assert abs(end.fds - quiet.fds) <= 2, (quiet, end)
    assert abs(end.tasks - quiet.tasks) <= 2, (quiet, end)
    for s in traffic.samples:
        assert s.fds - quiet.fds <= CHURNERS + 2, (quiet, s)
        assert s.tasks - quiet.tasks <= 4 * CHURNERS + 2, (quiet, s)
    if SOAK:
        assert slope_per_hour(judged) < 0.01, judged
    else:  # 15 s says nothing about a slope; a runaway would still show
        assert end.rss < 1.2 * base.rss, (base, end)
    assert all(s["errors"] == 0 for s in stats), [s["error_samples"] for s in stats]
    for text in stderr:
        assert "Traceback" not in text and "never retrieved" not in text, text[-3000:]
    if SOAK:
        assert restart_window is not None


async def connect_stable(servers: Sequence[LoadServer], count: int) -> list[MeasuringClient]:
    gate = asyncio.Semaphore(64)

    async def one(index: int) -> MeasuringClient:
        name = f"s{index}"
        async with gate:
            return await MeasuringClient.connect(servers[index % len(servers)].url, name, user=name)

    return list(await asyncio.gather(*(one(index) for index in range(count))))


async def publish_loop(
    stable: list[MeasuringClient],
    rooms: list[str],
    traffic: Traffic,
    stop: float,
    rng: random.Random,
) -> None:
    """``RATE`` messages per second from random idle stable clients: room messages (one in
    five of 2 KB), and one in ten a direct message to another stable user."""
    busy: set[int] = set()
    running: set[asyncio.Task[None]] = set()
    begin = time.monotonic()

    async def one(index: int, number: int) -> None:
        client = stable[index]
        try:
            if number % 10 == 9:
                target = stable[rng.randrange(len(stable))].name
                answer = await client.request(
                    {"type": "direct", "to": target, "data": {"n": number}}
                )
                if answer["type"] == "ack":
                    traffic.directs += 1
                else:
                    traffic.refused += 1
                return
            answer = (
                await client.publish(rooms[index // ROOM_SIZE], pad=BIG if number % 5 == 4 else "")
                or {}
            )
            if answer.get("type") == "ack":
                traffic.published += 1
            else:
                traffic.refused += 1
        finally:
            busy.discard(index)

    number = 0
    while time.monotonic() < stop:
        await asyncio.sleep(max(0.0, begin + number / RATE - time.monotonic()))
        idle = [i for i in rng.sample(range(len(stable)), 8) if i not in busy]
        if idle:
            busy.add(idle[0])
            task = asyncio.create_task(one(idle[0], number))
            running.add(task)
            task.add_done_callback(running.discard)
        number += 1
    await asyncio.gather(*running)


async def churn_loop(
    servers: Sequence[LoadServer],
    rooms: list[str],
    traffic: Traffic,
    stop: float,
    rng: random.Random,
) -> None:
    """``CHURNERS`` workers: connect to a random node, join a stable room, publish once,
    leave, close (one in four with an RST); ``CHURN_RATE`` connections per second."""
    period = CHURNERS / CHURN_RATE

    async def worker(index: int) -> None:
        cycle = 0
        begin = time.monotonic() + period * index / CHURNERS
        while True:
            await asyncio.sleep(max(0.0, begin + cycle * period - time.monotonic()))
            if time.monotonic() >= stop:
                return
            cycle += 1
            name = f"churn{index}-{cycle}"
            server = servers[rng.randrange(len(servers))]
            room = rooms[rng.randrange(len(rooms))]
            with contextlib.suppress(ConnectionError, OSError, websockets.WebSocketException):
                client = await MeasuringClient.connect(server.url, name, user=name)
                try:
                    await client.join(room)
                    answer = await client.publish(room)
                    if answer is not None and answer["type"] == "ack":
                        traffic.churn_published.append((room, name))
                    await client.leave(room)
                finally:
                    if rng.random() < 0.25:
                        client.abort()
                        await client.stop()
                    else:
                        await client.close()
                traffic.churn_cycles += 1

    await asyncio.gather(*(worker(index) for index in range(CHURNERS)))


async def sample_loop(
    servers: Sequence[LoadServer],
    redis_port: int,
    stable: list[MeasuringClient],
    traffic: Traffic,
    started: float,
    stop: float,
) -> None:
    """Every ``SAMPLE_EVERY`` seconds the nodes' RSS, descriptors and tasks; every
    ``BUCKET`` seconds the stable clients' latency p99 over the bucket."""
    next_bucket = started + BUCKET
    while time.monotonic() < stop:
        await asyncio.sleep(min(SAMPLE_EVERY, max(0.0, stop - time.monotonic())))
        with contextlib.suppress(RuntimeError):  # a node busy past the command timeout
            traffic.samples.append(await sample(servers, redis_port, started))
        if time.monotonic() >= next_bucket:
            next_bucket += BUCKET
            latencies = [value for client in stable for value in client.log.take_latencies()]
            traffic.p99_ms.append(1000 * percentile(latencies, 0.99))


def expectations(
    stable: list[MeasuringClient], rooms: list[str], traffic: Traffic
) -> dict[str, dict[str, int]]:
    """For each stable client, the last sequence number of each publisher of its room."""
    by_room: dict[str, dict[str, int]] = {room: {} for room in rooms}
    for index, client in enumerate(stable):
        if client.published:
            by_room[rooms[index // ROOM_SIZE]][f"{rooms[index // ROOM_SIZE]}/{client.name}"] = (
                client.published
            )
    for room, churner in traffic.churn_published:
        by_room[room][f"{room}/{churner}"] = 1
    return {client.name: by_room[rooms[index // ROOM_SIZE]] for index, client in enumerate(stable)}


async def until_delivered(
    stable: list[MeasuringClient], expected: dict[str, dict[str, int]], timeout: float
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(
            (client.log.last(stream) or 0) >= last
            for client in stable
            if not client.room_log.gaps_signalled
            for stream, last in expected[client.name].items()
        ):
            return True
        await asyncio.sleep(0.05)
    return False


async def settle(servers: Sequence[LoadServer], stable: int) -> bool:
    """Wait until only the stable clients are connected (the churners' closes processed)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = [await server.stats() for server in servers]
        if sum(s["connections"] for s in stats) == stable:
            return True
        await asyncio.sleep(0.1)
    return False


# G36: warnings clean.


WARNING_SCENARIO = "a4 and memory"
"""The churn of A4 on the three adapters (in-memory): connections opened, kicked, reset
and closed, every room operation, from real clients in the same process."""


@pytest.mark.timeout(120)
def test_g36_warnings_clean() -> None:
    """A4's churn, run with asyncio's debug mode and RuntimeWarning and ResourceWarning as
    errors, passes and prints no "never retrieved", "never awaited" or unraisable warning."""
    env = {
        **os.environ,
        "PYTHONASYNCIODEBUG": "1",
        "PYTHONWARNINGS": "error::RuntimeWarning,error::ResourceWarning",
    }
    command = [
        sys.executable,
        *("-W", "error::RuntimeWarning", "-W", "error::ResourceWarning"),
        *("-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "no:logging"),
        "tests/reliability/test_load.py",
        *("-k", WARNING_SCENARIO),
    ]
    started = time.monotonic()
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=110, check=False
    )
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    record(
        "G36",
        "warnings-clean run (A4 churn, asyncio debug mode)",
        "pass" if result.returncode == 0 else "fail",
        "",
        seconds=round(elapsed, 1),
    )
    assert result.returncode == 0, output[-5000:]
    for marker in (
        "never retrieved",
        "was never awaited",
        "Exception ignored",
        "ResourceWarning",
        "RuntimeWarning",
        "Unclosed",
    ):
        assert marker not in output, f"{marker!r} in the output: {output[-5000:]}"
    assert " passed" in output, output[-2000:]
