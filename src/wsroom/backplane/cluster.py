"""The cluster layer the core speaks to (transitional: forwards to the backplane)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Backplane, BackplaneNode, RoomSnapshot

if TYPE_CHECKING:
    from ..limits import Limits

__all__ = ["Cluster"]


class Cluster:
    """Ids, history, presence and delivery on every node, for one manager."""

    def __init__(self, backplane: Backplane, node: BackplaneNode, limits: Limits) -> None:
        self.backplane = backplane
        self._node = node
        self.limits = limits
        self.messages_published = 0
        self.dropped_messages = 0

    async def start(self) -> None:
        await self.backplane.start(self._node)

    async def stop(self) -> None:
        await self.backplane.stop()

    def watch_room(self, room: str) -> None:
        self.backplane.watch_room(room)

    def unwatch_room(self, room: str) -> None:
        self.backplane.unwatch_room(room)

    def watch_user(self, user: str) -> None:
        self.backplane.watch_user(user)

    def unwatch_user(self, user: str) -> None:
        self.backplane.unwatch_user(user)

    async def ready(self, room: str) -> None:
        await self.backplane.ready(room)

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
        message_id = await self.backplane.publish(
            room,
            sender,
            data,
            ts=ts,
            history_size=history_size,
            history_ttl=history_ttl,
            exclude=exclude,
            local_first=local_first,
        )
        self.messages_published += 1
        return message_id

    async def publish_event(self, room: str, frame: bytes, *, exclude: str | None = None) -> None:
        await self.backplane.publish_event(room, frame, exclude=exclude)

    async def snapshot(
        self, room: str, *, since: int | None, epoch: str | None, limit: int, history_ttl: float
    ) -> RoomSnapshot:
        return await self.backplane.snapshot(
            room, since=since, epoch=epoch, limit=limit, history_ttl=history_ttl
        )

    async def join(self, room: str, user: str) -> bool:
        return await self.backplane.join(room, user, first_local=True)

    async def leave(self, room: str, user: str) -> bool:
        return await self.backplane.leave(room, user, last_local=True)

    async def members(self, room: str) -> list[str]:
        return await self.backplane.members(room)

    async def send_direct(self, user: str, sender: str | None, data: Any, *, ts: int) -> int | None:
        return await self.backplane.send_direct(user, sender, data, ts=ts)

    async def send_all(self, frame: bytes) -> None:
        await self.backplane.send_all(frame)

    async def disconnect_user(self, user: str, code: int, reason: str) -> int:
        return await self.backplane.disconnect_user(user, code, reason)
