"""The in-memory backplane: recovery rules, history retention and the bounds of idle rooms."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.helpers import Client, connect_as, websockets_asyncio_server
from tests.node_process import node_process
from wsroom import ConnectionManager, Limits, MemoryBackplane, Room
from wsroom.backplane.base import recovery_snapshot

pytestmark = pytest.mark.timeout(30)


def _history(first: int, last: int) -> list[dict[str, Any]]:
    return [{"type": "message", "id": i} for i in range(first, last + 1)]


@pytest.mark.parametrize(
    ("since", "epoch", "recovered", "ids"),
    [
        (None, None, None, [8, 9, 10]),  # no since: newest history, no verdict
        (10, "e1", True, []),  # nothing missed
        (7, "e1", True, [8, 9, 10]),  # exactly what was missed
        (8, None, True, [9, 10]),  # no epoch: judged on ids alone
        (5, "e1", False, [8, 9, 10]),  # message 6 is gone: never a partial replay
        (7, "e0", False, [8, 9, 10]),  # another epoch: ids mean nothing
        (11, "e1", False, [8, 9, 10]),  # ahead of the room: the sequence restarted
        (11, None, False, [8, 9, 10]),
    ],
)
def test_recovery_rules(
    since: int | None, epoch: str | None, recovered: bool | None, ids: list[int]
) -> None:
    snapshot = recovery_snapshot(_history(7, 10), 10, "e1", since=since, epoch=epoch, limit=3)
    assert snapshot.recovered is recovered
    assert [frame["id"] for frame in snapshot.history] == ids
    assert (snapshot.offset, snapshot.epoch) == (10, "e1")


def test_recovery_without_history() -> None:
    assert recovery_snapshot([], 0, "e", since=0, epoch="e", limit=0).recovered is True
    assert recovery_snapshot([], 5, "e", since=4, epoch="e", limit=0).recovered is False


class Short(Room):
    history_size = 3
    history_ttl = 0.05


@asynccontextmanager
async def server(
    room_class: type[Room] = Room, **limits: Any
) -> AsyncIterator[tuple[ConnectionManager, str]]:
    manager = ConnectionManager(room_class, limits=Limits.without_rate_limits(**limits))
    async with websockets_asyncio_server(manager) as url:
        yield manager, url


async def visit(url: str, room: str, *data: Any) -> dict[str, Any]:
    """Join ``room`` alone, post ``data``, leave: the room is emptied. Returns the join's
    ``joined``."""
    client = await Client.connect(url)
    joined = await client.join(room)
    for value in data:
        await client.request({"type": "message", "room": room, "data": value})
    await client.request({"type": "leave", "room": room})  # answered once it is out
    await client.close()
    return joined


async def kept(url: str, room: str, joined: dict[str, Any]) -> bool:
    """Whether the room still has the log ``joined`` described (same epoch, same ids)."""
    client = await Client.connect(url)
    again = await client.join(room, since=joined["offset"], epoch=joined["epoch"])
    await client.request({"type": "leave", "room": room})
    await client.close()
    return bool(again["recovered"]) and again["epoch"] == joined["epoch"]


def logs(manager: ConnectionManager) -> tuple[int, int]:
    """(logs of served rooms, logs of emptied rooms) the backplane holds."""
    backplane = manager.backplane
    assert isinstance(backplane, MemoryBackplane)
    return len(backplane._served), len(backplane._idle)


async def test_history_expires_after_ttl_once_the_room_is_empty() -> None:
    async with server(Short) as (manager, url):
        joined = await visit(url, "r", 1)
        after = {**joined, "offset": 1}
        assert await kept(url, "r", after)  # still there right after the room emptied
        await asyncio.sleep(Short.history_ttl * 2)  # the TTL passes with nobody in the room
        assert not await kept(url, "r", after)
        assert logs(manager) == (0, 0)


async def test_history_of_a_room_with_members_never_expires() -> None:
    async with server(Short, max_idle_rooms=1) as (manager, url):
        alice = await Client.connect(url)
        joined = await alice.join("r")
        await alice.request({"type": "message", "room": "r", "data": 1})
        await asyncio.sleep(Short.history_ttl * 2)
        for index in range(3):  # idle rooms come and go, beyond their bound
            await visit(url, f"other-{index}", "x")
        ack = await alice.request({"type": "message", "room": "r", "data": 2})
        assert ack["id"] == 2
        assert (await alice.join("r"))["epoch"] == joined["epoch"]
        assert logs(manager) == (1, 1)


async def test_history_is_bounded_and_oldest_first() -> None:
    async with server(Short) as (_manager, url):
        alice = await Client.connect(url)
        await alice.join("r")
        for index in range(5):
            await alice.request({"type": "message", "room": "r", "data": index})
        history = (await alice.join("r"))["history"]
        assert [m["data"] for m in history] == [2, 3, 4]
        assert [m["id"] for m in history] == [3, 4, 5]


async def test_rooms_without_a_message_cost_nothing_once_emptied() -> None:
    async with server() as (manager, url):
        alice = await Client.connect(url)
        bob = await Client.connect(url)
        first = await alice.join("quiet")
        await bob.join("quiet")
        await alice.request({"type": "leave", "room": "quiet"})
        # While anyone is in the room its epoch holds.
        assert (await alice.join("quiet"))["epoch"] == first["epoch"]
        assert logs(manager) == (1, 0)
        for client in (alice, bob):
            await client.request({"type": "leave", "room": "quiet"})
        assert logs(manager) == (0, 0)
        for index in range(50):
            await visit(url, f"quiet-{index}")
        assert logs(manager) == (0, 0)


async def test_idle_rooms_are_bounded_in_count_least_recently_used_first() -> None:
    async with server(max_idle_rooms=3) as (manager, url):
        joined = {name: await visit(url, name, "hello") for name in "abcd"}
        assert logs(manager) == (0, 3)  # "a", the least recently used, went first
        await manager.broadcast("b", "still here")  # a use: "c" is now the oldest
        joined["e"] = await visit(url, "e", "hello")
        assert logs(manager) == (0, 3)
        offsets = {"b": 2}
        # A check joins the room: a use, which an emptied room survives at the back.
        assert [
            name
            for name in "abcde"
            if await kept(url, name, {**joined[name], "offset": offsets.get(name, 1)})
        ] == ["b", "d", "e"]
        assert logs(manager) == (0, 3)


async def test_idle_rooms_are_bounded_in_bytes() -> None:
    # An item is a few bytes of header plus the encoded {"from", "data", "ts"}: ~60 bytes
    # here with 1,000 bytes of data, so each room's history is just over 1 kB.
    async with server(max_idle_history_bytes=3_500) as (manager, url):
        joined = {name: await visit(url, name, "x" * 1000) for name in "abcd"}
        assert logs(manager) == (0, 3)
        assert not await kept(url, "a", {**joined["a"], "offset": 1})
        assert await kept(url, "d", {**joined["d"], "offset": 1})
        backplane = manager.backplane
        assert isinstance(backplane, MemoryBackplane)
        assert 0 < backplane._idle_size <= 3_500


async def test_a_server_broadcast_to_an_empty_room_is_kept_and_bounded() -> None:
    async with server(max_idle_rooms=2) as (manager, url):
        for name in ("n1", "n2", "n3"):
            assert await manager.broadcast(name, "news") == 1
        assert logs(manager) == (0, 2)
        alice = await connect_as(url, "alice")
        joined = await alice.join("n3")
        assert [m["data"] for m in joined["history"]] == ["news"]
        assert logs(manager) == (1, 1)


async def churn(ws: Any, first: int, count: int, chunk: int = 400) -> None:
    """Join and leave ``count`` rooms, one after the other, pipelined ``chunk`` at a time."""
    for start in range(first, first + count, chunk):
        rooms = range(start, min(start + chunk, first + count))
        for index in rooms:
            await ws.send(f'{{"type":"join","room":"room-{index}"}}')
            await ws.send(f'{{"type":"leave","room":"room-{index}"}}')
        for _ in range(2 * len(rooms)):
            answer = await ws.recv()
            assert '"error"' not in answer, answer


@pytest.mark.timeout(120)
async def test_100k_rooms_joined_and_left_move_the_servers_memory_by_less_than_20_mb() -> None:
    import psutil
    import websockets

    async with node_process("memory") as node:
        server = psutil.Process(node.process.pid)
        async with websockets.connect(f"{node.url}/ws?user=alice", compression=None) as ws:
            await ws.recv()  # welcome
            await churn(ws, 0, 5_000)  # the allocator's and the interpreter's own growth
            before = server.memory_info().rss
            await churn(ws, 5_000, 100_000)
            grown = server.memory_info().rss - before
        assert grown < 20 * 1024 * 1024, f"{grown / 1024 / 1024:.1f} MB"
