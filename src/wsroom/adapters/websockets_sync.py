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
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server as WSServer, ServerConnection, serve as _serve

from ..admin import ADMIN_PATH, AdminView, Authorize
from ..connection import Connection, Transport
from ..exceptions import HandshakeRejected
from ..manager import ConnectionManager
from ..threads import BackgroundLoop
from . import _websockets_fastpath as fastpath
from ._websockets_common import (
    AdapterBase,
    admin_response,
    client_script,
    handshake_of,
    metrics_endpoint,
    policy_violation,
    shut_down,
)

logger = logging.getLogger("wsroom.transport")

__all__ = [
    "Server",
    "SyncAdapter",
    "SyncTransport",
    "admin_view",
    "client_script",
    "metrics_endpoint",
    "serve",
]

ProcessRequest = Callable[[ServerConnection, Request], Response | None]


class SyncTransport(Transport):
    """Moves one connection's queued frames onto a ``websockets.sync`` connection with its
    public ``send()``.

    The adapter uses it when the fast path is off (``wsroom.adapters._websockets_fastpath``;
    otherwise frames are built once per broadcast and sent from the manager's loop without
    blocking). The manager's loop hands each batch of queued frames to a sender thread of
    the connection's own, started with its first frame, which calls ``send()`` for each: the
    loop never waits on a socket. A batch still unsent after ``Limits.write_timeout``
    evicts the client. :meth:`abort` shuts down the socket the connection was created with,
    which unblocks the sender and the server's threads; only a connection created by
    :meth:`SyncAdapter.options`' ``create_connection`` keeps it, ``websockets`` documenting
    no way to reach it otherwise.
    """

    def __init__(
        self, ws: ServerConnection, loop: asyncio.AbstractEventLoop, *, binary: bool = False
    ) -> None:
        self.ws = ws
        self._loop = loop
        self._text = not binary
        self._socket = ws.tcp_socket if isinstance(ws, KeepsSocket) else None
        self._batches: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        # Everything below is only touched on the manager's loop.
        self._sending = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        """Set while the sender has no frames in hand."""
        self._idle.set()

    def peer_close_code(self) -> int | None:
        """The close code the client sent (1006: none), once the connection is closed."""
        return self.ws.close_code

    def wake(self) -> None:
        conn = self.connection
        if not self._sending and conn is not None:
            self._hand_over(conn)

    def _hand_over(self, conn: Connection) -> None:
        """Give the sender what is queued; what is queued meanwhile waits for its next turn."""
        self._sending = True
        self._idle.clear()
        self._stall_timer = self._loop.call_later(conn.manager.limits.write_timeout, self._stalled)
        if self._sender is None:
            self._sender = threading.Thread(
                target=self._send_batches, name="wsroom-sender", daemon=True
            )
            self._sender.start()
        self._batches.put(conn.take_messages())

    def _send_batches(self) -> None:
        """The sender thread: sends each batch, tells the loop, ends at ``None``."""
        failed = False
        while (frames := self._batches.get()) is not None:
            if not failed:
                try:
                    for frame in frames:
                        self.ws.send(frame, text=self._text)
                except (ConnectionClosed, OSError):
                    # The handler thread sees the connection closed and releases; what is
                    # handed over from now on is dropped.
                    failed = True
            with contextlib.suppress(RuntimeError):  # the manager's loop is closed
                self._loop.call_soon_threadsafe(self._sent)

    def _sent(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._sending = False
        conn = self.connection
        if conn is not None and conn.queued_frames:
            self._hand_over(conn)
        else:
            self._idle.set()

    def _stalled(self) -> None:
        self._stall_timer = None
        conn = self.connection
        if self._sending and conn is not None:
            conn.manager.evict(conn, "client too slow: write timeout")

    async def close(self, code: int, reason: str) -> None:
        # What is queued was handed over, or will be when the batch in hand is sent.
        await self._idle.wait()
        self._batches.put(None)
        # close() blocks until the peer answers; the manager aborts it past its deadline.
        await asyncio.to_thread(self.ws.close, code, reason)

    def abort(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._batches.put(None)
        shut_down(self._socket)


class KeepsSocket(ServerConnection):
    """A ``websockets.sync`` server connection that keeps the socket it is created with, so
    that :class:`SyncTransport` can cut a client that stopped reading."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.tcp_socket = sock
        """The connection's TCP socket."""


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
        self._framing = fastpath.ENABLED
        self._shared = (
            fastpath.SharedFrames(loop, binary=manager.protocol.binary) if self._framing else None
        )
        self.capacity: int | None = client_capacity()
        """About how many clients this process can hold under its open-file limit
        (``ulimit -n``), or ``None`` when there is no such limit. It is logged when the
        adapter starts, and a warning is logged when the clients come close to it."""
        self._near_capacity = False
        if self.capacity is not None:
            log = logger.warning if self.capacity < _FEW_CLIENTS else logger.info
            log(
                "the threading server can hold about %d clients under the open-file limit "
                "(ulimit -n %d: each client takes %d file descriptors and %d threads); "
                "raise the limit for more, or serve with wsroom.adapters.websockets (asyncio: "
                "one file descriptor per client)",
                self.capacity,
                _soft_file_limit() or 0,
                FDS_PER_CLIENT,
                THREADS_PER_CLIENT,
            )

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

        if not self._framing:
            # What lets SyncTransport cut a client that stopped reading.
            overrides = {"create_connection": KeepsSocket, **overrides}
        return self._options(checks, overrides)

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Refuse the upgrade for a bad origin, subprotocol or credentials (HTTP 4xx)."""
        checking = asyncio.run_coroutine_threadsafe(self._check(connection, request), self.loop)
        return checking.result(self.timeout)

    def handler(self, ws: ServerConnection) -> None:
        """The connection handler: runs one client until it disconnects (in its thread)."""
        admitted = self.run(self._admitted(ws))
        if isinstance(admitted, HandshakeRejected):
            ws.close(*policy_violation(admitted))
            return
        handshake, user = admitted
        with self._handlers:
            self._running += 1
            self._watch_capacity()
        try:
            conn: Connection = self.run(self.manager.accept(self._transport(ws), handshake, user))
            try:
                while not conn.closed:
                    try:
                        frame = ws.recv()
                    except (ConnectionClosed, OSError):
                        break
                    self.run(self.manager.receive(conn, frame))
                else:
                    _drain(ws, self.manager.limits.close_timeout + 1.0)
            finally:
                self.run(self.manager.release(conn))
        finally:
            with self._handlers:
                self._running -= 1
                self._handlers.notify_all()

    def _watch_capacity(self) -> None:
        # Past the limit, websockets drops new clients without a word: say it before.
        if self.capacity is None:
            return
        if not self._near_capacity and self._running >= 0.9 * self.capacity:
            self._near_capacity = True
            logger.warning(
                "%d clients connected: close to the about %d this threading server can hold "
                "under its open-file limit (ulimit -n %d); beyond it new clients are refused",
                self._running,
                self.capacity,
                _soft_file_limit() or 0,
            )
        elif self._near_capacity and self._running < 0.8 * self.capacity:
            self._near_capacity = False

    def _transport(self, ws: ServerConnection) -> Transport:
        if self._shared is None:
            return SyncTransport(ws, self.loop, binary=self.manager.protocol.binary)
        return fastpath.FramingSyncTransport(ws, self._shared)

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
            # websockets' shutdown() waits for serve_forever() to stop accepting. It never
            # ran: run it on the closed listening socket, which makes it return at once.
            self.server.socket.close()
            self.server.serve_forever()
        self.server.shutdown()


@contextmanager
def serve(
    manager: ConnectionManager,
    host: str | None = None,
    port: int | None = None,
    *,
    process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
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


def admin_view(
    manager: ConnectionManager,
    authorize: Authorize,
    *,
    path: str = ADMIN_PATH,
    timeout: float = 10.0,
    **options: Any,
) -> ProcessRequest:
    """A ``process_request`` serving the admin view (:mod:`wsroom.admin`) of ``manager``
    under ``path`` and letting every other request through::

        serve(manager, host, port, process_request=admin_view(manager, is_operator))

    The check and the snapshot run on the manager's event loop; the server's thread waits
    for them (a 503 after ``timeout`` seconds, or while the manager runs on no loop).

    Args:
        manager: The manager to show.
        authorize: The application's check of each request for the page or a snapshot
            (:data:`wsroom.admin.Authorize`), ``def`` or ``async def``; ``True`` lets it
            in, anything else is a 403.
        path: Where the view lives.
        timeout: Seconds a request may wait for the manager's loop.
        options: The sizes of the lists and the snapshot's reuse interval, as
            :class:`~wsroom.admin.AdminView` takes them.
    """
    view = AdminView(manager, authorize, path=path, **options)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if not view.handles(request.path.partition("?")[0]):
            return None
        loop = manager.loop
        if loop is None or loop.is_closed():
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
        # Recent websockets parse other methods than GET (HEAD, POST); older ones refuse them.
        answering = asyncio.run_coroutine_threadsafe(
            view.respond(handshake_of(connection, request), getattr(request, "method", "GET")), loop
        )
        try:
            answer = answering.result(timeout)
        except TimeoutError:
            answering.cancel()
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
        return admin_response(answer) if answer is not None else None

    return process_request


def _drain(ws: ServerConnection, timeout: float) -> None:
    """Read and drop what a client the server is closing still sends, so that its close
    frame, behind those frames, is seen now rather than at the close deadline (see
    ``ConnectionManager._drain``)."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
        while (left := deadline - time.monotonic()) > 0:
            ws.recv(timeout=left)


FDS_PER_CLIENT = 4
"""File descriptors one client of a ``websockets.sync`` server takes: its socket, and the
socket pair and selector its connection uses to wait for data or a shutdown."""
THREADS_PER_CLIENT = 3
"""Threads one client of a ``websockets.sync`` server takes: the handler, the receiver and
the keepalive pinger."""
_FEW_CLIENTS = 1000


def _soft_file_limit() -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def client_capacity() -> int | None:
    """About how many clients a threading server in this process can still hold under the
    open-file limit; ``None`` without a limit."""
    limit = _soft_file_limit()
    if limit is None:
        return None
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:  # pragma: no cover - not on Linux
        in_use = 32
    return max(0, (limit - in_use - 8) // FDS_PER_CLIENT)
