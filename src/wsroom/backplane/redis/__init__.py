"""The Redis backplane: many processes on many hosts serve the same rooms.

This package keeps only what is Redis: the command link (:mod:`._link`), the keys and Lua
scripts (:mod:`._scripts`, with the layout in Redis), subscriptions and heartbeats (here).
Ordering, gap repair, batching and the bus format are :mod:`wsroom.backplane.cluster`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any

try:
    from redis import asyncio as aioredis
    from redis.exceptions import NoScriptError, RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "wsroom's Redis backplane needs redis-py: pip install 'wsroom[redis]'"
    ) from exc

from ...exceptions import BackplaneError
from ..base import (
    Append,
    Appended,
    Backplane,
    BackplaneStatus,
    BusReceiver,
    RoomLog,
    new_epoch,
)
from . import _scripts
from ._link import Link, check_client, pool_full
from ._scripts import Keys

__all__ = ["RedisBackplane"]

logger = logging.getLogger("wsroom.backplane")

# Subscription messages handled in one go before the listener waits again.
_DRAIN_BATCH = 256
# A cutoff later than any heartbeat: reap a node whatever its last heartbeat.
_FOREVER_MS = 2**53


class RedisBackplane(Backplane):
    """Share rooms between processes and hosts through one Redis server.

    Give it a URL, or a ``redis.asyncio`` client built by the application (for Sentinel,
    TLS options, credential providers...), not both.

    Args:
        url: The Redis URL, e.g. ``redis://127.0.0.1:6379/0`` (``rediss://`` for TLS); the
            default when neither a URL nor a client is given. The backplane creates its
            connection pool from it and closes it at :meth:`stop`.
        client: A ``redis.asyncio.Redis`` (for instance ``Sentinel(...).master_for(...)``)
            whose connection pool the backplane uses, its subscription included. It stays
            the application's: the backplane never closes it, and :meth:`stop` only
            returns its connections to the pool. It must not decode responses.
        prefix: Prefix of every key and channel, so several applications share a Redis.
        heartbeat: Seconds between this node's heartbeats and its checks for dead nodes.
        node_ttl: Seconds without a heartbeat after which a node is considered dead and
            its users leave every room (``presence`` leave frames).
        timeout: Seconds any Redis command may take before the operation fails (the
            client then gets ``internal_error``); the event loop never waits longer.
        reconnect_max: Longest pause, in seconds, between reconnection attempts (before a
            random jitter of -50% to +50%).
        max_connections: Redis commands in flight at once (the subscription has its own
            connection); more wait for one, within ``timeout``. With a URL, the size of
            the backplane's pool; with a client, also no more than its pool holds beside
            the subscription and the heartbeat, when that pool fails rather than waits.

    Raises:
        TypeError: ``client`` is not a ``redis.asyncio.Redis``.
        ValueError: both ``url`` and ``client``; a client that decodes responses, is a
            replica's, or whose pool fails when full and holds fewer than three
            connections; ``max_connections`` below 1; a bad ``prefix``;
            ``node_ttl`` not longer than ``heartbeat``.
    """

    remote = True
    kind = "redis"

    def __init__(
        self,
        url: str | None = None,
        *,
        client: aioredis.Redis | None = None,
        prefix: str = "wsroom",
        heartbeat: float = 2.0,
        node_ttl: float = 10.0,
        timeout: float = 2.0,
        reconnect_max: float = 2.0,
        max_connections: int = 100,
    ) -> None:
        if not prefix or any(c in prefix for c in "{}\n "):
            raise ValueError("prefix must be non-empty, without braces, spaces or newlines")
        if node_ttl <= heartbeat:
            raise ValueError("node_ttl must be longer than heartbeat")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        target: str | aioredis.Redis
        if client is not None:
            if url is not None:
                raise ValueError("give RedisBackplane a URL or a client, not both")
            check_client(client, max_connections)
            target = client
        else:
            url = target = url if url is not None else "redis://127.0.0.1:6379/0"
        self.url = url
        """The Redis URL, ``None`` with a client."""
        self.client = client
        """The application's client, ``None`` with a URL."""
        self.prefix = prefix
        self.heartbeat = heartbeat
        self.node_ttl = node_ttl
        self.timeout = timeout
        self.reconnect_max = reconnect_max
        self.max_connections = max_connections
        self.node_id: str = secrets.token_hex(6)
        """This node's id in Redis."""
        self._keys = Keys(prefix)
        self._link = Link(
            target, timeout=timeout, health_check=heartbeat, max_connections=max_connections
        )
        self._call = self._link.call
        self._receiver: BusReceiver | None = None
        self._pubsub: Any = None
        self._scripts: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._chores: set[asyncio.Task[None]] = set()
        self._stopping = False
        # Subscriptions: wanted by the node, requested from Redis, confirmed by Redis.
        self._want: set[str] = {self._keys.channel("all")}
        self._requested: set[str] = set()
        self._confirmed: set[str] = set()
        self._confirm_events: dict[str, asyncio.Event] = {}
        self._dirty: asyncio.Event | None = None
        # Whether the subscription came back after a loss and its rooms await a repair.
        self._repair_pending = False
        self.reconnects = 0
        """Times the subscription came back after it was lost."""
        self._round_trip: float | None = None

    @property
    def dropped_messages(self) -> int:
        """Malformed messages received on the bus and dropped."""
        return self._receiver.dropped_messages if self._receiver is not None else 0

    @property
    def receiver(self) -> BusReceiver:
        """The cluster layer this backplane serves, once started."""
        if self._receiver is None:
            raise RuntimeError("the backplane is not started: use it through a ConnectionManager")
        return self._receiver

    @property
    def available(self) -> bool:
        """Whether Redis answered the last command."""
        return self._link.available

    async def status(self) -> BackplaneStatus:
        """Whether Redis answers, and the nodes that sent a heartbeat within ``node_ttl``
        (one ``ZCARD`` when Redis is reachable; ``None`` when it is not)."""
        link = self._link
        nodes: int | None = None
        if link.available and self._tasks:
            with contextlib.suppress(BackplaneError):
                nodes = int(await self._call(link.client.zcard(self._keys.nodes)))
        return BackplaneStatus(
            kind=self.kind,
            available=link.available,
            nodes=nodes,
            address=link.where,
            last_error=link.last_error,
            last_error_at=link.last_error_at,
        )

    @property
    def round_trip(self) -> float | None:
        """Seconds Redis took to answer the last heartbeat; ``None`` before the first, or
        when the last one failed."""
        return self._round_trip

    @property
    def _halted(self) -> bool:
        # A property, so that type narrowing of _stopping in a loop does not hide changes.
        return self._stopping

    # Lifecycle.

    async def start(self, receiver: BusReceiver) -> None:
        self._receiver = receiver
        self._stopping = False
        client = self._link.open()
        for name in ("APPEND", "READ", "EMPTIED", "JOIN", "LEAVE", "DIRECT", "REAP"):
            self._scripts[name] = client.register_script(getattr(_scripts, name))
        try:
            async with asyncio.timeout(self.timeout):
                await client.zadd(self._keys.nodes, {self.node_id: _now_ms()})
        except (RedisError, OSError, TimeoutError) as exc:
            await self._close_client()
            raise BackplaneError(f"cannot reach Redis at {self._link.where}: {exc}") from exc
        self._link.available = True
        self._dirty = asyncio.Event()
        loop = asyncio.get_running_loop()
        connected = loop.create_future()
        self._tasks = [
            loop.create_task(self._listen(connected), name="wsroom-redis-listen"),
            loop.create_task(self._subscriptions(), name="wsroom-redis-subscribe"),
            loop.create_task(self._beat(), name="wsroom-redis-heartbeat"),
        ]
        try:
            async with asyncio.timeout(self.timeout * 2):
                await connected
        except TimeoutError as exc:
            await self.stop()
            raise BackplaneError(f"cannot subscribe on Redis at {self._link.where}") from exc

    async def stop(self) -> None:
        # redis-py may swallow a cancellation while it reads, so the loops also check this
        # flag, and closing the subscription's connection ends a pending read.
        self._stopping = True
        for task in [*self._tasks, *self._chores]:
            task.cancel()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.heartbeat + self.timeout)
        self._tasks = []
        if self._link.available:
            # Leave no trace: whatever presence this node still holds goes now.
            with contextlib.suppress(BackplaneError):
                await self._reap(self.node_id, cutoff=_FOREVER_MS)
        await self._close_client()

    async def _close_client(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        await self._link.close()

    def _script(self, name: str, keys: list[str], args: list[Any]) -> Awaitable[Any]:
        result: Awaitable[Any] = self._scripts[name](keys=keys, args=args)
        return result

    # The room log.

    async def append(self, batch: Sequence[Append]) -> list[Appended | BaseException]:
        replies = await self._call(self._run_appends(batch))
        results: list[Appended | BaseException] = []
        for reply in replies:
            if isinstance(reply, Exception):
                results.append(BackplaneError(f"Redis refused a publish: {reply}"))
            else:
                results.append(Appended(int(reply[0]), _text(reply[1])))
        return results

    async def _run_appends(self, batch: Sequence[Append]) -> list[Any]:
        replies = await self._pipeline_appends(batch)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # Redis restarted or flushed its scripts. A NOSCRIPT reply means that run did not
            # execute, so sending it again cannot duplicate it.
            await self._link.client.script_load(_scripts.APPEND)
            retried = await self._pipeline_appends([batch[i] for i in missing])
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline_appends(self, batch: Sequence[Append]) -> list[Any]:
        """One round trip for every run of the batch (one script call each)."""
        sha = self._scripts["APPEND"].sha
        limits = self.receiver.limits
        keys = self._keys
        pipe = self._link.client.pipeline(transaction=False)
        for run in batch:
            room = run.room
            pipe.evalsha(
                sha,
                2,
                keys.room(room, "meta"),
                keys.room(room, "history"),
                self.prefix,
                room,
                new_epoch(),
                run.history_size,
                int(run.history_ttl * 1000),
                limits.max_idle_rooms,
                limits.max_idle_history_bytes,
                *run.items,
            )
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def read(self, room: str, *, history_ttl: float | None) -> RoomLog:
        keys = self._keys
        # A probe: a repair reads right after the bus came back, before the heartbeat
        # noticed; a join has already failed fast on its presence step when Redis is down.
        epoch, seq, raw = await self._call(
            self._script(
                "READ",
                [keys.room(room, "meta"), keys.room(room, "history")],
                [self.prefix, room, new_epoch(), int((history_ttl or 0) * 1000)],
            ),
            probe=True,
        )
        receiver = self.receiver
        entries = []
        for entry in raw:
            id_, _, item = bytes(entry).partition(b"\n")
            try:
                entries.append((int(id_), receiver.decode_item(item)))
            except ValueError as exc:  # e.g. written by an older version: not recoverable
                logger.warning("skipped an unreadable history entry of %r: %s", room, exc)
        return RoomLog(_text(epoch), int(seq or 0), entries)

    async def _emptied(self, room: str) -> None:
        """Redis confirmed that this node no longer subscribes to ``room``."""
        keys, limits = self._keys, self.receiver.limits
        with contextlib.suppress(BackplaneError):
            await self._call(
                self._script(
                    "EMPTIED",
                    [keys.room(room, "meta"), keys.room(room, "history")],
                    [self.prefix, room, limits.max_idle_rooms, limits.max_idle_history_bytes],
                )
            )

    # Presence.

    async def join(self, room: str, user: str) -> bool:
        return await self._presence("JOIN", room, user) == 1

    async def leave(self, room: str, user: str) -> bool:
        return await self._presence("LEAVE", room, user) <= 0

    async def _presence(self, script: str, room: str, user: str) -> int:
        keys = [self._keys.room(room, "members"), self._keys.presence(self.node_id)]
        return int(await self._call(self._script(script, keys, [user, f"{room}\n{user}"])))

    async def members(self, room: str) -> list[str]:
        users = await self._call(self._link.client.hkeys(self._keys.room(room, "members")))
        return sorted(_text(user) for user in users)

    # The bus.

    def subscribe(self, channel: str) -> None:
        self._want.add(self._keys.channel(channel))
        if self._dirty is not None:
            self._dirty.set()

    def unsubscribe(self, channel: str) -> None:
        self._want.discard(self._keys.channel(channel))
        if self._dirty is not None:
            self._dirty.set()

    async def ready(self, channel: str) -> None:
        name = self._keys.channel(channel)
        if name in self._confirmed:
            return
        event = self._confirm_events.setdefault(name, asyncio.Event())
        try:
            async with asyncio.timeout(self.timeout):
                await event.wait()
        except TimeoutError:
            raise BackplaneError(f"not subscribed to {channel!r}: Redis does not answer") from None

    async def publish(self, channel: str, payload: bytes) -> None:
        await self._call(self._link.client.publish(self._keys.channel(channel), payload))

    async def direct(self, user: str, item: bytes) -> int | None:
        id_ = await self._call(
            self._script("DIRECT", [self._keys.direct], [self._keys.channel(f"user:{user}"), item])
        )
        return int(id_) if id_ else None

    # Subscriptions.

    async def _subscriptions(self) -> None:
        """Bring Redis subscriptions in line with what the node wants."""
        assert self._dirty is not None
        while not self._stopping:
            await self._dirty.wait()
            self._dirty.clear()
            pubsub = self._pubsub
            if pubsub is None:
                continue  # the listener subscribes to everything wanted when it reconnects
            add = sorted(self._want - self._requested)
            remove = sorted(self._requested - self._want)
            try:
                if add:
                    self._requested.update(add)
                    await pubsub.subscribe(*add)
                if remove:
                    self._requested.difference_update(remove)
                    await pubsub.unsubscribe(*remove)
            except (RedisError, OSError) as exc:
                logger.debug("subscription change failed: %s", exc)  # the listener reconnects

    async def _listen(self, connected: asyncio.Future[None]) -> None:
        delay = 0.05
        first = True
        while not self._stopping:
            pubsub = self._link.client.pubsub()
            try:
                channels = sorted(self._want)
                async with asyncio.timeout(self.timeout):
                    await pubsub.subscribe(*channels)
                self._pubsub = pubsub
                self._link.set_available(True)
                self._requested = set(channels)
                self._confirmed.clear()
                if self._dirty is not None:
                    self._dirty.set()
                if not first:  # the subscription was lost: Redis may have restarted
                    self.reconnects += 1
                    await self._link.drop_idle()
                delay = 0.05
                await self._read(pubsub, connected, repair=not first)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except Exception as exc:
                if self._halted:
                    return  # stop() closed the connection under the read
                logger.warning("Redis subscription lost (%s); reconnecting", exc)
            self._pubsub = None
            self._confirmed.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            first = False
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.reconnect_max)

    async def _read(self, pubsub: Any, connected: asyncio.Future[None], *, repair: bool) -> None:
        """Read the subscription until it fails; a silent Redis counts as failed."""
        last_heard = time.monotonic()
        ping_sent = False
        self._repair_pending = repair
        while not self._stopping:
            message = await asyncio.wait_for(
                pubsub.get_message(timeout=self.heartbeat), self.heartbeat + self.timeout
            )
            now = time.monotonic()
            if message is None:
                if now - last_heard > self.heartbeat + self.timeout:
                    raise TimeoutError("no answer from Redis on the subscription")
                if not ping_sent:
                    await pubsub.ping()
                    ping_sent = True
                continue
            last_heard = now
            ping_sent = False
            self._handle(message, connected)
            # Take what Redis already sent before waiting again, so that the frames of a
            # burst leave in one write per connection rather than one write per message.
            for _ in range(_DRAIN_BATCH):
                more = await pubsub.get_message(timeout=0.0)
                if more is None:
                    break
                self._handle(more, connected)

    def _handle(self, message: dict[str, Any], connected: asyncio.Future[None]) -> None:
        """One message of the subscription: bus traffic, or a (un)subscription confirmed."""
        kind, channel = message.get("type"), _text(message.get("channel"))
        keys = self._keys
        if kind == "message":
            data = message.get("data")
            payload = data if isinstance(data, bytes) else b""  # counted as malformed
            self.receiver.received(keys.wsroom_channel(channel), payload)
        elif kind == "subscribe":
            self._confirmed.add(channel)
            event = self._confirm_events.pop(channel, None)
            if event is not None:
                event.set()
            if not connected.done() and channel == keys.channel("all"):
                connected.set_result(None)
            if self._repair_pending and self._requested <= self._confirmed:
                # Every channel is back after a loss: the cluster layer repairs the rooms.
                self._repair_pending = False
                self.receiver.resubscribed()
        elif kind == "unsubscribe":
            self._confirmed.discard(channel)
            name = keys.wsroom_channel(channel)
            if channel not in self._want and name.startswith("room:"):
                self._chore(self._emptied(name.removeprefix("room:")))

    def _chore(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    # Heartbeat, dead nodes, presence after an outage.

    async def _beat(self) -> None:
        healthy = True
        while not self._stopping:
            try:
                sent = time.monotonic()
                async with asyncio.timeout(self.timeout):
                    added = await self._link.client.zadd(
                        self._keys.nodes, {self.node_id: _now_ms()}
                    )
                self._round_trip = time.monotonic() - sent
                self._link.set_available(True)
                if added or not healthy:
                    # Redis restarted or was out of reach: the idle pooled connections
                    # died with it. Reaped while silent, or Redis restarted empty: say
                    # again who is here.
                    await self._link.drop_idle()
                    await self._resync_presence()
                healthy = True
                cutoff = _now_ms() - self.node_ttl * 1000
                for dead in await self._call(
                    self._link.client.zrangebyscore(self._keys.nodes, "-inf", cutoff)
                ):
                    if _text(dead) != self.node_id:
                        await self._reap(_text(dead), cutoff=cutoff)
            except (RedisError, OSError, TimeoutError, BackplaneError) as exc:
                if not pool_full(exc):  # a pool the application shares may be full: not down
                    if healthy:
                        self._link.set_available(False, exc)
                    healthy = False
                    self._round_trip = None
            await asyncio.sleep(self.heartbeat)

    async def _reap(self, node_id: str, *, cutoff: float) -> None:
        gone = await self._call(
            self._script("REAP", [self._keys.nodes], [node_id, self.prefix, int(cutoff)])
        )
        if gone and node_id != self.node_id:
            logger.warning(
                "node %s stopped answering: %d presence entries removed", node_id, len(gone)
            )
        for entry in gone:
            room, _, user = _text(entry).partition("\n")
            await self.receiver.presence_changed(room, "leave", user)

    async def _resync_presence(self) -> None:
        receiver = self.receiver
        here = {f"{room}\n{user}" for room, user in receiver.local_presence()}
        there = {
            _text(entry)
            for entry in await self._call(
                self._link.client.smembers(self._keys.presence(self.node_id))
            )
        }
        for entry in sorted(there - here):
            room, _, user = entry.partition("\n")
            if await self.leave(room, user):
                await receiver.presence_changed(room, "leave", user)
        for entry in sorted(here - there):
            room, _, user = entry.partition("\n")
            if await self.join(room, user):
                await receiver.presence_changed(room, "join", user)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
