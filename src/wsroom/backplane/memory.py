"""The embedded default backplane: one process, no I/O."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Sequence

from .base import (
    Append,
    Appended,
    Backplane,
    BackplaneStatus,
    BusReceiver,
    Record,
    RoomLog,
    new_epoch,
)

__all__ = ["MemoryBackplane"]


class _Log:
    """One room's id sequence and the messages it keeps."""

    __slots__ = ("entries", "epoch", "expires", "last", "size", "ttl")

    def __init__(self) -> None:
        self.epoch = new_epoch()
        self.last = 0
        self.entries: deque[tuple[int, Record, int]] = deque()  # id, record, item bytes
        self.size = 0  # item bytes of the entries
        self.ttl = 0.0
        self.expires = 0.0


class MemoryBackplane(Backplane):
    """Backplane for a single process: ids, history and the bus live in this process.

    A room's log lives while the room has members. Once emptied, a room that never had a
    message costs nothing; one with messages is kept, so that clients coming back can
    recover what they missed, for its ``history_ttl`` seconds after it emptied or its last
    message, and within :attr:`Limits.max_idle_rooms` and
    :attr:`Limits.max_idle_history_bytes` for the whole process, least recently used
    dropped first. Every method completes without suspending, which keeps joins and
    broadcasts atomic, and costs O(1) amortized (plus the messages it handles).
    """

    remote = False
    kind = "memory"

    async def status(self) -> BackplaneStatus:
        """In memory: this process alone, always available."""
        return BackplaneStatus(kind=self.kind, available=True, nodes=1)

    def __init__(self) -> None:
        self._receiver: BusReceiver | None = None
        self._channels: set[str] = set()
        # A room's log is in one of the two: served (subscribed) or idle, oldest use first.
        self._served: dict[str, _Log] = {}
        self._idle: OrderedDict[str, _Log] = OrderedDict()
        self._idle_size = 0
        self._direct_id = 0

    @property
    def receiver(self) -> BusReceiver:
        """The cluster layer this backplane serves, once started."""
        if self._receiver is None:
            raise RuntimeError("the backplane is not started: use it through a ConnectionManager")
        return self._receiver

    async def start(self, receiver: BusReceiver) -> None:
        self._receiver = receiver
        self.subscribe("all")

    async def stop(self) -> None:
        self._channels.clear()
        self._served.clear()
        self._idle.clear()
        self._idle_size = 0

    # The room log.

    async def append(self, batch: Sequence[Append]) -> list[Appended | BaseException]:
        now = time.monotonic()
        idle = self._idle
        if idle:
            self._expire(now)
        results: list[Appended | BaseException] = []
        for run in batch:
            room, records, items = run.room, run.records, run.items
            log = self._served.get(room) or idle.get(room) or self._new_log(room)
            first = log.last + 1
            log.last += len(records)
            if run.history_size:
                entries = log.entries
                grown = 0
                for offset, record in enumerate(records):
                    size = len(items[offset])
                    entries.append((first + offset, record, size))
                    grown += size
                while len(entries) > run.history_size:
                    grown -= entries.popleft()[2]
            else:
                grown = -log.size
                log.entries.clear()
            log.size += grown
            log.ttl = run.history_ttl
            log.expires = now + run.history_ttl
            if room in idle:  # a server broadcast to a room nobody serves: a use
                idle.move_to_end(room)
                self._idle_size += grown
                self._bound()
            results.append(Appended(first, log.epoch))
        return results

    async def read(self, room: str, *, history_ttl: float | None) -> RoomLog:
        now = time.monotonic()
        self._expire(now)
        log = self._served.get(room) or self._idle.get(room)
        if log is None:
            log = _Log()
            if f"room:{room}" in self._channels:
                self._served[room] = log
            # else nobody serves the room: a log without messages is not worth keeping.
        elif room in self._idle:
            self._idle.move_to_end(room)
        if history_ttl is not None:
            log.ttl = history_ttl
            log.expires = now + history_ttl
        return RoomLog(log.epoch, log.last, [(id_, record) for id_, record, _ in log.entries])

    def _new_log(self, room: str) -> _Log:
        log = _Log()
        if f"room:{room}" in self._channels:
            self._served[room] = log
        else:
            self._idle[room] = log  # a server broadcast to a room nobody serves
        return log

    # Presence: one process knows it all.

    async def join(self, room: str, user: str) -> bool:
        return True

    async def leave(self, room: str, user: str) -> bool:
        return True

    async def members(self, room: str) -> list[str]:
        return self.receiver.local_members(room)

    # The bus.

    def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        if channel.startswith("room:"):
            room = channel[5:]
            self._expire(time.monotonic())  # an expired log must not come back to life
            log = self._idle.pop(room, None)
            if log is not None:
                self._idle_size -= log.size
                self._served[room] = log

    def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        if not channel.startswith("room:"):
            return
        room = channel[5:]
        log = self._served.pop(room, None)
        if log is None or not log.last:
            return  # a room that never had a message costs nothing once emptied
        now = time.monotonic()
        self._expire(now)
        log.expires = now + log.ttl  # kept history_ttl from the moment it emptied
        self._idle[room] = log
        self._idle_size += log.size
        self._bound()

    async def publish(self, channel: str, payload: bytes) -> None:
        if channel in self._channels:
            self.receiver.received(channel, payload)

    async def direct(self, user: str, item: bytes) -> int | None:
        channel = f"user:{user}"
        if channel not in self._channels:
            return None
        self._direct_id += 1
        self.receiver.received(channel, b"D\n%d\n%b" % (self._direct_id, item))
        return self._direct_id

    # Bounds of idle logs.

    def _expire(self, now: float) -> None:
        idle = self._idle
        while idle:
            room, log = next(iter(idle.items()))
            if log.expires > now:
                return
            del idle[room]
            self._idle_size -= log.size

    def _bound(self) -> None:
        limits = self.receiver.limits
        idle = self._idle
        while idle and (
            len(idle) > limits.max_idle_rooms or self._idle_size > limits.max_idle_history_bytes
        ):
            _, log = idle.popitem(last=False)
            self._idle_size -= log.size
