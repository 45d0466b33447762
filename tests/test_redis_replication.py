"""Epochs across replication: a primary that was demoted, lost writes and was promoted
again, in the same process, must not hand out the lost ids again in the same epoch.

The failover by Sentinel, with a replica that is behind, is reliability scenario C18
(tests/reliability/test_redis_failover.py); this is the case a SIGKILL cannot show: the
server keeps its ``run_id``, only its replication history changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis import asyncio as aioredis

from tests.helpers import TIMEOUT, Client, websockets_asyncio_server
from tests.redis_support import fresh_prefix, private_redis
from wsroom import ConnectionManager
from wsroom.backplane.redis import RedisBackplane

pytestmark = pytest.mark.timeout(60)


async def until(check: Any, timeout: float = TIMEOUT * 2) -> None:
    """Poll another server's state (replication has no event to await)."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - another server's state
            await asyncio.sleep(0.05)


async def synced(replica: aioredis.Redis) -> bool:
    info = await replica.info("replication")
    return bool(info.get("master_link_status") == "up")


async def test_a_primary_promoted_again_starts_a_new_epoch() -> None:
    with private_redis() as first, private_redis() as second:
        prefix = fresh_prefix()
        meta = f"{prefix}:room:{{lobby}}:meta"
        p = aioredis.Redis(port=first.port, socket_timeout=TIMEOUT)
        r = aioredis.Redis(port=second.port, socket_timeout=TIMEOUT)
        backplane = RedisBackplane(first.url, prefix=prefix, heartbeat=0.3, node_ttl=2)
        manager = ConnectionManager(backplane=backplane)
        try:
            await r.replicaof("127.0.0.1", first.port)
            await until(lambda: synced(r))
            async with websockets_asyncio_server(manager) as url:
                member = await Client.connect(url)
                epoch = (await member.join("lobby"))["epoch"]
                assert [await manager.broadcast("lobby", n) for n in range(3)] == [1, 2, 3]

                async def replicated() -> bool:
                    return await r.hget(meta, "seq") == b"3"

                await until(replicated)
                # A partition: the replica is promoted, the old primary takes two more
                # messages that its clients see, then follows the new primary and loses them.
                await r.replicaof("NO", "ONE")
                assert await manager.broadcast("lobby", "seen, then lost") == 4
                assert await manager.broadcast("lobby", "seen, then lost") == 5
                await p.replicaof("127.0.0.1", second.port)

                async def rolled_back() -> bool:
                    return await synced(p) and await p.hget(meta, "seq") == b"3"

                await until(rolled_back)
                # Promoted again: the same process (same run_id), another history.
                await p.replicaof("NO", "ONE")

                async def published() -> bool:
                    try:
                        await manager.broadcast("lobby", "after")
                    except Exception:
                        return False  # read-only until the node's next command sees it
                    return True

                await until(published)
                seen = [(await member.recv_type("message"))["data"] for _ in range(5)]
                assert seen == [0, 1, 2, "seen, then lost", "seen, then lost"]
                # Ids 4 and 5 are not handed out again in the epoch they were seen in.
                gap = await member.recv_type("gap")
                assert gap["epoch"] != epoch
                after = await member.recv_type("message")
                assert after["data"] == "after"
                assert await p.hget(meta, "epoch") == gap["epoch"].encode()
                await member.close()
        finally:
            await manager.shutdown()
            await p.aclose()
            await r.aclose()


async def test_meta_written_before_the_replid_was_recorded_keeps_its_epoch(
    shared_url: str,
) -> None:
    prefix = fresh_prefix()
    meta = f"{prefix}:room:{{lobby}}:meta"
    client = aioredis.Redis.from_url(shared_url, socket_timeout=TIMEOUT)
    manager = ConnectionManager(backplane=RedisBackplane(shared_url, prefix=prefix))
    try:
        async with websockets_asyncio_server(manager) as url:
            member = await Client.connect(url)
            epoch = (await member.join("lobby"))["epoch"]
            assert await manager.broadcast("lobby", 1) == 1
            # As an earlier version wrote it: no 'repl'. An upgrade is not a new epoch.
            await client.hdel(meta, "repl")
            assert await manager.broadcast("lobby", 2) == 2
            frames = [await member.recv_type("message") for _ in range(2)]
            assert [f["id"] for f in frames] == [1, 2]
            assert await client.hget(meta, "epoch") == epoch.encode()
            assert await client.hget(meta, "repl")
            await member.close()
    finally:
        await manager.shutdown()
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
