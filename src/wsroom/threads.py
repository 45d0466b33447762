"""Using a manager from threads: the blocking API, and an event loop in a thread.

The manager runs on one asyncio event loop. Code in other threads (a Flask or Django view,
a worker, the threads of a ``websockets.sync`` server) reaches it through
:attr:`ConnectionManager.from_thread <wsroom.ConnectionManager.from_thread>`, which runs
each call on the manager's loop and waits for its result, or, for
:meth:`BlockingPortal.broadcast_nowait`, hands the broadcast over and returns at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .protocol import require_room_name

if TYPE_CHECKING:
    from .connection import Connection
    from .manager import ConnectionManager

__all__ = ["BackgroundLoop", "BlockingPortal"]

T = TypeVar("T")

logger = logging.getLogger("wsroom")


class _Broadcast:
    __slots__ = ("data", "event", "exclude", "future", "room", "waited")

    def __init__(
        self,
        room: str,
        event: str | None,
        data: Any,
        exclude: Connection | None,
        waited: bool,
    ) -> None:
        self.room = room
        self.event = event  # None: a stored message; else an event frame of this type
        self.data = data
        self.exclude = exclude
        self.waited = waited  # a caller waits for the outcome (else failures are logged)
        self.future: concurrent.futures.Future[int | None] = concurrent.futures.Future()


def _fail(future: concurrent.futures.Future[Any], exc: BaseException) -> None:
    """Fail a broadcast that will not run, unless it is done or its caller cancelled it."""
    if future.running() or (not future.done() and future.set_running_or_notify_cancel()):
        future.set_exception(exc)


class BlockingPortal:
    """The manager's server-side API for code that runs in other threads.

    Every method runs on the manager's event loop and blocks the calling thread until it
    is done, at most ``timeout`` seconds (``TimeoutError`` after that), except
    :meth:`broadcast_nowait`, which returns at once. Calling it from the manager's own
    event loop would deadlock, so it raises ``RuntimeError`` there: use the ``async``
    methods of the manager instead.

    Broadcasts (:meth:`broadcast`, :meth:`broadcast_nowait`, :meth:`broadcast_event`) are
    applied in the order they were called, whatever thread called them: a thread that
    publishes ``a`` then ``b`` to a room, waiting or not, has every member receive ``a``
    before ``b``. Those handed over while the loop is busy are applied together, so their
    frames leave in one write per connection.
    """

    def __init__(
        self, manager: ConnectionManager, timeout: float = 10.0, max_pending: int = 10_000
    ) -> None:
        self._manager = manager
        self.timeout = timeout
        """Seconds each call may take."""
        self.max_pending = max_pending
        """Broadcasts that may wait for the manager's loop at once; :meth:`broadcast_nowait`
        waits for room beyond that, so a thread publishing faster than the rooms can send
        is slowed down instead of growing memory without bound."""
        self._pending: deque[_Broadcast] = deque()
        self._pending_lock = threading.Lock()
        self._room_freed = threading.Condition(self._pending_lock)
        # The loop a drain task runs on, while one does; the task itself, kept referenced.
        self._draining_on: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    def run(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await func(*args)`` on the manager's loop and return its result."""
        loop = self._loop()

        async def call() -> T:
            return await func(*args)

        return asyncio.run_coroutine_threadsafe(call(), loop).result(self.timeout)

    def call(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` (a plain function) on the manager's loop and return its result."""

        async def call() -> T:
            return func(*args)

        return self.run(call)

    def broadcast(self, room: str, data: Any, *, exclude: Connection | None = None) -> int:
        """:meth:`ConnectionManager.broadcast` from another thread; returns the message id."""
        item = self._hand_over(_Broadcast(room, None, data, exclude, waited=True))
        message_id = item.future.result(self.timeout)
        assert message_id is not None
        return message_id

    def broadcast_nowait(
        self, room: str, data: Any, *, exclude: Connection | None = None
    ) -> concurrent.futures.Future[int | None]:
        """:meth:`ConnectionManager.broadcast` from another thread, without waiting for it.

        Returns at once with a future of the message id: the broadcast runs on the
        manager's loop after every broadcast handed over before it. Call ``.result()`` on
        the future to wait for it and see its error, if any; a failure nobody waits for is
        logged at ERROR on the ``wsroom`` logger. Invalid room names raise ``ValueError``
        here, at once. When :attr:`max_pending` broadcasts already wait for the loop, this
        waits for one to finish, at most :attr:`timeout` seconds (``TimeoutError``).

        This is the way to publish a stream from a thread: a waiting :meth:`broadcast`
        costs a round trip to the loop per message, whereas broadcasts handed over back to
        back are sent together, one write per connection for all of them.
        """
        return self._hand_over(_Broadcast(room, None, data, exclude, waited=False)).future

    def broadcast_event(
        self, room: str, type: str, data: Any = None, *, exclude: Connection | None = None
    ) -> None:
        """:meth:`ConnectionManager.broadcast_event` from another thread."""
        item = self._hand_over(_Broadcast(room, type, data, exclude, waited=True))
        item.future.result(self.timeout)

    def send_to_user(self, user: str, data: Any, *, sender: str | None = None) -> int | None:
        """:meth:`ConnectionManager.send_to_user` from another thread."""
        manager = self._manager
        return self.run(lambda: manager.send_to_user(user, data, sender=sender))

    def send_all(self, type: str, data: Any = None) -> None:
        """:meth:`ConnectionManager.send_all` from another thread."""
        self.run(self._manager.send_all, type, data)

    def disconnect_user(self, user: str, code: int = 1008, reason: str = "disconnected") -> int:
        """:meth:`ConnectionManager.disconnect_user` from another thread."""
        return self.run(self._manager.disconnect_user, user, code, reason)

    def members(self, room: str) -> list[str]:
        """:meth:`ConnectionManager.members` from another thread."""
        return self.run(self._manager.members, room)

    def send_event(self, connection_id: str, type: str, data: Any = None) -> bool:
        """Send an application event to one connection; ``False`` if it is not here."""
        manager = self._manager

        def send() -> bool:
            conn = manager.connection(connection_id)
            if conn is None or conn.closed:
                return False
            conn.send_event(type, data)
            return True

        return self.call(send)

    def _hand_over(self, item: _Broadcast) -> _Broadcast:
        """Queue a broadcast for the manager's loop, in call order."""
        require_room_name(item.room)
        loop = self._loop()
        with self._pending_lock:
            deadline = time.monotonic() + self.timeout
            while len(self._pending) >= self.max_pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"{len(self._pending)} broadcasts were still waiting for the "
                        f"manager's loop after {self.timeout} s: it is overloaded, or "
                        "blocked (by a hook that blocks?)"
                    )
                self._room_freed.wait(remaining)
            self._pending.append(item)
            if self._draining_on is loop:
                return item
            self._draining_on = loop
        try:
            loop.call_soon_threadsafe(self._start_draining)
        except RuntimeError:  # the loop closed meanwhile
            self._fail_pending(RuntimeError("the manager stopped before this broadcast ran"))
            raise
        return item

    def _start_draining(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        batch: deque[_Broadcast] = deque()
        try:
            while True:
                with self._pending_lock:
                    if not self._pending:
                        self._draining_on = None
                        self._drain_task = None
                        return
                    batch, self._pending = self._pending, batch
                    self._room_freed.notify_all()
                # Consecutive messages start together, in order: each reaches the
                # backplane in call order before any of them waits, so a backplane that
                # pipelines (Redis) sends them in one round trip. An event goes its own way
                # to the backplane, so it waits for the messages before it, and they for it.
                run: list[_Broadcast] = []
                for item in batch:
                    if item.event is None:
                        run.append(item)
                        continue
                    if run:
                        await asyncio.gather(*(self._apply(message) for message in run))
                        run = []
                    await self._apply(item)
                if run:
                    await asyncio.gather(*(self._apply(message) for message in run))
                batch.clear()
                # Let the transports write this batch (one write per connection for all of
                # it) and the clients be served before the next one.
                await asyncio.sleep(0)
        except BaseException:  # cancelled: the loop is stopping
            stopped = RuntimeError("the manager stopped before this broadcast ran")
            for item in batch:
                _fail(item.future, stopped)
            self._fail_pending(stopped)
            raise

    async def _apply(self, item: _Broadcast) -> None:
        future = item.future
        if not future.set_running_or_notify_cancel():
            return  # the caller cancelled it
        manager = self._manager
        try:
            if item.event is None:
                result = await manager.broadcast(item.room, item.data, exclude=item.exclude)
            else:
                await manager.broadcast_event(
                    item.room, item.event, item.data, exclude=item.exclude
                )
                result = None
        except Exception as exc:
            future.set_exception(exc)
            if not item.waited:
                logger.error("broadcast_nowait to room %r failed", item.room, exc_info=exc)
        else:
            future.set_result(result)

    def _fail_pending(self, exc: BaseException) -> None:
        with self._pending_lock:
            items = list(self._pending)
            self._pending.clear()
            self._draining_on = None
            self._drain_task = None
            self._room_freed.notify_all()
        for item in items:
            _fail(item.future, exc)

    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._manager.loop
        if loop is None or loop.is_closed():
            raise RuntimeError(
                "the manager is not running: start its server first (its event loop "
                "starts with the first connection, or with 'await manager.start()')"
            )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError(
                "manager.from_thread blocks, and this code runs on the manager's own event "
                "loop: await the manager's methods instead (await manager.broadcast(...))"
            )
        return loop


class BackgroundLoop:
    """An asyncio event loop running in a daemon thread, for servers that have none.

    The threading adapter runs its manager on one when the manager is not already bound to
    a running loop.
    """

    def __init__(self, name: str = "wsroom-loop") -> None:
        self.loop = asyncio.new_event_loop()
        """The loop; it runs until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        """Stop the loop, wait for its thread, close it."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
