"""The cluster layer: what every backplane needs beyond a room log and a bus, written once.

:class:`Cluster` stands between the manager and its :class:`~wsroom.backplane.base.Backplane`.
The manager calls it as it would call one big backplane; it calls the backplane's narrow
contract and is the backplane's :class:`~wsroom.backplane.base.BusReceiver`. It owns:

* **the bus codec**. An item (one message) is ``<exclude>\\n<length>\\n<envelope>``, the
  envelope being the manager protocol's encoding of ``{"from", "data", "ts"}``. Bus messages
  are ``M\\n<epoch>\\n<first id>\\n<items...>`` (a run of room messages),
  ``E\\n<exclude>\\n<frame>`` (a room event), ``D\\n<id>\\n<item>`` (a direct message),
  ``A\\n<frame>`` (to every connection) and ``X\\n<code>\\n<reason>`` (disconnect a user).
  Malformed ones are counted in :attr:`Cluster.dropped_messages`, logged and dropped, and
  so are frames that do not belong where they arrived (an event naming another room, a
  protocol frame such as ``message`` or ``welcome`` sent as an event) and bus messages
  larger than any node publishes.
* **sizes**: a message or frame larger than :attr:`Limits.max_queue_bytes` could be queued
  to no client (it would evict every recipient, on every node, and stay in the room's
  history): publishing one raises :class:`~wsroom.EncodeError` before anything is sent.
* **one order per room**: each room with members here has a track of what was delivered;
  a message that skips ids or starts a new epoch sends its members a ``gap`` frame; after
  the bus was lost, :meth:`Cluster.resubscribed` repairs every room from its log, holding
  live messages until the repair is done.
* **the sender's own copy before its ``ack``**: this node's messages are delivered from
  ``append``'s reply when they follow what was delivered, else the publisher waits (at
  most :attr:`Backplane.timeout`) for their copy from the bus; likewise direct messages.
* **batching** for remote backplanes (:mod:`wsroom.backplane._batch`): publishes queue
  in call order and leave together, consecutive ones to a room as one run.

A local backplane (``remote = False``) is called directly, without a task or a wait, so
that one process pays for one item encoding per message and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from .. import frames
from ..exceptions import BackplaneError, EncodeError
from ._batch import _RUN_BYTES, Batcher
from .base import (
    Append,
    Appended,
    Backplane,
    BackplaneNode,
    Record,
    RoomLog,
    RoomSnapshot,
    recovery_snapshot,
)

if TYPE_CHECKING:
    from ..limits import Limits

__all__ = ["Cluster"]

logger = logging.getLogger("wsroom.backplane")

# Direct message ids remembered as delivered here, to tell a publisher its copy arrived.
_DIRECT_SEEN = 1024
# Pauses before reading a room's log again during a repair: a pooled connection that
# died with the old store fails once.
_REPAIR_PAUSES = (0.0, 0.25, 1.0)
# A message frame's bytes beyond its envelope, at most: the type, the room and the id.
_FRAME_OVERHEAD = 64
# A bus message's bytes beyond its frames or items, at most: headers, epoch, ids.
_BUS_OVERHEAD = 4096


@dataclass(slots=True)
class _Track:
    """What this node delivered of a room's sequence."""

    epoch: str | None = None
    last: int = 0
    repairing: bool = False
    held: list[tuple[str, int, bytes]] = field(default_factory=list)
    """Live messages received during a repair: (epoch, id, item)."""
    waiting: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    """This node's publishes waiting to see their message delivered here, by id."""

    def delivered(self, last: int) -> None:
        self.last = last
        if self.waiting:
            for id_ in [i for i in self.waiting if i <= last]:
                _resolve(self.waiting.pop(id_))


class Cluster:
    """The generic cluster logic between a manager and its backplane.

    Args:
        backplane: The store: a room log, presence and a bus.
        node: The manager it serves: how frames reach this process's connections.
        limits: The manager's limits; backplanes read the bounds of idle logs from it.
    """

    def __init__(self, backplane: Backplane, node: BackplaneNode, limits: Limits) -> None:
        self.backplane = backplane
        """The backplane this cluster layer drives; it may be replaced until :meth:`start`."""
        self.limits = limits
        """The manager's limits."""
        self.dropped_messages = 0
        """Malformed bus messages received and dropped."""
        self.messages_published = 0
        """Room messages this node stored and sent since start."""
        self.gaps = 0
        """``gap`` frames this node fanned out to its members of a room since start."""
        self._node = node
        self._remote = type(backplane).remote
        self._tracks: dict[str, _Track] = {}
        self._direct_seen: deque[int] = deque(maxlen=_DIRECT_SEEN)
        self._direct_waiting: dict[int, asyncio.Future[None]] = {}
        self._batcher = Batcher(backplane, self._appended)
        self._repairs: set[asyncio.Task[None]] = set()

    # Lifecycle.

    async def start(self) -> None:
        """Start the backplane, with this cluster layer as its receiver."""
        backplane = self.backplane
        self._remote = type(backplane).remote
        self._batcher = Batcher(backplane, self._appended)
        await backplane.start(self)

    async def stop(self) -> None:
        """Stop the backplane; publishes still queued fail."""
        sender = self._batcher.task
        tasks = [*self._repairs, *([sender] if sender is not None else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.backplane.timeout)
        await self.backplane.stop()

    # What this node receives (the registry's callbacks: they must not block).

    def watch_room(self, room: str) -> None:
        """This node has members in ``room``, or a join in progress: receive its traffic."""
        self._tracks.setdefault(room, _Track())
        self.backplane.subscribe(f"room:{room}")

    def unwatch_room(self, room: str) -> None:
        """This node has no member left in ``room``."""
        track = self._tracks.pop(room, None)
        if track is not None:
            for future in track.waiting.values():
                _resolve(future)  # nobody here waits for a copy any more
        self.backplane.unsubscribe(f"room:{room}")

    def watch_user(self, user: str) -> None:
        """``user`` has a connection on this node: receive its direct messages."""
        self.backplane.subscribe(f"user:{user}")

    def unwatch_user(self, user: str) -> None:
        """``user`` has no connection left on this node."""
        self.backplane.unsubscribe(f"user:{user}")

    async def ready(self, room: str) -> None:
        """Return once this node receives ``room``'s traffic."""
        await self.backplane.ready(f"room:{room}")

    # Rooms.

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
        sender of a client message gets it before its ``ack``).
        """
        record = Record(sender, data, ts, exclude)
        envelope = self._envelope(record)
        self._check_size(len(envelope) + len(room) + _FRAME_OVERHEAD, "a message")
        item = _item(exclude, envelope)
        backplane = self.backplane
        if not self._remote:
            # The single-process path, kept short: one message, delivered here at once.
            (result,) = await backplane.append(
                [Append(room, [record], [item], history_size, history_ttl)]
            )
            if isinstance(result, BaseException):
                raise result
            self.messages_published += 1
            track = self._tracks.get(room)
            if track is not None and self._accept(room, track, result.epoch, result.first):
                self._deliver(room, track, result.first, envelope, exclude)
            return result.first
        if not backplane.available:
            raise BackplaneError("the backplane is unavailable; retrying in the background")
        # Queued before the first suspension: publishes reach the store in the order they
        # were called, and those called while a batch is on its way leave in the next one.
        queued = self._batcher.put(room, record, item, history_size, history_ttl)
        # Bounded as a single command is, the wait for the batches ahead included: behind
        # a stalled batch, a publish still fails within the timeout (and is not sent when
        # it had not left yet).
        try:
            async with asyncio.timeout(backplane.timeout):
                message_id, epoch = await queued
        except TimeoutError:
            raise BackplaneError("the backplane did not answer in time") from None
        self.messages_published += 1
        track = self._tracks.get(room)
        if local_first and track is not None and (track.last < message_id or track.epoch != epoch):
            await self._own_copy(track.waiting, message_id)
        return message_id

    async def publish_event(self, room: str, frame: bytes, *, exclude: str | None = None) -> None:
        """Deliver an unstored frame to every node's members of ``room``."""
        self._check_size(len(frame), "an event")
        header = b"E\n" + (exclude.encode() if exclude else b"") + b"\n"
        await self.backplane.publish(f"room:{room}", header + frame)

    async def snapshot(
        self, room: str, *, since: int | None, epoch: str | None, limit: int, history_ttl: float
    ) -> RoomSnapshot:
        """The room's history for a ``joined`` frame, by PROTOCOL.md's recovery rules; a
        join counts as activity (the log is kept ``history_ttl`` seconds from now)."""
        log = await self.backplane.read(room, history_ttl=history_ttl)
        track = self._tracks.get(room)
        if track is not None and track.epoch is None:
            # First member here: what the log holds needs no delivery from the bus.
            track.epoch, track.last = log.epoch, log.last
        # Without 'since' only the newest 'limit' messages can be replayed.
        entries = log.entries if since is not None else log.entries[-limit:] if limit else []
        history = [frames.message(room, id_, r.sender, r.data, r.ts) for id_, r in entries]
        return recovery_snapshot(
            history, log.last, log.epoch, since=since, epoch=epoch, limit=limit
        )

    # Presence.

    async def join(self, room: str, user: str) -> bool:
        """``user``'s first connection in ``room`` on this node; ``True``: first anywhere."""
        return await self.backplane.join(room, user)

    async def leave(self, room: str, user: str) -> bool:
        """``user``'s last connection in ``room`` on this node left; ``True``: gone everywhere."""
        return await self.backplane.leave(room, user)

    async def members(self, room: str) -> list[str]:
        """Identified users in ``room`` on any node."""
        return await self.backplane.members(room)

    # Users and everyone.

    async def send_direct(self, user: str, sender: str | None, data: Any, *, ts: int) -> int | None:
        """Deliver a ``direct`` frame to every connection of ``user``; its id, or ``None``
        when the user has no connection anywhere. This node's copies are queued first."""
        envelope = self._envelope(Record(sender, data, ts))
        self._check_size(len(envelope) + _FRAME_OVERHEAD, "a direct message")
        id_ = await self.backplane.direct(user, _item(None, envelope))
        if id_ is None:
            return None
        if self._remote and self._node.local_user_count(user) and id_ not in self._direct_seen:
            await self._own_copy(self._direct_waiting, id_)
        return id_

    async def send_all(self, frame: bytes) -> None:
        """Deliver ``frame`` to every connection on every node."""
        self._check_size(len(frame), "a frame")
        await self.backplane.publish("all", b"A\n" + frame)

    async def disconnect_user(self, user: str, code: int, reason: str) -> int:
        """Close every connection of ``user`` on every node; how many were closed here."""
        here = self._node.local_user_count(user)
        await self.backplane.publish(f"user:{user}", f"X\n{code}\n{reason}".encode())
        return here

    def _check_size(self, size: int, what: str) -> None:
        limit = self.limits.max_queue_bytes
        if size > limit:
            raise EncodeError(
                f"{what} of {size} bytes is larger than Limits.max_queue_bytes ({limit}):"
                " no client could be sent it"
            )

    # BusReceiver: what the backplane calls.

    def encode_item(self, record: Record) -> bytes:
        """Encode one record as an item: ``<exclude>\\n<length>\\n<envelope>``."""
        return _item(record.exclude, self._envelope(record))

    def _envelope(self, record: Record) -> bytes:
        return self._node.encode({"from": record.sender, "data": record.data, "ts": record.ts})

    def decode_item(self, item: bytes) -> Record:
        """Decode an item made by :meth:`encode_item`; ``ValueError`` if it is not one."""
        exclude_end, start, end = _item_bounds(item, 0)
        if end != len(item):
            raise ValueError("bytes after the item")
        try:
            body = self._node.decode(item[start:end])
        except ValueError:
            raise
        except Exception as exc:  # a custom protocol's decoder may raise anything
            raise ValueError(f"undecodable item: {exc}") from exc
        if not isinstance(body, dict) or "data" not in body:
            raise ValueError("an item's envelope must be an object with 'data'")
        sender, ts = body.get("from"), body.get("ts")
        if not (sender is None or isinstance(sender, str)) or type(ts) is not int:
            raise ValueError("an item's 'from' must be a string or null, its 'ts' an integer")
        return Record(sender, body["data"], ts, item[:exclude_end].decode() or None)

    def received(self, channel: str, payload: bytes) -> None:
        """Handle a bus message; malformed ones are counted, logged and dropped."""
        if self._remote and len(payload) > self._bus_limit():
            self.dropped_messages += 1
            logger.warning(
                "dropped a message of %d bytes on %s: larger than any node publishes",
                len(payload),
                channel,
            )
            return
        try:
            self._dispatch(channel, payload)
        except Exception as exc:
            self.dropped_messages += 1
            logger.warning("dropped a malformed message on %s: %s", channel, exc)

    def resubscribed(self) -> None:
        """The bus came back after a loss: repair every room from its log (in a task)."""
        # Held from now: the bus may deliver live messages before the task starts, and one
        # in a new epoch would skip, with a gap, what the log still holds before it.
        rooms = [room for room, track in self._tracks.items() if track.epoch is not None]
        for room in rooms:
            self._tracks[room].repairing = True
        task = asyncio.get_running_loop().create_task(self._repair_all(rooms), name="wsroom-repair")
        self._repairs.add(task)
        task.add_done_callback(self._repair_done)

    async def presence_changed(self, room: str, event: str, user: str) -> None:
        """Tell a room's members, on every node, of a presence change no join or leave of
        this node made (a dead node's users removed, this node's presence restored)."""
        if event not in ("join", "leave"):
            raise ValueError(f"unknown presence event {event!r}")
        presence = frames.presence(room, cast(Literal["join", "leave"], event), user)
        await self.publish_event(room, self._node.encode(presence))

    def local_presence(self) -> set[tuple[str, str]]:
        """The ``(room, user)`` pairs this node holds."""
        node = self._node
        return {(room, user) for room in self._tracks for user in node.local_members(room)}

    def local_members(self, room: str) -> list[str]:
        """Identified users with a connection in ``room`` on this node."""
        return self._node.local_members(room)

    # Bus messages.

    def _bus_limit(self) -> int:
        # A run of several messages is at most _RUN_BYTES; a run of one, or a frame, is at
        # most max_queue_bytes (see _check_size).
        return max(_RUN_BYTES, self.limits.max_queue_bytes) + _BUS_OVERHEAD

    def _dispatch(self, channel: str, payload: bytes) -> None:
        kind, rest = payload[:2], payload[2:]
        scope, _, name = channel.partition(":")
        node = self._node
        if kind == b"M\n" and scope == "room":
            self._on_messages(name, rest)
        elif kind == b"E\n" and scope == "room":
            exclude, frame = rest.split(b"\n", 1)
            self._check_frame(frame, name)
            node.deliver_room(name, frame, exclude.decode() or None)
        elif kind == b"D\n" and scope == "user":
            id_text, item = rest.split(b"\n", 1)
            id_, record = int(id_text), self.decode_item(item)
            node.deliver_user(
                name, node.encode(frames.direct(id_, record.sender, record.data, record.ts))
            )
            if self._remote:
                self._direct_seen.append(id_)
                waiting = self._direct_waiting.pop(id_, None)
                if waiting is not None:
                    _resolve(waiting)
        elif kind == b"A\n" and channel == "all":
            self._check_frame(rest, None)
            node.deliver_all(rest)
        elif kind == b"X\n" and scope == "user":
            code, reason = rest.split(b"\n", 1)
            node.disconnect_local_user(name, int(code), reason.decode())
        else:
            raise ValueError(f"not a wsroom bus message: {payload[:16]!r}")

    def _check_frame(self, frame: bytes, room: str | None) -> None:
        """A frame from the bus is an event of the room whose channel carried it (of no
        room, for everyone), or a room's ``presence``: never another protocol frame."""
        # Only another process can publish a bad frame: a local bus carries this one's.
        if self._remote:
            value = self._node.decode(frame)
            if not isinstance(value, dict) or not isinstance(value.get("type"), str):
                raise ValueError("a frame must be an object with a string 'type'")
            if value.get("room", room) != room:
                raise ValueError(f"a frame of room {value['room']!r} on the bus of {room!r}")
            kind = value["type"]
            if kind in frames.SERVER_TYPES and (kind != "presence" or room is None):
                raise ValueError(f"a {kind!r} frame is not an event")

    def _on_messages(self, room: str, rest: bytes) -> None:
        """``<epoch>\\n<first id>\\n`` then items with consecutive ids from the first."""
        epoch_end = rest.index(b"\n")
        id_end = rest.index(b"\n", epoch_end + 1)
        epoch, first = rest[:epoch_end].decode(), int(rest[epoch_end + 1 : id_end])
        items: list[bytes] = []
        pos = id_end + 1
        while pos < len(rest):
            end = _item_bounds(rest, pos)[2]
            items.append(rest[pos:end])
            pos = end
        if not items or first < 1:
            raise ValueError("a run of messages needs a first id and at least one item")
        track = self._tracks.get(room)
        if track is None:
            return  # no member here any more
        # Decoded to check them before the track moves: a run with a malformed item is
        # dropped whole (its ids are then a gap, like any message lost), never forwarded.
        excludes = [self.decode_item(item).exclude for item in items]
        for offset, item in enumerate(items):
            if track.repairing:
                track.held.append((epoch, first + offset, item))
            elif self._accept(room, track, epoch, first + offset):
                self._emit_item(room, track, first + offset, item, excludes[offset])

    # Ordering.

    def _accept(self, room: str, track: _Track, epoch: str, id_: int) -> bool:
        """Whether message ``id_`` of ``epoch`` is new here; says so when some were missed."""
        if track.epoch is None:
            track.epoch, track.last = epoch, id_ - 1
        elif epoch != track.epoch:
            # The store lost the room and its ids restarted: members must drop their old ids.
            track.epoch, track.last = epoch, id_ - 1
            self._gap(room, epoch, id_ - 1)
        if id_ <= track.last:
            return False  # already delivered (or in the log a join just read)
        if id_ != track.last + 1:
            self._gap(room, epoch, id_ - 1)
        return True

    def _emit_item(
        self, room: str, track: _Track, id_: int, item: bytes, exclude: str | None
    ) -> None:
        _, start, end = _item_bounds(item, 0)
        self._deliver(room, track, id_, item[start:end], exclude)

    def _deliver(
        self, room: str, track: _Track, id_: int, envelope: bytes, exclude: str | None
    ) -> None:
        node = self._node
        node.deliver_room(room, node.encode_message(room, id_, envelope), exclude)
        track.delivered(id_)

    def _emit(self, room: str, track: _Track, id_: int, record: Record) -> None:
        node = self._node
        frame = frames.message(room, id_, record.sender, record.data, record.ts)
        node.deliver_room(room, node.encode(frame), record.exclude)
        track.delivered(id_)

    def _gap(self, room: str, epoch: str, offset: int) -> None:
        self.gaps += 1
        self._node.deliver_room(room, self._node.encode(frames.gap(room, epoch, offset)), None)

    def _appended(self, append: Append, appended: Appended) -> None:
        """Deliver this node's own messages from a remote log's reply when they follow what
        was delivered here; their bus copy is then recognised by its id and skipped.
        Otherwise (a gap before them, a new epoch, a repair) the bus delivers them in order.
        (A local backplane's publish delivers its message itself, in :meth:`publish`.)"""
        room = append.room
        track = self._tracks.get(room)
        if track is None:
            return
        if track.repairing or track.epoch != appended.epoch or track.last != appended.first - 1:
            return
        for offset, record in enumerate(append.records):
            if self._accept(room, track, appended.epoch, appended.first + offset):
                id_ = appended.first + offset
                self._emit_item(room, track, id_, append.items[offset], record.exclude)

    async def _own_copy(self, waiting: dict[int, asyncio.Future[None]], id_: int) -> None:
        """Wait until this node delivered its own message ``id_`` (resolved through
        ``waiting``), at most the backplane's timeout: the ``ack`` goes anyway."""
        future = waiting.setdefault(id_, asyncio.get_running_loop().create_future())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.backplane.timeout):
                await future
        waiting.pop(id_, None)

    # Repair after the bus was lost.

    def _repair_done(self, task: asyncio.Task[None]) -> None:
        self._repairs.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("gap repair failed", exc_info=task.exception())

    async def _repair_all(self, rooms: list[str]) -> None:
        """Deliver what each room missed from its log, or tell its members they missed it."""
        for room in rooms:
            track = self._tracks.get(room)
            if track is None:
                continue  # emptied meanwhile
            log = await self._read_for_repair(room)
            if log is None:
                self._gap(room, track.epoch or "", track.last)
            else:
                self._catch_up(room, track, log)
            track.repairing = False
            held, track.held = track.held, []
            for epoch, id_, item in held:
                if self._accept(room, track, epoch, id_):
                    self._emit_item(room, track, id_, item, self.decode_item(item).exclude)
        logger.warning("bus restored; %d room(s) checked for gaps", len(rooms))

    async def _read_for_repair(self, room: str) -> RoomLog | None:
        for pause in _REPAIR_PAUSES:
            await asyncio.sleep(pause)
            with contextlib.suppress(BackplaneError):
                return await self.backplane.read(room, history_ttl=None)
        return None

    def _catch_up(self, room: str, track: _Track, log: RoomLog) -> None:
        """Deliver from the log what this node missed of a room, or tell its members."""
        if log.epoch != track.epoch:
            # The store lost the room: its ids restarted in a new epoch. Members reset theirs.
            track.epoch, track.last = log.epoch, 0
            if log.entries and log.entries[0][0] != 1:
                track.last = log.last
            self._gap(room, log.epoch, track.last)
        if log.last <= track.last:
            return
        missed = [(id_, record) for id_, record in log.entries if id_ > track.last]
        if len(missed) == log.last - track.last and missed[0][0] == track.last + 1:
            for id_, record in missed:
                self._emit(room, track, id_, record)
        else:
            track.last = log.last
            self._gap(room, log.epoch, log.last)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _item(exclude: str | None, envelope: bytes) -> bytes:
    """An item: ``<exclude>\\n<length>\\n<envelope>``."""
    return b"%b\n%d\n%b" % (exclude.encode() if exclude else b"", len(envelope), envelope)


def _item_bounds(data: bytes, pos: int) -> tuple[int, int, int]:
    """Where the item starting at ``pos`` ends its exclude, starts its envelope and ends."""
    exclude_end = data.index(b"\n", pos)
    length_end = data.index(b"\n", exclude_end + 1)
    length = int(data[exclude_end + 1 : length_end])
    end = length_end + 1 + length
    if length < 0 or end > len(data):
        raise ValueError("truncated item")
    return exclude_end, length_end + 1, end
