"""A transport whose writes are awaited sends, one frame at a time: ASGI, and ``websockets``
through its public ``send()`` when the fast path is off."""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Awaitable, Callable

from ..connection import Connection, Transport

__all__ = ["WriterTaskTransport"]


class WriterTaskTransport(Transport):
    """Sends a connection's queued frames with a writer task, and evicts a client whose send
    stays blocked past ``Limits.write_timeout``.

    The writer task exists only while frames are queued: an idle connection holds no task,
    event or timer. One timer per connection watches the send in progress while the writer
    runs. A subclass implements :meth:`sender` and names in :attr:`closed_errors` what its
    sends raise once the peer is gone.

    Batched frames come with it: the writer sends :meth:`Connection.take_messages
    <wsroom.Connection.take_messages>`, so a connection that negotiated ``wsroom.v1.batch``
    gets the frames waiting in its queue as one message (a JSON array) per send, with no
    code in the subclass. The frames a send waits behind are the next batch.
    """

    __slots__ = ("_send_started", "_watchdog", "_writer")

    closed_errors: tuple[type[BaseException], ...] = ()
    """What :meth:`send` raises on a closed connection: the writer then stops quietly."""

    def __init__(self) -> None:
        self._writer: asyncio.Task[None] | None = None
        self._send_started: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    @abstractmethod
    def sender(self) -> Callable[[bytes], Awaitable[object]]:
        """The function that sends one encoded message (a frame, or a batch of frames),
        returning the awaitable of the server's send. The writer awaits what it returns
        directly: a coroutine of our own around each send would cost every delivery (about
        10% of an ASGI server's fan-out).
        """

    def wake(self) -> None:
        conn = self.connection
        if self._writer is None and conn is not None:
            self._writer = asyncio.get_running_loop().create_task(self._write(conn))

    async def _write(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        send = self.sender()
        while messages := conn.take_messages():
            if self._watchdog is None:
                self._watchdog = loop.call_later(conn.manager.limits.write_timeout, self._watch)
            for message in messages:
                # A timestamp per send, checked by one timer, costs far less than a
                # timeout context around every frame.
                self._send_started = loop.time()
                try:
                    await send(message)
                except self.closed_errors:
                    # The receive loop sees the disconnect and releases. The finished task
                    # stays in _writer, so nothing more is written.
                    return
                self._send_started = None
        # Nothing queued: end the task, and its timer. The next wake() starts another.
        self._writer = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _watch(self) -> None:
        """Evict the client if one send has been blocked for ``write_timeout`` seconds."""
        self._watchdog = None
        started = self._send_started
        conn = self.connection
        if started is None or conn is None or self._writer is None:
            return  # idle: the next batch arms the timer again
        limit = conn.manager.limits.write_timeout
        loop = asyncio.get_running_loop()
        waited = loop.time() - started
        if waited >= limit:
            conn.manager.evict(conn, "client too slow: write timeout")
        else:
            self._watchdog = loop.call_later(limit - waited, self._watch)

    async def flush(self) -> None:
        """Send what is queued, then stop writing; for :meth:`close`, before the close frame."""
        conn = self.connection
        if conn is not None and conn.queued_frames:
            self.wake()
        writer = self._writer
        if writer is not None and not writer.done():
            # Not awaited directly: the core's deadline cancels close(), and the writer
            # must then be stopped by abort(), not by that cancellation.
            await asyncio.wait((writer,))
        self.stop_writing()

    def stop_writing(self) -> None:
        """Cancel the send in progress, if any; write nothing more until the next wake()."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
