"""The ConnectionManager: every room, connection and frame of one server process.

The manager is the façade applications and adapters know. The work is done by the parts
it builds and wires together: :class:`~wsroom.handshake.HandshakePolicy` (who may connect),
the dispatcher (every client frame, in ``_dispatch.py``), the delivery (every frame queued
to a connection, ``_delivery.py``), the registry (membership, ``_state.py``), each
:class:`~wsroom.Connection` (its queue and its close), and the cluster layer
(:class:`~wsroom.backplane.cluster.Cluster`) over the backplane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

from . import frames
from ._delivery import Delivery, Statistics
from ._dispatch import CanDirect, Dispatcher, Handler, OnConnect, OnDisconnect
from ._ratelimit import SharedLimits
from ._snapshot import AdminSnapshot, build_snapshot, check_sizes
from ._state import Registry
from .backplane.base import Backplane, BackplaneStatus
from .backplane.cluster import Cluster
from .backplane.memory import MemoryBackplane
from .connection import Connection, Transport
from .exceptions import ConfigurationError
from .frames import CloseCode
from .handshake import Authenticate, Handshake, HandshakePolicy, OriginPolicy
from .limits import Limits, is_positive_number
from .protocol import MessageProtocol, require_room_name
from .room import Room, check_room_class
from .threads import BlockingPortal

__all__ = ["Authenticate", "ConnectionManager", "Statistics"]

logger = logging.getLogger("wsroom")

RoomClassResolver: TypeAlias = Callable[[str], type[Room] | None]
Receive: TypeAlias = Callable[[], Awaitable[str | bytes | None]]


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
        on_connect: Hook ``(conn)`` called once per connection, after its ``welcome`` is
            queued and before its first frame is handled. Not called for handshakes
            refused before the upgrade.
        on_disconnect: Hook ``(conn, code)`` called once per connection, after it closed
            for any reason and left every room; ``code`` is the close code (the server's
            when it closed the connection, else the client's; ``None`` when unknown).
            Called after ``on_connect`` returned.
        client_address_header: Behind a reverse proxy, the request header in which the
            proxy puts the client's address (``"X-Forwarded-For"``, ``"X-Real-IP"``,
            ``"Forwarded"``); the last address in it counts, the one your proxy wrote. The
            per-address limits and :attr:`Handshake.client_address
            <wsroom.Handshake.client_address>` use it. Name it only when a proxy you run
            sets it: a client could write it itself.
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
        client_address_header: str | None = None,
        on_connect: OnConnect | None = None,
        on_disconnect: OnDisconnect | None = None,
    ) -> None:
        if isinstance(room_class, type):
            if not issubclass(room_class, Room):
                raise ConfigurationError(
                    f"room_class must be a subclass of wsroom.Room, not {room_class!r}"
                )
            check_room_class(room_class)
        elif not callable(room_class):
            raise ConfigurationError("room_class must be a Room subclass or a function")
        if heartbeat is not None and not is_positive_number(heartbeat):
            raise ConfigurationError("heartbeat must be a positive number of seconds or None")
        self._room_class = room_class
        self.protocol: MessageProtocol = protocol if protocol is not None else MessageProtocol()
        """The protocol that decodes and encodes every frame."""
        self.limits: Limits = limits if limits is not None else Limits()
        """The limits applied to every connection."""
        self.heartbeat = heartbeat
        """Seconds between client heartbeats, or ``None``."""
        self.can_direct = can_direct
        """The hook deciding whether a direct message may be sent, or ``None``."""
        self.on_connect = on_connect
        """The hook called when a connection arrives, or ``None``."""
        self.on_disconnect = on_disconnect
        """The hook called when a connection has ended, or ``None``."""
        self._closing = False
        self._registry = registry = Registry()
        self._delivery = delivery = Delivery(registry, self.protocol)
        self._shared_limits = shared_limits = SharedLimits(lambda: self.limits)
        self._policy = HandshakePolicy(
            authenticate=authenticate,
            origins=OriginPolicy(allowed_origins),
            subprotocol=self.protocol.subprotocol,
            batch_subprotocol=_batch_subprotocol(self.protocol),
            closing=lambda: self._closing,
            limits=shared_limits,
            client_address_header=client_address_header,
            refused=delivery.counters.handshake_refused,
        )
        self._cluster = cluster = Cluster(
            backplane if backplane is not None else MemoryBackplane(), self._delivery, self.limits
        )
        registry.on_room_opened = cluster.watch_room
        registry.on_room_closed = cluster.unwatch_room
        registry.on_user_opened = cluster.watch_user
        registry.on_user_closed = cluster.unwatch_user
        self._handlers: dict[str, Handler] = {}
        self._dispatcher = Dispatcher(
            self, registry, cluster, delivery, self._make_room, self._handlers, shared_limits
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
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
        # shutdown(): a manager that was shut down stays down. (Callers check _started
        # first: a broadcast must not pay for a coroutine that does nothing.)
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
            conn.begin_close(CloseCode.GOING_AWAY, "server shutting down", grace=timeout)
        if connections:
            await asyncio.gather(*(conn.wait_closed() for conn in connections))
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

    async def _watch_heartbeats(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval / 2)
            deadline = time.monotonic() - 2 * interval
            for conn in list(self._registry.connections.values()):
                if conn.last_seen < deadline:
                    conn.begin_close(CloseCode.POLICY_VIOLATION, "heartbeat timeout")

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

    @property
    def cluster(self) -> Cluster:
        """The cluster layer over the backplane: ids, history, presence and delivery on
        every node. :class:`Room`'s actions publish through it."""
        return self._cluster

    @property
    def authenticate(self) -> Authenticate | None:
        """The authentication hook, or ``None``."""
        return self._policy.authenticate

    @authenticate.setter
    def authenticate(self, hook: Authenticate | None) -> None:
        self._policy.authenticate = hook

    @property
    def origins(self) -> OriginPolicy:
        """The origin policy checked at every handshake."""
        return self._policy.origins

    @origins.setter
    def origins(self, policy: OriginPolicy) -> None:
        self._policy.origins = policy

    # Application handlers.

    def handler(self, type: str) -> Callable[[Handler], Handler]:
        """Register a handler for client frames of a custom ``type`` that name no room.

        Frames with a ``room`` go to that room's ``on_<type>`` method first::

            @manager.handler("whoami")
            def whoami(conn, message):
                conn.send_event("you", {"user": conn.user})
        """
        if type in frames.RESERVED_TYPES:
            raise ConfigurationError(f"{type!r} is a frame type of the protocol itself")

        def register(handler: Handler) -> Handler:
            self._handlers[type] = handler
            return handler

        return register

    # The adapter side: handshake, connection loop.

    async def authorize(self, handshake: Handshake) -> str | None:
        """Check a handshake before the upgrade: :meth:`admit` (503, 429, 403, 400), then
        the authenticate hook (401, 403, or 500 when the hook fails), then the user id it
        returned (403 when PROTOCOL.md does not allow it; see
        :func:`~wsroom.is_valid_user_id`).

        Returns:
            The user id, or ``None`` for an anonymous client (no authenticate hook).

        Raises:
            HandshakeRejected: the adapter must refuse the upgrade with its status.
        """
        return await self._policy.authorize(handshake)

    def admit(self, handshake: Handshake, user: str | None = None) -> None:
        """The checks that apply even to clients an application authenticated itself:
        shutdown (HTTP 503), the handshake rate of the client's address (429), the origin
        policy (403), the subprotocols offered (400), and ``user``, the id the application
        authenticated, when given (403 for an id PROTOCOL.md does not allow).

        Raises:
            HandshakeRejected: the adapter must refuse the upgrade with its status.
        """
        self._policy.admit(handshake, user)

    def select_subprotocol(self, offered: Iterable[str]) -> str | None:
        """The subprotocol to accept among those a client offered.

        Returns ``None`` when the client offered none (it is served without one).

        Raises:
            HandshakeRejected: the client offered only subprotocols this server does not
                speak (HTTP 400).
        """
        return self._policy.select_subprotocol(offered)

    async def accept(
        self, transport: Transport, handshake: Handshake, user: str | None
    ) -> Connection:
        """Register a new connection, queue its ``welcome`` frame and call the
        ``on_connect`` hook.

        Adapters call it once the upgrade is done, then :meth:`receive` for every frame,
        and :meth:`release` when the socket is gone.
        """
        if not self._closing:
            await self.start()
        conn = Connection(self._dispatcher, transport, secrets.token_hex(8), user, handshake)
        self._registry.add_connection(conn)
        self._delivery.send(conn, frames.welcome(conn.id, user, self.heartbeat))
        if self._closing:
            # The handshake passed just before shutdown began: close it like the others.
            conn.begin_close(CloseCode.GOING_AWAY, "server shutting down")
        if self.on_connect is not None:
            try:
                await self._dispatcher.arrive(conn)
            except BaseException:
                # Cancelled: the adapter never gets the connection to release it.
                conn.begin_close(CloseCode.GOING_AWAY, "server shutting down")
                raise
        return conn

    async def release(self, conn: Connection) -> None:
        """Forget a connection whose socket is gone: it leaves every room at once, then the
        ``on_disconnect`` hook is called with the close code its transport received."""
        await conn.detach()

    async def serve(
        self, transport: Transport, handshake: Handshake, user: str | None, receive: Receive
    ) -> None:
        """Run one connection to its end: welcome, then every frame ``receive`` returns.

        ``receive`` returns the next text (``str``) or binary (``bytes``) frame, or ``None``
        once the peer has closed. This is the whole loop of an asyncio adapter.
        """
        conn = await self.accept(transport, handshake, user)
        try:
            while not conn.closed:
                frame = await receive()
                if frame is None:
                    break
                await self._dispatcher.receive(conn, frame)
            else:
                await self._drain(receive)
        finally:
            await conn.detach()

    async def _drain(self, receive: Receive) -> None:
        """Read and drop what a client the server is closing still sends.

        Its close frame comes behind those frames: a server that stopped reading would not
        see it, and would hold the connection until the close deadline (a client flooding
        the server, closed for it, would stay five seconds instead of a moment). The close
        under way ends the receive at its deadline at the latest.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.limits.close_timeout + 1.0):
                while await receive() is not None:
                    pass

    async def receive(self, conn: Connection, frame: str | bytes) -> None:
        """Handle one client frame. Never raises: every problem becomes an ``error`` frame
        or, for the cases PROTOCOL.md lists, a close."""
        await self._dispatcher.receive(conn, frame)

    def evict(self, conn: Connection, reason: str = "client too slow") -> None:
        """Close a client that does not read fast enough with 1013, dropping what is queued.

        It leaves every room at once; the socket is aborted if it does not close within a
        second. Adapters call it when a write stays blocked past ``Limits.write_timeout``
        (:attr:`Statistics.write_timeouts` counts these evictions).
        """
        self._delivery.evict(conn, reason, write_timeout=True)

    # Server-side API.

    async def broadcast(self, room: str, data: Any, *, exclude: Connection | None = None) -> int:
        """Store ``data`` as a server message (``from`` null) in ``room`` and send it to every
        member, on every node. Returns the message id. Works for rooms with no members: the
        message is kept in the room's history."""
        if not self._started:
            await self._ensure_started()
        return await self._room_handle(room).broadcast(data, exclude=exclude)

    async def broadcast_event(
        self, room: str, type: str, data: Any = None, *, exclude: Connection | None = None
    ) -> None:
        """Send an unstored application event to every member of ``room``, on every node."""
        if not self._started:
            await self._ensure_started()
        await self._room_handle(room).broadcast_event(type, data, exclude=exclude)

    async def send_to_user(self, user: str, data: Any, *, sender: str | None = None) -> int | None:
        """Send a ``direct`` frame to every connection of ``user``, on every node.

        Returns the direct message's id, or ``None`` when the user is not connected.
        """
        if not self._started:
            await self._ensure_started()
        return await self._cluster.send_direct(user, sender, data, ts=frames.now_ms())

    async def send_all(self, type: str, data: Any = None) -> None:
        """Send an application event ``{"type": type, "data": data}`` to every connection."""
        frame = frames.event(type, data)
        if not self._started:
            await self._ensure_started()
        await self._cluster.send_all(self.encode(frame))

    async def disconnect_user(
        self, user: str, code: int = CloseCode.POLICY_VIOLATION, reason: str = "disconnected"
    ) -> int:
        """Close every connection of ``user`` on every node; returns how many were here."""
        if not self._started:
            await self._ensure_started()
        return await self._cluster.disconnect_user(user, code, reason)

    async def members(self, room: str) -> list[str]:
        """Identified users in ``room``, on every node."""
        if not self._started:
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

    def connections_in(self, room: str) -> list[Connection]:
        """This process's connections in ``room``, in the order they joined."""
        state = self._registry.rooms.get(room)
        return list(state.connections) if state is not None else []

    def statistics(self) -> Statistics:
        """Counters for monitoring: connections, rooms, queues, traffic, drops, evictions,
        closes, refusals and the backplane's health (``wsroom.metrics`` exposes them to
        Prometheus)."""
        return self._delivery.statistics(self._cluster)

    async def admin_snapshot(
        self,
        *,
        connections: int = 20,
        rooms: int = 20,
        members: int = 50,
        queues: int = 10,
        closes: int = 20,
    ) -> AdminSnapshot:
        """A bounded picture of this process for an operator, ready for ``json.dumps``:
        what the admin view (:mod:`wsroom.admin`) shows.

        It holds :meth:`statistics`, the newest ``connections``, the ``rooms`` with the most
        members (each with up to ``members`` of its users), the ``queues`` fullest outgoing
        queues, the latest ``closes`` connection ends (all of them, and those the server
        decided: evictions, timeouts, abuse), and the backplane's
        :meth:`~wsroom.backplane.Backplane.status`. Its cost grows with the connections and
        rooms of this process (one pass, and a top-K selection), never its size: take it when
        someone looks, not on a timer. It names users, rooms and client addresses: show it
        to operators only.

        Raises:
            ValueError: a size is not a whole number from 0 to 1000.
        """
        check_sizes(
            connections=connections, rooms=rooms, members=members, queues=queues, closes=closes
        )
        backplane = self._cluster.backplane
        try:
            status = await backplane.status()
        except Exception as exc:  # an operator's page must not fail with the store
            logger.exception("the backplane's status() failed")
            status = BackplaneStatus(
                kind=backplane.kind,
                available=backplane.available,
                last_error=f"status() failed: {type(exc).__name__}",
            )
        return build_snapshot(
            self._registry,
            self.statistics(),
            self.limits,
            self._dispatcher.closes,
            status,
            self._cluster.dropped_messages,
            connections=connections,
            rooms=rooms,
            members=members,
            queues=queues,
            closes=closes,
        )

    def encode(self, frame: dict[str, Any]) -> bytes:
        """Encode a frame with this manager's protocol."""
        return self._delivery.encode(frame)

    def decode(self, data: bytes) -> Any:
        """Decode bytes made by :meth:`encode` (for backplanes carrying frames)."""
        return self._delivery.decode(data)

    # The BackplaneNode side, kept for code written against it: the delivery implements it.

    def deliver_room(self, room: str, frame: bytes, exclude: str | None) -> None:
        """Queue an encoded frame to this process's members of ``room``."""
        self._delivery.deliver_room(room, frame, exclude)

    def deliver_user(self, user: str, frame: bytes) -> int:
        """Queue an encoded frame to this process's connections of ``user``."""
        return self._delivery.deliver_user(user, frame)

    def deliver_all(self, frame: bytes) -> None:
        """Queue an encoded frame to every connection of this process."""
        self._delivery.deliver_all(frame)

    def local_members(self, room: str) -> list[str]:
        """Identified users with a connection in ``room`` in this process."""
        return self._delivery.local_members(room)

    def local_user_count(self, user: str) -> int:
        """Connections of ``user`` in this process."""
        return self._delivery.local_user_count(user)

    def disconnect_local_user(self, user: str, code: int, reason: str) -> int:
        """Close this process's connections of ``user``."""
        return self._delivery.disconnect_local_user(user, code, reason)

    # Rooms.

    def _room_handle(self, name: str) -> Room:
        state = self._registry.rooms.get(name)
        if state is not None:
            return state.room  # a room with members here has a valid name
        require_room_name(name)
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
        check_room_class(resolved)
        return resolved(name, self)


def _batch_subprotocol(protocol: MessageProtocol) -> str | None:
    """The protocol's subprotocol of batched frames, checked: a batch is a JSON array, which
    only a text protocol can carry, under a name of its own."""
    batch = protocol.batch_subprotocol
    if batch is None:
        return None
    if not batch:
        raise ConfigurationError("MessageProtocol.batch_subprotocol must be a name or None")
    if protocol.binary:
        raise ConfigurationError(
            "batched frames are JSON arrays of text frames: a binary protocol must set "
            "batch_subprotocol = None"
        )
    if batch == protocol.subprotocol:
        raise ConfigurationError(
            "MessageProtocol.batch_subprotocol must differ from its subprotocol: a client "
            "that offers only the plain one never gets a batch"
        )
    return batch
