"""Serve a :class:`~wsroom.ConnectionManager` with a threaded ``websockets.sync`` server.

Either let wsroom start the server::

    with wsroom.adapters.websockets_sync.serve(manager, "", 8765) as server:
        server.serve_forever()   # on Ctrl-C: graceful shutdown, then KeyboardInterrupt

or plug it into a server you create yourself::

    adapter = SyncAdapter(manager)
    with websockets.sync.server.serve(adapter.handler, "", 8765, **adapter.options()) as server:
        ...

The rooms still live in one place: the manager runs on an asyncio event loop (a
background thread, unless the manager already runs on a loop, for instance next to an
asyncio server), and the server's threads only move frames. Every hook, ``def`` or
``async def``, runs on that loop, one frame at a time per connection: a hook that blocks
delays every client, so do blocking work with ``await asyncio.to_thread(...)`` in an
``async def`` hook. Code in other threads uses :attr:`manager.from_thread
<wsroom.ConnectionManager.from_thread>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.sync.server import Server as WSServer, ServerConnection, serve as _serve

from ..connection import Connection, Transport
from ..exceptions import HandshakeRejected
from ..handshake import Handshake
from ..manager import ConnectionManager
from ..protocol import CloseCode
from ..threads import BackgroundLoop
from ._websockets_common import (
    AdapterBase,
    SharedFrames,
    handshake_of,
    refusal,
    reset_on_close,
)

__all__ = ["Server", "SyncAdapter", "SyncTransport", "serve"]

logger = logging.getLogger("wsroom.transport")

ProcessRequest = Callable[[ServerConnection, Request], Response | None]


class SyncTransport(Transport):
    """Moves one connection's queued frames onto a ``websockets.sync`` connection.

    Frames are written from the manager's event loop, as the asyncio adapter writes them:
    all frames queued in a loop iteration are framed under the connection's lock (each
    message once for all the connections that can take the same bytes:
    :class:`SharedFrames`) and sent with one non-blocking ``send()``. Whatever the socket
    does not take at once is sent when it becomes writable, the lock held meanwhile so
    nothing interleaves. No thread waits on a slow client, and a client that stops reading
    holds at most its bounded queue: the queue overflowing, or the socket staying
    unwritable past ``Limits.write_timeout``, evicts it, and the socket is shut down, which
    unblocks the server's threads.
    """

    def __init__(
        self,
        ws: ServerConnection,
        loop: asyncio.AbstractEventLoop,
        *,
        binary: bool = False,
        shared: SharedFrames | None = None,
    ) -> None:
        self.ws = ws
        self._loop = loop
        self._frames = shared if shared is not None else SharedFrames(loop, binary=binary)
        # Everything below is only touched on the manager's loop.
        self._scheduled = False
        self._locked = False
        self._pending: memoryview | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._fd = -1

    def wake(self) -> None:
        if not self._scheduled and self._pending is None:
            self._scheduled = True
            self._flushed.clear()
            # Deferred to the end of the loop iteration, so every frame queued meanwhile
            # leaves in the same send().
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        conn = self.connection
        if conn is None or self._pending is not None:
            return
        ws = self.ws
        if not self._locked:
            if not ws.protocol_mutex.acquire(blocking=False):
                # A server thread is answering a ping or closing: try again shortly.
                self._scheduled = True
                self._flushed.clear()
                self._loop.call_later(0.001, self._flush)
                return
            self._locked = True
        frames = conn.take_outgoing()
        if not frames or ws.protocol.state is not State.OPEN:
            self._unlock()
            return
        self._write(memoryview(b"".join(self._frames.data_to_send(ws.protocol, frames))))

    def _write(self, data: memoryview) -> None:
        try:
            sent = self.ws.socket.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Closed or shut down under us: the handler thread sees it and releases.
            self._pending = None
            self._unlock()
            return
        if sent == len(data):
            self._pending = None
            self._unlock()
            conn = self.connection
            if conn is not None and conn.queued_frames:
                self._flush()
            return
        if self._pending is None:
            self._flushed.clear()
            self._fd = self.ws.socket.fileno()
            self._loop.add_writer(self._fd, self._writable)
            conn = self.connection
            assert conn is not None
            self._stall_timer = self._loop.call_later(
                conn.manager.limits.write_timeout, self._stalled
            )
        self._pending = data[sent:]

    def _writable(self) -> None:
        data = self._pending
        if data is not None:
            self._write(data)

    def _stalled(self) -> None:
        conn = self.connection
        if self._pending is not None and conn is not None:
            conn.manager.evict(conn, "client too slow: write timeout")

    def _unlock(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._fd >= 0:
            self._loop.remove_writer(self._fd)
            self._fd = -1
        if self._locked:
            self._locked = False
            self.ws.protocol_mutex.release()
        self._flushed.set()

    async def close(self, code: int, reason: str) -> None:
        # Send what is queued first; _flushed is clear while a write is scheduled or pending.
        while True:
            await self._flushed.wait()
            conn = self.connection
            if conn is None or not conn.queued_frames:
                break
            self._flushed.clear()
            self._flush()
        # close() blocks until the peer answers; the manager aborts it past its deadline.
        await asyncio.to_thread(self.ws.close, code, reason)

    def abort(self) -> None:
        self._pending = None
        self._unlock()
        # The server's thread closes the socket once shut down: with a reset, not a FIN
        # queued behind data the client will never read.
        reset_on_close(self.ws.socket)
        with contextlib.suppress(OSError):  # already closed
            self.ws.socket.shutdown(socket.SHUT_RDWR)


class SyncAdapter(AdapterBase):
    """Connects a :class:`~wsroom.ConnectionManager` to ``websockets.sync.server``.

    Pass :attr:`handler` as the server's handler and :meth:`options` as its keyword
    arguments. The manager runs on its event loop if it already has one running (next to
    an asyncio server), else on a :class:`~wsroom.threads.BackgroundLoop` this adapter
    starts; :meth:`close` stops that loop.

    Args:
        manager: The manager to serve.
        timeout: Seconds a handshake check may take on the manager's loop.
    """

    def __init__(self, manager: ConnectionManager, *, timeout: float = 10.0) -> None:
        super().__init__(manager)
        self.timeout = timeout
        self._background: BackgroundLoop | None = None
        # Handlers in progress: the background loop must outlive them.
        self._handlers = threading.Condition()
        self._running = 0
        loop = manager.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            self._background = BackgroundLoop()
            self._background.run(manager.start())
            loop = self._background.loop
        self.loop: asyncio.AbstractEventLoop = loop
        """The event loop the manager runs on."""

    def run(self, coroutine: Any) -> Any:
        """Run a coroutine on the manager's loop from a server thread; wait for it."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def options(
        self, process_request: ProcessRequest | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """Keyword arguments for ``websockets.sync.server.serve``.

        Args:
            process_request: Your own ``process_request``, run first; when it returns a
                response, wsroom does not run.
            overrides: Any other ``serve`` argument, which wins over wsroom's.
        """
        checks: ProcessRequest = self.process_request
        if process_request is not None:
            first = process_request

            def checks(connection: ServerConnection, request: Request) -> Response | None:
                response = first(connection, request)
                return (
                    response if response is not None else self.process_request(connection, request)
                )

        options: dict[str, Any] = {
            "process_request": checks,
            "select_subprotocol": self.select_subprotocol,
            "max_size": self.manager.limits.max_frame_size,
        }
        options.update(overrides)
        return options

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse the upgrade for a bad origin, subprotocol or credentials (HTTP 4xx)."""
        handshake = handshake_of(connection, request)
        try:
            user = asyncio.run_coroutine_threadsafe(
                self.manager.authorize(handshake), self.loop
            ).result(self.timeout)
        except HandshakeRejected as exc:
            return refusal(connection, exc)
        self._handshakes.accepted(connection, handshake, user)
        return None

    def handler(self, ws: ServerConnection) -> None:
        """The connection handler: runs one client until it disconnects (in its thread)."""
        checked = self._handshakes.take(ws)
        if isinstance(checked, Handshake):
            # process_request was not wired: check now, refuse with 1008 after the upgrade.
            handshake = checked
            try:
                user = self.run(self.manager.authorize(handshake))
            except HandshakeRejected as exc:
                ws.close(CloseCode.POLICY_VIOLATION, exc.reason[:120])
                return
        else:
            handshake, user = checked
        transport = SyncTransport(
            ws,
            self.loop,
            binary=self.manager.protocol.binary,
            shared=self.shared_frames(self.loop),
        )
        with self._handlers:
            self._running += 1
        try:
            conn: Connection = self.run(self.manager.accept(transport, handshake, user))
            try:
                while not conn.closed:
                    try:
                        frame = ws.recv()
                    except (ConnectionClosed, OSError):
                        break
                    self.run(self.manager.receive(conn, frame))
            finally:
                self.run(self.manager.release(conn))
        finally:
            with self._handlers:
                self._running -= 1
                self._handlers.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the background event loop, if this adapter started one.

        Handlers still running (their clients were closed by the manager's shutdown) get
        up to ``timeout`` seconds to release their connections on it first.
        """
        with self._handlers:
            self._handlers.wait_for(lambda: self._running == 0, timeout)
        if self._background is not None:
            self._background.stop()
            self._background = None


class Server:
    """A running ``websockets.sync`` server serving a manager, as :func:`serve` yields it.

    Stopping it is always graceful: first :meth:`ConnectionManager.shutdown
    <wsroom.ConnectionManager.shutdown>` (queued frames delivered, close code 1001), then the
    ``websockets`` server shuts down.
    """

    def __init__(self, server: WSServer, adapter: SyncAdapter, shutdown_timeout: float) -> None:
        self.server = server
        """The underlying ``websockets.sync.server.Server``."""
        self.adapter = adapter
        """The adapter connecting it to the manager."""
        self.shutdown_timeout = shutdown_timeout
        """Seconds clients get to receive what is queued before they are aborted."""
        self._lock = threading.Lock()
        self._done = False
        self._serving: threading.Thread | None = None
        self._served = False

    @property
    def manager(self) -> ConnectionManager:
        """The manager this server serves."""
        return self.adapter.manager

    @property
    def socket(self) -> socket.socket:
        """The listening socket (``server.socket.getsockname()`` gives the port)."""
        return self.server.socket

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` is called or Ctrl-C; shut down gracefully either way.

        After Ctrl-C the ``KeyboardInterrupt`` goes on once the shutdown is done.
        """
        self._serving = threading.current_thread()
        self._served = True
        try:
            self.server.serve_forever()
        finally:
            self._serving = None
            self.shutdown()

    def shutdown(self) -> None:
        """Shut down gracefully: the manager first, then the ``websockets`` server.

        Safe to call more than once and from any thread but the manager's event loop. From
        the thread running :meth:`serve_forever` (a signal handler, say), it starts the
        shutdown in another thread and returns; :meth:`serve_forever` then returns.
        """
        if threading.current_thread() is self._serving:
            threading.Thread(target=self.shutdown, name="wsroom-shutdown").start()
            return
        with self._lock:
            if self._done:
                return
            self._done = True
        self.adapter.run(self.manager.shutdown(self.shutdown_timeout))
        if self._serving is None and not self._served:
            # websockets' shutdown waits for serve_forever() to stop accepting, and that
            # closes its wake-up socket; serve_forever() never ran, so do both here.
            socket_closed = getattr(self.server, "socket_closed", None)
            if socket_closed is not None:
                socket_closed.set()
            watcher = getattr(self.server, "shutdown_watcher", None)
            if watcher is not None:
                watcher.close()
        self.server.shutdown()


@contextmanager
def serve(
    manager: ConnectionManager,
    host: str | None = None,
    port: int | None = None,
    *,
    process_request: ProcessRequest | None = None,
    shutdown_timeout: float = 5.0,
    **kwargs: Any,
) -> Iterator[Server]:
    """Start a ``websockets.sync`` server for ``manager``; shut both down gracefully on exit.

    Other keyword arguments go to ``websockets.sync.server.serve``.
    """
    adapter = SyncAdapter(manager)
    try:
        options = adapter.options(process_request, **kwargs)
        with _serve(adapter.handler, host, port, **options) as ws_server:
            server = Server(ws_server, adapter, shutdown_timeout)
            try:
                yield server
            finally:
                server.shutdown()
    finally:
        adapter.close()
