"""C10-C13, D20 and E29: a cluster of node processes survives what its Redis does.

Every test runs its own ``redis-server`` on a free port and kills, stops or restarts it by
PID; the nodes are processes of their own (``tests/reliability/nodes.py``), with the Redis
timeout of the plan (1 s), a heartbeat of 0.5 s and the default reconnection cap (2 s).
What a node promises when Redis fails (docs/deployment.md, "What a client sees"):

* nothing is buffered: operations that need Redis fail fast (``internal_error``) while it
  is down, and every room message goes through Redis, so there is no local-only delivery;
* the subscription comes back by itself, and each room is then repaired from its history:
  what a member missed is delivered in order, or the member gets a ``gap`` frame;
* a Redis that lost its data (restarted empty) starts every room in a new epoch, which
  every member is told of with a ``gap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helpers import TIMEOUT, wait_for
from tests.redis_support import PrivateRedis, fresh_prefix, private_redis
from tests.reliability.nodes import (
    RECONNECT_MAX,
    REDIS_TIMEOUT,
    Member,
    NodeProcess,
    Publisher,
    RedisView,
    Resilient,
    Tracker,
    node_cluster,
    percentile,
    poll,
)
from tests.reliability.suite import SOAK, record, scale, seconds

pytestmark = pytest.mark.timeout(1800 if SOAK else 90)

RATE = 100.0  # the plan's sequence-numbered publisher, msg/s
ROOMS = ["r0", "r1"]


@pytest.fixture
def redis() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


@dataclass
class Reader:
    node: NodeProcess
    room: str
    member: Member
    joined: dict[str, Any]

    def tracker(self) -> Tracker:
        return Tracker.of(self.member, self.room, self.joined)


@dataclass
class Scene:
    """Node processes over one Redis, members of every room on every node, a publisher."""

    nodes: list[NodeProcess]
    view: RedisView
    publisher: Member
    published: dict[str, dict[str, Any]]
    """The publisher's ``joined`` per room."""
    readers: list[Reader]

    def known(self, room: str) -> dict[int, tuple[str, int]]:
        """The (epoch, id) of every message of ``room`` that anyone received."""
        known = dict(Tracker.of(self.publisher, room, self.published[room]).seqs)
        for reader in self.readers:
            if reader.room == room:
                known.update(reader.tracker().seqs)
        return known

    async def subscriptions(self) -> dict[int, int]:
        """Channels of each node's subscription, as Redis lists it (0: none)."""
        found = await self.view.pubsub_of(self.nodes)
        return {pid: max((int(c["sub"]) for c in subs), default=0) for pid, subs in found.items()}

    async def resubscribed(self, expected: dict[int, int], since: float) -> dict[int, float]:
        """Wait until each node subscribes to its ``expected`` channels again; return the
        time each took from ``since`` (monotonic)."""
        times: dict[int, float] = {}

        async def all_back() -> bool:
            now = time.monotonic()
            for pid, count in (await self.subscriptions()).items():
                if pid not in times and count == expected[pid]:
                    times[pid] = now - since
            return len(times) == len(self.nodes)

        await poll(all_back, timeout=10 + TIMEOUT, what="every node subscribed again")
        return times

    async def numsub(self, prefix: str) -> dict[str, int]:
        return await self.view.numsub(*(f"{prefix}:room:{room}" for room in ROOMS))

    async def delivered(self, publisher: Publisher, timeout: float = TIMEOUT * 2) -> None:
        """Wait until every reader got the last message acked in its room."""
        last = {
            room: max((p.seq for p in publisher.acked() if p.room == room), default=-1)
            for room in ROOMS
        }

        def done() -> bool:
            for reader in self.readers:
                got = reader.member.of_type("message")
                seqs = (f["data"].get("seq", -1) for f in reversed(got))
                if next(seqs, -1) < last[reader.room]:
                    return False
            return True

        await wait_for(done, timeout=timeout, interval=0.05)


@asynccontextmanager
async def scene(
    redis: PrivateRedis, adapters: Sequence[str], per_room: int, **options: Any
) -> AsyncIterator[Scene]:
    """Node processes of ``adapters`` on ``redis``, each with ``per_room`` readers of every
    room; the publisher is on the first."""
    async with (
        node_cluster(redis.url, fresh_prefix(), adapters, **options) as nodes,
        populated(redis.url, nodes, per_room) as sc,
    ):
        yield sc


@asynccontextmanager
async def populated(
    redis_url: str, nodes: list[NodeProcess], per_room: int
) -> AsyncIterator[Scene]:
    view = RedisView(redis_url)
    members: list[Member] = []
    try:
        publisher = await Member.connect(nodes[0].url, "publisher")
        members.append(publisher)
        published = {room: await publisher.join(room) for room in ROOMS}
        readers = []
        for index, node in enumerate(nodes):
            for room in ROOMS:
                for k in range(per_room):
                    member = await Member.connect(node.url, f"n{index}-{room}-{k}")
                    members.append(member)
                    readers.append(Reader(node, room, member, await member.join(room)))
        yield Scene(nodes, view, publisher, published, readers)
    finally:
        await asyncio.gather(*(m.close() for m in members), return_exceptions=True)
        await view.aclose()


def reconnect_attempts(duration: float, cap: float = RECONNECT_MAX) -> int:
    """Most subscription attempts a node makes in ``duration`` seconds: its backoff starts
    at 0.05 s and doubles up to ``cap``, with a jitter of -50% at worst."""
    delay, elapsed, attempts = 0.05, 0.0, 1
    while elapsed < duration:
        elapsed += delay * 0.5
        delay = min(delay * 2, cap)
        attempts += 1
    return attempts


def log_counts(node: NodeProcess, since: float) -> tuple[int, int]:
    """ERROR and WARNING lines the node logged since ``since`` (wall clock)."""
    lines = [line for line in node.log() if line.at >= since]
    errors = sum(1 for line in lines if line.level in ("ERROR", "CRITICAL"))
    return errors, sum(1 for line in lines if line.level == "WARNING")


# C10: Redis restart mid-broadcast.


async def test_c10_redis_restart_mid_broadcast(redis: PrivateRedis) -> None:
    """kill -9 redis-server under a 100 msg/s publisher; restart it empty on its port."""
    adapters = ["websockets", "starlette", "websockets"]
    async with scene(redis, adapters, per_room=scale(ci=3, soak=50)) as sc:
        prefix = sc.nodes[0].prefix
        assert set((await sc.numsub(prefix)).values()) == {3}
        channels = await sc.subscriptions()
        rss_before = sc.nodes[0].rss()
        publisher = Publisher(sc.publisher, ROOMS, RATE)
        publisher.start()
        await asyncio.sleep(seconds(2.0, 30.0))  # traffic before the fault

        killed_wall, killed_at = time.time(), time.monotonic()
        await asyncio.to_thread(redis.kill)
        await asyncio.sleep(seconds(2.5, 5.0))  # the outage
        await asyncio.to_thread(redis.start)  # same port, empty
        up_at = time.monotonic()
        resubscribed = await sc.resubscribed(channels, since=up_at)
        back_at = up_at + max(resubscribed.values())
        numsub = await sc.numsub(prefix)
        await asyncio.sleep(seconds(3.0, 30.0))  # traffic after
        await publisher.stop()
        await sc.delivered(publisher)
        rss_after = sc.nodes[0].rss()

        # The publisher: refused fast while Redis was down, nothing buffered.
        during = [p for p in publisher.published if killed_at <= p.sent_at <= back_at]
        failed = publisher.failed()
        assert failed, "no publish failed while Redis was down"
        assert all(p.error == "internal_error" for p in failed), {p.error for p in failed}
        max_latency = max(p.latency for p in during)
        assert max_latency <= REDIS_TIMEOUT + 1.5, max_latency
        assert rss_after - rss_before < 32 * 2**20, (rss_before, rss_after)

        # Every node resubscribed within Redis-up + 10 s, to every room.
        assert max(resubscribed.values()) <= 10
        assert set(numsub.values()) == {3}, numsub

        # Loss confined to the outage, and every affected member told of it.
        acked = {room: [p.seq for p in publisher.acked() if p.room == room] for room in ROOMS}
        sent_at = {p.seq: p.sent_at for p in publisher.published}
        known = {room: sc.known(room) for room in ROOMS}
        lost_by_node: dict[int, int] = {node.pid: 0 for node in sc.nodes}
        affected = notified = 0
        for reader in sc.readers:
            tracker = reader.tracker()
            missing = tracker.missing(acked[reader.room])
            assert not tracker.duplicates and not tracker.order_violations, reader.member.user
            assert not tracker.unsignalled(missing, known[reader.room]), reader.member.user
            assert all(killed_at - 1.0 <= sent_at[seq] <= back_at for seq in missing), missing
            assert tracker.consecutive_after_last_gap()
            lost_by_node[reader.node.pid] += len(missing)
            # Redis lost every room: each member is affected (its ids restart).
            affected += 1
            notified += bool(tracker.gaps) and tracker.gaps[-1]["epoch"] != reader.joined["epoch"]
        assert notified == affected

        # Logs: a WARNING per attempt at most, no ERROR.
        outage = back_at - killed_at
        steps = reconnect_attempts(outage)
        for node in sc.nodes:
            errors, warnings = log_counts(node, killed_wall)
            assert errors == 0, node.log()
            assert warnings <= steps + 5, (warnings, steps, [x.text for x in node.log()])
            record(
                "C10",
                "log lines after the kill",
                warnings,
                "WARNING",
                adapter=node.adapter,
                errors=errors,
                backoff_steps=steps,
            )

    record("C10", "outage window", round(outage, 2), "s")
    record("C10", "redis down", round(up_at - killed_at, 2), "s")
    for node in sc.nodes:
        record(
            "C10",
            "time to resubscribe after Redis is up",
            round(resubscribed[node.pid], 2),
            "s",
            adapter=node.adapter,
            pid=node.pid,
        )
        record(
            "C10",
            "messages lost",
            lost_by_node[node.pid],
            "messages",
            adapter=node.adapter,
            readers=sum(1 for r in sc.readers if r.node is node),
        )
    record(
        "C10",
        "affected clients notified of the gap",
        100.0 * notified / affected,
        "%",
        affected=affected,
    )
    record(
        "C10",
        "publishes failed during the outage",
        len(failed),
        "calls",
        published=len(publisher.published),
    )
    record("C10", "publish latency max during the outage", round(max_latency * 1000, 1), "ms")
    record("C10", "publisher node RSS growth", round((rss_after - rss_before) / 2**20, 2), "MiB")


# C11: Redis drops the subscriber connection.


def first_warning(node: NodeProcess, since: float, text: str) -> float | None:
    """When (wall clock) the node first logged a WARNING containing ``text``."""
    for line in node.log():
        if line.at >= since and line.level == "WARNING" and text in line.text:
            return line.at
    return None


def check_loss(sc: Scene, publisher: Publisher) -> tuple[dict[int, int], dict[int, int]]:
    """Assert no duplicate, no disorder and no loss without a gap; return messages lost
    and gaps received, per node."""
    acked = {room: [p.seq for p in publisher.acked() if p.room == room] for room in ROOMS}
    known = {room: sc.known(room) for room in ROOMS}
    lost = {node.pid: 0 for node in sc.nodes}
    gaps = {node.pid: 0 for node in sc.nodes}
    for reader in sc.readers:
        tracker = reader.tracker()
        missing = tracker.missing(acked[reader.room])
        assert not tracker.duplicates and not tracker.order_violations, reader.member.user
        assert not tracker.unsignalled(missing, known[reader.room]), reader.member.user
        assert tracker.consecutive_after_last_gap()
        lost[reader.node.pid] += len(missing)
        gaps[reader.node.pid] += len(tracker.gaps)
    return lost, gaps


async def test_c11a_redis_kills_the_subscriber_connections(redis: PrivateRedis) -> None:
    """CLIENT KILL TYPE pubsub: every node notices, says so, resubscribes and repairs."""
    async with scene(redis, ["websockets"] * 3, per_room=scale(ci=2, soak=50)) as sc:
        channels = await sc.subscriptions()
        publisher = Publisher(sc.publisher, ROOMS, RATE)
        publisher.start()
        await asyncio.sleep(seconds(1.0, 30.0))  # traffic before
        killed_wall, killed_at = time.time(), time.monotonic()
        killed = await sc.view.client.client_kill_filter(_type="pubsub")
        resubscribed = await sc.resubscribed(channels, since=killed_at)
        assert set((await sc.numsub(sc.nodes[0].prefix)).values()) == {3}
        await asyncio.sleep(seconds(1.0, 30.0))  # traffic after
        await publisher.stop()
        await sc.delivered(publisher)
        lost, gaps = check_loss(sc, publisher)
        assert killed == 3
        for node in sc.nodes:
            noticed = first_warning(node, killed_wall, "Redis subscription lost")
            assert noticed is not None, node.log()
            assert resubscribed[node.pid] <= 10
            record(
                "C11",
                "(a) CLIENT KILL: detection",
                round(noticed - killed_wall, 3),
                "s",
                pid=node.pid,
            )
            record(
                "C11",
                "(a) CLIENT KILL: resubscribed",
                round(resubscribed[node.pid], 3),
                "s",
                pid=node.pid,
                lost=lost[node.pid],
                gaps=gaps[node.pid],
            )
        assert not publisher.failed()


async def test_c11b_output_buffer_limit_drops_a_stalled_node(redis: PrivateRedis) -> None:
    """client-output-buffer-limit pubsub 1mb 512kb 5; one node stopped (SIGSTOP) while 16 KiB
    messages flow: Redis drops its subscription, the node notices once it runs again."""
    # Few readers: each gets 1.6 MB/s of 16 KiB messages.
    async with scene(redis, ["websockets"] * 3, per_room=scale(ci=1, soak=3)) as sc:
        await sc.view.client.config_set("client-output-buffer-limit", "pubsub 1mb 512kb 5")
        channels = await sc.subscriptions()
        stalled = sc.nodes[2]
        before = await sc.view.pubsub_of([stalled])
        (connection,) = before[stalled.pid]
        stalled.pause()
        publisher = Publisher(sc.publisher, ROOMS, RATE, pad=16 * 1024)
        started_at = time.monotonic()
        publisher.start()
        try:

            async def dropped() -> bool:
                listed = await sc.view.clients("pubsub")
                return all(c["id"] != connection["id"] for c in listed)

            await poll(dropped, timeout=seconds(20, 60), what="Redis dropping the subscriber")
            dropped_after = time.monotonic() - started_at
            sent_bytes = sum(1 for p in publisher.published) * 16 * 1024
        finally:
            resumed_wall, resumed_at = time.time(), time.monotonic()
            stalled.resume()
        resubscribed = await sc.resubscribed(channels, since=resumed_at)
        assert set((await sc.numsub(sc.nodes[0].prefix)).values()) == {3}
        await asyncio.sleep(seconds(1.0, 30.0))  # traffic after
        await publisher.stop()
        await sc.delivered(publisher)
        lost, gaps = check_loss(sc, publisher)
        noticed = first_warning(stalled, resumed_wall, "Redis subscription lost")
        assert noticed is not None, stalled.log()
        assert resubscribed[stalled.pid] <= 10
        # The other nodes never lost anything.
        assert all(lost[n.pid] == 0 and gaps[n.pid] == 0 for n in sc.nodes[:2]), (lost, gaps)
    record(
        "C11",
        "(b) output buffer limit: Redis dropped the stalled subscriber",
        round(dropped_after, 2),
        "s",
        published_mib=round(sent_bytes / 2**20, 1),
    )
    record(
        "C11",
        "(b) output buffer limit: detection after SIGCONT",
        round(noticed - resumed_wall, 3),
        "s",
    )
    record(
        "C11",
        "(b) output buffer limit: resubscribed after SIGCONT",
        round(resubscribed[stalled.pid], 3),
        "s",
        lost=lost[stalled.pid],
        gaps=gaps[stalled.pid],
    )


async def test_c11c_a_message_no_client_can_receive_is_refused_before_redis(
    redis: PrivateRedis,
) -> None:
    """A server-side publish larger than Limits.max_queue_bytes (1 MiB): EncodeError at
    once, nothing sent to Redis, nobody evicted. Clients cannot send one: their frames
    are limited to Limits.max_frame_size (64 KiB), closed with 1009 beyond."""
    from redis import asyncio as aioredis

    from tests.helpers import user_from_query, websockets_asyncio_server
    from wsroom import ConnectionManager, EncodeError, Limits
    from wsroom.backplane.redis import RedisBackplane

    prefix = fresh_prefix()
    backplane = RedisBackplane(redis.url, prefix=prefix, heartbeat=0.5, node_ttl=3, timeout=1.0)
    manager = ConnectionManager(authenticate=user_from_query, backplane=backplane)
    limit = Limits().max_queue_bytes
    async with (
        node_cluster(redis.url, prefix, ["websockets"]) as (remote,),
        websockets_asyncio_server(manager) as url,
    ):
        here = await Member.connect(url, "here")
        there = await Member.connect(remote.url, "there")
        await here.join("big")
        await there.join("big")
        spy = aioredis.from_url(redis.url)
        pubsub = spy.pubsub()
        await pubsub.subscribe(f"{prefix}:room:big", f"{prefix}:all", f"{prefix}:user:there")
        try:
            refusals: list[float] = []
            for size in (limit + 1, 2 * limit, 10 * limit):
                calls = [
                    manager.broadcast("big", "x" * size),
                    manager.broadcast_event("big", "huge", "x" * size),
                    manager.send_all("huge", "x" * size),
                    manager.send_to_user("there", "x" * size),
                ]
                for call in calls:
                    started = time.perf_counter()
                    with pytest.raises(EncodeError, match="max_queue_bytes"):
                        await call
                    refusals.append(time.perf_counter() - started)
            # What fits is sent: a frame of half the limit reaches both nodes.
            message_id = await manager.broadcast("big", "y" * (limit // 2))
            assert message_id == 1
            for member in (here, there):
                await member.received("message")
            # Redis saw only that one: nothing of the refused ones was stored or published.
            published = []
            while (message := await pubsub.get_message(timeout=0.2)) is not None:
                if message["type"] == "message":
                    published.append(len(message["data"]))
            assert len(published) == 1 and published[0] < limit, published
            assert await spy.llen(f"{prefix}:room:{{big}}:history") == 1
        finally:
            await pubsub.aclose()
            await spy.aclose()
        assert here.close_code is None and there.close_code is None
        assert manager.statistics().evictions == 0
        assert (await remote.probe())["evictions"] == 0
        await here.close()
        await there.close()
    record(
        "C11",
        "(c) oversized publish refused (EncodeError) after",
        round(max(refusals) * 1000, 2),
        "ms",
        sizes="1 MiB + 1 B to 10 MiB",
        calls=len(refusals),
    )
    record("C11", "(c) oversized publishes that reached Redis", 0, "messages")


# C12: Redis down at startup, then flapping.


async def test_c12_redis_absent_at_startup_then_flapping() -> None:
    """wsroom refuses to start without Redis (``BackplaneError`` from ``start()``); an
    application that retries comes up once Redis does. Then Redis flaps."""
    from tests.redis_support import redis_server_path

    path = redis_server_path()
    if path is None:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(path)  # its port is chosen, nothing listens on it yet
    prefix = fresh_prefix()
    nodes: list[NodeProcess] = []
    try:
        alone = NodeProcess(server.url, prefix)
        started = time.monotonic()
        await alone.start(wait=False)
        code = await alone.wait_exit(TIMEOUT * 2)
        refused_after = time.monotonic() - started
        assert code == 3, alone.stderr_text()
        assert f"cannot reach Redis at {server.url}" in alone.stderr_text()
        assert "Traceback" not in alone.stderr_text()

        nodes = [NodeProcess(server.url, prefix, retry_start=0.5) for _ in range(3)]
        for node in nodes:
            await node.start(wait=False)
        await asyncio.sleep(seconds(2.0, 5.0))  # Redis stays absent meanwhile
        assert all(n.process is not None and n.process.returncode is None for n in nodes)
        await asyncio.to_thread(server.start)
        up_at = time.monotonic()
        view = RedisView(server.url)
        first: dict[int, float] = {}

        async def all_subscribed() -> bool:
            now = time.monotonic()
            for pid, subs in (await view.pubsub_of(nodes)).items():
                if subs and pid not in first:
                    first[pid] = now - up_at
            return len(first) == len(nodes)

        try:
            await poll(all_subscribed, timeout=TIMEOUT * 2, what="first subscriptions")
        finally:
            await view.aclose()
        await asyncio.gather(*(node.ready() for node in nodes))
        attempts = [node.attempts for node in nodes]
        assert min(attempts) >= 2, attempts

        async with populated(server.url, nodes, per_room=scale(ci=2, soak=20)) as sc:
            channels = await sc.subscriptions()
            publisher = Publisher(sc.publisher, ROOMS, RATE)
            publisher.start()
            await asyncio.sleep(seconds(1.0, 30.0))
            baseline = await sc.view.connections_of(nodes)
            per_flap: list[dict[int, int]] = []
            flaps = scale(ci=2, soak=5)
            for _ in range(flaps):
                await asyncio.to_thread(server.kill)
                await asyncio.sleep(seconds(2.0, 2.0))
                await asyncio.to_thread(server.start)
                back_at = time.monotonic()
                await asyncio.sleep(seconds(2.0, 2.0))
                per_flap.append(await sc.view.connections_of(nodes))
            resubscribed = await sc.resubscribed(channels, since=back_at)
            await asyncio.sleep(seconds(1.0, 30.0))
            await publisher.stop()
            await sc.delivered(publisher)
            check_loss(sc, publisher)
            after = await sc.view.connections_of(nodes)
            pubsub = await sc.view.pubsub_of(nodes)
            sockets = {node.pid: node.redis_sockets(sc.view.port) for node in nodes}
            for node in nodes:
                assert node.process is not None and node.process.returncode is None
                assert len(pubsub[node.pid]) == 1, pubsub[node.pid]
                assert set(sockets[node.pid]) == {"ESTABLISHED"}, sockets[node.pid]
                assert after[node.pid] <= baseline[node.pid] + 2, (baseline, per_flap, after)
                errors, _ = log_counts(node, 0)
                assert errors == 0, [line.text for line in node.log()]
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))
        server.stop()
    record(
        "C12", "refused to start without Redis after", round(refused_after, 2), "s", exit_code=code
    )
    for node in nodes:
        record(
            "C12",
            "time to first subscription after Redis came up",
            round(first[node.pid], 2),
            "s",
            start_attempts=node.attempts,
        )
        record(
            "C12",
            "Redis connections per process",
            after[node.pid],
            "",
            before_flapping=baseline[node.pid],
            after_each_flap=[f[node.pid] for f in per_flap],
            flaps=flaps,
        )
        record(
            "C12", "time to resubscribe after the last flap", round(resubscribed[node.pid], 2), "s"
        )


# C13: Redis stalled, not dead.


async def test_c13_redis_stall(redis: PrivateRedis) -> None:
    """SIGSTOP redis-server for a few seconds under a 100 msg/s publisher, then SIGCONT:
    the nodes keep serving (loop lag), publishes fail within the Redis timeout, the
    subscription comes back and nothing is delivered twice."""
    from wsroom import BackplaneError, ConnectionManager
    from wsroom.backplane.redis import RedisBackplane

    async with scene(redis, ["websockets"] * 3, per_room=scale(ci=2, soak=50)) as sc:
        probers = [await Member.connect(node.url, f"prober{i}") for i, node in enumerate(sc.nodes)]
        for prober in probers:  # a pong: the prober's user channel is subscribed by now
            await prober.request({"type": "ping"})
        channels = await sc.subscriptions()
        # A fourth node, in the test's process: its server-side broadcasts are concurrent
        # calls, where a client's frames are answered one after the other.
        backplane = RedisBackplane(
            redis.url, prefix=sc.nodes[0].prefix, heartbeat=0.5, node_ttl=3, timeout=REDIS_TIMEOUT
        )
        server = ConnectionManager(backplane=backplane)
        await server.start()
        for prober in probers:
            await prober.request({"type": "probe"}, event="probe")  # resets the lag window
        publisher = Publisher(sc.publisher, ROOMS, RATE)
        publisher.start()
        await asyncio.sleep(seconds(1.5, 30.0))  # traffic before
        pings: list[list[float]] = [[] for _ in sc.nodes]
        broadcasts: list[float] = []
        stalling = True

        async def ping(index: int) -> None:
            while stalling:
                started = time.monotonic()
                answer = await probers[index].request({"type": "ping"})
                assert answer["type"] == "pong"
                pings[index].append(time.monotonic() - started)
                await asyncio.sleep(0.02)

        async def broadcast(n: int) -> None:
            started = time.monotonic()
            with contextlib.suppress(BackplaneError):
                await server.broadcast(ROOMS[n % 2], {"server": n})
            broadcasts.append(time.monotonic() - started)

        async def broadcaster() -> None:
            calls: list[asyncio.Task[None]] = []
            while stalling:
                calls.append(asyncio.create_task(broadcast(len(calls))))
                await asyncio.sleep(1 / RATE)
            await asyncio.gather(*calls)

        # The lag before the stall (what the machine itself causes); the window restarts.
        before = [
            (await prober.request({"type": "probe"}, event="probe"))["data"]["lag_ms"]
            for prober in probers
        ]
        stalled_at = time.monotonic()
        redis.pause()
        tasks = [asyncio.create_task(ping(i)) for i in range(len(sc.nodes))]
        tasks.append(asyncio.create_task(broadcaster()))
        try:
            await asyncio.sleep(seconds(3.0, 10.0))  # the stall
            stalling = False
            await asyncio.gather(*tasks)
            lags = [
                (await prober.request({"type": "probe"}, event="probe"))["data"]["lag_ms"]
                for prober in probers
            ]
        finally:
            redis.resume()
        resumed_at = time.monotonic()
        resubscribed = await sc.resubscribed(channels, since=resumed_at)
        await asyncio.sleep(seconds(2.0, 30.0))  # traffic after
        await publisher.stop()
        await sc.delivered(publisher)
        lost, gaps = check_loss(sc, publisher)
        for prober in probers:
            await prober.close()
        await server.shutdown()

    during = [p for p in publisher.published if stalled_at <= p.sent_at <= resumed_at]
    latencies = [p.latency for p in during]
    failed = [p for p in during if p.error is not None]
    assert failed, "no publish failed during the stall"
    # A publish, however many are queued with it, fails within the Redis timeout.
    assert max(broadcasts) <= REDIS_TIMEOUT + 0.5, max(broadcasts)
    # A client's frames are answered in order: its next one waits for the one before.
    assert max(latencies) <= 2 * REDIS_TIMEOUT + 0.5, max(latencies)
    # The plan's 50 ms, plus the lag the machine caused before the stall (other processes
    # share its two cores): a loop waiting on Redis would be late by the whole timeout.
    for lag, usual in zip(lags, before, strict=True):
        assert lag["p99"] < 50 + usual["p99"], (lag, usual)
    assert all(seconds_ <= 10 for seconds_ in resubscribed.values())
    record("C13", "stall", round(resumed_at - stalled_at, 2), "s")
    record(
        "C13",
        "server broadcast latency p99 during the stall",
        round(percentile(broadcasts, 0.99) * 1000),
        "ms",
        calls=len(broadcasts),
        max_ms=round(max(broadcasts) * 1000),
    )
    record(
        "C13",
        "client publish latency p99 during the stall",
        round(percentile(latencies, 0.99) * 1000),
        "ms",
        calls=len(during),
        failed=len(failed),
        max_ms=round(max(latencies) * 1000),
    )
    for node, lag, usual, rtts in zip(sc.nodes, lags, before, pings, strict=True):
        record(
            "C13",
            "event loop lag p99 during the stall",
            round(lag["p99"], 1),
            "ms",
            pid=node.pid,
            max_ms=round(lag["max"], 1),
            p99_before_ms=round(usual["p99"], 1),
        )
        record(
            "C13",
            "client-observed ping p99 during the stall",
            round(percentile(rtts, 0.99) * 1000, 1),
            "ms",
            pid=node.pid,
            pings=len(rtts),
        )
        record(
            "C13", "messages lost", lost[node.pid], "messages", pid=node.pid, gaps=gaps[node.pid]
        )
        record("C13", "time to resubscribe after SIGCONT", round(resubscribed[node.pid], 2), "s")


# D20: a node killed and restarted, its clients all reconnecting at once.


async def test_d20_node_killed_and_restarted_reconnect_storm(redis: PrivateRedis) -> None:
    """1,000 clients over 3 nodes; SIGKILL one node and restart it on its port: its
    clients reconnect with jittered exponential backoff and rejoin with since/epoch."""
    count = scale(ci=1000, soak=5000)
    rooms = [f"room{i}" for i in range(10)]
    async with node_cluster(redis.url, fresh_prefix(), ["websockets"] * 3) as nodes:
        view = RedisView(redis.url)
        clients = [Resilient(nodes[i % 3].url, f"c{i}", rooms[i % 10]) for i in range(count)]
        gate = asyncio.Semaphore(50)

        async def start(client: Resilient) -> None:
            async with gate:
                await client.start()

        connect_started = time.monotonic()
        await asyncio.gather(*(start(client) for client in clients))
        connect_time = time.monotonic() - connect_started
        sender = await Member.connect(nodes[0].url, "publisher")
        for room in rooms:
            await sender.join(room)
        publisher = Publisher(sender, rooms, rate=20)
        publisher.start()
        try:
            await asyncio.sleep(seconds(1.0, 30.0))  # traffic before
            victim = nodes[2]
            stormed = [c for c in clients if c.url == victim.url]
            others = [c for c in clients if c.url != victim.url]
            deadline = time.monotonic() + 30
            storm = [asyncio.create_task(c.reconnect(deadline=deadline)) for c in stormed]
            killed_at = time.monotonic()
            victim.kill()
            assert victim.process is not None
            await victim.process.wait()
            await victim.start()  # same port
            restarted_after = time.monotonic() - killed_at
            await asyncio.wait_for(asyncio.gather(*storm), 35)
            await asyncio.sleep(seconds(1.0, 30.0))  # traffic after
        finally:
            await publisher.stop()
        numsub = await view.numsub(*(f"{victim.prefix}:room:{room}" for room in rooms))
        await view.aclose()
        alive = [node.process is not None and node.process.returncode is None for node in nodes]
        closes = sum(1 for c in others if c.member is not None and c.member.closed_at is not None)
        await sender.close()
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    back = [c for c in stormed if c.rejoined_at is not None]
    assert len(back) == len(stormed), f"{len(stormed) - len(back)} clients never rejoined"
    all_back = max(c.rejoined_at or 0 for c in back) - killed_at
    assert all_back <= 30
    assert all(alive), alive
    assert closes == 0, "clients of the surviving nodes were disconnected"
    assert set(numsub.values()) == {3}, numsub
    recovered = [c for c in back if c.rejoin is not None and c.rejoin.get("recovered") is True]
    flagged = [c for c in back if c.rejoin is not None and c.rejoin.get("recovered") is False]
    assert len(recovered) + len(flagged) == len(back)
    assert all(c.exact for c in recovered), "a recovered rejoin did not replay exactly"
    handshakes = sorted(t for c in back for t in c.handshakes)
    window = handshakes[-1] - handshakes[0]
    record("D20", "clients connected", count, "", nodes=3, connect_s=round(connect_time, 1))
    record("D20", "node restarted after", round(restarted_after, 2), "s")
    record("D20", "time to 100% reconnection", round(all_back, 2), "s", clients=len(stormed))
    record(
        "D20",
        "handshakes/s during the storm",
        round(len(handshakes) / max(window, 1e-3)),
        "/s",
        refused_attempts=sum(c.refused for c in back),
    )
    record("D20", "rejoins recovered (exact replay)", 100.0 * len(recovered) / len(back), "%")
    record("D20", "rejoins flagged recovered:false", 100.0 * len(flagged) / len(back), "%")


# E29: bounded history over Redis.


async def test_e29_history_bounded_in_size_and_time_over_redis(redis: PrivateRedis) -> None:
    """One busy room and many small ones, written through two nodes: each room keeps at
    most history_size messages for history_ttl seconds, then Redis holds nothing of them
    (the bookkeeping of idle logs included) and its memory is flat from round to round;
    a replay with a stale epoch is never called recovered, nor partial."""
    from tests.helpers import user_from_query, websockets_asyncio_server
    from tests.redis_support import twin
    from wsroom import ConnectionManager, Room
    from wsroom.backplane.redis import RedisBackplane

    ttl = seconds(3.0, 30.0)

    class Kept(Room):
        history_size = 100
        history_ttl = ttl

    prefix = fresh_prefix()
    node_a = ConnectionManager(
        Kept,
        authenticate=user_from_query,
        backplane=RedisBackplane(redis.url, prefix=prefix, heartbeat=0.5, node_ttl=3),
    )
    node_b = twin(node_a, RedisBackplane(redis.url, prefix=prefix, heartbeat=0.5, node_ttl=3))
    view = RedisView(redis.url)
    busy_count = scale(ci=2000, soak=1_000_000)
    small_rooms = scale(ci=1000, soak=100_000)
    rounds = 2
    memory: list[int] = []  # used_memory once everything expired, per round
    replays: list[float] = []
    async with (
        websockets_asyncio_server(node_a) as url_a,
        websockets_asyncio_server(node_b) as url_b,
    ):
        baseline_memory = (await view.info("memory"))["used_memory"]
        baseline_keys = await view.client.dbsize()
        reader = await Member.connect(url_b, "reader")

        async def burst(calls: Iterator[Awaitable[int]]) -> None:
            """Run the calls 500 at a time (made as they go: a million at soak scale)."""
            while chunk := list(itertools.islice(calls, 500)):
                await asyncio.gather(*chunk)

        async def forgotten() -> bool:
            """Nothing left of the rooms, the idle logs' bookkeeping included."""
            found = [k.decode() async for k in view.client.scan_iter(match=f"{prefix}:*")]
            return found == [f"{prefix}:nodes"]

        for round_ in range(rounds):
            # Nobody in the rooms while they are written (a member would have to read a
            # million frames at soak scale): their logs are idle, bounded just the same.
            started = time.monotonic()
            await burst(
                (node_a if r % 2 else node_b).broadcast(f"small-{r}", {"n": n})
                for r in range(small_rooms)
                for n in range(10)
            )
            await burst(node_a.broadcast("busy", {"n": n}) for n in range(busy_count))
            written_in = time.monotonic() - started
            peak_memory = (await view.info("memory"))["used_memory"]
            lengths, ttls, busy_length = [], [], 0
            async for key in view.client.scan_iter(match=f"{prefix}:room:*", count=1000):
                name = key.decode()
                if name.endswith(":history"):
                    lengths.append(await view.client.llen(name))
                    if name == f"{prefix}:room:{{busy}}:history":
                        busy_length = lengths[-1]
                if name.endswith((":history", ":meta")):
                    ttls.append(await view.client.pttl(name))
            # (Under load, the first small rooms may have expired already: fewer logs.)
            assert len(lengths) <= small_rooms + 1 and busy_length == Kept.history_size
            assert max(lengths) <= Kept.history_size
            # -2: expired between the scan and the PTTL; -1 (no expiry) never.
            assert all(left == -2 or 0 < left <= ttl * 1000 for left in ttls), ttls
            idle = await view.client.zcard(f"{prefix}:idle")
            assert idle <= min(small_rooms + 1, node_a.limits.max_idle_rooms)

            # Replay from the busy room: exactly the last 100, or recovered:false.
            client = await Member.connect(url_a, "late")
            joined = await client.join("busy")
            offset = joined["offset"]
            assert offset == busy_count and len(joined["history"]) == Kept.history_size
            for _ in range(scale(ci=10, soak=200)):
                started = time.monotonic()
                answer = await client.join("busy", since=offset - 100, epoch=joined["epoch"])
                replays.append(time.monotonic() - started)
                assert answer["recovered"] is True
                ids = [m["id"] for m in answer["history"]]
                assert ids == list(range(offset - 99, offset + 1))
                older = await client.join("busy", since=offset - 101, epoch=joined["epoch"])
                assert older["recovered"] is False and len(older["history"]) == 100
            await client.close()

            # Past the TTL: nothing of the rooms left in Redis.
            expired_after = await poll(forgotten, timeout=ttl + 10, interval=0.2, what="expiry")
            memory.append((await view.info("memory"))["used_memory"])
            assert await view.client.dbsize() == baseline_keys
            # A stale epoch after the TTL: a new epoch, nothing replayed, not recovered.
            again = await reader.join("busy", since=offset, epoch=joined["epoch"])
            assert again["recovered"] is False and again["epoch"] != joined["epoch"]
            assert again["history"] == []
            await reader.request({"type": "leave", "room": "busy"})
            await poll(forgotten, timeout=TIMEOUT, interval=0.1, what="the emptied room gone")
            rooms = small_rooms + 1
            record(
                "E29",
                "messages written",
                busy_count + 10 * small_rooms,
                "",
                rooms=rooms,
                seconds=round(written_in, 1),
                round=round_,
            )
            record(
                "E29",
                "Redis memory per room with history",
                round((peak_memory - baseline_memory) / rooms),
                "B",
                history=Kept.history_size,
                round=round_,
            )
            record("E29", "longest history kept", max(lengths), "messages", round=round_)
            record(
                "E29",
                "rooms forgotten after the TTL",
                round(expired_after, 1),
                "s",
                ttl=ttl,
                round=round_,
            )
        await reader.close()
    await view.aclose()
    # Flat: a round leaves Redis as the one before did (the first round warms Redis up:
    # its scripts, its clients' buffers).
    growth = memory[-1] - memory[0]
    assert growth < 256 * 1024, memory
    record(
        "E29",
        "replay p99 for 100 messages",
        round(percentile(replays, 0.99) * 1000, 1),
        "ms",
        replays=len(replays),
    )
    record(
        "E29",
        "Redis memory after the TTL, last round minus first",
        round(growth / 1024),
        "KiB",
        rounds=rounds,
        warm_up_kib=round((memory[0] - baseline_memory) / 1024),
    )


async def test_e29_idle_bookkeeping_follows_the_logs_it_counts(redis: PrivateRedis) -> None:
    """Idle logs of different TTLs: the bookkeeping lives as long as the longest, and
    forgets the ones that expired as others become idle."""
    from wsroom import ConnectionManager, Room
    from wsroom.backplane.redis import RedisBackplane

    class Long(Room):
        history_ttl = 60.0

    class Short(Room):
        history_ttl = 0.5

    def room_class(name: str) -> type[Room]:
        return Long if name.startswith("long") else Short

    prefix = fresh_prefix()
    manager = ConnectionManager(room_class, backplane=RedisBackplane(redis.url, prefix=prefix))
    view = RedisView(redis.url)
    idle = f"{prefix}:idle"
    try:
        async with manager:
            await manager.broadcast("long-1", "kept a minute")
            await manager.broadcast("short-1", "kept half a second")
            assert await view.client.zrange(idle, 0, -1) == [b"long-1", b"short-1"]
            for key in (idle, f"{idle}:bytes", f"{idle}:total"):
                assert 50_000 < await view.client.pttl(key) <= 60_000

            async def short_expired() -> bool:
                return not await view.client.exists(f"{prefix}:room:{{short-1}}:meta")

            await poll(short_expired, timeout=TIMEOUT, interval=0.1, what="short-1 expiry")
            await manager.broadcast("short-2", "kept half a second")
            assert await view.client.zrange(idle, 0, -1) == [b"long-1", b"short-2"]
            sizes = await view.client.hgetall(f"{idle}:bytes")
            assert set(sizes) == {b"long-1", b"short-2"}
            total = await view.client.get(f"{idle}:total")
            assert total is not None and int(total) == sum(map(int, sizes.values()))
            assert 50_000 < await view.client.pttl(idle) <= 60_000
    finally:
        await view.aclose()
