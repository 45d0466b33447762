"""Many nodes, one Redis: processes share rooms, survive each other's death and Redis faults.

Node processes run ``tests/node_process.py``; tests that kill, pause or restart Redis run
their own ``redis-server`` on a free port and signal it by PID.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.helpers import TIMEOUT, Client, wait_for, websockets_asyncio_server
from tests.node_process import HEARTBEAT, NODE_TTL, node_process
from tests.redis_support import (
    PrivateRedis,
    delete_prefix,
    fresh_prefix,
    private_redis,
    twin,
)
from wsroom import BackplaneError, ConnectionManager, Handshake, Room
from wsroom.backplane.base import Append, Appended
from wsroom.backplane.redis import RedisBackplane

pytestmark = pytest.mark.timeout(90)


def user_from_query(handshake: Handshake) -> str | None:
    return handshake.query.get("user") or None


@pytest.fixture
def redis() -> Any:
    with private_redis() as server:
        yield server


async def next_of(client: Client, *types: str) -> dict[str, Any]:
    """The next frame of one of ``types`` (pongs of other checks are skipped)."""
    while True:
        frame = await client.recv()
        if frame["type"] in types:
            return frame


async def test_two_processes_share_messages_history_presence_and_directs(
    redis: PrivateRedis,
) -> None:
    prefix = fresh_prefix()
    async with node_process(redis.url, prefix) as a, node_process(redis.url, prefix) as b:
        alice1 = await a.connect("alice")
        bob = await b.connect("bob")
        alice2 = await b.connect("alice")
        await alice1.join("lobby")
        joined = await bob.join("lobby")
        assert joined["members"] == ["alice", "bob"]
        presence = await next_of(alice1, "presence")
        assert (presence["event"], presence["user"]) == ("join", "bob")

        # A second tab of alice on the other node is not a second member.
        assert (await alice2.join("lobby"))["members"] == ["alice", "bob"]
        await bob.send({"type": "message", "room": "lobby", "data": "hi from b"})
        first = await next_of(alice1, "message", "presence")
        assert (first["type"], first["id"], first["from"]) == ("message", 1, "bob")
        await alice1.send({"type": "message", "room": "lobby", "data": "hi from a", "ref": "r"})
        assert (await next_of(alice1, "message"))["id"] == 2
        assert (await next_of(alice1, "ack"))["id"] == 2
        for client in (bob, alice2):
            assert (await next_of(client, "message"))["id"] == 1
            assert (await next_of(client, "message"))["id"] == 2

        # History written through both nodes, read on either.
        carol = await a.connect("carol")
        history = (await carol.join("lobby"))["history"]
        assert [(m["id"], m["data"]) for m in history] == [(1, "hi from b"), (2, "hi from a")]

        # Direct messages cross nodes; user_offline only when the user is nowhere.
        ack = await bob.request({"type": "direct", "to": "carol", "data": "psst"})
        direct = await next_of(carol, "direct")
        assert (direct["id"], direct["from"], direct["data"]) == (ack["id"], "bob", "psst")
        assert (await bob.request({"type": "direct", "to": "nobody", "data": 1}))[
            "code"
        ] == "user_offline"

        # alice leaves only when her last tab, on either node, is gone.
        await alice1.close()
        await alice2.send({"type": "message", "room": "lobby", "data": "still here"})
        assert (await next_of(bob, "message", "presence"))["type"] == "message"
        await alice2.close()
        leave = await next_of(bob, "presence")
        assert (leave["event"], leave["user"]) == ("leave", "alice")
        await bob.close()
        await carol.close()


async def test_a_killed_node_leaves_presence_in_bounded_time(redis: PrivateRedis) -> None:
    prefix = fresh_prefix()
    async with node_process(redis.url, prefix) as a, node_process(redis.url, prefix) as b:
        bob = await a.connect("bob")
        alice = await b.connect("alice")
        await alice.join("lobby")
        assert (await bob.join("lobby"))["members"] == ["alice", "bob"]
        b.kill()
        started = time.monotonic()
        leave = await next_of(bob, "presence")
        elapsed = time.monotonic() - started
        assert (leave["event"], leave["user"]) == ("leave", "alice")
        # Bounded: the node's TTL plus a heartbeat of the survivor to notice, and slack.
        assert elapsed < NODE_TTL + 2 * HEARTBEAT + 2
        carol = await a.connect("carol")
        assert (await carol.join("lobby"))["members"] == ["bob", "carol"]
        await bob.close()
        await carol.close()


async def _numsub(redis_url: str, channels: list[str]) -> list[int]:
    from redis import asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        return [count for _, count in await client.pubsub_numsub(*channels)]
    finally:
        await client.aclose()


async def test_redis_killed_and_restarted_mid_broadcast(redis: PrivateRedis) -> None:
    prefix = fresh_prefix()
    async with node_process(redis.url, prefix) as a, node_process(redis.url, prefix) as b:
        publisher = await a.connect("pub")
        readers = [await a.connect("r1"), await b.connect("r2")]
        await publisher.join("news")
        for reader in readers:
            await reader.join("news")

        received: list[list[dict[str, Any]]] = [[] for _ in readers]

        async def read(index: int, client: Client) -> None:
            while True:
                frame = await client.recv(timeout=60)
                if frame["type"] in ("message", "gap"):
                    received[index].append(frame)

        tasks = [asyncio.create_task(read(i, c)) for i, c in enumerate(readers)]
        sent = errors = 0

        async def publish(count: int) -> None:
            nonlocal sent, errors
            for _ in range(count):
                answer = await publisher.request({"type": "message", "room": "news", "data": sent})
                if answer["type"] == "ack":
                    sent += 1
                else:
                    assert answer["code"] == "internal_error", answer
                    errors += 1

        await publish(20)
        redis.kill()
        await publish(5)  # refused while Redis is gone, never silently lost
        assert errors >= 1
        redis.start()  # same port, empty: the rooms' ids restart in a new epoch
        started = time.monotonic()
        channels = [f"{prefix}:room:news", f"{prefix}:all"]
        while await _numsub(redis.url, channels) != [2, 2]:
            assert time.monotonic() - started < 10, "nodes did not resubscribe within 10 s"
            await asyncio.sleep(0.1)  # polling another process's state
        # Publishing works again once the publishing node sees Redis back.
        while True:
            answer = await publisher.request({"type": "message", "room": "news", "data": "back"})
            if answer["type"] == "ack":
                break
            assert time.monotonic() - started < 15
            await asyncio.sleep(0.1)
        await publish(10)
        # Each reader got the messages from before the crash, was told of the gap, and then
        # gets the new epoch's messages in order. An ack means Redis numbered the message
        # and the sender's node delivered it; the other node may still lose the very last
        # one if Redis dies before writing it to that node's subscription: its reader is
        # then told by the gap, as for any loss.
        last = sent - 1
        await wait_for(lambda: all(got and got[-1].get("data") == last for got in received))
        for index in range(len(readers)):
            frames = received[index]
            before = frames[: next(i for i, f in enumerate(frames) if f["type"] == "gap")]
            expected = (
                [list(range(1, 21))] if index == 0 else [list(range(1, 21)), list(range(1, 20))]
            )
            assert [f["id"] for f in before] in expected
            gaps = [f for f in frames if f["type"] == "gap"]
            assert gaps, "the reader was not told that it may have missed messages"
            after = frames[frames.index(gaps[-1]) + 1 :]
            assert [f["id"] for f in after] == list(
                range(gaps[-1]["offset"] + 1, gaps[-1]["offset"] + 1 + len(after))
            )
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_stalled_redis_does_not_freeze_the_event_loop(redis: PrivateRedis) -> None:
    prefix = fresh_prefix()
    backplane = RedisBackplane(redis.url, prefix=prefix, heartbeat=0.3, node_ttl=1.5, timeout=2.0)
    manager = ConnectionManager(authenticate=user_from_query, backplane=backplane)
    async with websockets_asyncio_server(manager) as url:
        alice = await Client.connect(url, "/ws?user=alice")
        await alice.join("lobby")
        # The join's presence goes to Redis after 'joined': a pong proves it is done, so
        # that the pings below measure the loop, not this connection's previous frame.
        await alice.request({"type": "ping"})
        redis.pause()  # SIGSTOP: the socket stays open, nothing answers
        try:
            for _ in range(5):
                started = time.monotonic()
                assert (await alice.request({"type": "ping"}))["type"] == "pong"
                # A loop waiting on Redis would answer only after the command timeout.
                assert time.monotonic() - started < backplane.timeout / 2, "the event loop stalled"
            started = time.monotonic()
            answer = await alice.request({"type": "message", "room": "lobby", "data": 1})
            assert answer["code"] == "internal_error"
            assert "temporarily unavailable" in answer["message"]
            assert time.monotonic() - started < backplane.timeout + 1
        finally:
            redis.resume()
        started = time.monotonic()
        while (answer := await alice.request({"type": "message", "room": "lobby", "data": 2}))[
            "type"
        ] != "ack":
            assert time.monotonic() - started < 10
            await asyncio.sleep(0.1)
        await alice.close()


@asynccontextmanager
async def two_nodes(
    url: str, room_class: type[Room] = Room
) -> AsyncIterator[tuple[ConnectionManager, str, ConnectionManager, str]]:
    prefix = fresh_prefix()
    node_a = ConnectionManager(
        room_class, authenticate=user_from_query, backplane=RedisBackplane(url, prefix=prefix)
    )
    node_b = twin(node_a, RedisBackplane(url, prefix=prefix))
    try:
        async with (
            websockets_asyncio_server(node_a) as url_a,
            websockets_asyncio_server(node_b) as url_b,
        ):
            yield node_a, url_a, node_b, url_b
    finally:
        await delete_prefix(url, prefix)


async def test_server_side_api_reaches_every_node(shared_url: str) -> None:
    async with two_nodes(shared_url) as (node_a, _url_a, _node_b, url_b):
        bob = await Client.connect(url_b, "/ws?user=bob")
        bob2 = await Client.connect(url_b, "/ws?user=bob")
        await bob.join("lobby")
        message_id = await node_a.broadcast("lobby", "from node a")
        frame = await next_of(bob, "message")
        assert (frame["id"], frame["from"], frame["data"]) == (message_id, None, "from node a")
        assert await node_a.members("lobby") == ["bob"]
        direct_id = await node_a.send_to_user("bob", "psst", sender="system")
        assert (await next_of(bob, "direct"))["id"] == direct_id
        assert await node_a.send_to_user("nobody", 1) is None
        await node_a.send_all("notice", {"all": True})
        assert (await next_of(bob2, "notice"))["data"] == {"all": True}
        await node_a.disconnect_user("bob", 1008, "banned")
        assert await bob.wait_closed() == 1008
        assert await bob2.wait_closed() == 1008


async def test_garbage_on_the_bus_is_dropped(shared_url: str) -> None:
    from redis import asyncio as aioredis

    async with two_nodes(shared_url) as (node_a, url_a, _node_b, _url_b):
        alice = await Client.connect(url_a, "/ws?user=alice")
        await alice.join("lobby")
        backplane = node_a.backplane
        assert isinstance(backplane, RedisBackplane)
        client = aioredis.from_url(shared_url)
        try:
            channel = f"{backplane.prefix}:room:lobby"
            for garbage in (
                b"",
                b"\x80\x04pickle",
                b"M\nnot-a-number",
                b"E\n\nnot json",
                b"A\n[1,2]",
                b"Z\nwhat",
            ):
                await client.publish(channel, garbage)
            await client.publish(channel, b"E\n\n" + b'{"type":"notice","data":1}')
        finally:
            await client.aclose()
        # Only the valid frame arrives, after the garbage was dropped.
        assert await next_of(alice, "notice") == {"type": "notice", "data": 1}
        assert backplane.dropped_messages == 6


async def test_unreachable_redis_fails_fast_without_leaking_the_password() -> None:
    manager = ConnectionManager(
        backplane=RedisBackplane("redis://user:hunter2@127.0.0.1:1/0", timeout=0.5)
    )
    with pytest.raises(BackplaneError) as failed:
        await manager.start()
    assert "hunter2" not in str(failed.value)
    assert "***@127.0.0.1:1" in str(failed.value)


def test_backplane_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisBackplane(prefix="a{b}")
    with pytest.raises(ValueError, match="node_ttl"):
        RedisBackplane(heartbeat=5, node_ttl=5)


async def test_history_expires_with_the_rooms_ttl(shared_url: str) -> None:
    class Brief(Room):
        history_ttl = 0.2

    async with two_nodes(shared_url, Brief) as (node_a, url_a, _node_b, _url_b):
        alice = await Client.connect(url_a, "/ws?user=alice")
        joined = await alice.join("lobby")
        await alice.request({"type": "message", "room": "lobby", "data": 1})
        await alice.request({"type": "leave", "room": "lobby"})
        backplane = node_a.backplane
        assert isinstance(backplane, RedisBackplane)
        from redis import asyncio as aioredis

        client = aioredis.from_url(shared_url)
        try:
            meta = f"{backplane.prefix}:room:{{lobby}}:meta"
            async with asyncio.timeout(TIMEOUT):
                while await client.exists(meta):  # noqa: ASYNC110 - Redis expires keys itself
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()
        again = await alice.join("lobby")
        assert again["epoch"] != joined["epoch"] and again["offset"] == 0


async def test_redis_restored_from_an_older_snapshot_starts_a_new_epoch(
    redis: PrivateRedis,
) -> None:
    from redis import asyncio as aioredis

    async with two_nodes(redis.url) as (node_a, _url_a, _node_b, url_b):
        reader = await Client.connect(url_b, "/ws?user=reader")
        joined = await reader.join("news")
        for index in range(3):
            await node_a.broadcast("news", index)
        client = aioredis.from_url(redis.url)
        try:
            await client.save()  # a snapshot holding ids 1 to 3
        finally:
            await client.aclose()
        for index in range(3, 5):
            await node_a.broadcast("news", index)
        assert [(await next_of(reader, "message"))["id"] for _ in range(5)] == [1, 2, 3, 4, 5]
        redis.kill()
        redis.start()  # restores the snapshot: the room's sequence is back at 3
        started = time.monotonic()
        while True:
            try:
                message_id = await node_a.broadcast("news", "after the restart")
                break
            except BackplaneError:
                assert time.monotonic() - started < 10
                await asyncio.sleep(0.1)
        # Ids 4 and 5 would be handed out again; a new epoch makes that impossible to miss.
        gap = await next_of(reader, "gap")
        assert gap["epoch"] != joined["epoch"]
        frame = await next_of(reader, "message")
        assert (frame["id"], frame["data"]) == (message_id, "after the restart")
        assert frame["id"] == gap["offset"] + 1
        await reader.close()


async def test_concurrent_broadcasts_are_pipelined_in_call_order(
    shared_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipelines: list[list[int]] = []  # per round trip, the messages of each script call
    original = RedisBackplane.append

    async def counted(
        self: RedisBackplane, batch: Sequence[Append]
    ) -> list[Appended | BaseException]:
        pipelines.append([len(run.records) for run in batch])
        return await original(self, batch)

    monkeypatch.setattr(RedisBackplane, "append", counted)
    async with two_nodes(shared_url) as (node_a, _url_a, _node_b, url_b):
        bob = await Client.connect(url_b, "/ws?user=bob")
        await bob.join("lobby")
        count = 300
        ids = await asyncio.gather(*(node_a.broadcast("lobby", i) for i in range(count)))
        assert ids == list(range(ids[0], ids[0] + count))
        frames = [await next_of(bob, "message") for _ in range(count)]
        assert [(f["id"], f["data"]) for f in frames] == list(zip(ids, range(count), strict=True))
        # A few round trips carried them all, each as one script call for the room.
        assert sum(map(sum, pipelines)) == count and len(pipelines) <= 4, pipelines
        assert all(len(runs) == 1 for runs in pipelines), pipelines
        await bob.close()


async def test_a_threads_stream_over_redis_arrives_in_order(shared_url: str) -> None:
    async with two_nodes(shared_url) as (node_a, _url_a, _node_b, url_b):
        bob = await Client.connect(url_b, "/ws?user=bob")
        await bob.join("lobby")
        count = 300

        def stream() -> list[int]:
            futures = [node_a.from_thread.broadcast_nowait("lobby", i) for i in range(count)]
            return [future.result(TIMEOUT) or 0 for future in futures]

        ids = await asyncio.to_thread(stream)
        assert ids == sorted(ids) and len(set(ids)) == count
        frames = [await next_of(bob, "message") for _ in range(count)]
        assert [(f["id"], f["data"]) for f in frames] == list(zip(ids, range(count), strict=True))
        await bob.close()


async def test_publishes_recover_when_redis_forgets_its_scripts(redis: PrivateRedis) -> None:
    from redis import asyncio as aioredis

    async with two_nodes(redis.url) as (node_a, _url_a, _node_b, url_b):
        bob = await Client.connect(url_b, "/ws?user=bob")
        await bob.join("lobby")
        first = await node_a.broadcast("lobby", "before")
        client = aioredis.from_url(redis.url)
        try:
            await client.script_flush()  # what a Redis restarted without its scripts has
        finally:
            await client.aclose()
        ids = await asyncio.gather(*(node_a.broadcast("lobby", i) for i in range(5)))
        assert ids == list(range(first + 1, first + 6))
        frames = [await next_of(bob, "message") for _ in range(6)]
        assert [f["data"] for f in frames] == ["before", 0, 1, 2, 3, 4]
        await bob.close()


class ShortHistory(Room):
    history_size = 5


async def test_batched_publishes_keep_rooms_ids_history_and_exclusions_apart(
    shared_url: str,
) -> None:
    async with two_nodes(shared_url, ShortHistory) as (node_a, _url_a, node_b, url_b):
        bob = await Client.connect(url_b, "/ws?user=bob")
        epochs = {room: (await bob.join(room))["epoch"] for room in ("red", "blue")}
        carol = await Client.connect(url_b, "/ws?user=carol")
        await carol.join("red")
        # Carol is on the other node: her exclusion travels over the bus, by id.
        excluded = node_b.connection(carol.welcome["connection"])
        assert excluded is not None
        # Interleaved rooms, a newline in the data, one message not for carol: one pipeline.
        calls = []
        for i in range(12):
            room = "red" if i % 3 else "blue"
            data = {"i": i, "text": f"line\nbreak {i}"}
            calls.append(node_a.broadcast(room, data, exclude=excluded if i == 4 else None))
        ids = await asyncio.gather(*calls)
        red_ids = [ids[i] for i in range(12) if i % 3]
        blue_ids = [ids[i] for i in range(12) if not i % 3]
        assert red_ids == list(range(red_ids[0], red_ids[0] + 8))
        assert blue_ids == list(range(blue_ids[0], blue_ids[0] + 4))
        frames = [await next_of(bob, "message") for _ in range(12)]
        assert [(f["room"], f["id"], f["data"]["i"]) for f in frames] == [
            ("red" if i % 3 else "blue", ids[i], i) for i in range(12)
        ]
        assert frames[5]["data"]["text"] == "line\nbreak 5"
        carol_frames = [await next_of(carol, "message") for _ in range(7)]
        assert [f["data"]["i"] for f in carol_frames] == [1, 2, 5, 7, 8, 10, 11]
        # The history kept the last five of the red batch, with their ids.
        dave = await Client.connect(url_b, "/ws?user=dave")
        joined = await dave.join("red", since=red_ids[0], epoch=epochs["red"])
        assert joined["recovered"] is False  # older than the five kept
        assert [m["id"] for m in joined["history"]] == red_ids[-5:]
        assert [m["data"]["i"] for m in joined["history"]] == [5, 7, 8, 10, 11]
        for client in (bob, carol, dave):
            await client.close()


async def test_a_threads_messages_and_events_arrive_in_call_order(shared_url: str) -> None:
    async with two_nodes(shared_url) as (node_a, _url_a, _node_b, url_b):
        bob = await Client.connect(url_b, "/ws?user=bob")
        await bob.join("lobby")
        portal = node_a.from_thread

        def publish() -> None:
            for round_ in range(20):
                portal.broadcast_nowait("lobby", f"m{round_}")
                portal.broadcast_event("lobby", "tick", f"e{round_}")  # waits: one batch each
            portal.broadcast_nowait("lobby", "end").result(TIMEOUT)

        await asyncio.to_thread(publish)
        seen: list[str] = []
        while not seen or seen[-1] != "end":
            frame = await next_of(bob, "message", "tick")
            seen.append(frame["data"])
        assert seen == [x for r in range(20) for x in (f"m{r}", f"e{r}")] + ["end"]
        await bob.close()
