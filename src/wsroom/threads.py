"""Using a manager from threads: the blocking API, and an event loop in a thread.

The manager runs on one asyncio event loop. Code in other threads (a Flask or Django view,
a worker, the threads of a ``websockets.sync`` server) reaches it through
:attr:`ConnectionManager.from_thread <wsroom.ConnectionManager.from_thread>`, which runs
each call on the manager's loop and waits for its result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .connection import Connection
    from .manager import ConnectionManager

__all__ = ["BackgroundLoop", "BlockingPortal"]

T = TypeVar("T")


class BlockingPortal:
    """The manager's server-side API for code that runs in other threads.

    Every method runs on the manager's event loop and blocks the calling thread until it
    is done, at most ``timeout`` seconds (``TimeoutError`` after that). Calling it from the
    manager's own event loop would deadlock, so it raises ``RuntimeError`` there: use the
    ``async`` methods of the manager instead.
    """

    def __init__(self, manager: ConnectionManager, timeout: float = 10.0) -> None:
        self._manager = manager
        self.timeout = timeout
        """Seconds each call may take."""

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
        manager = self._manager
        return self.run(lambda: manager.broadcast(room, data, exclude=exclude))

    def broadcast_event(
        self, room: str, type: str, data: Any = None, *, exclude: Connection | None = None
    ) -> None:
        """:meth:`ConnectionManager.broadcast_event` from another thread."""
        manager = self._manager
        self.run(lambda: manager.broadcast_event(room, type, data, exclude=exclude))

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
