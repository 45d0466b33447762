"""One client connection as the core sees it, and the interface adapters implement.

A :class:`Connection` owns a bounded outgoing queue. The core appends encoded frames to it
and never waits; the adapter's :class:`Transport` drains it onto the socket. The queue is
bounded both in frames and in bytes, so a client that stops reading can hold at most that
much memory before it is evicted (close code 1013) or loses its oldest frames.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from typing import TYPE_CHECKING, Any

from .exceptions import ConnectionClosedError
from .protocol import SERVER_TYPES, CloseCode, _require_room_name

if TYPE_CHECKING:
    from .handshake import Handshake
    from .manager import ConnectionManager

__all__ = ["Connection", "Transport"]


class Transport(ABC):
    """The per-connection interface an adapter gives the core.

    The core calls these methods on the manager's event loop. An adapter implements them
    over its socket; see ``docs/adapters.md``. The contract:

    * :meth:`wake` is called when the connection's queue goes from empty to non-empty.
      It must not block: schedule the write, then return. The writer takes frames with
      :meth:`Connection.take_outgoing` until the queue is empty.
    * :meth:`close` sends what is queued, then a close frame, and returns once the socket
      is closed. The core bounds it with a deadline and calls :meth:`abort` when it expires,
      so :meth:`close` may block on a peer that stopped reading.
    * :meth:`abort` cuts the TCP connection at once, whatever the peer does. It must be
      idempotent and must never raise.
    """

    # Empty, so that a subclass declaring __slots__ (which must then include "connection")
    # has no per-instance __dict__; subclasses that declare none get one as usual.
    __slots__ = ()

    connection: Connection | None = None
    """The connection this transport carries, set by the manager before any frame is queued."""

    def bind(self, connection: Connection) -> None:
        """Called once by the manager when it registers the connection."""
        self.connection = connection  # type: ignore[misc]  # a subclass's slot or __dict__

    @abstractmethod
    def wake(self) -> None:
        """Frames are waiting in the connection's queue: start writing them."""

    @abstractmethod
    async def close(self, code: int, reason: str) -> None:
        """Flush the queue, send a close frame with ``code`` and ``reason``, wait for the end."""

    @abstractmethod
    def abort(self) -> None:
        """Cut the connection now, without a closing handshake."""


class Connection:
    """A client connected to a :class:`~wsroom.ConnectionManager`.

    Hooks receive it as ``conn``. It identifies the client (:attr:`id`, :attr:`user`), carries
    application state (:attr:`state`) and can be written to directly (:meth:`send_event`).
    Membership is read-only here (:attr:`rooms`); join and leave go through the protocol or
    the manager.
    """

    __slots__ = (
        "_bucket_stamp",
        "_bucket_tokens",
        "_close_task",
        "_closed",
        "_drop_oldest",
        "_manager",
        "_max_bytes",
        "_max_frames",
        "_outbox",
        "_queued_bytes",
        "_rooms",
        "_strikes",
        "close_code",
        "dropped_frames",
        "handshake",
        "id",
        "last_seen",
        "state",
        "transport",
        "user",
    )

    def __init__(
        self,
        manager: ConnectionManager,
        transport: Transport,
        connection_id: str,
        user: str | None,
        handshake: Handshake,
    ) -> None:
        self.id: str = connection_id
        """Unique id of this connection, sent to the client in ``welcome``."""
        self.user: str | None = user
        """The user id returned by the authenticate hook, or ``None`` (anonymous)."""
        self.handshake: Handshake = handshake
        """The HTTP upgrade request this connection came from."""
        self.state: dict[str, Any] = handshake.state
        """Free-form per-connection data for the application."""
        self.transport: Transport = transport
        """The adapter's transport for this connection."""
        self.close_code: int | None = None
        """The close code once the server decided to close, else ``None``."""
        self.dropped_frames: int = 0
        """Frames dropped because the queue was full (with ``overflow="drop_oldest"``)."""
        self.last_seen: float = time.monotonic()
        """Monotonic time of the last frame received from the client."""
        self._manager = manager
        self._rooms: set[str] = set()
        # A list, not a deque: an empty deque holds a 500-byte block, and most connections
        # sit idle with nothing queued. The writer takes the whole list at once.
        self._outbox: list[bytes] = []
        self._queued_bytes = 0
        limits = manager.limits
        self._max_frames = limits.max_queue
        self._max_bytes = limits.max_queue_bytes
        self._drop_oldest = limits.overflow == "drop_oldest"
        self._bucket_tokens = float(limits.rate_burst)
        self._bucket_stamp = self.last_seen
        # Created by the first rate-limit violation: well-behaved clients never need it.
        self._strikes: deque[float] | None = None
        self._closed = False
        self._close_task: Any = None
        transport.bind(self)

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user!r}>"

    @property
    def rooms(self) -> frozenset[str]:
        """The names of the rooms this connection has joined."""
        return frozenset(self._rooms)

    @property
    def closed(self) -> bool:
        """Whether the connection is closing or closed; nothing more is sent to it."""
        return self._closed

    @property
    def queued_frames(self) -> int:
        """Frames waiting in the outgoing queue."""
        return len(self._outbox)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in the outgoing queue."""
        return self._queued_bytes

    @property
    def manager(self) -> ConnectionManager:
        """The manager this connection belongs to."""
        return self._manager

    def send_event(self, type: str, data: Any = None, *, room: str | None = None) -> None:
        """Send an application event ``{"type": type, "room": room, "data": data}`` to this client.

        It is not stored in any history. The frame is queued and this returns at once.

        Raises:
            ValueError: ``type`` is one of the protocol's own frame types, or ``room`` is
                not a valid room name.
            ConnectionClosedError: the connection is closed.
            EncodeError: ``data`` cannot be encoded.
        """
        if type in SERVER_TYPES:
            raise ValueError(
                f"{type!r} is a frame type of the protocol itself; choose another event name"
            )
        if room is not None:
            _require_room_name(room)
        if self._closed:
            raise ConnectionClosedError(f"connection {self.id} is closed")
        frame: dict[str, Any] = {"type": type, "data": data}
        if room is not None:
            frame["room"] = room
        self._manager._send_frame(self, frame)

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close this connection with ``code``, after the frames already queued are sent.

        Returns once it is closed or, for a peer that does not answer, aborted.
        """
        await self._manager._close(self, code, reason)

    # The outgoing queue. Only the core appends; only the adapter's writer takes.

    def _push(self, frame: bytes) -> bool:
        """Queue one encoded frame; ``False`` when it does not fit and must evict."""
        if self._closed:
            return True
        size = len(frame)
        outbox = self._outbox
        if len(outbox) >= self._max_frames or self._queued_bytes + size > self._max_bytes:
            if not self._drop_oldest or size > self._max_bytes:
                return False
            # Count the oldest frames to drop, then drop them in one slice deletion.
            count = len(outbox)
            queued = self._queued_bytes
            dropped = 0
            while dropped < count and (
                count - dropped >= self._max_frames or queued + size > self._max_bytes
            ):
                queued -= len(outbox[dropped])
                dropped += 1
            del outbox[:dropped]
            self._queued_bytes = queued
            self.dropped_frames += dropped
            self._manager._dropped_frames += dropped
        outbox.append(frame)
        self._queued_bytes += size
        if len(outbox) == 1:
            self.transport.wake()
        return True

    def take_outgoing(self, limit: int | None = None) -> list[bytes]:
        """Take up to ``limit`` queued frames (all by default), oldest first. For adapters."""
        outbox = self._outbox
        if limit is None or limit >= len(outbox):
            # Hand over the list itself; a fresh empty list costs less than a copy.
            self._outbox = []
            self._queued_bytes = 0
            return outbox
        frames = outbox[:limit]
        del outbox[:limit]
        self._queued_bytes -= sum(map(len, frames))
        return frames

    def _take_tokens(self, now: float) -> bool:
        """Token bucket: ``False`` when the client sends faster than its limit."""
        limits = self._manager.limits
        if limits.rate is None:
            return True
        tokens = min(
            float(limits.rate_burst), self._bucket_tokens + (now - self._bucket_stamp) * limits.rate
        )
        self._bucket_stamp = now
        if tokens < 1.0:
            self._bucket_tokens = tokens
            return False
        self._bucket_tokens = tokens - 1.0
        return True

    def _strike(self, now: float) -> bool:
        """Record one rate-limit violation; ``True`` when the abuse warrants closing."""
        limits = self._manager.limits
        strikes = self._strikes
        if strikes is None:
            strikes = self._strikes = deque()
        strikes.append(now)
        while strikes and strikes[0] < now - limits.rate_abuse_window:
            strikes.popleft()
        return len(strikes) >= limits.rate_abuse_strikes
