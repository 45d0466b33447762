"""The websockets fast path: every use of websockets internals, checked once at import.

A broadcast to uncompressed connections is the same frame for every member: the payload
behind a two-to-ten-byte header, unmasked. ``websockets`` has no public API that writes one
frame to many connections without framing it again for each (``Frame`` objects, checks,
``struct`` packing: 73% of the server's CPU in a 1,000-member fan-out) and without a
blocking or awaited write per connection. So the two transports of this module frame each
message once (:class:`SharedFrames`) and write it straight into the connection's asyncio
transport or socket, which took the server's CPU from 0.98 to 0.24 µs per delivery
(docs/benchmarks.md). They rely on these undocumented parts of ``websockets``:

* ``Protocol.extensions``, ``expect_continuation_frame`` and ``debug``: whether a
  connection may take the shared frame (no compression, no fragmented message under way,
  no frame logging);
* ``Protocol.send_text()``, ``send_binary()`` and ``data_to_send()`` returning a list of
  byte chunks: framing by the connection itself when it may not, and whatever the
  protocol has queued (a pong, a close frame) leaving first;
* the header of an unmasked server frame (RFC 6455, section 5.2), built here;
* asyncio ``ServerConnection.transport`` (written to and aborted), ``paused`` and
  ``drain()`` (flow control);
* sync ``ServerConnection.protocol_mutex`` (held while writing) and ``socket`` (written
  without blocking, shut down to cut a client that stopped reading).

:data:`ENABLED` says, once per process, whether the installed ``websockets`` has each of
them with the shape used here; :data:`REASON` says why not. It is also off when the
environment variable ``WSROOM_WEBSOCKETS_FASTPATH`` is ``0`` at import. When it is off, the
adapters write through the public ``send()`` of ``websockets`` instead
(``WebsocketsTransport``, ``SyncTransport``), with the same bounded queues, eviction and
graceful close. wsroom never handshakes, compresses, masks, parses or pings: those stay
with ``websockets``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import struct
from abc import abstractmethod
from collections.abc import Sequence

from websockets.asyncio.server import ServerConnection
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.sync.server import ServerConnection as SyncServerConnection

from ..connection import Connection, Transport
from ._websockets_common import reset_on_close, shut_down

__all__ = [
    "ENABLED",
    "ENVIRONMENT_VARIABLE",
    "REASON",
    "FramingSyncTransport",
    "FramingTransport",
    "SharedFrames",
]

logger = logging.getLogger("wsroom.transport")

ENVIRONMENT_VARIABLE = "WSROOM_WEBSOCKETS_FASTPATH"
"""Set it to ``0`` before wsroom is imported to write through ``websockets``' public API."""

_TEXT = 0x81  # FIN + text opcode
_BINARY = 0x82  # FIN + binary opcode


def frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, unfragmented frame without extension bits: what a server sends."""
    length = len(payload)
    if length < 126:
        header = bytes((opcode, length))
    elif length < 65536:
        header = struct.pack("!BBH", opcode, 126, length)
    else:
        header = struct.pack("!BBQ", opcode, 127, length)
    return header + payload


class SharedFrames:
    """Frames each outgoing message once for every connection that can take the same bytes.

    The frames built here are kept until the end of the event loop iteration, which is when
    the transports of every member of a room flush what one broadcast queued for them. The
    connection's own protocol object frames instead when anything could make the bytes
    differ or the frame unsafe to write directly: an extension (permessage-deflate
    compresses per connection), a fragmented message in progress, or frame logging switched
    on. Callers write only to open connections.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, binary: bool) -> None:
        self.loop = loop
        """The event loop whose iterations bound how long a frame is kept."""
        self._binary = binary
        self._opcode = _BINARY if binary else _TEXT
        self._frames: dict[bytes, bytes] = {}

    def data_to_send(
        self, protocol: Protocol, payloads: Sequence[bytes], *, shared: bool = True
    ) -> list[bytes]:
        """Frame ``payloads`` for ``protocol``'s connection; the chunks to write, in order,
        as ``protocol.data_to_send()`` gives them (an empty chunk asks for a half-close).

        ``shared=False`` frames payloads that are this connection's own (its batches, which
        no other connection sends): they are framed here without being kept."""
        if protocol.extensions or protocol.expect_continuation_frame or protocol.debug:
            send = protocol.send_binary if self._binary else protocol.send_text
            for payload in payloads:
                send(payload)
            return protocol.data_to_send()
        # Whatever the protocol has queued (nothing, normally) leaves first.
        chunks = protocol.data_to_send()
        if not payloads:
            return chunks
        if not shared:
            opcode = self._opcode
            chunks.append(b"".join([frame(opcode, payload) for payload in payloads]))
            return chunks
        frames = self._frames
        if not frames:
            self.loop.call_soon(frames.clear)
        framed = [frames.get(payload) or self._frame(payload) for payload in payloads]
        chunks.append(b"".join(framed) if len(framed) > 1 else framed[0])
        return chunks

    def _frame(self, payload: bytes) -> bytes:
        framed = self._frames[payload] = frame(self._opcode, payload)
        return framed


class _FramingWriter(Transport):
    """What both framing transports share: the frames queued during a loop iteration are
    written at its end, in one write, rather than one write per frame (as many small TCP
    segments, each waiting on the peer's delayed acknowledgements)."""

    def __init__(self, shared: SharedFrames) -> None:
        self._frames = shared
        self._loop = shared.loop
        self._scheduled = False

    def wake(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        conn = self.connection
        if conn is not None:
            self._write_queued(conn)

    @abstractmethod
    def _write_queued(self, conn: Connection) -> None:
        """Write the frames queued for ``conn``, unless a write is still under way: its end
        writes them."""


class FramingTransport(_FramingWriter):
    """Moves one connection's queued frames onto a ``websockets`` asyncio connection.

    Frames are written the way ``websockets.broadcast()`` writes them: straight into the
    connection's transport, without awaiting, all queued frames of a loop iteration in one
    go, each message framed once for all the connections that can take the same bytes. While
    the socket's write buffer is above its high-water mark, frames wait in the connection's
    bounded queue and one task waits for the buffer to drain; a client that keeps it full
    longer than ``Limits.write_timeout``, or overflows the queue, is evicted and its TCP
    connection aborted, since ``close()`` cannot complete on a peer that stopped reading.
    """

    def __init__(self, ws: ServerConnection, shared: SharedFrames) -> None:
        super().__init__(shared)
        self.ws = ws
        self._drain_task: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    def peer_close_code(self) -> int | None:
        """The close code the client sent (1006: none), once the connection is closed."""
        return self.ws.close_code

    def _write_queued(self, conn: Connection) -> None:
        if self._drain_task is not None:
            return
        frames = conn.take_outgoing()
        if not frames:
            return
        ws = self.ws
        if ws.protocol.state is not State.OPEN:
            self._end_closing()
            return
        try:
            if len(frames) > 1 and conn.batched:
                # A batch is this connection's own: framed for it alone.
                chunks = self._frames.data_to_send(ws.protocol, conn.pack(frames), shared=False)
            else:
                chunks = self._frames.data_to_send(ws.protocol, frames)
            if all(chunks):
                ws.transport.write(b"".join(chunks))
            else:
                # An empty chunk asks for a half-close (the protocol is closing): write
                # chunk by chunk, as websockets' own send_data() does.
                for chunk in chunks:
                    if chunk:
                        ws.transport.write(chunk)
                    elif ws.transport.can_write_eof():
                        ws.transport.write_eof()
                    else:
                        ws.transport.close()
        except Exception:
            # The transport is closing under us; the receive loop sees it and releases.
            logger.debug("write to %r failed", conn, exc_info=True)
            return
        if ws.paused:
            self._drain_task = self._loop.create_task(self._wait_writable(conn))

    def _end_closing(self) -> None:
        """The connection is closing (the peer sent a close frame, say): what is queued
        can no longer be sent. ``websockets`` aborts a closing handshake that outlasts its
        ``close_timeout`` only when a send or ``close()`` waits for it, and the frames
        written here bypass both: without this ``close()``, a peer that sends a close frame
        and never ends its TCP connection would keep it, and its rooms, as long as it likes.
        """
        if self._closer is None:
            self._closer = self._loop.create_task(self._close_quietly())

    async def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def _wait_writable(self, conn: Connection) -> None:
        try:
            async with asyncio.timeout(conn.manager.limits.write_timeout):
                await self.ws.drain()
        except TimeoutError:
            conn.manager.evict(conn, "client too slow: write timeout")
            return
        except Exception:
            return  # the connection is gone; the receive loop releases it
        finally:
            self._drain_task = None
        if conn.queued_frames:
            self._write_queued(conn)

    async def close(self, code: int, reason: str) -> None:
        drain = self._drain_task
        if drain is not None:
            await asyncio.shield(drain)
        self._flush()
        await self.ws.close(code, reason)

    def abort(self) -> None:
        transport = self.ws.transport
        if transport is not None:
            reset_on_close(transport.get_extra_info("socket"))
            transport.abort()


class FramingSyncTransport(_FramingWriter):
    """Moves one connection's queued frames onto a ``websockets.sync`` connection.

    Frames are written from the manager's event loop, as the asyncio transport writes them:
    all frames queued in a loop iteration are framed under the connection's lock (each
    message once for all the connections that can take the same bytes) and sent with one
    non-blocking ``send()``. Whatever the socket does not take at once is sent when it
    becomes writable, the lock held meanwhile so nothing interleaves. No thread waits on a
    slow client, and a client that stops reading holds at most its bounded queue: the queue
    overflowing, or the socket staying unwritable past ``Limits.write_timeout``, evicts it,
    and the socket is shut down, which unblocks the server's threads.
    """

    def __init__(self, ws: SyncServerConnection, shared: SharedFrames) -> None:
        super().__init__(shared)
        self.ws = ws
        # Everything below is only touched on the manager's loop.
        self._locked = False
        self._pending: memoryview | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._flushed = asyncio.Event()
        """Clear while a write waits for the mutex or for the socket."""
        self._flushed.set()
        self._fd = -1
        self._closer: asyncio.Future[None] | None = None

    def peer_close_code(self) -> int | None:
        """The close code the client sent (1006: none), once the connection is closed."""
        return self.ws.close_code

    def _write_queued(self, conn: Connection) -> None:
        if self._pending is not None:
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
            if frames:
                self._end_closing()
            return
        if len(frames) > 1 and conn.batched:
            chunks = self._frames.data_to_send(ws.protocol, conn.pack(frames), shared=False)
        else:
            chunks = self._frames.data_to_send(ws.protocol, frames)
        self._send(memoryview(b"".join(chunks)))

    def _end_closing(self) -> None:
        """The connection is closing: end it within ``websockets``' ``close_timeout``, as
        :meth:`FramingTransport._end_closing` does (``close()`` waits for the peer in a
        worker thread, then shuts the socket down)."""
        if self._closer is None:
            self._closer = self._loop.run_in_executor(None, self._close_quietly)

    def _close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()

    def _send(self, data: memoryview) -> None:
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
                self._write_queued(conn)
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
            self._send(data)

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
        # Send what is queued first, waiting for any write under way.
        while True:
            await self._flushed.wait()
            conn = self.connection
            if conn is None or not conn.queued_frames:
                break
            self._flushed.clear()
            self._write_queued(conn)
        # close() blocks until the peer answers; the manager aborts it past its deadline.
        await asyncio.to_thread(self.ws.close, code, reason)

    def abort(self) -> None:
        self._pending = None
        self._unlock()
        # The server's thread closes the socket once shut down: with a reset, not a FIN
        # queued behind data the client will never read.
        shut_down(self.ws.socket)


# The check, once per process.


def _assigned(cls: type, method: str) -> set[str]:
    """The attribute names ``method`` of ``cls`` and of its bases refer to."""
    names: set[str] = set()
    for klass in cls.__mro__:
        code = getattr(vars(klass).get(method), "__code__", None)
        if code is not None:
            names.update(code.co_names)
    return names


def _unusable() -> str | None:
    """Why the installed ``websockets`` cannot serve the fast path, or ``None``."""
    if os.environ.get(ENVIRONMENT_VARIABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{ENVIRONMENT_VARIABLE}={os.environ[ENVIRONMENT_VARIABLE]}"
    # A logger of its own, outside the logging tree: the probe frames must not be logged.
    protocol: Protocol = ServerProtocol(logger=logging.Logger("wsroom.fastpath-check"))
    for name in ("extensions", "expect_continuation_frame", "debug"):
        if not hasattr(protocol, name):
            return f"websockets' Protocol has no {name!r} attribute"
    for name in ("send_text", "send_binary", "data_to_send"):
        if not callable(getattr(protocol, name, None)):
            return f"websockets' Protocol has no {name}() method"
    protocol.state = State.OPEN
    for opcode, send in ((_TEXT, protocol.send_text), (_BINARY, protocol.send_binary)):
        for length in (0, 125, 126, 65535, 65536):
            payload = b"x" * length
            send(payload)
            chunks: object = protocol.data_to_send()  # a list is what SharedFrames extends
            if not isinstance(chunks, list) or b"".join(chunks) != frame(opcode, payload):
                return f"websockets frames a {length}-byte message differently"
    if not {"paused"} <= _assigned(ServerConnection, "__init__"):
        return "websockets' asyncio ServerConnection has no 'paused' attribute"
    if "transport" not in _assigned(ServerConnection, "connection_made"):
        return "websockets' asyncio ServerConnection has no 'transport' attribute"
    if not inspect.iscoroutinefunction(getattr(ServerConnection, "drain", None)):
        return "websockets' asyncio ServerConnection has no drain() coroutine"
    if not {"protocol_mutex", "socket"} <= _assigned(SyncServerConnection, "__init__"):
        return "websockets' sync ServerConnection has no 'protocol_mutex' or 'socket'"
    return None


try:
    REASON: str | None = _unusable()
except Exception as exc:  # any surprise in websockets' internals means: not usable
    REASON = f"checking websockets' internals failed: {exc!r}"
"""Why the fast path is off, or ``None`` when it is on."""

ENABLED = REASON is None
"""Whether the adapters frame and write themselves (else through ``websockets``' ``send()``)."""

if REASON is not None:
    logger.debug("websockets fast path off (%s): writing through websockets' send()", REASON)
