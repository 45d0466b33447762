"""The publish pipeline of remote backplanes: publishes leave in call order, many at once.

A call to :meth:`Backplane.append` costs one round trip whatever its length, so concurrent
publishers (the members of a busy room, a thread's stream handed over by
``broadcast_nowait``) are not each held up by a round trip of their own. Consecutive
publishes to one room with the same settings form one run: one log step and one bus
message, which other nodes parse once and deliver in one write per connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..exceptions import BackplaneError
from .base import Append, Appended, Backplane, Record

__all__ = ["Batcher"]

# Publishes handed to one append() at most: bounds the reply a batch waits for.
_BATCH_MAX = 512
# Item bytes in one run at most: Redis disconnects a subscriber whose output buffer passes
# 32 MiB (its default limit for pub/sub clients), and nodes parse a bus message whole.
_RUN_BYTES = 1 << 20


@dataclass(slots=True)
class _Publish:
    """A message waiting in the queue."""

    room: str
    record: Record
    item: bytes
    history_size: int
    history_ttl: float
    result: asyncio.Future[tuple[int, str]]
    """Resolved with the message's id and epoch."""

    def joins(self, run: list[_Publish], run_bytes: int) -> bool:
        """Whether this publish may be appended in the same step as ``run``."""
        head = run[0]
        return (
            self.room == head.room
            and self.history_size == head.history_size
            and self.history_ttl == head.history_ttl
            and run_bytes + len(self.item) <= _RUN_BYTES
        )


class Batcher:
    """Queues publishes in call order and appends them in batches, from one task.

    Args:
        backplane: Where the runs are appended.
        appended: Called with each run that landed, before its publishers resume (the
            cluster layer delivers this node's own copies from it).
    """

    def __init__(self, backplane: Backplane, appended: Callable[[Append, Appended], None]) -> None:
        self._backplane = backplane
        self._appended = appended
        self._outgoing: deque[_Publish] = deque()
        self._sender: asyncio.Task[None] | None = None

    def put(
        self, room: str, record: Record, item: bytes, history_size: int, history_ttl: float
    ) -> asyncio.Future[tuple[int, str]]:
        """Queue a publish (without suspending); the future gets its id and epoch, or the
        error that failed its run."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[int, str]] = loop.create_future()
        self._outgoing.append(_Publish(room, record, item, history_size, history_ttl, future))
        if self._sender is None:
            self._sender = loop.create_task(self._send(), name="wsroom-publish")
        return future

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task sending queued publishes, while there are some."""
        return self._sender

    async def _send(self) -> None:
        outgoing = self._outgoing
        try:
            while outgoing:
                runs = _runs_of(outgoing)
                if not runs:
                    continue  # every publisher taken gave up waiting
                batch = [
                    Append(
                        run[0].room,
                        [p.record for p in run],
                        [p.item for p in run],
                        run[0].history_size,
                        run[0].history_ttl,
                    )
                    for run in runs
                ]
                try:
                    results = await self._backplane.append(batch)
                except Exception as exc:
                    results = [exc] * len(runs)
                for run, append, result in zip(runs, batch, results, strict=True):
                    if isinstance(result, BaseException):
                        _fail(run, result)
                        continue
                    self._appended(append, result)
                    for offset, publish in enumerate(run):
                        if not publish.result.done():  # else its publisher was cancelled
                            publish.result.set_result((result.first + offset, result.epoch))
        finally:
            self._sender = None
            # Only a cancellation (the manager is stopping) leaves publishes queued.
            _fail(outgoing, BackplaneError("the backplane stopped before this message was sent"))
            outgoing.clear()


def _runs_of(outgoing: deque[_Publish]) -> list[list[_Publish]]:
    """Take up to a batch's worth of queued publishes, in order, as runs of consecutive
    publishes to one room with the same settings, each capped in bytes (publishes whose
    publisher no longer waits are dropped)."""
    runs: list[list[_Publish]] = []
    run_bytes = 0
    for _ in range(min(len(outgoing), _BATCH_MAX)):
        publish = outgoing.popleft()
        if publish.result.done():
            continue  # its publisher timed out or was cancelled before it left: not sent
        if runs and publish.joins(runs[-1], run_bytes):
            runs[-1].append(publish)
            run_bytes += len(publish.item)
        else:
            runs.append([publish])
            run_bytes = len(publish.item)
    return runs


def _fail(publishes: list[_Publish] | deque[_Publish], error: BaseException) -> None:
    for publish in publishes:
        if not publish.result.done():
            publish.result.set_exception(error)
