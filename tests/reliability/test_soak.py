"""Hygiene and long runs: the soak (G35) and a warnings-clean run (G36).

At CI scale the soak is short (200 clients, 10 s, 2 nodes over Redis); the long one runs
with::

    WSROOM_RELIABILITY=soak pytest tests/reliability/test_soak.py

2,000 clients on 3 nodes for 1 h per adapter (asyncio and Starlette), Redis killed and
restarted at half time: a little over 2 h in all. ``WSROOM_SOAK_SECONDS=600`` makes each
run 10 minutes instead.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import websockets

from tests.helpers import user_from_query, websockets_asyncio_server
from tests.redis_support import fresh_prefix, private_redis
from tests.reliability.load_server import LoadServer, load_servers
from tests.reliability.probes import (
    LoopLag,
    MeasuringClient,
    close_all,
    connect_many,
    dead_sockets,
    machine_snapshot,
    percentile,
    sockets_to,
)
from tests.reliability.suite import SOAK, record, scale, seconds
from wsroom import ConnectionManager, Limits
from wsroom.backplane.redis import RedisBackplane

ROOT = Path(__file__).resolve().parents[2]

CLIENTS = scale(ci=200, soak=2000)
NODES = scale(ci=2, soak=3)
# WSROOM_SOAK_SECONDS shortens (or lengthens) the long run, e.g. to try it.
DURATION = seconds(ci=10, soak=float(os.environ.get("WSROOM_SOAK_SECONDS", 3600)))
WARMUP = DURATION / 6 if SOAK else 3.0  # RSS is judged after it (10 min of the hour)
RATE = 50.0  # messages per second, all rooms together
CHURNERS = scale(ci=10, soak=20)  # clients that connect, publish and leave in a loop
CHURN_RATE = scale(ci=10, soak=5)  # their connections per second, all together
SAMPLE_EVERY = seconds(ci=1, soak=10)
BUCKET = min(300.0, DURATION / 6) if SOAK else 5.0  # latency p99 per bucket (5 min)
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
    loop_lag_p99_ms: float  # the worst node's, since the previous sample
    machine_busy: float  # % of all cores, every process, since the previous sample
    client_lag_max_ms: float  # this process's event loop (the clients'), since then


@dataclass
class Traffic:
    """What the clients did, with the time of each acknowledgement."""

    acked: dict[str, list[float]] = field(default_factory=dict)
    """Per publisher, when each of its messages (sequence number ``i`` at index ``i - 1``)
    was acknowledged (``time.monotonic()``)."""
    rooms_of: dict[str, str] = field(default_factory=dict)  # publisher -> its room
    refused: int = 0  # publishes, joins and directs answered with an error (Redis down)
    directs: list[float] = field(default_factory=list)  # acknowledgement times
    churn_cycles: int = 0
    failures: list[tuple[float, str]] = field(default_factory=list)
    """Client operations that got no answer in time or whose connection the server closed
    (``time.monotonic()``, what happened)."""
    p99_ms: list[float] = field(default_factory=list)  # per bucket
    samples: list[Sample] = field(default_factory=list)

    def ack(self, publisher: str, room: str) -> None:
        self.acked.setdefault(publisher, []).append(time.monotonic())
        self.rooms_of[publisher] = room

    @property
    def published(self) -> int:
        return sum(len(times) for times in self.acked.values())


class Sampler:
    """What :func:`sample` compares with: the previous machine snapshot, and a loop-lag
    ticker in this process (a starved client looks like a slow server otherwise)."""

    def __init__(self, servers: Sequence[LoadServer], redis_port: int, lag: LoopLag) -> None:
        self.servers = servers
        self.redis_port = redis_port
        self.lag = lag
        self.machine = machine_snapshot()
        self.started = time.monotonic()

    async def sample(self) -> Sample:
        machine = machine_snapshot()
        busy, self.machine = machine.busy_percent_since(self.machine), machine
        return await sample(
            self.servers,
            self.redis_port,
            self.started,
            machine_busy=0 if math.isnan(busy) else round(busy),
            client_lag_max_ms=round(1000 * max(self.lag.take(), default=0.0), 1),
        )


async def sample(
    servers: Sequence[LoadServer],
    redis_port: int,
    started: float,
    *,
    machine_busy: float = 0.0,
    client_lag_max_ms: float = 0.0,
) -> Sample:
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
        loop_lag_p99_ms=round(max(s["loop_lag_p99_ms"] for s in stats), 1),
        machine_busy=machine_busy,
        client_lag_max_ms=client_lag_max_ms,
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


@dataclass
class Losses:
    silent: int = 0  # messages a member never got, acknowledged outside the restart
    in_restart: int = 0  # messages a member never got, acknowledged around the restart
    duplicates: int = 0
    order_violations: int = 0


def losses(
    stable: Sequence[MeasuringClient],
    rooms_by_member: dict[str, str],
    traffic: Traffic,
    window: tuple[float, float] | None,
) -> Losses:
    """Every stable member must have every acknowledged message of every publisher of its
    room, in order and once; a message acknowledged from 1 s before Redis died to 10 s
    after it was back may be lost (Redis pub/sub delivers at most once, and the members
    are told by a ``gap``)."""
    result = Losses()
    for client in stable:
        room = rooms_by_member[client.name]
        report = client.log.report()
        result.duplicates += report.duplicates
        result.order_violations += report.order_violations
        for publisher, times in traffic.acked.items():
            if traffic.rooms_of[publisher] != room:
                continue
            stream = f"{room}/{publisher}"
            client.log.expect(stream, len(times))
            for seq in client.log.missing(stream):
                at = times[seq - 1]
                if window is not None and window[0] - 1 <= at <= window[1] + 10:
                    result.in_restart += 1
                else:
                    result.silent += 1
    return result


@pytest.mark.parametrize("adapter", ["websockets", "starlette"] if SOAK else ["websockets"])
@pytest.mark.timeout(DURATION + 600)
async def test_g35_soak(adapter: str) -> None:
    """Clients in rooms of 10 on several nodes, mixed traffic (room messages of two sizes,
    direct messages), churn with RSTs; at soak scale Redis restarts at half time. No loss
    outside the restart, flat descriptors and tasks, flat RSS, no unhandled exception."""
    rng = random.Random(35)
    stable_count = CLIENTS - CHURNERS
    rooms = [f"soak-{index}" for index in range(stable_count // ROOM_SIZE)]
    traffic = Traffic()
    window: tuple[float, float] | None = None
    async with AsyncExitStack() as stack:
        redis = stack.enter_context(private_redis())
        redis_port = urlsplit(redis.url).port or 6379
        prefix = fresh_prefix()
        servers = await stack.enter_async_context(
            load_servers(adapter, NODES, redis_url=redis.url, prefix=prefix)
        )
        stable = await connect_stable(servers, stable_count)
        rooms_by_member = {c.name: rooms[i // ROOM_SIZE] for i, c in enumerate(stable)}
        retries = sum(
            await asyncio.gather(*(join_retrying(c, rooms_by_member[c.name]) for c in stable))
        )
        assert await settle(servers, stable_count)
        lag = await stack.enter_async_context(LoopLag())
        sampler = Sampler(servers, redis_port, lag)
        started = sampler.started
        quiet = await sampler.sample()  # before any traffic or churn
        stop = started + DURATION

        async def restart_redis() -> None:
            nonlocal window
            await asyncio.sleep(DURATION / 2)
            down = time.monotonic()
            redis.kill()
            await asyncio.sleep(OUTAGE)
            await asyncio.to_thread(redis.start)
            window = (down, time.monotonic())

        tasks = [
            publish_loop(stable, rooms_by_member, traffic, stop, rng),
            churn_loop(servers, rooms, traffic, stop, rng),
            sample_loop(sampler, stable, traffic, stop),
        ]
        await asyncio.gather(*tasks, *([restart_redis()] if SOAK else []))
        # Everything published is delivered, then the churners' traces are gone.
        for client in stable:
            if client.closed:  # no stable client may lose its connection
                what = f"{client.name} closed by the server ({client.close_code})"
                traffic.failures.append((time.monotonic(), what))
        delivered = await until_delivered(stable, rooms_by_member, traffic, window, 15)
        settled = await settle(servers, stable_count)
        end = await sampler.sample()
        sockets = [socket_states(server.pid, redis_port) for server in servers]
        stats = [await server.stats() for server in servers]
        stderr = [server.stderr() for server in servers]
        await close_all(stable)
    judged = [s for s in traffic.samples if s.at >= WARMUP] or traffic.samples[-1:]
    base = judged[0]  # RSS is judged from the end of the warm-up on
    lost = losses(stable, rooms_by_member, traffic, window)
    directs = sum(client.frames["direct"] for client in stable)
    directs_in_window = sum(
        1 for at in traffic.directs if window and window[0] - 1 <= at <= window[1] + 10
    )
    print(
        f"G35 {adapter}: {traffic.published} published ({traffic.refused} refused), "
        f"{directs}/{len(traffic.directs)} directs, {traffic.churn_cycles} churn cycles; "
        f"{lost}; p99 per bucket {[round(p, 1) for p in traffic.p99_ms]}; quiet {quiet}, "
        f"after warm-up {base}, end {end}; nodes' descriptors at the end {sockets}"
    )
    context = {"adapter": adapter, "clients": CLIENTS, "nodes": NODES, "seconds": DURATION}
    record("G35", "messages published", traffic.published, "", **context)
    record("G35", "joins retried at start (Redis busy)", retries, "", **context)
    record("G35", "lost outside the Redis restart", lost.silent, "", **context)
    record("G35", "lost around the Redis restart", lost.in_restart, "", **context)
    record(
        "G35",
        "duplicated / out of order",
        f"{lost.duplicates} / {lost.order_violations}",
        "",
        **context,
    )
    record(
        "G35",
        "direct messages delivered / acknowledged",
        f"{directs} / {len(traffic.directs)}",
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
    if DURATION >= 1800:
        slope = round(100 * slope_per_hour(judged), 2)
        record("G35", "RSS slope after warm-up", slope, "%/h", **context)
    else:  # a slope per hour from seconds would be noise
        growth = round(100 * (end.rss - base.rss) / base.rss, 2)
        record("G35", "RSS growth after warm-up", growth, "%", **context)
    record(
        "G35",
        "server event-loop lag p99, worst sample",
        max(s.loop_lag_p99_ms for s in traffic.samples),
        "ms",
        **context,
        sample_s=SAMPLE_EVERY,
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
    failures = [
        (round(at - started, 1), what)
        for at, what in traffic.failures
        if not (window is not None and window[0] - 1 <= at <= window[1] + 10)
    ]
    record(
        "G35", "client operations failed outside the Redis restart", len(failures), "", **context
    )
    record(
        "G35",
        "machine CPU, worst sample / this process's loop lag, worst",
        f"{max(s.machine_busy for s in traffic.samples)}% / "
        f"{max(s.client_lag_max_ms for s in traffic.samples)} ms",
        "",
        **context,
    )
    # A handshake or request unanswered for 10 s: the samples around it tell a starved
    # machine or test process (machine_busy, client_lag_max_ms) from a stalled node.
    assert not failures, (failures[:5], around(traffic.samples, failures[0][0]))
    assert delivered, lost
    assert lost.silent == 0 and lost.duplicates == 0 and lost.order_violations == 0, lost
    assert len(traffic.directs) - directs_in_window <= directs <= len(traffic.directs)
    assert settled, end
    # Flat: the churners come and go (a descriptor and a few tasks each); once they are
    # gone, the nodes hold what they held before any traffic.
    assert abs(end.fds - quiet.fds) <= 2, (quiet, end, sockets)
    assert abs(end.tasks - quiet.tasks) <= 2, (quiet, end)
    for s in traffic.samples:
        assert s.fds - quiet.fds <= CHURNERS + 2, (quiet, s)
        assert s.tasks - quiet.tasks <= 4 * CHURNERS + 2, (quiet, s)
    if SOAK:
        assert window is not None
    if DURATION >= 1800:
        assert slope_per_hour(judged) < 0.01, judged
    else:  # a short run says nothing about a slope per hour; a runaway would still show
        assert end.rss < 1.2 * base.rss, (base, end)
    assert all(s["errors"] == 0 for s in stats), [s["error_samples"] for s in stats]
    for text in stderr:
        assert "Traceback" not in text and "never retrieved" not in text, text[-3000:]


def socket_states(pid: int, redis_port: int) -> dict[str, int]:
    """A node's descriptors by kind, and its TCP sockets by state and peer (for the
    message of a failed descriptor check)."""
    process = psutil.Process(pid)
    kinds = Counter(_fd_kind(pid, fd) for fd in os.listdir(f"/proc/{pid}/fd"))
    states: Counter[str] = Counter()
    for conn in process.net_connections(kind="tcp"):
        port = getattr(conn.raddr, "port", None)  # raddr is () when not connected
        peer = "-" if port is None else "redis" if port == redis_port else "peer"
        states[f"tcp {conn.status} {peer}"] += 1
    return {**kinds, **states}


def _fd_kind(pid: int, fd: str) -> str:
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return "gone"
    return target.split(":")[0] if ":[" in target else "file"


def around(samples: Sequence[Sample], at: float, span: float = 15.0) -> list[Sample]:
    """The samples within ``span`` seconds of ``at`` (seconds since the start)."""
    return [s for s in samples if abs(s.at - at) <= span]


async def join_retrying(client: MeasuringClient, room: str, attempts: int = 20) -> int:
    """Join ``room``; when the server answers "temporarily unavailable" (its Redis did not
    answer in time: thousands of joins at once on a busy machine), try again, as the
    error says. How many retries it took."""
    for retry in range(attempts):
        answer = await client.request({"type": "join", "room": room})
        if answer["type"] == "joined":
            client.room_log.start_at(room, answer["offset"] + 1)
            return retry
        assert answer.get("code") == "internal_error", answer
        await asyncio.sleep(0.2 * (retry + 1))
    raise AssertionError(f"{client.name} could not join {room}")


async def connect_stable(servers: Sequence[LoadServer], count: int) -> list[MeasuringClient]:
    gate = asyncio.Semaphore(64)

    async def one(index: int) -> MeasuringClient:
        name = f"s{index}"
        async with gate:
            return await MeasuringClient.connect(servers[index % len(servers)].url, name, user=name)

    return list(await asyncio.gather(*(one(index) for index in range(count))))


async def publish_loop(
    stable: list[MeasuringClient],
    rooms_by_member: dict[str, str],
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
        room = rooms_by_member[client.name]
        try:
            await publish_one(client, room, number)
        except (ConnectionError, TimeoutError) as exc:
            traffic.failures.append((time.monotonic(), f"{client.name} publish: {exc!r}"))
        finally:
            busy.discard(index)

    async def publish_one(client: MeasuringClient, room: str, number: int) -> None:
        if number % 10 == 9:
            target = stable[rng.randrange(len(stable))].name
            answer = await client.request({"type": "direct", "to": target, "data": {"n": number}})
            if answer["type"] == "ack":
                traffic.directs.append(time.monotonic())
            else:
                traffic.refused += 1
            return
        answer = await client.publish(room, pad=BIG if number % 5 == 4 else "") or {}
        if answer.get("type") == "ack":
            traffic.ack(client.name, room)
        else:
            traffic.refused += 1

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

    async def cycle(name: str, server: LoadServer, room: str) -> None:
        client = await MeasuringClient.connect(server.url, name, user=name)
        try:
            joined = await client.request({"type": "join", "room": room})
            if joined["type"] != "joined":
                traffic.refused += 1  # Redis down: the join cannot read the room
                return
            answer = await client.publish(room)
            if answer is not None and answer["type"] == "ack":
                traffic.ack(name, room)
            else:
                traffic.refused += 1
            await client.leave(room)
        finally:
            if rng.random() < 0.25:
                client.abort()
                await client.stop()
            else:
                await client.close()
        traffic.churn_cycles += 1

    async def worker(index: int) -> None:
        begin = time.monotonic() + period * index / CHURNERS
        number = 0
        while True:
            await asyncio.sleep(max(0.0, begin + number * period - time.monotonic()))
            if time.monotonic() >= stop:
                return
            number += 1
            server = servers[rng.randrange(len(servers))]
            room = rooms[rng.randrange(len(rooms))]
            try:
                await cycle(f"churn{index}-{number}", server, room)
            except (OSError, TimeoutError, ConnectionError, websockets.WebSocketException) as exc:
                traffic.failures.append((time.monotonic(), f"churn{index}-{number}: {exc!r}"))

    await asyncio.gather(*(worker(index) for index in range(CHURNERS)))


async def sample_loop(
    sampler: Sampler, stable: list[MeasuringClient], traffic: Traffic, stop: float
) -> None:
    """Every ``SAMPLE_EVERY`` seconds the nodes' RSS, descriptors, tasks and loop lag, the
    machine's load and this process's loop lag; every ``BUCKET`` seconds the stable
    clients' latency p99 over the bucket."""
    next_bucket = sampler.started + BUCKET
    while time.monotonic() < stop:
        await asyncio.sleep(min(SAMPLE_EVERY, max(0.0, stop - time.monotonic())))
        traffic.samples.append(await sampler.sample())
        if time.monotonic() >= next_bucket:
            next_bucket += BUCKET
            latencies = [value for client in stable for value in client.log.take_latencies()]
            traffic.p99_ms.append(1000 * percentile(latencies, 0.99))


async def until_delivered(
    stable: list[MeasuringClient],
    rooms_by_member: dict[str, str],
    traffic: Traffic,
    window: tuple[float, float] | None,
    timeout: float,
) -> bool:
    """Wait until every stable member has each publisher's last message of its room
    (when that one is not a message the restart may have lost)."""
    wanted = [
        (client, f"{room}/{publisher}", len(times))
        for client in stable
        for publisher, times in traffic.acked.items()
        if traffic.rooms_of[publisher] == (room := rooms_by_member[client.name])
        and not (window is not None and window[0] - 1 <= times[-1] <= window[1] + 10)
    ]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((client.log.last(stream) or 0) >= last for client, stream, last in wanted):
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


@pytest.mark.timeout(60)
async def test_g35_no_dead_redis_connection_is_kept_after_a_restart() -> None:
    """Found by the soak: after Redis restarts, a node keeps no socket of the connections
    that died with it (the pool's idle ones included) once it sees Redis back."""
    with private_redis() as redis:
        backplane = RedisBackplane(redis.url, prefix=fresh_prefix(), heartbeat=0.3, node_ttl=2)
        manager = ConnectionManager(
            authenticate=user_from_query, limits=Limits.without_rate_limits(), backplane=backplane
        )
        async with websockets_asyncio_server(manager) as url:
            clients = await connect_many(url, 200, prefix="u")
            # Joins at once: the command pool opens tens of connections.
            await asyncio.gather(*(c.join(f"g{i % 20}") for i, c in enumerate(clients)))
            assert dead_sockets() == 0
            redis.kill()
            await until(lambda: not backplane.available, 10)
            await asyncio.to_thread(redis.start)
            await until(lambda: backplane.available, 10)
            # Light traffic after the restart: a few pooled connections are used again.
            for index in range(10):
                answer = await clients[index].publish(f"g{index}", timeout=5)
                assert answer is not None and answer["type"] == "ack", answer
            settled = await until(lambda: dead_sockets() == 0, 5)
            dead = dead_sockets()
            for client in clients:
                client.abort()
    record("G35", "dead sockets kept after a Redis restart", dead, "")
    assert settled, f"{dead} sockets of dead connections still open"


async def until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it holds (``True``) or ``timeout`` passes (``False``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# G36: warnings clean.


WARNING_SCENARIO = "a4 and memory"
"""The churn of A4 on the three adapters (in-memory): connections opened, kicked, reset
and closed, every room operation, from real clients in the same process."""


@pytest.mark.timeout(120)
def test_g36_warnings_clean() -> None:
    """A4's churn, run with asyncio's debug mode and RuntimeWarning and ResourceWarning as
    errors, passes and prints no "never retrieved", "never awaited" or unraisable warning."""
    env = {
        **{k: v for k, v in os.environ.items() if k != "WSROOM_RELIABILITY_REPORT"},
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
