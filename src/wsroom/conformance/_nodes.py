"""Several nodes of one adapter sharing rooms through Redis, behind one address."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from wsroom.backplane.base import Backplane
from wsroom.conformance._server import Server, ServerFactory
from wsroom.manager import ConnectionManager


def fresh_prefix() -> str:
    """A key prefix of its own, so tests never see each other's keys on a shared Redis."""
    return f"wsroom-test-{secrets.token_hex(4)}"


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` on the Redis at ``url``."""
    from redis import asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def twin(manager: ConnectionManager, backplane: Backplane) -> ConnectionManager:
    """A second node configured like ``manager``, on ``backplane``."""
    other = ConnectionManager(
        manager._room_class,
        authenticate=manager.authenticate,
        protocol=manager.protocol,
        backplane=backplane,
        limits=manager.limits,
        heartbeat=manager.heartbeat,
        can_direct=manager.can_direct,
        on_connect=manager.on_connect,
        on_disconnect=manager.on_disconnect,
    )
    other.origins = manager.origins
    other._handlers.update(manager._handlers)  # the dispatcher holds this very dict
    return other


def use_backplane(manager: ConnectionManager, backplane: Backplane) -> None:
    """Put a not yet started manager on another backplane (tests build managers inline)."""
    if manager._started:
        raise RuntimeError("the manager is already started: give it its backplane before")
    manager.cluster.backplane = backplane


class RoundRobinProxy:
    """A TCP proxy that sends each new connection to the next upstream port in turn."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.next = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self.ports[self.next % len(self.ports)]
        self.next += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        both = [
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ]
        self.tasks.update(both)
        await asyncio.gather(*both, return_exceptions=True)
        self.tasks.difference_update(both)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def over_redis(server: Server | ServerFactory, redis_url: str | None) -> Server:
    """``server``'s adapter on two nodes sharing rooms through Redis at ``redis_url``.

    Each test's manager is put on a :class:`~wsroom.backplane.redis.RedisBackplane` with a
    key prefix of its own; a second manager configured like it (its rooms, hooks, limits)
    runs on another backplane with that prefix. Each gets its own server from the factory,
    and the URL given to the test is a round-robin TCP proxy's, so that the test's
    clients alternate between the two nodes. The prefix's keys are deleted afterwards.
    With ``redis_url`` ``None``, every test skips (no Redis to run on).

    Args:
        server: A server factory, or a :class:`Server` whose capabilities are kept.
        redis_url: The Redis every test uses, e.g. ``"redis://127.0.0.1:6379/0"``.

    Returns:
        A two-node :class:`Server`, for ``pytest_wsroom_servers``.
    """
    one = server if isinstance(server, Server) else Server(server)

    @asynccontextmanager
    async def two_nodes(manager: ConnectionManager) -> AsyncIterator[str]:
        if redis_url is None:
            import pytest

            pytest.skip("no Redis server to share rooms through")
        from wsroom.backplane.redis import RedisBackplane

        prefix = fresh_prefix()

        def backplane() -> RedisBackplane:
            # Short heartbeats: a test that closes a node sees its presence go in time.
            return RedisBackplane(redis_url, prefix=prefix, heartbeat=0.5, node_ttl=3)

        use_backplane(manager, backplane())
        other = twin(manager, backplane())
        try:
            async with one.factory(manager) as url_a, one.factory(other) as url_b:
                proxy = RoundRobinProxy([_port(url_a), _port(url_b)])
                port = await proxy.start()
                try:
                    yield f"ws://127.0.0.1:{port}"
                finally:
                    await proxy.close()
        finally:
            await delete_prefix(redis_url, prefix)

    return Server(two_nodes, one.lacks, nodes=2)


def _port(url: str) -> int:
    parts = urlsplit(url)
    if parts.hostname != "127.0.0.1" or parts.port is None:
        raise ValueError(f"a server factory must yield ws://127.0.0.1:<port>, not {url!r}")
    return parts.port
