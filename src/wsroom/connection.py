"""One client connection as the core sees it, and the interface adapters implement.

A :class:`Connection` owns a bounded outgoing queue. The core appends encoded frames to it
and never waits; the adapter's :class:`Transport` drains it onto the socket. The queue is
bounded both in frames and in bytes, so a client that stops reading can hold at most that
much memory before it is evicted (close code 1013) or loses its oldest frames.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from . import frames
from ._batch import pack
from ._ratelimit import TokenBucket, take_all
from .exceptions import ConnectionClosedError
from .frames import CloseCode
from .protocol import require_room_name

if TYPE_CHECKING:
    from .handshake import Handshake
    from .limits import Limits
    from .manager import ConnectionManager

__all__ = ["Connection", "Transport"]

logger = logging.getLogger("wsroom")


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
    * :meth:`peer_close_code` (optional) tells the close code the client sent, once the
      adapter saw the connection end; the ``on_disconnect`` hook reports it.
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

    def peer_close_code(self) -> int | None:
        """The close code the client sent when it closed the connection (1006 when the TCP
        connection ended without one), read once the connection is gone; ``None`` when
        unknown. The default knows none."""
        return None


class ConnectionHost(Protocol):
    """What a :class:`Connection` needs from the manager that serves it (the core
    implements it; applications never do)."""

    @property
    def manager(self) -> ConnectionManager:
        """The manager, as applications see it."""
        ...

    @property
    def limits(self) -> Limits:
        """The limits applied to the connection."""
        ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The manager's event loop, once started."""
        ...

    def encode(self, frame: dict[str, Any]) -> bytes:
        """Encode a frame with the manager's protocol."""
        ...

    def evict(self, conn: Connection, reason: str = "client too slow") -> None:
        """Close a client whose queue overflowed, with 1013."""
        ...

    def send_bytes(self, conn: Connection, frame: bytes) -> None:
        """Queue an encoded frame to ``conn`` (evicting it if its queue overflows)."""
        ...

    def rooms_of(self, conn: Connection) -> frozenset[str]:
        """The names of the rooms ``conn`` is in."""
        ...

    def depart(
        self, conn: Connection, code: int | None = None, reason: str | None = None
    ) -> Callable[[], Awaitable[None]]:
        """Take ``conn`` out of every room at once; the function returned finishes leaving
        them (presence, ``on_leave`` hooks), then reports the end of the connection, with
        its close code ``code`` (``None``: unknown), to the ``on_disconnect`` hook.
        ``reason``: the server's reason when it closed the connection, ``None`` when the
        client did."""
        ...

    def hold_buckets(
        self, user: str | None, address: str | None, now: float
    ) -> tuple[tuple[TokenBucket, ...], str | None]:
        """The frame budgets a new connection shares with its user's and its address's
        connections, and the key its address is counted under."""
        ...

    def release_buckets(
        self, buckets: tuple[TokenBucket, ...], counted: str | None, now: float
    ) -> None:
        """A connection holding shared ``buckets``, counted under ``counted``, is gone."""
        ...

    def frames_dropped(self, count: int) -> None:
        """``count`` frames were dropped from a full queue (``overflow="drop_oldest"``)."""
        ...


class Connection:
    """A client connected to a :class:`~wsroom.ConnectionManager`.

    Hooks receive it as ``conn``. It identifies the client (:attr:`id`, :attr:`user`), carries
    application state (:attr:`state`) and can be written to directly (:meth:`send_event`).
    Membership is read-only here (:attr:`rooms`); join and leave go through the protocol or
    the manager.

    A connection owns its outgoing queue and its close: :meth:`begin_close` takes it out of
    every room at once and closes the socket after the frames already queued, within a
    deadline. Adapters call :meth:`take_outgoing` and :meth:`detach`; the core calls
    :meth:`push`.
    """

    __slots__ = (
        "_batch_limit",
        "_buckets",
        "_close_task",
        "_closed",
        "_counted",
        "_drop_oldest",
        "_host",
        "_max_bytes",
        "_max_frames",
        "_outbox",
        "_queued_bytes",
        "_shared",
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
        host: ConnectionHost,
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
        self._host = host
        # A list, not a deque: an empty deque holds a 500-byte block, and most connections
        # sit idle with nothing queued. The writer takes the whole list at once.
        self._outbox: list[bytes] = []
        self._queued_bytes = 0
        limits = host.limits
        self._max_frames = limits.max_queue
        self._max_bytes = limits.max_queue_bytes
        self._drop_oldest = limits.overflow == "drop_oldest"
        # Batched frames (PROTOCOL.md): the largest message the writer may pack queued
        # frames into, 0 for a client that did not negotiate batches.
        batch = host.manager.protocol.batch_subprotocol
        self._batch_limit = (
            limits.max_frame_size if batch is not None and handshake.subprotocol == batch else 0
        )
        now = self.last_seen
        # This connection's own budget first, then those it shares with its user's and its
        # address's other connections, past and present.
        own = () if limits.rate is None else (TokenBucket(limits.rate, limits.rate_burst, now),)
        shared, self._counted = host.hold_buckets(user, handshake.client_address, now)
        self._shared = shared
        self._buckets: tuple[TokenBucket, ...] = own + shared
        # Created by the first rate-limit violation: well-behaved clients never need it.
        self._strikes: deque[float] | None = None
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        transport.bind(self)

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user!r}>"

    @property
    def rooms(self) -> frozenset[str]:
        """The names of the rooms this connection has joined."""
        return self._host.rooms_of(self)

    @property
    def closed(self) -> bool:
        """Whether the connection is closing or closed; nothing more is sent to it."""
        return self._closed

    @property
    def queued_frames(self) -> int:
        """Frames waiting in the outgoing queue."""
        return len(self._outbox)

    @property
    def batched(self) -> bool:
        """Whether this client negotiated batched frames (``wsroom.v1.batch``): the frames
        waiting in its queue are sent as JSON arrays (:meth:`take_messages`)."""
        return self._batch_limit > 0

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in the outgoing queue."""
        return self._queued_bytes

    @property
    def manager(self) -> ConnectionManager:
        """The manager this connection belongs to."""
        return self._host.manager

    def send_event(self, type: str, data: Any = None, *, room: str | None = None) -> None:
        """Send an application event ``{"type": type, "room": room, "data": data}`` to this client.

        It is not stored in any history. The frame is queued and this returns at once.

        Raises:
            ValueError: ``type`` is one of the protocol's own frame types, or ``room`` is
                not a valid room name.
            ConnectionClosedError: the connection is closed.
            EncodeError: ``data`` cannot be encoded.
        """
        frames.check_event_type(type)
        if room is not None:
            require_room_name(room)
        if self._closed:
            raise ConnectionClosedError(f"connection {self.id} is closed")
        self._host.send_bytes(self, self._host.encode(frames.event(type, data, room)))

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close this connection with ``code``, after the frames already queued are sent.

        Returns once it is closed or, for a peer that does not answer, aborted.
        """
        self.begin_close(code, reason)
        await self.wait_closed()

    # The close lifecycle.

    def begin_close(self, code: int, reason: str, *, grace: float | None = None) -> None:
        """Start closing with ``code``; returns at once.

        From now on the connection is in no room and nothing new is queued to it. The
        frames already queued are sent, then the close frame; a peer that has not closed
        within ``grace`` seconds (``Limits.close_timeout`` by default) is aborted.
        """
        if self._closed:
            return
        self._closed = True
        self.close_code = code
        self._host.release_buckets(self._shared, self._counted, time.monotonic())
        departure = self._host.depart(self, code, reason)
        if grace is None:
            grace = self._host.limits.close_timeout
        loop = self._host.loop or asyncio.get_running_loop()
        self._close_task = loop.create_task(self._finish_close(departure, code, reason, grace))

    async def _finish_close(
        self, departure: Callable[[], Awaitable[None]], code: int, reason: str, grace: float
    ) -> None:
        await departure()
        transport = self.transport
        try:
            async with asyncio.timeout(grace):
                await transport.close(code, reason)
        except TimeoutError:
            transport.abort()
        except Exception:
            logger.exception("error while closing %r", self)
            transport.abort()

    async def wait_closed(self) -> None:
        """Wait until a close begun by :meth:`begin_close` is over (socket closed or
        aborted); return at once if none was begun."""
        if self._close_task is not None:
            await asyncio.shield(self._close_task)

    async def detach(self) -> None:
        """The socket is gone (adapters call it when their receive loop ends).

        The connection leaves every room at once and what is queued is dropped; a close the
        server had begun is waited for.
        """
        if not self._closed:
            self._closed = True
            self.drop_queue()
            self._host.release_buckets(self._shared, self._counted, time.monotonic())
            await self._host.depart(self, self.transport.peer_close_code())()
        else:
            await self.wait_closed()

    # The outgoing queue. Only the core appends; only the adapter's writer takes.

    def push(self, frame: bytes) -> bool:
        """Queue one encoded frame, without waiting (for the core).

        Returns:
            ``False`` when it does not fit: the caller must evict the connection.
        """
        if self._closed:
            return True
        outbox = self._outbox
        queued = self._queued_bytes + len(frame)
        if queued > self._max_bytes or len(outbox) >= self._max_frames:
            return self._push_full(frame)
        self._queued_bytes = queued
        # Runs once per recipient of every broadcast: the writer is woken only when the
        # queue was empty, tested before the append rather than measured after it.
        if outbox:
            outbox.append(frame)
        else:
            outbox.append(frame)
            self.transport.wake()
        return True

    def _push_full(self, frame: bytes) -> bool:
        """:meth:`push` to a full queue: drop the oldest frames, or refuse."""
        size = len(frame)
        if not self._drop_oldest or size > self._max_bytes:
            return False
        # Count the oldest frames to drop, then drop them in one slice deletion.
        outbox = self._outbox
        count = len(outbox)
        queued = self._queued_bytes
        dropped = 0
        while dropped < count and (
            count - dropped >= self._max_frames or queued + size > self._max_bytes
        ):
            queued -= len(outbox[dropped])
            dropped += 1
        del outbox[:dropped]
        self._queued_bytes = queued + size
        self.dropped_frames += dropped
        self._host.frames_dropped(dropped)
        outbox.append(frame)
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

    def take_messages(self) -> list[bytes]:
        """Take every queued frame as the WebSocket messages to send, oldest first. For
        adapters: what a writer sends, one message after the other.

        For a client without batched frames these are the frames themselves. For a batched
        client (:attr:`batched`) the frames waiting are packed into JSON arrays of at most
        ``Limits.max_frame_size`` bytes; a frame alone, or one larger than that, stays a
        plain object. Only frames already queued are packed: a writer that takes them as
        soon as it can adds no delay.
        """
        return self.pack(self.take_outgoing())

    def pack(self, frames: list[bytes]) -> list[bytes]:
        """The messages carrying ``frames``, taken from the queue with
        :meth:`take_outgoing`: packed into batches for a batched client, as they are
        otherwise (see :meth:`take_messages`). For adapters that look at the frames first."""
        if self._batch_limit and len(frames) > 1:
            return pack(frames, self._batch_limit)
        return frames

    def drop_queue(self) -> None:
        """Forget every queued frame (a client that is evicted or gone gets none of them)."""
        self._outbox.clear()
        self._queued_bytes = 0

    # The client's rate (Limits.rate), checked by the core for every frame received.

    def allow_frame(self, now: float) -> bool:
        """Take a token for one client frame from each of its budgets (its own, its
        user's, its address's); ``False``, and none taken, when one of them is spent."""
        return take_all(self._buckets, now)

    def note_violation(self, now: float) -> bool:
        """Record one rate-limit violation; ``True`` when the abuse warrants closing."""
        limits = self._host.limits
        strikes = self._strikes
        if strikes is None:
            strikes = self._strikes = deque()
        strikes.append(now)
        while strikes and strikes[0] < now - limits.rate_abuse_window:
            strikes.popleft()
        return len(strikes) >= limits.rate_abuse_strikes
