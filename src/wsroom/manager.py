"""The ConnectionManager: every room, connection and frame of one server process."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar, cast

from ._state import Registry, RoomState
from .backplane.base import Backplane
from .backplane.cluster import Cluster
from .backplane.memory import MemoryBackplane
from .connection import Connection, Transport
from .exceptions import BackplaneError, ConfigurationError, HandshakeRejected, ProtocolError
from .handshake import Handshake, OriginPolicy
from .limits import Limits, _is_positive_number
from .protocol import (
    MAX_USER_ID_LENGTH,
    PROTOCOL_VERSION,
    SERVER_TYPES,
    CloseCode,
    ErrorCode,
    Message,
    MessageProtocol,
    _is_valid_ref,
    _require_room_name,
)
from .room import Room
from .threads import BlockingPortal

__all__ = ["Authenticate", "ConnectionManager", "Statistics"]

logger = logging.getLogger("wsroom")

T = TypeVar("T")
MaybeAwaitable: TypeAlias = T | Awaitable[T]
Authenticate: TypeAlias = Callable[[Handshake], MaybeAwaitable[str | None]]
"""``authenticate(handshake)``: return the user id, ``None`` to refuse with HTTP 401, or raise
:class:`~wsroom.HandshakeRejected` to refuse with another status. ``def`` or ``async def``."""
RoomClassResolver: TypeAlias = Callable[[str], type[Room] | None]
Handler: TypeAlias = Callable[[Connection, Message], MaybeAwaitable[None]]
CanDirect: TypeAlias = Callable[[Connection, str, Any], MaybeAwaitable[bool]]
Receive: TypeAlias = Callable[[], Awaitable[str | bytes | None]]

_EVICTION_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class Statistics:
    """A snapshot of a manager's counters, from :meth:`ConnectionManager.statistics`."""

    connections: int
    """Open connections in this process."""
    users: int
    """Distinct identified users connected to this process."""
    rooms: int
    """Rooms with members in this process."""
    queued_frames: int
    """Frames waiting in all outgoing queues."""
    queued_bytes: int
    """Bytes waiting in all outgoing queues."""
    frames_received: int
    """Client frames received since start."""
    messages_published: int
    """Room messages stored and broadcast since start."""
    errors_sent: int
    """``error`` frames sent since start."""
    dropped_frames: int
    """Frames dropped from full queues (``overflow="drop_oldest"``)."""
    evictions: int
    """Clients closed with 1013 because they did not read fast enough."""


async def call_hook(hook: Callable[..., Any], *args: Any) -> Any:
    """Call a hook that may be ``def`` or ``async def``, and return its result."""
    result = hook(*args)
    if inspect.isawaitable(result):
        return await result
    return result


class ConnectionManager:
    """Connections, rooms and the protocol, for one server process.

    Create one per application and give it to an adapter (``wsroom.adapters.websockets``,
    ...). Everything the manager does runs on the event loop of the server it serves.

    Args:
        room_class: The :class:`Room` subclass for every room, or a function that takes a
            room name and returns the class for it (``None``: no such room, joins get
            ``forbidden``).
        authenticate: Hook called with the :class:`Handshake` before the upgrade; returns
            the user id, or ``None`` to refuse with HTTP 401. Without it every client is
            anonymous (user ``null``).
        allowed_origins: ``None`` (same origin only), ``"*"`` or a list of origins; see
            :class:`~wsroom.OriginPolicy`.
        protocol: The :class:`MessageProtocol`; the default speaks JSON, PROTOCOL.md v1.
        backplane: Where ids, history and presence live; a :class:`MemoryBackplane` (this
            process only) by default. A distributed backplane shares rooms between
            processes.
        limits: The per-client :class:`Limits`.
        heartbeat: Seconds between the frames clients must send (a ``ping`` when they have
            nothing else to say), announced in ``welcome``; a client that sends no frame
            for twice as long is closed with 1008. ``None`` (the default) leaves liveness to
            the WebSocket server's own pings.
        can_direct: Hook ``(conn, to_user, data) -> bool`` deciding whether a ``direct``
            message may be sent; ``False`` answers ``forbidden``.
    """

    def __init__(
        self,
        room_class: type[Room] | RoomClassResolver = Room,
        *,
        authenticate: Authenticate | None = None,
        allowed_origins: Iterable[str] | str | None = None,
        protocol: MessageProtocol | None = None,
        backplane: Backplane | None = None,
        limits: Limits | None = None,
        heartbeat: float | None = None,
        can_direct: CanDirect | None = None,
    ) -> None:
        if isinstance(room_class, type):
            if not issubclass(room_class, Room):
                raise ConfigurationError(
                    f"room_class must be a subclass of wsroom.Room, not {room_class!r}"
                )
            room_class._check_settings()
        elif not callable(room_class):
            raise ConfigurationError("room_class must be a Room subclass or a function")
        if heartbeat is not None and not _is_positive_number(heartbeat):
            raise ConfigurationError("heartbeat must be a positive number of seconds or None")
        self._room_class = room_class
        self.authenticate = authenticate
        """The authentication hook, or ``None``."""
        self.origins = OriginPolicy(allowed_origins)
        """The origin policy checked at every handshake."""
        self.protocol: MessageProtocol = protocol if protocol is not None else MessageProtocol()
        """The protocol that decodes and encodes every frame."""
        self.limits: Limits = limits if limits is not None else Limits()
        """The limits applied to every connection."""
        self.heartbeat = heartbeat
        """Seconds between client heartbeats, or ``None``."""
        self.can_direct = can_direct
        """The hook deciding whether a direct message may be sent, or ``None``."""
        self._cluster = Cluster(
            backplane if backplane is not None else MemoryBackplane(), node=self, limits=self.limits
        )
        self._registry = Registry(
            on_room_opened=self._cluster.watch_room,
            on_room_closed=self._cluster.unwatch_room,
            on_user_opened=self._cluster.watch_user,
            on_user_closed=self._cluster.unwatch_user,
        )
        self._handlers: dict[str, Handler] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._closing = False
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._frames_received = 0
        self._messages_published = 0
        self._errors_sent = 0
        self._dropped_frames = 0
        self._evictions = 0
        self._encode = self.protocol.dumps
        self._portal = BlockingPortal(self)

    # Lifecycle.

    async def start(self) -> None:
        """Bind to the running event loop and start the backplane.

        Adapters call it on the first connection; call it yourself to fail fast at startup
        (for example when Redis is unreachable).
        """
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise RuntimeError("this ConnectionManager already runs on another event loop")
        self._loop = loop
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self._cluster.start()
            if self.heartbeat is not None:
                self._heartbeat_task = loop.create_task(self._watch_heartbeats(self.heartbeat))
            self._started = True

    async def _ensure_started(self) -> None:
        # The server-side API may be used before the first client connects, not after
        # shutdown(): a manager that was shut down stays down.
        if not self._started:
            if self._closing:
                raise RuntimeError("this ConnectionManager was shut down; create a new one")
            await self.start()

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Close every connection gracefully and stop the backplane.

        New handshakes are refused with HTTP 503 from now on. Each client first receives
        what is queued for it, then a close frame with 1001; clients that have not closed
        within ``timeout`` seconds are aborted.
        """
        self._closing = True
        connections = list(self._registry.connections.values())
        for conn in connections:
            self._begin_close(conn, CloseCode.GOING_AWAY, "server shutting down", grace=timeout)
        tasks = [c._close_task for c in connections if c._close_task is not None]
        if tasks:
            await asyncio.wait(tasks)
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None
        if self._started:
            self._started = False
            await self._cluster.stop()

    async def __aenter__(self) -> ConnectionManager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.shutdown()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop this manager runs on, once started; ``None`` before."""
        return self._loop

    @property
    def from_thread(self) -> BlockingPortal:
        """The server-side API for code running in other threads (blocking calls).

        For example, from a Flask view while a server serves the rooms::

            manager.from_thread.broadcast("lobby", {"text": "deploy finished"})
        """
        return self._portal

    @property
    def closing(self) -> bool:
        """Whether :meth:`shutdown` was called."""
        return self._closing

    @property
    def backplane(self) -> Backplane:
        """The backplane this manager publishes through."""
        return self._cluster.backplane

    # Application handlers.

    def handler(self, type: str) -> Callable[[Handler], Handler]:
        """Register a handler for client frames of a custom ``type`` that name no room.

        Frames with a ``room`` go to that room's ``on_<type>`` method first::

            @manager.handler("whoami")
            def whoami(conn, message):
                conn.send_event("you", {"user": conn.user})
        """
        if type in SERVER_TYPES or type in ("join", "leave", "ping"):
            raise ConfigurationError(f"{type!r} is a frame type of the protocol itself")

        def register(handler: Handler) -> Handler:
            self._handlers[type] = handler
            return handler

        return register

    # The adapter side: handshake, connection loop.

    async def authorize(self, handshake: Handshake) -> str | None:
        """Check a handshake before the upgrade: :meth:`admit` (503, 403, 400), then the
        authenticate hook (401, 403, or 500 when the hook fails).

        Returns:
            The user id, or ``None`` for an anonymous client (no authenticate hook).

        Raises:
            HandshakeRejected: the adapter must refuse the upgrade with its status.
        """
        self.admit(handshake)
        if self.authenticate is None:
            return None
        try:
            user = await call_hook(self.authenticate, handshake)
        except HandshakeRejected:
            raise
        except Exception:
            logger.exception("authenticate hook failed")
            raise HandshakeRejected(500, "Internal Server Error") from None
        if user is None:
            raise HandshakeRejected(401, "Unauthorized")
        if not isinstance(user, str) or not 0 < len(user) <= MAX_USER_ID_LENGTH:
            logger.error(
                "authenticate hook returned %r: it must return a user id "
                "(a string of 1 to %d characters) or None",
                type(user).__name__,
                MAX_USER_ID_LENGTH,
            )
            raise HandshakeRejected(500, "Internal Server Error")
        return user

    def admit(self, handshake: Handshake) -> None:
        """The checks that apply even to clients an application authenticated itself:
        shutdown (HTTP 503), the origin policy (403), the subprotocols offered (400).

        Raises:
            HandshakeRejected: the adapter must refuse the upgrade with its status.
        """
        if self._closing:
            raise HandshakeRejected(503, "Server shutting down")
        if not self.origins.allows(handshake):
            raise HandshakeRejected(403, "Origin not allowed")
        self.select_subprotocol(handshake.subprotocols)

    def select_subprotocol(self, offered: Iterable[str]) -> str | None:
        """The subprotocol to accept among those a client offered.

        Returns ``None`` when the client offered none (it is served without one).

        Raises:
            HandshakeRejected: the client offered only subprotocols this server does not
                speak (HTTP 400).
        """
        offered = list(offered)
        if not offered:
            return None
        if self.protocol.subprotocol in offered:
            return self.protocol.subprotocol
        raise HandshakeRejected(
            400, f"Unsupported subprotocol: this server speaks {self.protocol.subprotocol}"
        )

    async def accept(
        self, transport: Transport, handshake: Handshake, user: str | None
    ) -> Connection:
        """Register a new connection and queue its ``welcome`` frame.

        Adapters call it once the upgrade is done, then :meth:`receive` for every frame,
        and :meth:`release` when the socket is gone.
        """
        if not self._closing:
            await self.start()
        conn = Connection(self, transport, secrets.token_hex(8), user, handshake)
        self._registry.add_connection(conn)
        self._send_frame(
            conn,
            {
                "type": "welcome",
                "connection": conn.id,
                "user": user,
                "protocol": PROTOCOL_VERSION,
                "heartbeat": self.heartbeat,
            },
        )
        if self._closing:
            # The handshake passed just before shutdown began: close it like the others.
            self._begin_close(conn, CloseCode.GOING_AWAY, "server shutting down")
        return conn

    async def release(self, conn: Connection) -> None:
        """Forget a connection whose socket is gone: it leaves every room at once."""
        if not conn._closed:
            conn._closed = True
            conn._outbox.clear()
            conn._queued_bytes = 0
            for state, last_local in self._registry.remove_connection(conn):
                await self._after_leave(conn, state, last_local)
        elif conn._close_task is not None:
            await asyncio.shield(conn._close_task)

    async def serve(
        self, transport: Transport, handshake: Handshake, user: str | None, receive: Receive
    ) -> None:
        """Run one connection to its end: welcome, then every frame ``receive`` returns.

        ``receive`` returns the next text (``str``) or binary (``bytes``) frame, or ``None``
        once the peer has closed. This is the whole loop of an asyncio adapter.
        """
        conn = await self.accept(transport, handshake, user)
        try:
            while not conn._closed:
                frame = await receive()
                if frame is None:
                    break
                await self.receive(conn, frame)
        finally:
            await self.release(conn)

    async def receive(self, conn: Connection, frame: str | bytes) -> None:
        """Handle one client frame. Never raises: every problem becomes an ``error`` frame
        or, for the cases PROTOCOL.md lists, a close."""
        if conn._closed:
            return
        now = time.monotonic()
        conn.last_seen = now
        self._frames_received += 1
        if self._too_large(frame):
            self._begin_close(conn, CloseCode.MESSAGE_TOO_BIG, "frame too large")
            return
        if not conn._take_tokens(now):
            self._send_error(
                conn,
                ErrorCode.RATE_LIMITED,
                "slow down: too many frames",
                _peek_ref(self.protocol, frame),
            )
            if conn._strike(now):
                self._begin_close(conn, CloseCode.POLICY_VIOLATION, "rate limit exceeded")
            return
        try:
            message = self.protocol.decode(frame, conn)
        except ProtocolError as exc:
            self._send_error(conn, exc.code, exc.message, exc.ref)
            return
        except Exception:
            # A custom protocol's bug must not kill the connection loop.
            logger.exception("MessageProtocol.decode raised an unexpected exception")
            self._send_error(conn, ErrorCode.INTERNAL_ERROR, "internal server error", None)
            return
        try:
            await self._dispatch(conn, message)
        except ProtocolError as exc:
            self._send_error(
                conn, exc.code, exc.message, exc.ref if exc.ref is not None else message.ref
            )
        except BackplaneError as exc:
            # Logged by the backplane when it goes down; the client may retry later.
            logger.debug("backplane error while handling %r: %s", message.type, exc)
            self._send_error(
                conn,
                ErrorCode.INTERNAL_ERROR,
                "temporarily unavailable: try again shortly",
                message.ref,
            )
        except Exception:
            logger.exception("error while handling a %r frame from %r", message.type, conn)
            self._send_error(conn, ErrorCode.INTERNAL_ERROR, "internal server error", message.ref)

    def evict(self, conn: Connection, reason: str = "client too slow") -> None:
        """Close a client that does not read fast enough with 1013, dropping what is queued.

        It leaves every room at once; the socket is aborted if it does not close within a
        second. Adapters call it when a write stays blocked past ``Limits.write_timeout``.
        """
        if conn._closed:
            return
        self._evictions += 1
        conn._outbox.clear()
        conn._queued_bytes = 0
        self._begin_close(conn, CloseCode.TRY_AGAIN_LATER, reason, grace=_EVICTION_GRACE)

    # Server-side API.

    async def broadcast(self, room: str, data: Any, *, exclude: Connection | None = None) -> int:
        """Store ``data`` as a server message (``from`` null) in ``room`` and send it to every
        member, on every node. Returns the message id. Works for rooms with no members: the
        message is kept in the room's history."""
        await self._ensure_started()
        return await self._room_handle(room).broadcast(data, exclude=exclude)

    async def broadcast_event(
        self, room: str, type: str, data: Any = None, *, exclude: Connection | None = None
    ) -> None:
        """Send an unstored application event to every member of ``room``, on every node."""
        await self._ensure_started()
        await self._room_handle(room).broadcast_event(type, data, exclude=exclude)

    async def send_to_user(self, user: str, data: Any, *, sender: str | None = None) -> int | None:
        """Send a ``direct`` frame to every connection of ``user``, on every node.

        Returns the direct message's id, or ``None`` when the user is not connected.
        """
        await self._ensure_started()
        return await self._cluster.send_direct(user, sender, data, ts=_now_ms())

    async def send_all(self, type: str, data: Any = None) -> None:
        """Send an application event ``{"type": type, "data": data}`` to every connection."""
        if type in SERVER_TYPES:
            raise ValueError(f"{type!r} is a frame type of the protocol itself")
        await self._ensure_started()
        await self._cluster.send_all(self.encode({"type": type, "data": data}))

    async def disconnect_user(
        self, user: str, code: int = CloseCode.POLICY_VIOLATION, reason: str = "disconnected"
    ) -> int:
        """Close every connection of ``user`` on every node; returns how many were here."""
        await self._ensure_started()
        return await self._cluster.disconnect_user(user, code, reason)

    async def members(self, room: str) -> list[str]:
        """Identified users in ``room``, on every node."""
        await self._ensure_started()
        return await self._cluster.members(room)

    def rooms(self) -> list[str]:
        """Names of the rooms with members in this process."""
        return list(self._registry.rooms)

    def room(self, name: str) -> Room | None:
        """This process's instance of room ``name``, or ``None`` if it has no members here."""
        state = self._registry.rooms.get(name)
        return state.room if state is not None else None

    @property
    def connections(self) -> list[Connection]:
        """Every open connection of this process."""
        return list(self._registry.connections.values())

    def connection(self, connection_id: str) -> Connection | None:
        """The connection with this id in this process, or ``None``."""
        return self._registry.connections.get(connection_id)

    def user_connections(self, user: str) -> list[Connection]:
        """The connections of ``user`` in this process."""
        return self._registry.user_connections(user)

    def statistics(self) -> Statistics:
        """Counters for monitoring: connections, rooms, queues, drops and evictions."""
        registry = self._registry
        queued_frames = queued_bytes = 0
        for conn in registry.connections.values():
            queued_frames += len(conn._outbox)
            queued_bytes += conn._queued_bytes
        return Statistics(
            connections=len(registry.connections),
            users=len(registry.users),
            rooms=len(registry.rooms),
            queued_frames=queued_frames,
            queued_bytes=queued_bytes,
            frames_received=self._frames_received,
            messages_published=self._messages_published,
            errors_sent=self._errors_sent,
            dropped_frames=self._dropped_frames,
            evictions=self._evictions,
        )

    def encode(self, frame: dict[str, Any]) -> bytes:
        """Encode a frame with this manager's protocol."""
        return self._encode(frame)

    def decode(self, data: bytes) -> Any:
        """Decode bytes made by :meth:`encode` (for backplanes carrying frames)."""
        protocol = self.protocol
        return protocol.loads(data if protocol.binary else data.decode("utf-8"))

    # BackplaneNode: what the backplane calls to reach this process's connections.

    def deliver_room(self, room: str, frame: bytes, exclude: str | None) -> None:
        """Queue an encoded frame to this process's members of ``room``."""
        state = self._registry.rooms.get(room)
        if state is None:
            return
        overflowed: list[Connection] | None = None
        for conn in state.connections:
            if exclude is not None and conn.id == exclude:
                continue
            if not conn._push(frame):
                if overflowed is None:
                    overflowed = []
                overflowed.append(conn)
        if overflowed is not None:
            for conn in overflowed:
                self.evict(conn)

    def deliver_user(self, user: str, frame: bytes) -> int:
        """Queue an encoded frame to this process's connections of ``user``."""
        conns = self._registry.user_connections(user)
        for conn in conns:
            if not conn._push(frame):
                self.evict(conn)
        return len(conns)

    def deliver_all(self, frame: bytes) -> None:
        """Queue an encoded frame to every connection of this process."""
        for conn in list(self._registry.connections.values()):
            if not conn._push(frame):
                self.evict(conn)

    def local_members(self, room: str) -> list[str]:
        """Identified users with a connection in ``room`` in this process."""
        state = self._registry.rooms.get(room)
        return list(state.users) if state is not None else []

    def local_user_count(self, user: str) -> int:
        """Connections of ``user`` in this process."""
        return len(self._registry.users.get(user, ()))

    def disconnect_local_user(self, user: str, code: int, reason: str) -> int:
        """Close this process's connections of ``user``."""
        conns = self._registry.user_connections(user)
        for conn in conns:
            self._begin_close(conn, code, reason)
        return len(conns)

    # Internals.

    def _room_handle(self, name: str) -> Room:
        _require_room_name(name)
        state = self._registry.rooms.get(name)
        if state is not None:
            return state.room
        room = self._make_room(name)
        if room is None:
            raise ValueError(f"no room class serves the room {name!r}")
        return room

    def _make_room(self, name: str) -> Room | None:
        chosen = self._room_class
        if isinstance(chosen, type):
            room: Room = chosen(name, self)
            return room
        resolved: object = chosen(name)
        if resolved is None:
            return None
        if not (isinstance(resolved, type) and issubclass(resolved, Room)):
            raise ConfigurationError(
                f"room_class({name!r}) returned {resolved!r}, which is not a Room subclass"
            )
        resolved._check_settings()
        return resolved(name, self)

    def _too_large(self, frame: str | bytes) -> bool:
        limit = self.limits.max_frame_size
        size = len(frame)
        if size > limit:
            return True
        # A str of n characters takes up to 4n bytes in UTF-8.
        return (
            isinstance(frame, str)
            and size * 4 > limit
            and len(frame.encode("utf-8", "surrogatepass")) > limit
        )

    def _send_frame(self, conn: Connection, frame: dict[str, Any]) -> None:
        if not conn._push(self._encode(frame)):
            self.evict(conn)

    def _send_error(self, conn: Connection, code: str, text: str, ref: str | int | None) -> None:
        self._errors_sent += 1
        self._send_frame(conn, self.protocol.error_frame(code, text, ref))

    def _answer(self, conn: Connection, message: Message, message_id: int | None = None) -> None:
        """The ``ack`` a frame with a ``ref`` is owed once handled."""
        if message.ref is None or conn._closed:
            return
        frame: dict[str, Any] = {"type": "ack", "ref": message.ref}
        if message_id is not None:
            frame["id"] = message_id
        self._send_frame(conn, frame)

    def _joined_state(self, conn: Connection, room: str) -> RoomState:
        state = self._registry.rooms.get(room)
        if state is None or room not in conn._rooms:
            raise ProtocolError(ErrorCode.NOT_JOINED, f"join the room {room!r} first")
        return state

    async def _dispatch(self, conn: Connection, message: Message) -> None:
        type_ = message.type
        if type_ == "message":
            state = self._joined_state(conn, cast(str, message.room))
            await call_hook(state.room.on_message, conn, message)
            self._answer(conn, message, message.id)
        elif type_ == "join":
            await self._join(conn, message)
        elif type_ == "leave":
            await self._leave(conn, message)
        elif type_ == "direct":
            await self._direct(conn, message)
        elif type_ == "ping":
            self._send_frame(conn, {"type": "pong", "ref": message.ref})
        else:
            await self._custom(conn, message)

    async def _join(self, conn: Connection, message: Message) -> None:
        name = cast(str, message.room)
        registry = self._registry
        rejoin = name in conn._rooms
        if not rejoin:
            if len(conn._rooms) >= self.limits.max_rooms_per_connection:
                raise ProtocolError(
                    ErrorCode.FORBIDDEN,
                    f"a connection may be in at most {self.limits.max_rooms_per_connection} rooms",
                )
            if name not in registry.rooms and len(registry.rooms) >= self.limits.max_rooms:
                raise ProtocolError(ErrorCode.FORBIDDEN, "the server has too many rooms")
        try:
            state = registry.reserve(name, self._make_room_or_refuse)
        except _NoSuchRoom:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"there is no room {name!r}") from None
        try:
            # One join at a time per room on this node: whether this connection is its
            # user's first here is then known before the waits below, and stays true.
            async with state.join_lock:
                await self._join_locked(conn, message, state, rejoin)
        finally:
            registry.release(state)

    async def _join_locked(
        self, conn: Connection, message: Message, state: RoomState, rejoin: bool
    ) -> None:
        name = state.room.name
        room = state.room
        user = conn.user
        if not rejoin and not await call_hook(room.can_join, conn, message.data):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"you may not join the room {name!r}")
        backplane = self._cluster
        # Everything that waits comes first: the room's traffic reaches this node, its
        # members are read, the user is counted in, the history is read. The connection
        # becomes a member and gets its 'joined' in one step after, so no frame of the
        # room precedes it, and whoever joins after sees this user among the members.
        await backplane.ready(name)
        members = await backplane.members(name)
        if not rejoin:
            already_member = user is not None and user in members
            limit = room.max_members
            if limit is not None and not already_member and len(members) + state.anonymous >= limit:
                raise ProtocolError(ErrorCode.ROOM_FULL, f"the room {name!r} is full")
        counted = not rejoin and user is not None and user not in state.users
        first = await backplane.join(name, user) if counted and user else False
        try:
            snapshot = await backplane.snapshot(
                name,
                since=message.fields.get("since"),
                epoch=message.fields.get("epoch"),
                limit=room.history_size,
                history_ttl=room.history_ttl,
            )
        except BaseException:
            if counted and user is not None:
                with contextlib.suppress(BackplaneError):
                    await backplane.leave(name, user)
            raise
        if conn._closed:
            if counted and user is not None:
                await backplane.leave(name, user)
            return
        if not rejoin:
            first_local = self._registry.join(conn, state)
            if first_local and not counted and user is not None:
                # Another connection of this user left the room during the waits and
                # took the user's presence with it: count the user in again.
                first = await backplane.join(name, user)
            if user is not None and user not in members:
                members.append(user)
        joined: dict[str, Any] = {
            "type": "joined",
            "room": name,
            "ref": message.ref,
            "members": members,
            "history": snapshot.history,
            "offset": snapshot.offset,
            "epoch": snapshot.epoch,
        }
        if snapshot.recovered is not None:
            joined["recovered"] = snapshot.recovered
        self._send_frame(conn, joined)
        if first:
            await backplane.publish_event(
                name,
                self.encode({"type": "presence", "room": name, "event": "join", "user": user}),
                exclude=conn.id,
            )
        if not rejoin:
            await call_hook(room.on_join, conn)

    def _make_room_or_refuse(self, name: str) -> Room:
        room = self._make_room(name)
        if room is None:
            raise _NoSuchRoom(name)
        return room

    async def _leave(self, conn: Connection, message: Message) -> None:
        name = cast(str, message.room)
        self._joined_state(conn, name)
        result = self._registry.leave(conn, name)
        self._send_frame(conn, {"type": "left", "room": name, "ref": message.ref})
        if result is not None:
            await self._after_leave(conn, *result)

    async def _after_leave(self, conn: Connection, state: RoomState, last_local: bool) -> None:
        """Presence and the ``on_leave`` hook, once ``conn`` is out of the room."""
        name = state.room.name
        try:
            if last_local and conn.user is not None:
                backplane = self._cluster
                if await backplane.leave(name, conn.user):
                    await backplane.publish_event(
                        name,
                        self.encode(
                            {"type": "presence", "room": name, "event": "leave", "user": conn.user}
                        ),
                    )
            await call_hook(state.room.on_leave, conn)
        except BackplaneError as exc:
            # The backplane reconciles this node's presence once it is reachable again.
            logger.debug("presence of %r in %r not updated: %s", conn, name, exc)
        except Exception:
            logger.exception("error while %r left the room %r", conn, name)

    async def _direct(self, conn: Connection, message: Message) -> None:
        to = cast(str, message.fields["to"])
        if self.can_direct is not None and not await call_hook(
            self.can_direct, conn, to, message.data
        ):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"you may not send direct messages to {to!r}")
        message_id = await self._cluster.send_direct(to, conn.user, message.data, ts=_now_ms())
        if message_id is None:
            raise ProtocolError(ErrorCode.USER_OFFLINE, f"the user {to!r} is not connected")
        self._answer(conn, message, message_id)

    async def _custom(self, conn: Connection, message: Message) -> None:
        type_ = message.type
        if message.room is not None:
            state = self._joined_state(conn, message.room)
            method = type(state.room)._custom_handler_name(type_)
            if method is not None:
                await call_hook(getattr(state.room, method), conn, message)
                self._answer(conn, message, message.id)
                return
        handler = self._handlers.get(type_)
        if handler is None:
            raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"no handler for message type {type_!r}")
        await call_hook(handler, conn, message)
        self._answer(conn, message, message.id)

    def _begin_close(
        self, conn: Connection, code: int, reason: str, *, grace: float | None = None
    ) -> None:
        """Start closing ``conn``: from now on it is in no room and receives nothing new."""
        if conn._closed:
            return
        conn._closed = True
        conn.close_code = code
        left = self._registry.remove_connection(conn)
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        conn._close_task = loop.create_task(
            self._finish_close(
                conn, code, reason, left, self.limits.close_timeout if grace is None else grace
            )
        )

    async def _finish_close(
        self,
        conn: Connection,
        code: int,
        reason: str,
        left: list[tuple[RoomState, bool]],
        grace: float,
    ) -> None:
        for state, last_local in left:
            await self._after_leave(conn, state, last_local)
        transport = conn.transport
        try:
            async with asyncio.timeout(grace):
                await transport.close(code, reason)
        except TimeoutError:
            transport.abort()
        except Exception:
            logger.exception("error while closing %r", conn)
            transport.abort()

    async def _close(self, conn: Connection, code: int, reason: str) -> None:
        self._begin_close(conn, code, reason)
        if conn._close_task is not None:
            await asyncio.shield(conn._close_task)

    async def _watch_heartbeats(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval / 2)
            deadline = time.monotonic() - 2 * interval
            for conn in list(self._registry.connections.values()):
                if conn.last_seen < deadline:
                    self._begin_close(conn, CloseCode.POLICY_VIOLATION, "heartbeat timeout")


class _NoSuchRoom(LookupError):
    pass


def _now_ms() -> int:
    return int(time.time() * 1000)


def _peek_ref(protocol: MessageProtocol, frame: str | bytes) -> str | int | None:
    """The ``ref`` of a frame that will not be processed, so its error can still echo it."""
    try:
        value = protocol.loads(frame)
    except Exception:
        return None
    if isinstance(value, dict):
        ref = value.get("ref")
        if _is_valid_ref(ref):
            return cast(str | int, ref)
    return None
