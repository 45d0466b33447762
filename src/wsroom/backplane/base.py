"""The interface between a manager and the bus that connects it to other processes.

A manager does all its room I/O through one :class:`Backplane`: message ids, history,
cluster-wide presence, and delivery to connections on other nodes. The in-memory backplane
answers from this process's own state without suspending, so the single-process path costs
no more than a dict lookup; a distributed backplane answers from a shared store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Backplane", "BackplaneNode", "RoomSnapshot", "recovery_snapshot"]


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    """What a ``joined`` frame reports about a room's message sequence."""

    history: list[dict[str, Any]]
    """``message`` frames to replay, oldest first."""
    offset: int
    """Id of the newest message in the room, 0 if none."""
    epoch: str
    """Names this run of the room's id sequence; changes whenever ids restart."""
    recovered: bool | None
    """Whether ``history`` is exactly what the client missed; ``None`` when it did not ask."""


class BackplaneNode(Protocol):
    """What a backplane may call on the manager it serves (on the manager's event loop)."""

    def encode(self, frame: dict[str, Any]) -> bytes:
        """Encode a frame with the manager's protocol."""
        ...

    def decode(self, data: bytes) -> Any:
        """Decode bytes produced by :meth:`encode`."""
        ...

    def deliver_room(self, room: str, frame: bytes, exclude: str | None) -> None:
        """Queue ``frame`` to this node's members of ``room``, except connection ``exclude``."""
        ...

    def deliver_user(self, user: str, frame: bytes) -> int:
        """Queue ``frame`` to this node's connections of ``user``; how many there were."""
        ...

    def deliver_all(self, frame: bytes) -> None:
        """Queue ``frame`` to every connection of this node."""
        ...

    def local_members(self, room: str) -> list[str]:
        """Identified users with a connection in ``room`` on this node."""
        ...

    def local_user_count(self, user: str) -> int:
        """Connections of ``user`` on this node."""
        ...

    def disconnect_local_user(self, user: str, code: int, reason: str) -> int:
        """Close this node's connections of ``user``; how many there were."""
        ...


class Backplane(ABC):
    """Message ids, history, presence and cross-node delivery for a manager.

    All methods run on the manager's event loop. A backplane serves one manager; the
    manager calls :meth:`start` before its first connection and :meth:`stop` at shutdown.
    """

    @abstractmethod
    async def start(self, node: BackplaneNode) -> None:
        """Attach to ``node`` and connect to the bus."""

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect from the bus and release everything."""

    def watch_room(self, room: str) -> None:  # noqa: B027 - optional hook
        """This node now has members in ``room`` (or a join in progress): receive its traffic.

        Called on the manager's loop; must not block. The default does nothing.
        """

    def unwatch_room(self, room: str) -> None:  # noqa: B027 - optional hook
        """This node has no member left in ``room``. The default does nothing."""

    def watch_user(self, user: str) -> None:  # noqa: B027 - optional hook
        """``user`` now has a connection on this node: receive its direct messages."""

    def unwatch_user(self, user: str) -> None:  # noqa: B027 - optional hook
        """``user`` has no connection left on this node."""

    async def ready(self, room: str) -> None:  # noqa: B027 - optional hook
        """Return once this node receives ``room``'s traffic (after :meth:`watch_room`).

        A join awaits it before reading the history, so no message falls between the two.
        """

    @abstractmethod
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
        """Store a room message, deliver it to every node's members, return its id.

        With ``local_first``, return only once this node's members have it queued (the
        sender of a client message must get it before its ``ack``); otherwise the
        delivery may still be on its way.

        Ids are strictly increasing per room, starting at 1 in each epoch. Every node
        delivers a room's messages in id order.
        """

    @abstractmethod
    async def publish_event(self, room: str, frame: bytes, *, exclude: str | None = None) -> None:
        """Deliver an unstored frame (presence, application events) to every node's members."""

    @abstractmethod
    async def snapshot(
        self,
        room: str,
        *,
        since: int | None,
        epoch: str | None,
        limit: int,
        history_ttl: float,
    ) -> RoomSnapshot:
        """The room's history for a ``joined`` frame, applying PROTOCOL.md's recovery rules.

        A join counts as activity: the history is kept ``history_ttl`` seconds from now.
        """

    @abstractmethod
    async def join(self, room: str, user: str, *, first_local: bool) -> bool:
        """Record that ``user`` is in ``room``; ``True`` if nowhere else in the cluster yet.

        ``first_local`` tells whether this is the user's first connection in the room on
        this node.
        """

    @abstractmethod
    async def leave(self, room: str, user: str, *, last_local: bool) -> bool:
        """Record that ``user`` left ``room``; ``True`` if it is now nowhere in the cluster."""

    @abstractmethod
    async def members(self, room: str) -> list[str]:
        """Identified users in ``room`` anywhere in the cluster."""

    @abstractmethod
    async def send_direct(self, user: str, sender: str | None, data: Any, *, ts: int) -> int | None:
        """Deliver a ``direct`` frame to every connection of ``user``; its id, or ``None``
        when the user has no connection anywhere."""

    @abstractmethod
    async def send_all(self, frame: bytes) -> None:
        """Deliver ``frame`` to every connection on every node."""

    @abstractmethod
    async def disconnect_user(self, user: str, code: int, reason: str) -> int:
        """Close every connection of ``user`` on every node; how many were closed here."""


def recovery_snapshot(
    history: list[dict[str, Any]],
    offset: int,
    current_epoch: str,
    *,
    since: int | None,
    epoch: str | None,
    limit: int,
) -> RoomSnapshot:
    """Apply PROTOCOL.md's recovery rules to a room's stored history.

    ``history`` holds the newest stored ``message`` frames, oldest first, with strictly
    increasing ids, the last being ``offset``. A replay is called recovered only when it
    holds every message after ``since`` in the same epoch: never a partial replay.
    """
    newest = history[-limit:] if limit else []
    if since is None:
        return RoomSnapshot(newest, offset, current_epoch, None)
    if (epoch is None or epoch == current_epoch) and since <= offset:
        missed = [frame for frame in history if frame["id"] > since]
        if len(missed) == offset - since and (not missed or missed[0]["id"] == since + 1):
            return RoomSnapshot(missed, offset, current_epoch, True)
    return RoomSnapshot(newest, offset, current_epoch, False)
