"""The contract between wsroom's core and the store that connects its processes.

A :class:`Backplane` is a room log and a bus, nothing more:

* **a room log**: :meth:`~Backplane.append` gives a room's messages their ids and keeps
  the newest of them; :meth:`~Backplane.read` returns what a room holds;
* **presence**: which identified users are in a room on any node;
* **a bus**: :meth:`~Backplane.publish` moves bytes to every node subscribed to a channel.

Everything else a cluster needs (one order per room, gaps and their repair, the sender's
own copy before its ``ack``, batching, the bus messages' format and the protocol's frames)
is written once, in :mod:`wsroom.backplane.cluster`, for every backplane.
:class:`~wsroom.backplane.memory.MemoryBackplane` is the contract for one process, without
I/O; :class:`~wsroom.backplane.redis.RedisBackplane` the distributed one.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from ..limits import Limits

__all__ = [
    "Append",
    "Appended",
    "Backplane",
    "BackplaneNode",
    "BackplaneStatus",
    "BusReceiver",
    "Record",
    "RoomLog",
    "RoomSnapshot",
    "new_epoch",
    "recovery_snapshot",
]


def new_epoch() -> str:
    """A fresh epoch name: random, so that a restarted store never reuses one."""
    return secrets.token_hex(6)


# What the log holds. Records, appends and their results are built for every message, on
# the hot path: they are plain slotted dataclasses (a frozen one costs three times as much
# to build). Treat them as read-only: logs keep records, and several frames share them.


@dataclass(slots=True)
class Record:
    """One message as a backplane stores and carries it: the protocol frame without its
    room and id, which the log gives it."""

    sender: str | None
    """The user id of its sender, ``None`` for the server or an anonymous client."""
    data: Any
    """The message's ``data``: any value the protocol can encode."""
    ts: int
    """When it was sent, in Unix milliseconds."""
    exclude: str | None = None
    """The id of a connection it must not be delivered to (a sender without echo)."""


@dataclass(slots=True)
class Append:
    """Messages to append to one room's log in one step."""

    room: str
    records: list[Record]
    """The messages, in order."""
    items: list[bytes]
    """The same messages encoded for a byte store or bus (one item each, in order)."""
    history_size: int
    """How many of the room's newest messages the log keeps (0: none; ids still count)."""
    history_ttl: float
    """Seconds the room's log is kept after its last append or read."""

    @property
    def size(self) -> int:
        """Bytes of the encoded messages."""
        return sum(map(len, self.items))


@dataclass(slots=True)
class Appended:
    """Where an :class:`Append` landed: ids ``first`` to ``first + n - 1`` in ``epoch``."""

    first: int
    epoch: str


@dataclass(frozen=True, slots=True)
class RoomLog:
    """What :meth:`Backplane.read` returns: a room's sequence and the messages it keeps."""

    epoch: str
    """Names the current run of the room's ids."""
    last: int
    """The id of the room's newest message, 0 if none."""
    entries: list[tuple[int, Record]]
    """The kept messages with their ids, oldest first, ids strictly increasing."""


# What a joined frame reports.


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


# The two sides of the contract.


@dataclass(frozen=True, slots=True)
class BackplaneStatus:
    """What an operator wants to know about a backplane, from :meth:`Backplane.status`."""

    kind: str
    """The backplane's :attr:`Backplane.kind` (``"memory"``, ``"redis"``...)."""
    available: bool
    """Whether the store answered its last operation."""
    nodes: int | None = None
    """Processes sharing the rooms, this one included, when the backplane knows."""
    address: str | None = None
    """Where the store is, without credentials (a Redis URL), if it has an address."""
    last_error: str | None = None
    """The last failure to reach the store, if any since start (it may be over)."""
    last_error_at: float | None = None
    """When :attr:`last_error` happened (seconds since the epoch)."""


class BackplaneNode(Protocol):
    """What the cluster layer calls on the manager it serves (on the manager's event loop).

    Frames reach connections only through these calls, which queue them without waiting
    for any client.
    """

    def encode(self, frame: dict[str, Any]) -> bytes:
        """Encode a frame with the manager's protocol."""
        ...

    def decode(self, data: bytes) -> Any:
        """Decode bytes produced by :meth:`encode`."""
        ...

    def encode_message(self, room: str, id: int, envelope: bytes) -> bytes:
        """Encode a ``message`` frame from its envelope, the encoding of
        ``{"from", "data", "ts"}`` (the same bytes as encoding the whole frame)."""
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


class BusReceiver(Protocol):
    """What a :class:`Backplane` calls on the node it serves: wsroom's cluster layer.

    Every call happens on the manager's event loop.
    """

    dropped_messages: int
    """Malformed bus messages received and dropped (a backplane may report it)."""

    @property
    def limits(self) -> Limits:
        """The manager's limits; a backplane applies :attr:`Limits.max_idle_rooms` and
        :attr:`Limits.max_idle_history_bytes` to the logs it keeps."""
        ...

    def encode_item(self, record: Record) -> bytes:
        """Encode one record as an item (what :attr:`Append.items` holds)."""
        ...

    def decode_item(self, item: bytes) -> Record:
        """Decode an item made by :meth:`encode_item`.

        Raises:
            ValueError: the bytes are not an item.
        """
        ...

    def received(self, channel: str, payload: bytes) -> None:
        """Bytes arrived on a channel this node subscribes to. Malformed ones are counted
        and dropped here; the backplane need not check them."""
        ...

    def resubscribed(self) -> None:
        """The bus came back after a loss: check every room for what it missed."""
        ...

    async def presence_changed(self, room: str, event: str, user: str) -> None:
        """Presence changed outside a join or leave of this node (a dead node's users
        were removed, or this node's presence was restored): tell the room's members."""
        ...

    def local_presence(self) -> set[tuple[str, str]]:
        """The ``(room, user)`` pairs this node holds: to restore them in a store that lost
        them."""
        ...

    def local_members(self, room: str) -> list[str]:
        """Identified users with a connection in ``room`` on this node."""
        ...


class Backplane(ABC):
    """A room log, presence and a bus: what a manager needs from a store to share rooms.

    Channels are named by wsroom: ``room:<name>`` carries a room's messages and events,
    ``user:<id>`` a user's direct messages and disconnects, ``all`` what goes to every
    connection. A backplane may prefix them; the names it hands back to
    :meth:`BusReceiver.received` are wsroom's.

    Every method runs on the manager's event loop. Operations that cannot complete raise
    :class:`~wsroom.BackplaneError` within a bounded time; none waits for a client.
    """

    remote: ClassVar[bool] = True
    """Whether operations leave the process. The cluster layer batches the appends of a
    remote backplane (many in flight at once) and calls a local one directly."""

    timeout: float = 2.0
    """The longest the cluster layer waits for this node's own copy of a message."""

    kind: ClassVar[str] = "custom"
    """A short name for the kind of store (``"memory"``, ``"redis"``): the ``backplane``
    label of the metrics. Keep it constant per class."""

    reconnects: int = 0
    """Times the bus came back after it was lost, since start (for monitoring)."""

    @property
    def available(self) -> bool:
        """Whether the store answered its last operation."""
        return True

    @property
    def round_trip(self) -> float | None:
        """Seconds the store took to answer the last health check (a heartbeat), for
        monitoring; ``None`` when there is none (a store in this process)."""
        return None

    async def status(self) -> BackplaneStatus:
        """How the backplane is doing, for an operator (the admin view shows it).

        Called only when someone looks; a distributed backplane may ask its store (the
        number of nodes), bounded in time, and must not raise.
        """
        return BackplaneStatus(kind=self.kind, available=self.available)

    @abstractmethod
    async def start(self, receiver: BusReceiver) -> None:
        """Attach to ``receiver``, connect, subscribe to ``all``.

        Raises:
            BackplaneError: the store cannot be reached.
        """

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect and release everything; this node's presence goes with it."""

    # The room log.

    @abstractmethod
    async def append(self, batch: Sequence[Append]) -> list[Appended | BaseException]:
        """Append each run of messages to its room's log, in order; one result each.

        For each :class:`Append`, in one atomic step: give its records the room's next
        consecutive ids (strictly increasing, from 1 in each epoch; a log that lost its
        sequence starts a new epoch), keep the room's newest ``history_size`` messages
        for ``history_ttl`` seconds, and publish on ``room:<room>``, to every node but
        possibly this one, ``b"M\\n<epoch>\\n<first id>\\n"`` followed by the items.
        Every node must see one order of a room's messages. A failed run is its result
        (a :class:`~wsroom.BackplaneError`), and the others go on.

        Idle logs (no node subscribes to the room) count against
        :attr:`Limits.max_idle_rooms` and :attr:`Limits.max_idle_history_bytes`: beyond
        them the least recently used idle logs are dropped.
        """

    @abstractmethod
    async def read(self, room: str, *, history_ttl: float | None) -> RoomLog:
        """The room's log. A room without one gets a new epoch and id 0, kept while any
        node subscribes to the room or it gets messages. With ``history_ttl``, the log is
        kept that long from now (a join counts as activity)."""

    # Presence.

    @abstractmethod
    async def join(self, room: str, user: str) -> bool:
        """``user`` has a first connection in ``room`` on this node; ``True`` when it is
        in the room on no other node."""

    @abstractmethod
    async def leave(self, room: str, user: str) -> bool:
        """``user`` has no connection left in ``room`` on this node; ``True`` when it is
        now in the room nowhere."""

    @abstractmethod
    async def members(self, room: str) -> list[str]:
        """Identified users in ``room`` on any node."""

    # The bus.

    @abstractmethod
    def subscribe(self, channel: str) -> None:
        """Receive what is published on ``channel`` from now on. Must not block: schedule
        the subscription and return; :meth:`ready` waits for it."""

    @abstractmethod
    def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``. A room's log that holds no message and that no node
        subscribes to any more must cost nothing: drop it."""

    async def ready(self, channel: str) -> None:  # noqa: B027 - optional hook
        """Return once this node receives ``channel`` (after :meth:`subscribe`).

        A join awaits it before reading the room's log, so no message falls between the
        two. Bound the wait; raise :class:`~wsroom.BackplaneError` when it expires.
        """

    @abstractmethod
    async def publish(self, channel: str, payload: bytes) -> None:
        """Deliver ``payload`` to every node subscribed to ``channel``, this one included."""

    @abstractmethod
    async def direct(self, user: str, item: bytes) -> int | None:
        """Number a direct message from a counter shared by every node and publish
        ``b"D\\n<id>\\n"`` followed by ``item`` on ``user:<user>``, this node included.

        Returns:
            The id, or ``None`` when no node subscribes to the user's channel (the user
            is not connected anywhere).
        """
