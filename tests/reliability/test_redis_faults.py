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
import time
from collections.abc import AsyncIterator, Iterator, Sequence
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
    Tracker,
    node_cluster,
    percentile,
    poll,
)
from tests.reliability.suite import SOAK, record, scale, seconds

pytestmark = pytest.mark.timeout(600 if SOAK else 90)

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

    def reference(self, room: str) -> Tracker:
        """The publisher's own copies: the epoch and id of every message it published."""
        return Tracker.of(self.publisher, room, self.published[room])

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
        references = {room: sc.reference(room) for room in ROOMS}
        lost_by_node: dict[int, int] = {node.pid: 0 for node in sc.nodes}
        affected = notified = 0
        for reader in sc.readers:
            tracker = reader.tracker()
            missing = tracker.missing(acked[reader.room])
            assert not tracker.duplicates and not tracker.order_violations, reader.member.user
            assert not tracker.unsignalled(missing, references[reader.room]), reader.member.user
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
    references = {room: sc.reference(room) for room in ROOMS}
    lost = {node.pid: 0 for node in sc.nodes}
    gaps = {node.pid: 0 for node in sc.nodes}
    for reader in sc.readers:
        tracker = reader.tracker()
        missing = tracker.missing(acked[reader.room])
        assert not tracker.duplicates and not tracker.order_violations, reader.member.user
        assert not tracker.unsignalled(missing, references[reader.room]), reader.member.user
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
    async with scene(redis, ["websockets"] * 3, per_room=scale(ci=1, soak=20)) as sc:
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
        publisher = Publisher(sc.publisher, ROOMS, RATE)
        publisher.start()
        await asyncio.sleep(seconds(1.0, 30.0))  # traffic before
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
            calls = []
            while stalling:
                calls.append(asyncio.create_task(broadcast(len(calls))))
                await asyncio.sleep(1 / RATE)
            await asyncio.gather(*calls)

        for prober in probers:
            await prober.request({"type": "probe"}, event="probe")  # resets the lag window
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
    assert all(lag["p99"] < 50 for lag in lags), lags
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
    for node, lag, rtts in zip(sc.nodes, lags, pings, strict=True):
        record(
            "C13",
            "event loop lag p99 during the stall",
            round(lag["p99"], 1),
            "ms",
            pid=node.pid,
            max_ms=round(lag["max"], 1),
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
