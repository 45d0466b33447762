"""What a Redis deployment keeps: no key for rooms that never had a message once no node
serves them, and idle logs bounded in count and bytes, least recently used dropped first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from tests.helpers import TIMEOUT, connect_as, user_from_query, websockets_asyncio_server
from tests.redis_support import delete_prefix, fresh_prefix, twin
from wsroom import ConnectionManager, Limits
from wsroom.backplane.redis import RedisBackplane

pytestmark = pytest.mark.timeout(60)


class Nodes:
    """Two nodes sharing rooms over Redis, and a client of that Redis to look at its keys."""

    def __init__(self, redis: Any, prefix: str, managers: list[ConnectionManager]) -> None:
        self.redis = redis
        self.prefix = prefix
        self.managers = managers
        self.urls: list[str] = []

    async def keys(self) -> set[str]:
        found = self.redis.scan_iter(match=f"{self.prefix}:*", count=500)
        return {key.decode().removeprefix(f"{self.prefix}:") async for key in found}

    async def logs(self) -> set[str]:
        """Rooms with a log (a ``meta`` key)."""
        return {
            key.removeprefix("room:{").removesuffix("}:meta")
            for key in await self.keys()
            if key.endswith(":meta")
        }

    async def idle(self) -> tuple[list[str], int]:
        """The idle logs, least recently used first, and their bytes."""
        rooms = await self.redis.zrange(f"{self.prefix}:idle", 0, -1)
        total = await self.redis.get(f"{self.prefix}:idle:total")
        return [room.decode() for room in rooms], int(total or 0)

    async def visit(self, node: int, room: str, *data: Any) -> dict[str, Any]:
        """A client joins ``room`` on ``node`` alone, posts ``data`` and leaves; returns
        once Redis knows the room is empty (its log is gone or idle)."""
        client = await connect_as(self.urls[node], "visitor")
        joined = await client.join(room)
        for value in data:
            await client.request({"type": "message", "room": room, "data": value})
        await client.request({"type": "leave", "room": room})
        await client.close()
        await eventually(lambda: self.emptied(room, bool(data)))
        return joined

    async def emptied(self, room: str, written: bool) -> bool:
        idle, _ = await self.idle()
        return room in idle if written else room not in await self.logs()


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll Redis, whose state no event of ours announces, until ``check`` holds."""
    async with asyncio.timeout(TIMEOUT):
        while not await check():  # noqa: ASYNC110 - Redis state has no event to await
            await asyncio.sleep(0.02)


@asynccontextmanager
async def two_nodes(url: str, **limits: Any) -> AsyncIterator[Nodes]:
    from redis import asyncio as aioredis

    prefix = fresh_prefix()
    node_a = ConnectionManager(
        authenticate=user_from_query,
        limits=Limits(**limits),
        backplane=RedisBackplane(url, prefix=prefix),
    )
    node_b = twin(node_a, RedisBackplane(url, prefix=prefix))
    redis = aioredis.from_url(url)
    nodes = Nodes(redis, prefix, [node_a, node_b])
    try:
        async with (
            websockets_asyncio_server(node_a) as url_a,
            websockets_asyncio_server(node_b) as url_b,
        ):
            nodes.urls = [url_a, url_b]
            yield nodes
    finally:
        await redis.aclose()
        await delete_prefix(url, prefix)


async def test_an_emptied_room_without_messages_leaves_no_key(shared_url: str) -> None:
    async with two_nodes(shared_url) as nodes:
        alice = await connect_as(nodes.urls[0], "alice")
        bob = await connect_as(nodes.urls[1], "bob")
        joined = await alice.join("quiet")
        await bob.join("quiet")
        assert {"room:{quiet}:meta", "room:{quiet}:members"} <= await nodes.keys()
        await alice.request({"type": "leave", "room": "quiet"})
        # Node b still serves the room: its epoch holds.
        assert (await alice.join("quiet"))["epoch"] == joined["epoch"]
        await alice.request({"type": "leave", "room": "quiet"})
        await bob.request({"type": "leave", "room": "quiet"})

        async def only_nodes_left() -> bool:
            return await nodes.keys() == {"nodes"}

        await eventually(only_nodes_left)
        for index in range(20):
            await nodes.visit(index % 2, f"quiet-{index}")
        assert await nodes.keys() == {"nodes"}
        await alice.close()
        await bob.close()


async def test_idle_logs_are_bounded_in_count_least_recently_used_first(shared_url: str) -> None:
    async with two_nodes(shared_url, max_idle_rooms=3) as nodes:
        for index, room in enumerate("abcd"):
            await nodes.visit(index % 2, room, "hello")
        assert (await nodes.idle())[0] == ["b", "c", "d"]  # "a" went first
        assert await nodes.logs() == {"b", "c", "d"}
        # A server broadcast to an idle room is a use: "c" is now the oldest.
        await nodes.managers[0].broadcast("b", "still here")
        assert (await nodes.idle())[0] == ["c", "d", "b"]
        await nodes.visit(1, "e", "hello")
        assert (await nodes.idle())[0] == ["d", "b", "e"]
        assert await nodes.logs() == {"b", "d", "e"}
        # A join takes its room out of the idle logs; the others stay within the bound.
        carol = await connect_as(nodes.urls[0], "carol")
        joined = await carol.join("b")
        assert [m["data"] for m in joined["history"]] == ["hello", "still here"]
        assert (await nodes.idle())[0] == ["d", "e"]
        for room in ("f", "g"):
            await nodes.visit(1, room, "hello")
        assert (await nodes.idle())[0] == ["e", "f", "g"]
        assert await nodes.logs() == {"b", "e", "f", "g"}  # "b" is served: never dropped
        await carol.close()


async def test_idle_logs_are_bounded_in_bytes(shared_url: str) -> None:
    async with two_nodes(shared_url, max_idle_history_bytes=3_500) as nodes:
        # Each history entry is the id, the item's header and the encoded envelope: just
        # over 1 kB with 1,000 bytes of data, so three fit and the fourth pushes one out.
        for index, room in enumerate("abcd"):
            await nodes.visit(index % 2, room, "x" * 1000)
        rooms, total = await nodes.idle()
        assert rooms == ["b", "c", "d"]
        assert 3_000 < total <= 3_500
        assert await nodes.logs() == {"b", "c", "d"}
        # The byte count follows the history: a longer one replaces the shorter one.
        await nodes.managers[1].broadcast("d", "y" * 100)
        rooms, total = await nodes.idle()
        assert rooms == ["b", "c", "d"] and total > 3_000
        await nodes.managers[0].broadcast("d", "z" * 1000)
        rooms, total = await nodes.idle()
        assert rooms == ["c", "d"] and total <= 3_500
