"""Serving client frames: the receive pipeline and one handler per client type.

Every frame a client sends goes through :meth:`Dispatcher.receive`: size, rate, decoding,
then the handler that :data:`wsroom.frames.CLIENT_TYPES` names for its type. A handler
either answers itself (``joined``, ``left``, ``pong``) or returns what the ``ack`` carries:
the id of the message it stored, or, for a custom frame whose application handler answered
with data, the whole ``ack``, encoded; every failure becomes an ``error`` frame here, so no
handler sends one.

The dispatcher also calls the manager's ``on_connect`` and ``on_disconnect`` hooks, since
it is where a connection's departure from its rooms ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from . import frames
from ._hooks import MaybeAwaitable, call_hook
from ._ratelimit import SharedLimits, TokenBucket
from ._snapshot import CloseLog
from .exceptions import BackplaneError, EncodeError, ProtocolError
from .frames import CLIENT_TYPES, CUSTOM_TYPE, CloseCode, ErrorCode
from .limits import ABUSE_CLOSE_GRACE

if TYPE_CHECKING:
    from ._delivery import Delivery
    from ._state import Registry, RoomState
    from .backplane.base import RoomSnapshot
    from .backplane.cluster import Cluster
    from .connection import Connection
    from .limits import Limits
    from .manager import ConnectionManager
    from .protocol import Message
    from .room import Room

__all__ = ["CanDirect", "Dispatcher", "Handler", "OnConnect", "OnDisconnect"]

logger = logging.getLogger("wsroom")

Handler: TypeAlias = Callable[["Connection", "Message"], MaybeAwaitable[Any]]
"""An application's handler for a custom frame type (``manager.handler(type)``). What it
returns, unless ``None``, is sent back to the client as the ``data`` of the frame's ``ack``."""
CanDirect: TypeAlias = Callable[["Connection", str, Any], MaybeAwaitable[bool]]
"""``can_direct(conn, to_user, data)``: whether a ``direct`` message may be sent."""
OnConnect: TypeAlias = Callable[["Connection"], MaybeAwaitable[None]]
"""``on_connect(conn)``: a connection arrived; its ``welcome`` is queued."""
OnDisconnect: TypeAlias = Callable[["Connection", int | None], MaybeAwaitable[None]]
"""``on_disconnect(conn, code)``: a connection ended and left every room; ``code`` is the
close code (the server's, or the client's), ``None`` when unknown."""

_Serve: TypeAlias = Callable[["Connection", "Message"], Awaitable[int | bytes | None]]
"""Serves one client frame. For a frame answered by ``ack``, returns what the ``ack``
carries: the stored message's id (``None``: no id), or the whole ``ack`` already encoded."""


class _NoSuchRoom(LookupError):
    pass


class Dispatcher:
    """The protocol's state machine for one manager, and the host of its connections.

    Args:
        manager: The manager, as hooks see it.
        registry: Membership, the one source of it.
        cluster: Ids, history, presence and delivery on every node.
        delivery: Queues frames to this process's connections.
        make_room: The room instance for a name, or ``None`` when no room class serves it.
        handlers: The application's handlers of custom types, by type (shared, so that
            handlers registered later are served).
        shared_limits: The frame budgets a user's or an address's connections share.
    """

    def __init__(
        self,
        manager: ConnectionManager,
        registry: Registry,
        cluster: Cluster,
        delivery: Delivery,
        make_room: Callable[[str], Room | None],
        handlers: dict[str, Handler],
        shared_limits: SharedLimits | None = None,
    ) -> None:
        self.manager = manager
        self._registry = registry
        self._cluster = cluster
        self._delivery = delivery
        self._make_room = make_room
        self._handlers = handlers
        self._shared_limits = shared_limits
        self._protocol = manager.protocol
        self.closes = CloseLog()
        """The latest connection ends, for the admin view."""
        self._serve: dict[str, _Serve] = {
            kind.name: getattr(self, kind.handler) for kind in (*CLIENT_TYPES.values(), CUSTOM_TYPE)
        }
        # Connections whose on_connect hook runs, with the close codes of those that ended
        # meanwhile: their on_disconnect waits for on_connect to return.
        self._arriving: dict[Connection, list[int | None]] = {}

    # ConnectionHost: what connections need from the core.

    @property
    def limits(self) -> Limits:
        """The manager's limits."""
        return self.manager.limits

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The manager's event loop, once started."""
        return self.manager.loop

    def encode(self, frame: dict[str, Any]) -> bytes:
        """Encode a frame with the manager's protocol."""
        return self._delivery.encode(frame)

    def evict(self, conn: Connection, reason: str = "client too slow") -> None:
        """Close a client that does not read fast enough, with 1013."""
        self._delivery.evict(conn, reason)

    def send_bytes(self, conn: Connection, frame: bytes) -> None:
        """Queue an encoded frame to ``conn`` (evicting it if its queue overflows)."""
        self._delivery.send_bytes(conn, frame)

    def rooms_of(self, conn: Connection) -> frozenset[str]:
        """The names of the rooms ``conn`` is in."""
        return self._registry.rooms_of(conn)

    def hold_buckets(
        self, user: str | None, address: str | None, now: float
    ) -> tuple[tuple[TokenBucket, ...], str | None]:
        """The frame budgets a new connection shares with its user's and its address's
        connections, and the key its address is counted under."""
        if self._shared_limits is None:
            return (), None
        return self._shared_limits.hold(user, address, now)

    def release_buckets(
        self, buckets: tuple[TokenBucket, ...], counted: str | None, now: float
    ) -> None:
        """A connection holding shared ``buckets``, counted under ``counted``, is gone."""
        if self._shared_limits is not None:
            self._shared_limits.release(buckets, counted, now)

    def frames_dropped(self, count: int) -> None:
        """Count frames dropped from full queues."""
        self._delivery.counters.dropped_frames += count

    def depart(
        self, conn: Connection, code: int | None = None, reason: str | None = None
    ) -> Callable[[], Awaitable[None]]:
        """Take ``conn`` out of every room now; the function returned finishes leaving them
        and calls the ``on_disconnect`` hook with ``code``, the connection's close code.
        ``reason`` is the server's when it closed the connection, ``None`` when the client
        did."""
        self.closes.record(conn, code, reason)
        # Called once per connection: by its close (close_code set first), or when the
        # client went first.
        self._delivery.counters.closed(conn.close_code is not None, code)
        left = self._registry.remove_connection(conn)
        return functools.partial(self._finish_leaving, conn, left, code)

    async def _finish_leaving(
        self, conn: Connection, left: list[tuple[RoomState, bool]], code: int | None
    ) -> None:
        for state, last_local in left:
            await self.after_leave(conn, state, last_local)
        arriving = self._arriving.get(conn)
        if arriving is not None:
            arriving.append(code)  # on_connect still runs: on_disconnect follows it
        else:
            await self._disconnected(conn, code)

    # The connection's own hooks.

    async def arrive(self, conn: Connection) -> None:
        """Call the ``on_connect`` hook for a connection whose ``welcome`` is queued.

        An exception from the hook is logged. A connection that ends while the hook runs
        has its ``on_disconnect`` called once the hook returned.
        """
        hook = self.manager.on_connect
        if hook is None:
            return
        ended: list[int | None] = []
        self._arriving[conn] = ended
        try:
            await call_hook(hook, conn)
        except Exception:
            logger.exception("error in the on_connect hook for %r", conn)
        finally:
            del self._arriving[conn]
            if ended:
                await self._disconnected(conn, ended[0])

    async def _disconnected(self, conn: Connection, code: int | None) -> None:
        hook = self.manager.on_disconnect
        if hook is None:
            return
        try:
            await call_hook(hook, conn, code)
        except Exception:
            logger.exception("error in the on_disconnect hook for %r", conn)

    # The receive pipeline.

    async def receive(self, conn: Connection, frame: str | bytes) -> None:
        """Handle one client frame. Never raises: every problem becomes an ``error`` frame
        or, for the cases PROTOCOL.md lists, a close."""
        if conn.closed:
            return
        now = time.monotonic()
        conn.last_seen = now
        delivery = self._delivery
        counters = delivery.counters
        counters.frames_received += 1
        # Text frames: a str that is ASCII (known without a scan) has as many bytes.
        counters.bytes_received += (
            len(frame)
            if isinstance(frame, bytes) or frame.isascii()
            else len(frame.encode("utf-8", "surrogatepass"))
        )
        if self._too_large(frame):
            conn.begin_close(CloseCode.MESSAGE_TOO_BIG, "frame too large", grace=ABUSE_CLOSE_GRACE)
            return
        if not conn.allow_frame(now):
            counters.rate_limited += 1
            ref = self._protocol.peek_ref(frame)
            delivery.send_error(conn, ErrorCode.RATE_LIMITED, "slow down: too many frames", ref)
            if conn.note_violation(now):
                conn.begin_close(
                    CloseCode.POLICY_VIOLATION, "rate limit exceeded", grace=ABUSE_CLOSE_GRACE
                )
            return
        try:
            message = self._protocol.decode(frame, conn)
        except ProtocolError as exc:
            delivery.send_error(conn, exc.code, exc.message, exc.ref)
            return
        except Exception:
            # A custom protocol's bug must not kill the connection loop.
            logger.exception("MessageProtocol.decode raised an unexpected exception")
            delivery.send_error(conn, ErrorCode.INTERNAL_ERROR, "internal server error", None)
            return
        kind = CLIENT_TYPES.get(message.type, CUSTOM_TYPE)
        try:
            answer = await self._serve[kind.name](conn, message)
        except ProtocolError as exc:
            ref = exc.ref if exc.ref is not None else message.ref
            delivery.send_error(conn, exc.code, exc.message, ref)
        except BackplaneError as exc:
            # Logged by the backplane when it goes down; the client may retry later.
            logger.debug("backplane error while handling %r: %s", message.type, exc)
            text = "temporarily unavailable: try again shortly"
            delivery.send_error(conn, ErrorCode.INTERNAL_ERROR, text, message.ref)
        except Exception:
            logger.exception("error while handling a %r frame from %r", message.type, conn)
            text = "internal server error"
            delivery.send_error(conn, ErrorCode.INTERNAL_ERROR, text, message.ref)
        else:
            if kind.answer == "ack" and message.ref is not None and not conn.closed:
                if isinstance(answer, bytes):
                    delivery.send_bytes(conn, answer)  # an ack with data, encoded and checked
                else:
                    delivery.send(conn, frames.ack(message.ref, answer))

    def _too_large(self, frame: str | bytes) -> bool:
        limit = self.manager.limits.max_frame_size
        size = len(frame)
        if size > limit:
            return True
        # A str of n characters takes up to 4n bytes in UTF-8.
        return (
            isinstance(frame, str)
            and size * 4 > limit
            and len(frame.encode("utf-8", "surrogatepass")) > limit
        )

    def _joined_state(self, conn: Connection, room: str) -> RoomState:
        state = self._registry.rooms.get(room)
        if state is None or conn not in state.connections:
            raise ProtocolError(ErrorCode.NOT_JOINED, f"join the room {room!r} first")
        return state

    # One handler per client type: CLIENT_TYPES names them.

    async def message(self, conn: Connection, message: Message) -> int | None:
        """``message``: the room's ``on_message`` hook (by default: store and broadcast)."""
        state = self._joined_state(conn, cast(str, message.room))
        await call_hook(state.room.on_message, conn, message)
        return message.id

    async def ping(self, conn: Connection, message: Message) -> None:
        """``ping``: answered by ``pong``."""
        self._delivery.send(conn, frames.pong(message.ref))
        return None

    async def leave(self, conn: Connection, message: Message) -> None:
        """``leave``: answered by ``left``; presence and ``on_leave`` follow."""
        name = cast(str, message.room)
        self._joined_state(conn, name)
        result = self._registry.leave(conn, name)
        self._delivery.send(conn, frames.left(name, message.ref))
        if result is not None:
            await self.after_leave(conn, *result)
        return None

    async def direct(self, conn: Connection, message: Message) -> int | None:
        """``direct``: to every connection of a user, on any node."""
        to = cast(str, message.fields["to"])
        can_direct = self.manager.can_direct
        if can_direct is not None and not await call_hook(can_direct, conn, to, message.data):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"you may not send direct messages to {to!r}")
        ts = frames.now_ms()
        message_id = await self._cluster.send_direct(to, conn.user, message.data, ts=ts)
        if message_id is None:
            raise ProtocolError(ErrorCode.USER_OFFLINE, f"the user {to!r} is not connected")
        return message_id

    async def custom(self, conn: Connection, message: Message) -> int | bytes | None:
        """Any other type: the room's ``on_<type>`` method, else a registered handler. What
        the handler returns, unless ``None``, is the ``data`` of the ``ack``."""
        type_ = message.type
        handler: Callable[..., Any] | None = None
        if message.room is not None:
            state = self._joined_state(conn, message.room)
            handler = _room_handler(state.room, type_)
        if handler is None:
            handler = self._handlers.get(type_)
            if handler is None:
                raise ProtocolError(
                    ErrorCode.UNKNOWN_TYPE, f"no handler for message type {type_!r}"
                )
        result = await call_hook(handler, conn, message)
        if result is None or message.ref is None:
            return message.id  # no data to answer with, or no ack to carry it
        return self._answer(message, result, handler)

    def _answer(self, message: Message, data: Any, handler: Callable[..., Any]) -> bytes:
        """The ``ack`` of a custom frame whose handler answered with ``data``, encoded.

        Raises:
            ProtocolError: ``internal_error`` (the reason is logged) when ``data`` cannot
                be encoded, or when the ``ack`` is larger than any client may queue.
        """
        try:
            frame = self._delivery.encode(frames.ack(message.ref, message.id, data))
        except EncodeError as exc:
            problem = str(exc)
        else:
            limit = self.manager.limits.max_queue_bytes
            if len(frame) <= limit:
                return frame
            problem = (
                f"the ack would take {len(frame)} bytes, more than a client may queue "
                f"(Limits.max_queue_bytes, {limit})"
            )
        logger.error(
            "cannot answer a %r frame from %r with what %s returned: %s; "
            "the client gets internal_error",
            message.type,
            message.connection,
            _hook_name(handler),
            problem,
        )
        raise ProtocolError(ErrorCode.INTERNAL_ERROR, "internal server error")

    async def join(self, conn: Connection, message: Message) -> None:
        """``join``: answered by ``joined`` (with the room's members and history)."""
        name = cast(str, message.room)
        registry = self._registry
        limits = self.manager.limits
        rejoin = registry.is_member(conn, name)
        if not rejoin:
            if registry.room_count(conn) >= limits.max_rooms_per_connection:
                raise ProtocolError(
                    ErrorCode.FORBIDDEN,
                    f"a connection may be in at most {limits.max_rooms_per_connection} rooms",
                )
            if name not in registry.rooms and len(registry.rooms) >= limits.max_rooms:
                raise ProtocolError(ErrorCode.FORBIDDEN, "the server has too many rooms")
        try:
            state = registry.reserve(name, self._make_room_or_refuse)
        except _NoSuchRoom:
            # The same answer as a refused join: a different one would tell a client which
            # private rooms exist.
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"you may not join the room {name!r}"
            ) from None
        try:
            # One join at a time per room on this node: whether this connection is its
            # user's first here is then known before the waits below, and stays true.
            async with state.join_lock:
                await self._join_locked(conn, message, state, rejoin)
        finally:
            registry.release(state)

    def _make_room_or_refuse(self, name: str) -> Room:
        room = self._make_room(name)
        if room is None:
            raise _NoSuchRoom(name)
        return room

    async def _join_locked(
        self, conn: Connection, message: Message, state: RoomState, rejoin: bool
    ) -> None:
        room = state.room
        name = room.name
        user = conn.user
        if not rejoin and not await call_hook(room.can_join, conn, message.data):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"you may not join the room {name!r}")
        cluster = self._cluster
        # Everything that waits comes first: the room's traffic reaches this node, its
        # members are read, the user is counted in, the history is read. The connection
        # becomes a member and gets its 'joined' in one step after, so no frame of the
        # room precedes it, and whoever joins after sees this user among the members.
        await cluster.ready(name)
        members = await cluster.members(name)
        if not rejoin:
            _check_room_space(room, state, members, user)
        counted = user if not rejoin and user is not None and user not in state.users else None
        first = await cluster.join(name, counted) if counted is not None else False
        try:
            snapshot = await cluster.snapshot(
                name,
                since=message.fields.get("since"),
                epoch=message.fields.get("epoch"),
                limit=room.history_size,
                history_ttl=room.history_ttl,
            )
        except BaseException:
            if counted is not None:
                with contextlib.suppress(BackplaneError):
                    await cluster.leave(name, counted)
            raise
        if conn.closed:
            if counted is not None:
                await cluster.leave(name, counted)
            return
        if not rejoin:
            first_local = self._registry.join(conn, state)
            if first_local and counted is None and user is not None:
                # Another connection of this user left the room during the waits and
                # took the user's presence with it: count the user in again.
                first = await cluster.join(name, user)
            if user is not None and user not in members:
                members.append(user)
        self._delivery.send_bytes(conn, self._joined_frame(conn, message, members, snapshot))
        if first and user is not None:
            presence = self._delivery.encode(frames.presence(name, "join", user))
            await cluster.publish_event(name, presence, exclude=conn.id)
        if not rejoin:
            await call_hook(room.on_join, conn)

    def _joined_frame(
        self, conn: Connection, message: Message, members: list[str], snapshot: RoomSnapshot
    ) -> bytes:
        """The encoded ``joined`` frame, its replay cut to what the connection may queue.

        The frame takes at most half of the connection's queue (less what waits in it
        already), leaving the other half to the room's live traffic: a room whose history
        is larger (a few big messages can make it so) replays its newest messages that fit,
        and a recovery that does not fit whole is not called recovered.
        """
        room = cast(str, message.room)
        history = snapshot.history
        recovered = snapshot.recovered

        def encoded(count: int) -> bytes:
            kept = history[len(history) - count :] if count else []
            claim = recovered if count == len(history) or recovered is None else False
            frame = frames.joined(
                room, message.ref, members, kept, snapshot.offset, snapshot.epoch, claim
            )
            return self._delivery.encode(frame)

        budget = self.manager.limits.max_queue_bytes // 2 - conn.queued_bytes
        whole = encoded(len(history))
        if len(whole) <= budget or not history:
            return whole
        # The most messages that fit: sizes grow with the count, so bisect.
        low, high = 0, len(history) - 1
        while low < high:
            middle = (low + high + 1) // 2
            if len(encoded(middle)) <= budget:
                low = middle
            else:
                high = middle - 1
        return encoded(low)

    async def after_leave(self, conn: Connection, state: RoomState, last_local: bool) -> None:
        """Presence and the ``on_leave`` hook, once ``conn`` is out of the room."""
        name = state.room.name
        user = conn.user
        try:
            if last_local and user is not None:
                cluster = self._cluster
                if await cluster.leave(name, user):
                    presence = self._delivery.encode(frames.presence(name, "leave", user))
                    await cluster.publish_event(name, presence)
            await call_hook(state.room.on_leave, conn)
        except BackplaneError as exc:
            # The backplane reconciles this node's presence once it is reachable again.
            logger.debug("presence of %r in %r not updated: %s", conn, name, exc)
        except Exception:
            logger.exception("error while %r left the room %r", conn, name)


# Methods of Room that a client's custom type must never reach through ``on_<type>``.
_BUILTIN_HOOKS = frozenset({"on_join", "on_leave", "on_message"})


def _room_handler(room: Room, type_: str) -> Callable[..., Any] | None:
    """The room's ``on_<type>`` method for a custom frame type, if its class defines one."""
    name = f"on_{type_}"
    if name in _BUILTIN_HOOKS or not callable(getattr(type(room), name, None)):
        return None
    method: Callable[..., Any] = getattr(room, name)
    return method


def _hook_name(hook: Callable[..., Any]) -> str:
    """How the log names an application's hook: ``GameRoom.on_roll``, ``whoami``..."""
    name = getattr(hook, "__qualname__", None)
    return name if isinstance(name, str) else repr(hook)


def _check_room_space(room: Room, state: RoomState, members: list[str], user: str | None) -> None:
    limit = room.max_members
    already_member = user is not None and user in members
    if limit is not None and not already_member and len(members) + state.anonymous >= limit:
        raise ProtocolError(ErrorCode.ROOM_FULL, f"the room {room.name!r} is full")
