"""The command connections to Redis: a pool, whether Redis answers, calls bounded in time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from ...exceptions import BackplaneError

__all__ = ["Link", "safe_url"]

logger = logging.getLogger("wsroom.backplane")

T = TypeVar("T")


class Link:
    """A Redis client for commands (the subscription has its own connection).

    Args:
        url: The Redis URL.
        timeout: Seconds a command may take before it fails.
        health_check: Seconds after which an idle pooled connection is checked first.
        max_connections: Connections in the pool; more concurrent commands wait for one.
    """

    def __init__(
        self, url: str, *, timeout: float, health_check: float, max_connections: int
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.health_check = health_check
        self.max_connections = max_connections
        self.available = False
        """Whether Redis answered the last command."""
        self.last_error: str | None = None
        """The last failure that made Redis unavailable, for operators."""
        self.last_error_at: float | None = None
        """When :attr:`last_error` happened (seconds since the epoch)."""
        self._client: aioredis.Redis | None = None

    @property
    def client(self) -> aioredis.Redis:
        """The client, while open."""
        if self._client is None:
            raise BackplaneError("the Redis backplane is not started")
        return self._client

    def open(self) -> aioredis.Redis:
        """Create the pool (connections open on first use) and return the client."""
        # A blocking pool makes a burst of commands (a reconnect storm of joins) wait for a
        # connection instead of failing; the wait is bounded by each call's timeout.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=None,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            # A pooled connection idle this long is checked first, so the first command
            # after a Redis restart does not fail on a connection that died meanwhile.
            health_check_interval=self.health_check,
        )
        self._client = aioredis.Redis.from_pool(pool)  # the client owns and closes the pool
        return self._client

    async def close(self) -> None:
        """Close the client and its pool."""
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception as exc:  # closing a client of a dead server may fail: it is gone
                logger.debug("closing the Redis client failed: %s", exc)

    async def drop_idle(self) -> None:
        """Close the pooled connections no command is using.

        After an outage they are sockets to a server that went away (left in CLOSE_WAIT
        until a command picks them up); the pool opens fresh ones as commands need them.
        """
        client = self._client
        if client is None:
            return
        try:
            await client.connection_pool.disconnect(inuse_connections=False)
        except Exception as exc:  # a socket of a dead server may fail to close: it is gone
            logger.debug("closing idle Redis connections failed: %s", exc)

    async def call(self, awaitable: Awaitable[T], *, probe: bool = False) -> T:
        """One Redis operation, bounded in time; failures become BackplaneError.

        While Redis is known to be down, operations fail at once (a client gets its
        error without waiting), except probes, which find out whether it is back.
        """
        if not self.available and not probe:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise BackplaneError("Redis is unavailable; retrying in the background")
        try:
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except TimeoutError as exc:
            # Slow is not down: only this call fails. The heartbeat finds a Redis that
            # stopped answering and makes every call fail fast until it answers again.
            raise BackplaneError("Redis did not answer in time") from exc
        except (RedisError, OSError) as exc:
            self.set_available(False, exc)
            raise BackplaneError(f"Redis command failed: {exc}") from exc

    def set_available(self, available: bool, exc: BaseException | None = None) -> None:
        """Record whether Redis answers; changes are logged."""
        if not available and exc is not None:
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self.last_error_at = time.time()
        if available != self.available:
            if available:
                logger.warning("Redis at %s is reachable again", safe_url(self.url))
            else:
                logger.warning("Redis at %s is unavailable: %s", safe_url(self.url), exc)
        self.available = available


def safe_url(url: str) -> str:
    """The URL without its credentials, for messages and logs: the user and password before
    ``@``, and the value of a ``password`` query parameter (redis-py takes one there too)."""
    scheme, sep, rest = url.partition("://")
    address, mark, query = rest.partition("?")
    if "@" in address:
        address = "***@" + address.rsplit("@", 1)[1]
    if mark:
        query = "&".join(
            f"{name}=***" if name.lower() == "password" else part
            for part in query.split("&")
            for name in (part.partition("=")[0],)
        )
    return f"{scheme}{sep}{address}{mark}{query}"
