"""The Room class applications subclass."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from . import frames
from ._hooknames import warn_misspelt_hooks
from .exceptions import ConfigurationError
from .limits import is_positive_number
from .protocol import Message

if TYPE_CHECKING:
    from .connection import Connection
    from .manager import ConnectionManager

__all__ = ["HookResult", "Room"]

HookResult: TypeAlias = Awaitable[None] | None
"""What a hook returns: nothing (``def``) or an awaitable (``async def``)."""


class Room:
    """A room: subclass it for your application's rules and message types.

    The manager creates one instance per room name when the first client joins and drops
    it when the last one leaves. The instance holds no membership of its own: members,
    history and presence live in the manager and its backplane, so it can never disagree
    with them. Keep your own per-room state on it if you like; it lives as long as
    the room has members in this process.

    Every hook may be a plain ``def`` or an ``async def``. A hook that raises is logged and
    the client gets an ``internal_error``; raise :class:`~wsroom.ProtocolError` instead to
    answer with a specific error code.

    Override the class settings below in the subclass to change them for its rooms.
    """

    history_size: ClassVar[int] = 100
    """Messages kept per room and replayed to whoever joins (0: no history, no recovery)."""
    history_ttl: ClassVar[float] = 3600.0
    """Seconds the history is kept after the room's last message or join, so a client that
    comes back to an emptied room can still recover what it missed."""
    max_members: ClassVar[int | None] = 10_000
    """Most members at once in this process: distinct users plus each anonymous connection
    (``None``: no limit). One more gets ``room_full``."""
    echo: ClassVar[bool] = True
    """Whether a sender receives its own messages back."""

    def __init__(self, name: str, manager: ConnectionManager) -> None:
        self.name: str = name
        """The room's name."""
        self.manager: ConnectionManager = manager
        """The manager serving this room."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Warn (``UserWarning``) about a method named like a misspelt hook, such as
        ``on_mesage``, or like a hook of the manager (``on_connect``): it would handle a
        custom frame type, never be called as the hook."""
        super().__init_subclass__(**kwargs)
        warn_misspelt_hooks(cls, Room)

    # Hooks.

    def can_join(self, conn: Connection, data: Any) -> bool | Awaitable[bool]:
        """Decide whether ``conn`` may join; ``data`` is the ``join`` frame's ``data``.

        Returning ``False`` answers ``forbidden``. The default lets everyone in.
        """
        return True

    def on_join(self, conn: Connection) -> HookResult:
        """Called after ``conn`` joined (its ``joined`` frame is already queued)."""
        return None

    def on_leave(self, conn: Connection) -> HookResult:
        """Called after ``conn`` left, by ``leave`` or by disconnecting."""
        return None

    def on_message(self, conn: Connection, message: Message) -> HookResult:
        """Called for each ``message`` frame; the default stores and broadcasts it."""
        return self._relay(message)

    async def _relay(self, message: Message) -> None:
        await self.broadcast(message)

    # Actions.

    async def broadcast(self, message: Message | Any, *, exclude: Connection | None = None) -> int:
        """Store a message in the room's history and send it to every member.

        Pass the :class:`~wsroom.Message` a hook received to relay it as its sender's (the
        client's ``ack`` then carries the id), or any JSON value to send it as the server's
        (``from`` is ``null``). The frame is encoded once and queued to every member; this
        never waits for a recipient.

        Returns:
            The id of the stored message.
        """
        if isinstance(message, Message):
            sender_conn = message.connection
            sender = message.user
            data = message.data
            if exclude is None and not self.echo and sender_conn is not None:
                exclude = sender_conn
        else:
            sender, data = None, message
        message_id = await self.manager.cluster.publish(
            self.name,
            sender,
            data,
            ts=frames.now_ms(),
            history_size=self.history_size,
            history_ttl=self.history_ttl,
            exclude=exclude.id if exclude is not None else None,
            # A client's message reaches its sender before the 'ack' does.
            local_first=isinstance(message, Message),
        )
        if isinstance(message, Message):
            message.id = message_id
        return message_id

    async def broadcast_event(
        self, type: str, data: Any = None, *, exclude: Connection | None = None
    ) -> None:
        """Send an unstored event ``{"type": type, "room": name, "data": data}`` to every member.

        For ephemeral signals such as typing indicators: no id, no history.
        """
        frame = self.manager.encode(frames.event(type, data, self.name))
        await self.manager.cluster.publish_event(
            self.name, frame, exclude=exclude.id if exclude is not None else None
        )

    @property
    def connections(self) -> list[Connection]:
        """This process's connections in the room."""
        return self.manager.connections_in(self.name)

    async def members(self) -> list[str]:
        """Identified users in the room, on every node."""
        return await self.manager.cluster.members(self.name)


def check_room_class(cls: type[Room]) -> None:
    """Check a Room subclass's settings, once, when a manager is given it.

    Raises:
        ConfigurationError: a setting has a value of the wrong type or range.
    """
    name = cls.__name__
    if type(cls.history_size) is not int or cls.history_size < 0:
        raise ConfigurationError(f"{name}.history_size must be a non-negative integer")
    if not is_positive_number(cls.history_ttl):
        raise ConfigurationError(f"{name}.history_ttl must be a positive number")
    if cls.max_members is not None and (type(cls.max_members) is not int or cls.max_members < 1):
        raise ConfigurationError(f"{name}.max_members must be a positive integer or None")
    if not isinstance(cls.echo, bool):
        raise ConfigurationError(f"{name}.echo must be True or False")
