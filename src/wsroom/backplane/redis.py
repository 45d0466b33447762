"""The Redis backplane: many processes on many hosts serve the same rooms.

Layout in Redis (``P`` is the prefix, ``wsroom`` by default; room names never contain
braces, so ``{room}`` is a safe hash tag):

* ``P:room:{room}:meta``: hash ``epoch`` (names the current run of ids) and ``seq`` (the
  last message id).
* ``P:room:{room}:history``: list of ``id\\nenvelope``, capped at the room's history size.
* ``P:room:{room}:members``: hash user -> number of nodes where the user is in the room.
* ``P:node:<node>:presence``: set of ``room\\nuser`` entries a node holds, so that any
  node can remove a dead node's presence.
* ``P:nodes``: sorted set node -> last heartbeat (ms). A node silent for ``node_ttl``
  seconds is reaped by the others.
* channels ``P:room:<room>``, ``P:user:<user>`` and ``P:all`` carry the traffic.

Why a counter and a capped list rather than a stream: a room needs dense integer ids
that restart with a new epoch when Redis loses the room, assigned atomically with the
write to the history and with the publish, so that every node sees one order. One Lua
script does all three; a stream's time-based ids would need a second mapping and its
``MAXLEN ~`` trimming is approximate.

Delivery is at most once, with gap detection: a node that loses its subscription repairs
what it missed from the history when it can, and otherwise sends its clients a ``gap``
frame for the room. Only the protocol's own encoding crosses Redis; no pickle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

try:
    from redis import asyncio as aioredis
    from redis.exceptions import NoScriptError, RedisError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "wsroom's Redis backplane needs redis-py: pip install 'wsroom[redis]'"
    ) from exc

from ..exceptions import BackplaneError
from .base import Backplane, BackplaneNode, RoomSnapshot, recovery_snapshot
from .memory import new_epoch

__all__ = ["RedisBackplane"]

logger = logging.getLogger("wsroom.backplane")

T = TypeVar("T")

# Lua keeps each step atomic: ids, history and publish in one order for every node.
# A Redis restarted from an older snapshot would hand out ids already used: the epoch is
# also tied to the server's run_id, so a restarted Redis always starts a new epoch.
_CURRENT_EPOCH = """
local function current_epoch(meta, history, candidate)
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch and redis.call('HGET', meta, 'run') == run then
    return epoch
  end
  redis.call('HSET', meta, 'epoch', candidate, 'seq', 0, 'run', run)
  redis.call('DEL', history)
  return candidate
end
"""

# Publishes a run of messages to one room: ids, history and one bus message for them all,
# so a burst costs Redis one script and one PUBLISH, and each node one message to parse.
# ARGV: candidate epoch, history size, history TTL (ms), channel, then for each message
# the connection to exclude ('' for none) and the envelope.
_PUBLISH = (
    _CURRENT_EPOCH
    + """
local epoch = current_epoch(KEYS[1], KEYS[2], ARGV[1])
local count = (#ARGV - 4) / 2
local last = redis.call('HINCRBY', KEYS[1], 'seq', count)
local first = last - count + 1
local size = tonumber(ARGV[2])
if size > 0 then
  local entries = {}
  for k = 0, count - 1 do
    entries[k + 1] = (first + k) .. '\\n' .. ARGV[6 + 2 * k]
  end
  redis.call('RPUSH', KEYS[2], unpack(entries))
  redis.call('LTRIM', KEYS[2], -size, -1)
else
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local parts = {'M\\n', epoch, '\\n', first, '\\n'}
for k = 0, count - 1 do
  local envelope = ARGV[6 + 2 * k]
  parts[#parts + 1] = ARGV[5 + 2 * k] .. '\\n' .. #envelope .. '\\n' .. envelope
end
redis.call('PUBLISH', ARGV[4], table.concat(parts))
return {first, epoch}
"""
)
_SNAPSHOT = (
    _CURRENT_EPOCH
    + """
local epoch = current_epoch(KEYS[1], KEYS[2], ARGV[1])
local seq = redis.call('HGET', KEYS[1], 'seq')
if ARGV[2] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return {epoch, seq, redis.call('LRANGE', KEYS[2], 0, -1)}
"""
)

_JOIN = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SADD', KEYS[2], ARGV[2])
return n
"""

_LEAVE = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('SREM', KEYS[2], ARGV[2])
return n
"""

_DIRECT = """
local id = redis.call('INCR', KEYS[1])
local receivers = redis.call('PUBLISH', ARGV[1], 'D\\n' .. id .. '\\n' .. ARGV[2])
if receivers == 0 then return false end
return id
"""

# Remove a dead node's presence; returns the room/user entries nobody holds any more.
# Atomic, so two nodes reaping the same node cannot both report the same departures.
_REAP = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[3]) then return {} end
local set = ARGV[2] .. ':node:' .. ARGV[1] .. ':presence'
local gone = {}
for _, entry in ipairs(redis.call('SMEMBERS', set)) do
  local cut = string.find(entry, '\\n', 1, true)
  local room = string.sub(entry, 1, cut - 1)
  local user = string.sub(entry, cut + 1)
  local key = ARGV[2] .. ':room:{' .. room .. '}:members'
  local n = redis.call('HINCRBY', key, user, -1)
  if n <= 0 then
    redis.call('HDEL', key, user)
    table.insert(gone, entry)
  end
end
redis.call('DEL', set)
redis.call('ZREM', KEYS[1], ARGV[1])
return gone
"""


@dataclass
class _Track:
    """What this node delivered of a room's sequence."""

    epoch: bytes | None = None
    last: int = 0
    repairing: bool = False
    held: list[tuple[bytes, int, bytes, bytes]] = field(default_factory=list)
    # Publishes from this node waiting to see their message delivered here: id -> future.
    waiting: dict[int, asyncio.Future[None]] = field(default_factory=dict)

    def delivered(self, last: int) -> None:
        self.last = last
        if self.waiting:
            for id_ in [i for i in self.waiting if i <= last]:
                future = self.waiting.pop(id_)
                if not future.done():
                    future.set_result(None)


class RedisBackplane(Backplane):
    """Share rooms between processes and hosts through one Redis server.

    Args:
        url: The Redis URL, e.g. ``redis://127.0.0.1:6379/0`` (``rediss://`` for TLS).
        prefix: Prefix of every key and channel, so several applications share a Redis.
        heartbeat: Seconds between this node's heartbeats and its checks for dead nodes.
        node_ttl: Seconds without a heartbeat after which a node is considered dead and
            its users leave every room (``presence`` leave frames).
        timeout: Seconds any Redis command may take before the operation fails (the
            client then gets ``internal_error``); the event loop never waits longer.
        reconnect_max: Longest pause, in seconds, between reconnection attempts (before a
            random jitter of -50% to +50%).
        max_connections: Connections to Redis for commands (the subscription has its own);
            more concurrent commands wait for one.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
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
        self.url = url
        self.prefix = prefix
        self.heartbeat = heartbeat
        self.node_ttl = node_ttl
        self.timeout = timeout
        self.reconnect_max = reconnect_max
        self.max_connections = max_connections
        self.node_id: str = secrets.token_hex(6)
        """This node's id in Redis."""
        self.dropped_messages = 0
        """Malformed messages received on the bus and dropped."""
        self._node: BackplaneNode | None = None
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._repairs: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._available = False
        # Subscriptions: wanted by the manager, requested from Redis, confirmed by Redis.
        self._want: set[str] = set()
        self._requested: set[str] = set()
        self._confirmed: set[str] = set()
        self._confirm_events: dict[str, asyncio.Event] = {}
        self._dirty: asyncio.Event | None = None
        self._pubsub: Any = None
        self._tracks: dict[str, _Track] = {}
        # Direct messages delivered here lately, and publishes waiting for them.
        self._direct_seen: deque[int] = deque(maxlen=1024)
        self._direct_waiting: dict[int, asyncio.Future[None]] = {}
        self._all_channel = f"{prefix}:all"
        self._want.add(self._all_channel)
        # Publishes waiting to be pipelined to Redis, in call order, and the task sending them.
        self._outgoing: deque[_Publish] = deque()
        self._sender: asyncio.Task[None] | None = None

    # Names.

    def _room_channel(self, room: str) -> str:
        return f"{self.prefix}:room:{room}"

    def _user_channel(self, user: str) -> str:
        return f"{self.prefix}:user:{user}"

    def _key(self, room: str, what: str) -> str:
        return f"{self.prefix}:room:{{{room}}}:{what}"

    def _presence_set(self, node_id: str | None = None) -> str:
        return f"{self.prefix}:node:{node_id or self.node_id}:presence"

    @property
    def _nodes(self) -> str:
        return f"{self.prefix}:nodes"

    @property
    def node(self) -> BackplaneNode:
        if self._node is None:
            raise RuntimeError("the backplane is not started: use it through a ConnectionManager")
        return self._node

    @property
    def _halted(self) -> bool:
        # A property, so that type narrowing of _stopping in a loop does not hide changes.
        return self._stopping

    @property
    def available(self) -> bool:
        """Whether Redis answered the last command."""
        return self._available

    # Lifecycle.

    async def start(self, node: BackplaneNode) -> None:
        self._node = node
        self._stopping = False
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
            health_check_interval=self.heartbeat,
        )
        self._redis = aioredis.Redis.from_pool(pool)  # the client owns and closes the pool
        for name, lua in (
            ("publish", _PUBLISH),
            ("snapshot", _SNAPSHOT),
            ("join", _JOIN),
            ("leave", _LEAVE),
            ("direct", _DIRECT),
            ("reap", _REAP),
        ):
            self._scripts[name] = self._redis.register_script(lua)
        try:
            async with asyncio.timeout(self.timeout):
                await self._redis.zadd(self._nodes, {self.node_id: _now_ms()})
        except (RedisError, OSError, TimeoutError) as exc:
            await self._close_client()
            raise BackplaneError(f"cannot reach Redis at {_safe_url(self.url)}: {exc}") from exc
        self._available = True
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
            raise BackplaneError(f"cannot subscribe on Redis at {_safe_url(self.url)}") from exc

    async def stop(self) -> None:
        # redis-py may swallow a cancellation while it reads, so the loops also check this
        # flag, and closing the subscription's connection ends a pending read.
        self._stopping = True
        for task in [*self._tasks, *self._repairs]:
            task.cancel()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.heartbeat + self.timeout)
        self._tasks = []
        if self._redis is not None and self._available:
            # Leave no trace: whatever presence this node still holds goes now.
            with contextlib.suppress(BackplaneError):
                await self._reap(self.node_id, cutoff=_FOREVER_MS)
        await self._close_client()
        self._node = None

    async def _close_client(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None

    async def _call(self, awaitable: Awaitable[T], *, probe: bool = False) -> T:
        """One Redis operation, bounded in time; failures become BackplaneError.

        While Redis is known to be down, operations fail at once (a client gets its
        error without waiting), except probes, which find out whether it is back.
        """
        if not self._available and not probe:
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
            self._set_available(False, exc)
            raise BackplaneError(f"Redis command failed: {exc}") from exc

    def _set_available(self, available: bool, exc: BaseException | None = None) -> None:
        if available != self._available:
            if available:
                logger.warning("Redis at %s is reachable again", _safe_url(self.url))
            else:
                logger.warning("Redis at %s is unavailable: %s", _safe_url(self.url), exc)
        self._available = available

    # Subscriptions.

    def watch_room(self, room: str) -> None:
        self._tracks.setdefault(room, _Track())
        self._want_channel(self._room_channel(room))

    def unwatch_room(self, room: str) -> None:
        self._tracks.pop(room, None)
        self._drop_channel(self._room_channel(room))

    def watch_user(self, user: str) -> None:
        self._want_channel(self._user_channel(user))

    def unwatch_user(self, user: str) -> None:
        self._drop_channel(self._user_channel(user))

    def _want_channel(self, channel: str) -> None:
        self._want.add(channel)
        if self._dirty is not None:
            self._dirty.set()

    def _drop_channel(self, channel: str) -> None:
        self._want.discard(channel)
        if self._dirty is not None:
            self._dirty.set()

    async def ready(self, room: str) -> None:
        channel = self._room_channel(room)
        if channel in self._confirmed:
            return
        event = self._confirm_events.setdefault(channel, asyncio.Event())
        try:
            async with asyncio.timeout(self.timeout):
                await event.wait()
        except TimeoutError:
            raise BackplaneError(
                f"not subscribed to room {room!r}: Redis does not answer"
            ) from None

    async def _subscriptions(self) -> None:
        """Bring Redis subscriptions in line with what the manager wants."""
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
            pubsub = self._redis.pubsub()
            try:
                channels = sorted(self._want)
                async with asyncio.timeout(self.timeout):
                    await pubsub.subscribe(*channels)
                self._pubsub = pubsub
                self._set_available(True)
                self._requested = set(channels)
                self._confirmed.clear()
                if self._dirty is not None:
                    self._dirty.set()
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
        repaired = not repair

        def handle(message: dict[str, Any]) -> None:
            nonlocal repaired
            kind = message.get("type")
            channel = _text(message.get("channel"))
            if kind == "message":
                self._dispatch(channel, message.get("data"))
            elif kind == "subscribe":
                self._confirmed.add(channel)
                event = self._confirm_events.pop(channel, None)
                if event is not None:
                    event.set()
                if not connected.done() and channel == self._all_channel:
                    connected.set_result(None)
                if not repaired and self._requested <= self._confirmed:
                    repaired = True
                    task = asyncio.get_running_loop().create_task(self._repair_all())
                    self._repairs.add(task)
                    task.add_done_callback(self._repair_done)
            elif kind == "unsubscribe":
                self._confirmed.discard(channel)

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
            handle(message)
            # Take what Redis already sent before waiting again, so that the frames of a
            # burst leave in one write per connection rather than one write per message.
            for _ in range(_DRAIN_BATCH):
                more = await pubsub.get_message(timeout=0.0)
                if more is None:
                    break
                handle(more)

    # Bus messages: ``KIND\\n`` then fields separated by newlines, the body last.

    def _dispatch(self, channel: str, data: Any) -> None:
        try:
            if not isinstance(data, bytes) or len(data) < 2 or data[1:2] != b"\n":
                raise ValueError("not a wsroom bus message")
            kind = data[:1]
            node = self.node
            if kind == b"M":
                self._on_messages(channel.removeprefix(f"{self.prefix}:room:"), data)
            elif kind == b"E":
                exclude, frame = data[2:].split(b"\n", 1)
                self._check_frame(frame)
                node.deliver_room(
                    channel.removeprefix(f"{self.prefix}:room:"), frame, exclude.decode() or None
                )
            elif kind == b"D":
                id_, envelope = data[2:].split(b"\n", 1)
                body = self._decode(envelope)
                direct = {
                    "type": "direct",
                    "id": int(id_),
                    "from": body["from"],
                    "data": body["data"],
                    "ts": body["ts"],
                }
                node.deliver_user(channel.removeprefix(f"{self.prefix}:user:"), node.encode(direct))
                self._direct_seen.append(int(id_))
                waiting = self._direct_waiting.pop(int(id_), None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(None)
            elif kind == b"A":
                frame = data[2:]
                self._check_frame(frame)
                node.deliver_all(frame)
            elif kind == b"X":
                code, reason = data[2:].split(b"\n", 1)
                node.disconnect_local_user(
                    channel.removeprefix(f"{self.prefix}:user:"), int(code), reason.decode()
                )
            else:
                raise ValueError(f"unknown kind {kind!r}")
        except Exception as exc:
            self.dropped_messages += 1
            logger.warning("dropped a malformed message on %s: %s", channel, exc)

    def _decode(self, body: bytes) -> dict[str, Any]:
        value = self.node.decode(body)
        if not isinstance(value, dict):
            raise ValueError("body is not an object")
        return value

    def _check_frame(self, frame: bytes) -> None:
        value = self._decode(frame)
        if not isinstance(value.get("type"), str):
            raise ValueError("frame without a type")

    def _on_messages(self, room: str, data: bytes) -> None:
        """``M\\n<epoch>\\n<first id>\\n`` then, per message, ``<exclude>\\n<length>\\n``
        and that many bytes of envelope; ids are consecutive from the first."""
        epoch_end = data.index(b"\n", 2)
        epoch = data[2:epoch_end]
        id_end = data.index(b"\n", epoch_end + 1)
        id_ = int(data[epoch_end + 1 : id_end])
        messages: list[tuple[int, bytes, bytes]] = []
        pos = id_end + 1
        while pos < len(data):
            exclude_end = data.index(b"\n", pos)
            length_end = data.index(b"\n", exclude_end + 1)
            length = int(data[exclude_end + 1 : length_end])
            end = length_end + 1 + length
            if length < 0 or end > len(data):
                raise ValueError("truncated message")
            messages.append((id_, data[pos:exclude_end], data[length_end + 1 : end]))
            id_ += 1
            pos = end
        if not messages:
            raise ValueError("no message in the batch")
        for message_id, exclude, envelope in messages:
            self._on_message(room, epoch, message_id, exclude, envelope)

    def _on_message(
        self, room: str, epoch: bytes, id_: int, exclude: bytes, envelope: bytes
    ) -> None:
        track = self._tracks.get(room)
        if track is None:
            return  # no member here any more
        if track.repairing:
            track.held.append((epoch, id_, exclude, envelope))
            return
        self._deliver(room, track, epoch, id_, exclude, envelope)

    def _deliver(
        self, room: str, track: _Track, epoch: bytes, id_: int, exclude: bytes, envelope: bytes
    ) -> None:
        if track.epoch is None:
            track.epoch, track.last = epoch, id_ - 1
        elif epoch != track.epoch:
            # Redis lost the room and its ids restarted: members must drop their old ids.
            track.epoch, track.last = epoch, id_ - 1
            self._gap(room, epoch, id_ - 1)
        if id_ <= track.last:
            return  # already delivered (or in the history a join just read)
        if id_ != track.last + 1:
            self._gap(room, epoch, id_ - 1)
        body = self._decode(envelope)
        node = self.node
        frame = {
            "type": "message",
            "room": room,
            "id": id_,
            "from": body["from"],
            "data": body["data"],
            "ts": body["ts"],
        }
        node.deliver_room(room, node.encode(frame), exclude.decode() or None)
        track.delivered(id_)

    def _gap(self, room: str, epoch: bytes, offset: int) -> None:
        node = self.node
        frame = {"type": "gap", "room": room, "epoch": epoch.decode(), "offset": offset}
        node.deliver_room(room, node.encode(frame), None)

    def _repair_done(self, task: asyncio.Task[None]) -> None:
        self._repairs.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("gap repair failed", exc_info=task.exception())

    async def _repair_all(self) -> None:
        """After a reconnect: deliver what each room missed from its history, or say so."""
        rooms = [room for room, track in self._tracks.items() if track.epoch is not None]
        for room in rooms:
            track = self._tracks.get(room)
            if track is not None:
                track.repairing = True
        for room in rooms:
            track = self._tracks.get(room)
            if track is None:
                continue
            for attempt in range(3):
                try:
                    epoch, seq, entries = await self._read_room(room, touch_ms=0, probe=True)
                    break
                except BackplaneError:
                    # A pooled connection that died with the old server fails once.
                    await asyncio.sleep(self.heartbeat * attempt)
            else:
                self._gap(room, track.epoch or b"", track.last)
                entries, epoch, seq = [], track.epoch or b"", track.last
            self._catch_up(room, track, epoch, seq, entries)
            track.repairing = False
            held, track.held = track.held, []
            for item in held:
                self._deliver(room, track, *item)
        logger.warning("Redis subscription restored; %d room(s) checked for gaps", len(rooms))

    def _catch_up(
        self, room: str, track: _Track, epoch: bytes, seq: int, entries: list[tuple[int, bytes]]
    ) -> None:
        """Deliver from the history what this node missed of a room, or tell its members."""
        if epoch != track.epoch:
            # Redis lost the room: its ids restarted in a new epoch. Members reset theirs.
            track.epoch, track.last = epoch, 0
            if entries and entries[0][0] != 1:
                track.last = seq
            self._gap(room, epoch, track.last)
        missed = [(id_, envelope) for id_, envelope in entries if id_ > track.last]
        if seq <= track.last:
            return
        if len(missed) == seq - track.last and missed[0][0] == track.last + 1:
            for id_, envelope in missed:
                self._deliver(room, track, epoch, id_, b"", envelope)
        else:
            track.last = seq
            self._gap(room, epoch, seq)

    async def _read_room(
        self, room: str, *, touch_ms: int, probe: bool = False
    ) -> tuple[bytes, int, list[tuple[int, bytes]]]:
        epoch, seq, raw = await self._call(
            self._scripts["snapshot"](
                keys=[self._key(room, "meta"), self._key(room, "history")],
                args=[new_epoch(), touch_ms],
            ),
            probe=probe,
        )
        entries = []
        for item in raw:
            id_, _, envelope = bytes(item).partition(b"\n")
            entries.append((int(id_), envelope))
        return bytes(epoch), int(seq or 0), entries

    # Heartbeat, dead nodes, presence after an outage.

    async def _beat(self) -> None:
        healthy = True
        while not self._stopping:
            try:
                async with asyncio.timeout(self.timeout):
                    added = await self._redis.zadd(self._nodes, {self.node_id: _now_ms()})
                self._set_available(True)
                if added or not healthy:
                    # Reaped while silent, or Redis restarted empty: say again who is here.
                    await self._resync_presence()
                healthy = True
                for dead in await self._call(
                    self._redis.zrangebyscore(self._nodes, "-inf", _now_ms() - self.node_ttl * 1000)
                ):
                    dead_id = _text(dead)
                    if dead_id != self.node_id:
                        await self._reap(dead_id, cutoff=_now_ms() - self.node_ttl * 1000)
            except (RedisError, OSError, TimeoutError, BackplaneError) as exc:
                if healthy:
                    self._set_available(False, exc)
                healthy = False
            await asyncio.sleep(self.heartbeat)

    async def _reap(self, node_id: str, *, cutoff: float) -> None:
        gone = await self._call(
            self._scripts["reap"](keys=[self._nodes], args=[node_id, self.prefix, int(cutoff)])
        )
        if gone and node_id != self.node_id:
            logger.warning(
                "node %s stopped answering: %d presence entries removed", node_id, len(gone)
            )
        for entry in gone:
            room, _, user = _text(entry).partition("\n")
            await self._presence_event(room, "leave", user)

    async def _resync_presence(self) -> None:
        node = self.node
        here = {
            f"{room}\n{user}" for room in list(self._tracks) for user in node.local_members(room)
        }
        there = {_text(e) for e in await self._call(self._redis.smembers(self._presence_set()))}
        for entry in sorted(there - here):
            room, _, user = entry.partition("\n")
            if await self.leave(room, user, last_local=True):
                await self._presence_event(room, "leave", user)
        for entry in sorted(here - there):
            room, _, user = entry.partition("\n")
            if await self.join(room, user, first_local=True):
                await self._presence_event(room, "join", user)

    async def _presence_event(self, room: str, event: str, user: str) -> None:
        frame = self.node.encode({"type": "presence", "room": room, "event": event, "user": user})
        await self.publish_event(room, frame)

    # The Backplane interface.

    async def publish(
        self,
        room: str,
        sender: str | None,
        data: Any,
        *,
        ts: int,
        history_size: int,
        history_ttl: float,
        exclude: str | None = None,
        local_first: bool = False,
    ) -> int:
        envelope = self.node.encode({"from": sender, "data": data, "ts": ts})
        if not self._available:
            raise BackplaneError("Redis is unavailable; retrying in the background")
        # Queued before the first suspension: publishes reach Redis in the order they were
        # called, and those called while a batch is on its way leave in the next one.
        loop = asyncio.get_running_loop()
        result: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        self._outgoing.append(
            _Publish(room, envelope, exclude or "", history_size, int(history_ttl * 1000), result)
        )
        if self._sender is None:
            self._sender = loop.create_task(self._send_publishes(), name="wsroom-redis-publish")
        message_id, epoch = await result
        track = self._tracks.get(room)
        if local_first and track is not None and (track.last < message_id or track.epoch != epoch):
            # As on one node, the sender's own copy is queued before its 'ack': wait until
            # the message came back through the subscription.
            await self._own_copy(track.waiting, message_id)
        return message_id

    async def _own_copy(self, waiting: dict[int, asyncio.Future[None]], message_id: int) -> None:
        """Wait until this node delivered its own message ``message_id`` (resolved through
        ``waiting``), at most the command timeout: it is sent anyway."""
        future = waiting.setdefault(message_id, asyncio.get_running_loop().create_future())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout):
                await future
        waiting.pop(message_id, None)

    async def _send_publishes(self) -> None:
        """Send queued publishes to Redis, as many as are waiting in one pipeline each time.

        A pipeline costs one round trip whatever its length, so concurrent publishers (the
        members of a busy room, a thread's stream handed over by ``broadcast_nowait``) are
        not each held up by a round trip of their own. Consecutive publishes to one room
        become one script call and one bus message, which the other nodes parse once and
        deliver in one write per connection.
        """
        outgoing = self._outgoing
        try:
            while outgoing:
                runs = _runs_of(outgoing)
                try:
                    replies = await self._call(self._run_publishes(runs))
                except BackplaneError as exc:
                    for run in runs:
                        for item in run:
                            if not item.result.done():
                                item.result.set_exception(BackplaneError(str(exc)))
                    continue
                for run, reply in zip(runs, replies, strict=True):
                    if isinstance(reply, Exception):
                        error = BackplaneError(f"Redis refused a publish: {reply}")
                        for item in run:
                            if not item.result.done():
                                item.result.set_exception(error)
                        continue
                    first, epoch = int(reply[0]), bytes(reply[1])
                    self._deliver_own(run, first, epoch)
                    for offset, item in enumerate(run):
                        if not item.result.done():  # else its publisher was cancelled
                            item.result.set_result((first + offset, epoch))
        finally:
            self._sender = None
            # Only a cancellation (the loop is stopping) leaves publishes queued.
            while outgoing:
                result = outgoing.popleft().result
                if not result.done():
                    result.set_exception(
                        BackplaneError("the backplane stopped before this message was sent")
                    )

    def _deliver_own(self, run: list[_Publish], first: int, epoch: bytes) -> None:
        """Deliver this node's own messages to its members as soon as Redis numbered them,
        when they follow what was delivered here; their copy from the subscription is then
        recognised by its id and skipped. Otherwise the subscription delivers them, in
        order with the rest (a gap before them, a new epoch, a repair in progress)."""
        room = run[0].room
        track = self._tracks.get(room)
        if track is None or track.repairing or track.epoch != epoch or track.last != first - 1:
            return
        for offset, item in enumerate(run):
            self._deliver(room, track, epoch, first + offset, item.exclude.encode(), item.envelope)

    async def _run_publishes(self, runs: list[list[_Publish]]) -> list[Any]:
        replies = await self._pipeline_publishes(runs)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            # Redis restarted or flushed its scripts. A NOSCRIPT reply means that run did not
            # execute, so sending it again cannot duplicate it.
            await self._redis.script_load(_PUBLISH)
            retried = await self._pipeline_publishes([runs[i] for i in missing])
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline_publishes(self, runs: list[list[_Publish]]) -> list[Any]:
        sha = self._scripts["publish"].sha
        pipe = self._redis.pipeline(transaction=False)
        for run in runs:
            head = run[0]
            args: list[Any] = [
                new_epoch(),
                head.history_size,
                head.history_ttl_ms,
                self._room_channel(head.room),
            ]
            for item in run:
                args += (item.exclude, item.envelope)
            pipe.evalsha(
                sha, 2, self._key(head.room, "meta"), self._key(head.room, "history"), *args
            )
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def publish_event(self, room: str, frame: bytes, *, exclude: str | None = None) -> None:
        await self._call(
            self._redis.publish(
                self._room_channel(room), b"E\n" + (exclude or "").encode() + b"\n" + frame
            )
        )

    async def snapshot(
        self, room: str, *, since: int | None, epoch: str | None, limit: int, history_ttl: float
    ) -> RoomSnapshot:
        current, seq, entries = await self._read_room(room, touch_ms=int(history_ttl * 1000))
        track = self._tracks.get(room)
        if track is not None and track.epoch is None:
            # First member here: what the history holds needs no delivery from the bus.
            track.epoch, track.last = current, seq
        history = []
        for id_, envelope in entries:
            body = self._decode(envelope)
            history.append(
                {
                    "type": "message",
                    "room": room,
                    "id": id_,
                    "from": body["from"],
                    "data": body["data"],
                    "ts": body["ts"],
                }
            )
        return recovery_snapshot(
            history, seq, current.decode(), since=since, epoch=epoch, limit=limit
        )

    async def join(self, room: str, user: str, *, first_local: bool) -> bool:
        if not first_local:
            return False
        count = await self._call(
            self._scripts["join"](
                keys=[self._key(room, "members"), self._presence_set()],
                args=[user, f"{room}\n{user}"],
            )
        )
        return int(count) == 1

    async def leave(self, room: str, user: str, *, last_local: bool) -> bool:
        if not last_local:
            return False
        count = await self._call(
            self._scripts["leave"](
                keys=[self._key(room, "members"), self._presence_set()],
                args=[user, f"{room}\n{user}"],
            )
        )
        return int(count) <= 0

    async def members(self, room: str) -> list[str]:
        users = await self._call(self._redis.hkeys(self._key(room, "members")))
        return sorted(_text(user) for user in users)

    async def send_direct(self, user: str, sender: str | None, data: Any, *, ts: int) -> int | None:
        envelope = self.node.encode({"from": sender, "data": data, "ts": ts})
        id_ = await self._call(
            self._scripts["direct"](
                keys=[f"{self.prefix}:direct"], args=[self._user_channel(user), envelope]
            )
        )
        if not id_:
            return None
        message_id = int(id_)
        if self.node.local_user_count(user) and message_id not in self._direct_seen:
            # Queue the local copies before the sender's 'ack', as on one node.
            await self._own_copy(self._direct_waiting, message_id)
        return message_id

    async def send_all(self, frame: bytes) -> None:
        await self._call(self._redis.publish(self._all_channel, b"A\n" + frame))

    async def disconnect_user(self, user: str, code: int, reason: str) -> int:
        here = self.node.local_user_count(user)
        await self._call(
            self._redis.publish(self._user_channel(user), f"X\n{code}\n{reason}".encode())
        )
        return here


@dataclass(slots=True)
class _Publish:
    """A message waiting to be published."""

    room: str
    envelope: bytes
    exclude: str
    history_size: int
    history_ttl_ms: int
    result: asyncio.Future[tuple[int, bytes]]

    def same_run(self, other: _Publish) -> bool:
        return (
            self.room == other.room
            and self.history_size == other.history_size
            and self.history_ttl_ms == other.history_ttl_ms
        )


def _runs_of(outgoing: deque[_Publish]) -> list[list[_Publish]]:
    """Take up to a pipeline's worth of queued publishes, in order, as runs of consecutive
    publishes to one room (each run one script call and one bus message)."""
    runs: list[list[_Publish]] = []
    taken = run_bytes = 0
    while outgoing and taken < _PIPELINE_MAX:
        item = outgoing.popleft()
        taken += 1
        if runs and runs[-1][0].same_run(item) and run_bytes + len(item.envelope) <= _RUN_BYTES:
            runs[-1].append(item)
            run_bytes += len(item.envelope)
        else:
            runs.append([item])
            run_bytes = len(item.envelope)
    return runs


# Subscription messages handled in one go before the listener waits again.
_DRAIN_BATCH = 256
# Publishes sent in one pipeline at most: bounds the reply a batch waits for.
_PIPELINE_MAX = 512
# Envelope bytes in one bus message at most: Redis disconnects a subscriber whose output
# buffer passes 32 MiB (its default limit for pub/sub clients), and nodes parse it whole.
_RUN_BYTES = 1 << 20

# A cutoff later than any heartbeat: reap a node whatever its last heartbeat.
_FOREVER_MS = 2**53


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"
