"""The embedded default backplane: one process, no I/O."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from typing import Any

from .base import Backplane, BackplaneNode, RoomSnapshot, recovery_snapshot

__all__ = ["MemoryBackplane", "new_epoch"]


def new_epoch() -> str:
    """A fresh epoch name: random, so a restarted process never reuses one."""
    return secrets.token_hex(6)


class _Stream:
    """One room's id sequence and history."""

    __slots__ = ("epoch", "expires", "last_id", "messages", "ttl")

    def __init__(self, history_size: int, ttl: float, now: float) -> None:
        self.epoch = new_epoch()
        self.last_id = 0
        self.messages: deque[dict[str, Any]] = deque(maxlen=history_size)
        self.ttl = ttl
        self.expires = now + ttl

    def resize(self, history_size: int) -> None:
        if self.messages.maxlen != history_size:
            self.messages = deque(self.messages, maxlen=history_size)


class MemoryBackplane(Backplane):
    """Backplane for a single process: history, ids and presence live in this process.

    A room's history outlives its last member for the room's ``history_ttl`` seconds after
    its last message or join, so a client that reconnects to an emptied room can still
    recover what it missed. Expired histories are dropped lazily, on the next publish or
    join in any room. Every method completes without suspending, which keeps joins and
    broadcasts atomic.
    """

    def __init__(self) -> None:
        self._node: BackplaneNode | None = None
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._direct_id = 0

    @property
    def node(self) -> BackplaneNode:
        if self._node is None:
            raise RuntimeError("the backplane is not started: use it through a ConnectionManager")
        return self._node

    async def start(self, node: BackplaneNode) -> None:
        self._node = node

    async def stop(self) -> None:
        self._node = None

    def _stream(self, room: str, history_size: int, ttl: float) -> _Stream:
        now = time.monotonic()
        self._expire(now)
        stream = self._streams.get(room)
        if stream is None:
            stream = self._streams[room] = _Stream(history_size, ttl, now)
        else:
            self._streams.move_to_end(room)
            stream.resize(history_size)
            stream.ttl = ttl
            stream.expires = now + ttl
        return stream

    def _expire(self, now: float) -> None:
        # Streams are kept in order of last use, so expired ones are at the front.
        streams = self._streams
        node = self._node
        while streams:
            room, stream = next(iter(streams.items()))
            if stream.expires > now:
                return
            if node is not None and node.local_members(room):
                # Never restart the ids of a room that has members: they would discard
                # the new, lower ids as duplicates.
                stream.expires = now + stream.ttl
                streams.move_to_end(room)
                continue
            del streams[room]

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
        node = self.node
        stream = self._stream(room, history_size, history_ttl)
        stream.last_id += 1
        frame = {
            "type": "message",
            "room": room,
            "id": stream.last_id,
            "from": sender,
            "data": data,
            "ts": ts,
        }
        encoded = node.encode(frame)
        if history_size:
            stream.messages.append(frame)
        node.deliver_room(room, encoded, exclude)
        return stream.last_id

    async def publish_event(self, room: str, frame: bytes, *, exclude: str | None = None) -> None:
        self.node.deliver_room(room, frame, exclude)

    async def snapshot(
        self,
        room: str,
        *,
        since: int | None,
        epoch: str | None,
        limit: int,
        history_ttl: float,
    ) -> RoomSnapshot:
        stream = self._stream(room, limit, history_ttl)
        return recovery_snapshot(
            list(stream.messages),
            stream.last_id,
            stream.epoch,
            since=since,
            epoch=epoch,
            limit=limit,
        )

    async def join(self, room: str, user: str, *, first_local: bool) -> bool:
        return first_local

    async def leave(self, room: str, user: str, *, last_local: bool) -> bool:
        return last_local

    async def members(self, room: str) -> list[str]:
        return self.node.local_members(room)

    async def send_direct(self, user: str, sender: str | None, data: Any, *, ts: int) -> int | None:
        node = self.node
        if not node.local_user_count(user):
            return None
        self._direct_id += 1
        frame = {"type": "direct", "id": self._direct_id, "from": sender, "data": data, "ts": ts}
        node.deliver_user(user, node.encode(frame))
        return self._direct_id

    async def send_all(self, frame: bytes) -> None:
        self.node.deliver_all(frame)

    async def disconnect_user(self, user: str, code: int, reason: str) -> int:
        return self.node.disconnect_local_user(user, code, reason)
