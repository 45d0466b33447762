"""The command connections to Redis: a pool, whether Redis answers, calls bounded in time.

The pool is the backplane's own, made from a URL, or the one of a client the application
built (Sentinel, TLS, credential providers): that client stays the application's, and is
never closed here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from redis import asyncio as aioredis, exceptions as redis_exceptions
from redis.exceptions import RedisError

from ...exceptions import BackplaneError

__all__ = ["Link", "check_client", "describe", "pool_full", "safe_url"]

logger = logging.getLogger("wsroom.backplane")

T = TypeVar("T")

# A pool that is full is not a Redis that is down: only that call fails (redis-py 5.0 raised
# a plain ConnectionError, recognised by its text).
_POOL_FULL: tuple[type[Exception], ...] = tuple(
    cls for cls in [getattr(redis_exceptions, "MaxConnectionsError", None)] if cls is not None
)


class Link:
    """A Redis client for commands (the subscription has its own connection).

    Args:
        target: The Redis URL, or a client the application built and keeps owning.
        timeout: Seconds a command may take before it fails.
        health_check: Seconds after which an idle pooled connection is checked first (for
            the pool made from a URL; a given client keeps its own settings).
        max_connections: Commands in flight at once; more wait for one of them to end (with
            a given client, also no more than its pool holds beside the subscription and
            the heartbeat).
    """

    def __init__(
        self,
        target: str | aioredis.Redis,
        *,
        timeout: float,
        health_check: float,
        max_connections: int,
    ) -> None:
        self.url = target if isinstance(target, str) else None
        self.given = None if isinstance(target, str) else target
        """The application's client, which the link uses and never closes."""
        self.where = safe_url(target) if isinstance(target, str) else describe(target)
        """Where Redis is, for messages and logs (never with a password)."""
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
        # The pool made from a URL blocks beyond max_connections; a given client's pool may
        # be unbounded or fail when full, so the link bounds its own commands instead.
        self._slots = (
            None if self.given is None else asyncio.Semaphore(slots(self.given, max_connections))
        )

    @property
    def client(self) -> aioredis.Redis:
        """The client, while open."""
        if self._client is None:
            raise BackplaneError("the Redis backplane is not started")
        return self._client

    def open(self) -> aioredis.Redis:
        """Create the pool (connections open on first use) and return the client; a
        given client is returned as it is."""
        if self.given is not None:
            self._client = self.given
            return self.given
        assert self.url is not None
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
        """Close the client and its pool, unless the application gave them."""
        client, self._client = self._client, None
        if client is not None and client is not self.given:
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
                if self._slots is None:
                    return await awaitable
                async with self._slots:
                    return await awaitable
        except TimeoutError as exc:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()  # still waiting for a slot: never started
            # Slow is not down: only this call fails. The heartbeat finds a Redis that
            # stopped answering and makes every call fail fast until it answers again.
            raise BackplaneError("Redis did not answer in time") from exc
        except (RedisError, OSError) as exc:
            if pool_full(exc):
                raise BackplaneError(f"no Redis connection free: {exc}") from exc
            self.set_available(False, exc)
            raise BackplaneError(f"Redis command failed: {exc}") from exc

    def set_available(self, available: bool, exc: BaseException | None = None) -> None:
        """Record whether Redis answers; changes are logged."""
        if not available and exc is not None:
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self.last_error_at = time.time()
        if available != self.available:
            if available:
                logger.warning("Redis at %s is reachable again", self.where)
            else:
                logger.warning("Redis at %s is unavailable: %s", self.where, exc)
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


def pool_full(exc: BaseException | None) -> bool:
    """Whether a failure (or what caused it) is only a pool without a free connection."""
    while exc is not None:
        if isinstance(exc, _POOL_FULL) or (
            isinstance(exc, RedisError) and str(exc) == "Too many connections"
        ):
            return True
        exc = exc.__cause__
    return False


def describe(client: aioredis.Redis) -> str:
    """Where a client's connections go, for messages and logs: never its credentials."""
    pool = client.connection_pool
    service = getattr(pool, "service_name", None)
    if service is not None:
        return f"Sentinel service {service!r}"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    scheme = "rediss" if issubclass(pool.connection_class, aioredis.SSLConnection) else "redis"
    host, port, db = kwargs.get("host", "localhost"), kwargs.get("port", 6379), kwargs.get("db", 0)
    return f"{scheme}://{host}:{port}/{db}"


def check_client(client: object, max_connections: int) -> None:
    """Refuse, with what to do instead, a client the backplane cannot work with."""
    if not isinstance(client, aioredis.Redis):
        kind = f"{type(client).__module__}.{type(client).__qualname__}"
        if "cluster" in kind.lower():
            hint = "Redis Cluster is not supported: give a client of one server"
        elif kind.startswith("redis."):
            hint = "use redis.asyncio (redis.asyncio.Redis, or Sentinel(...).master_for(...))"
        else:
            hint = "give a redis.asyncio.Redis, or Sentinel(...).master_for(...)"
        raise TypeError(f"client must be a redis.asyncio.Redis, not {kind}: {hint}")
    pool = client.connection_pool
    if pool.connection_kwargs.get("decode_responses"):
        raise ValueError(
            "the client decodes responses (decode_responses=True), which would corrupt the"
            " backplane's binary messages: give the backplane a client of its own created"
            " without decode_responses"
        )
    if getattr(pool, "is_master", True) is False:
        raise ValueError(
            "the client is a replica's (Sentinel.slave_for), where the backplane cannot"
            " write: use Sentinel.master_for"
        )
    if slots(client, max_connections) < 1:
        raise ValueError(
            "the client's pool fails when full and has room for the backplane's"
            " subscription and heartbeat only: give it at least three connections, or use"
            " a BlockingConnectionPool"
        )


def slots(client: aioredis.Redis, max_connections: int) -> int:
    """Commands the backplane may have in flight on a client's pool: ``max_connections``,
    and no more than a pool that fails when full holds beside the subscription and the
    heartbeat (which take theirs outside :meth:`Link.call`)."""
    pool = client.connection_pool
    limit = getattr(pool, "max_connections", None)
    if isinstance(pool, aioredis.BlockingConnectionPool) or not isinstance(limit, int):
        return max_connections
    return min(max_connections, limit - 2)
