"""Hostile and measuring peers for the reliability suite, and servers with transport options.

Everything here talks to real servers over real loopback sockets:

* :class:`RawClient`: a WebSocket client written by hand on a plain TCP socket, so a test
  decides exactly what goes on the wire and when: a hand-made upgrade request, masked
  frames (whole or fragmented), byte-precise reads, a reset (``SO_LINGER`` 0) in the middle
  of a send or of a receive.
* :func:`open_non_reader`: the "non-reader" of the test plan: ``SO_RCVBUF`` = 4096, reads
  only the 101 response, then never reads again.
* :class:`SlowReader`: a client that keeps reading, at a fixed byte rate.
* :class:`Dripper`: sends an upgrade request one header line at a time.
* :class:`Proxy`: a userspace TCP proxy that adds a one-way delay and can freeze (stop
  forwarding both ways without closing), which is what a peer that vanished looks like.
* :class:`Swarm`: many measuring clients in a process of their own (so that they neither
  share the server's CPU core nor count in its memory), reporting loss, duplicates, order
  violations and latency percentiles.
* Server probes: :func:`server_has_socket` (is the server's side of a connection still an
  open file descriptor), :func:`pin_send_buffer` (a small ``SO_SNDBUF`` on the server's
  side, so a slow reader's backlog reaches wsroom's queue in seconds), :class:`LoopLag`
  (the event loop's lateness) and :class:`ErrorWatch` (every ERROR log record, every
  exception the event loop's handler sees and every exception a thread dies of).
* :data:`SERVERS`: each adapter's server with the transport's own options (keepalive
  pings, ``close_timeout``, uvicorn's ``ws`` implementation...), which
  ``tests.helpers.ADAPTERS`` do not take, and :func:`nodes` (one server, or two asyncio
  nodes sharing rooms through Redis).

Run as ``python -m tests.reliability.peers swarm ...`` it is the swarm's child process.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tests.helpers import (
    aiohttp_server,
    asgi_server,
    starlette_server,
    websockets_asyncio_server,
    websockets_sync_server,
)

if TYPE_CHECKING:
    from wsroom import ConnectionManager, Limits

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_TEXT",
    "SERVERS",
    "Dripper",
    "ErrorWatch",
    "Frame",
    "FrameParser",
    "LoopLag",
    "Nodes",
    "Proxy",
    "RawClient",
    "SlowReader",
    "Swarm",
    "asyncio_server",
    "client_frame",
    "keepalive_options",
    "nodes",
    "open_non_reader",
    "percentile",
    "pin_send_buffer",
    "server_has_socket",
    "sync_server",
    "uvicorn_server",
]

ROOT = Path(__file__).resolve().parents[2]

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


# Frames, by hand (RFC 6455, section 5.2).


class Frame(NamedTuple):
    """One WebSocket frame as read off the wire."""

    fin: bool
    opcode: int
    payload: bytes

    def json(self) -> Any:
        """The payload of a text frame, decoded."""
        return json.loads(self.payload)

    @property
    def close_code(self) -> int | None:
        """The code of a close frame (``None`` for a close frame without one)."""
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code


def client_frame(payload: bytes, opcode: int = OP_TEXT, *, fin: bool = True) -> bytes:
    """A masked frame, as a client must send it."""
    mask = os.urandom(4)
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    return header + mask + _xor(payload, mask)


def _xor(payload: bytes, mask: bytes) -> bytes:
    """``payload`` masked (or unmasked) with ``mask``, all at once: byte by byte is too
    slow for megabytes."""
    length = len(payload)
    if not length:
        return b""
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")


class FrameParser:
    """Splits a byte stream into frames (masked or not)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes read from the socket; return the frames they completed."""
        self._buffer += data
        frames: list[Frame] = []
        while (parsed := self._next()) is not None:
            frames.append(parsed)
        return frames

    @property
    def pending(self) -> int:
        """Bytes held that do not make a whole frame yet."""
        return len(self._buffer)

    def _next(self) -> Frame | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        length = second & 0x7F
        offset = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length = struct.unpack_from("!H", buf, 2)[0]
            offset = 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length = struct.unpack_from("!Q", buf, 2)[0]
            offset = 10
        mask = b""
        if second & 0x80:
            if len(buf) < offset + 4:
                return None
            mask = bytes(buf[offset : offset + 4])
            offset += 4
        if len(buf) < offset + length:
            return None
        payload = bytes(buf[offset : offset + length])
        del buf[: offset + length]
        if mask:
            payload = _xor(payload, mask)
        return Frame(bool(first & 0x80), first & 0x0F, payload)


def address_of(url: str) -> tuple[str, int]:
    """The host and port of a ``ws://host:port`` URL."""
    host, _, port = url.removeprefix("ws://").partition("/")[0].rpartition(":")
    return host, int(port)


def upgrade_request(
    host: str, port: int, path: str = "/ws", subprotocols: Sequence[str] = ("wsroom.v1",)
) -> list[bytes]:
    """A hand-made upgrade request, one header line per item (the last is the blank line)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1\r\n",
        f"Host: {host}:{port}\r\n",
        "Upgrade: websocket\r\n",
        "Connection: Upgrade\r\n",
        f"Sec-WebSocket-Key: {key}\r\n",
        "Sec-WebSocket-Version: 13\r\n",
    ]
    if subprotocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}\r\n")
    lines.append("\r\n")
    return [line.encode() for line in lines]


# Raw clients.


class RawClient:
    """A WebSocket client on a plain non-blocking TCP socket, driven byte by byte.

    It never reads unless told to: a test that calls no read method has a peer that stopped
    reading. All I/O goes through the running event loop (``loop.sock_*``), so it never
    blocks the server when both share a loop.
    """

    def __init__(self, sock: socket.socket, response: bytes, leftover: bytes) -> None:
        self.sock = sock
        self.response = response
        """The HTTP response to the upgrade request, headers only."""
        self.parser = FrameParser()
        self._frames: list[Frame] = self.parser.feed(leftover)
        self._message: list[Frame] = []

    @classmethod
    async def connect(
        cls,
        url: str,
        path: str = "/ws",
        *,
        rcvbuf: int | None = None,
        subprotocols: Sequence[str] = ("wsroom.v1",),
        timeout: float = 5.0,
    ) -> RawClient:
        """Connect, send the upgrade request, read the response (and nothing after it).

        Args:
            rcvbuf: ``SO_RCVBUF`` set before connecting (the kernel doubles it).
        """
        host, port = address_of(url)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (host, port))
                await loop.sock_sendall(
                    sock, b"".join(upgrade_request(host, port, path, subprotocols))
                )
                data = b""
                while b"\r\n\r\n" not in data:
                    # Byte by byte would be exact but slow; a short read may take the start of
                    # the first frame too, which the parser keeps.
                    chunk = await loop.sock_recv(sock, 1024)
                    if not chunk:
                        raise ConnectionError(f"closed during the handshake: {data!r}")
                    data += chunk
        except BaseException:
            sock.close()
            raise
        response, _, leftover = data.partition(b"\r\n\r\n")
        if not response.startswith(b"HTTP/1.1 101"):
            sock.close()
            raise ConnectionError(f"upgrade refused: {response[:200]!r}")
        return cls(sock, response, leftover)

    @property
    def local_port(self) -> int:
        """This side's port: how the server names the connection."""
        port: int = self.sock.getsockname()[1]
        return port

    async def send_raw(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send_json(self, obj: Any, *, fin: bool = True, opcode: int = OP_TEXT) -> None:
        await self.send_raw(client_frame(json.dumps(obj).encode(), opcode, fin=fin))

    async def join(self, room: str, ref: int | str | None = None) -> None:
        """Send a ``join`` (its answer is not read)."""
        frame: dict[str, Any] = {"type": "join", "room": room}
        if ref is not None:
            frame["ref"] = ref
        await self.send_json(frame)

    async def read_some(self, limit: int = 65536) -> int:
        """One ``recv``: the number of bytes read (0 at EOF). Frames go to the parser."""
        data = await asyncio.get_running_loop().sock_recv(self.sock, limit)
        self._frames.extend(self.parser.feed(data))
        return len(data)

    async def read_bytes(self, count: int, timeout: float = 5.0) -> int:
        """Read at least ``count`` bytes (less at EOF); how many were read."""
        total = 0
        async with asyncio.timeout(timeout):
            while total < count:
                got = await self.read_some(min(65536, count - total))
                if not got:
                    break
                total += got
        return total

    async def recv_frame(self, timeout: float = 5.0) -> Frame:
        """The next frame (control frames included). Raises ``EOFError`` at EOF."""
        async with asyncio.timeout(timeout):
            while not self._frames:
                if not await self.read_some():
                    raise EOFError("the server closed the connection")
        return self._frames.pop(0)

    async def recv_json(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next data message, decoded (fragments reassembled, pings skipped).

        Raises ``EOFError`` on a close frame or at EOF.
        """
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv_frame(timeout=float("inf"))
                if frame.opcode == OP_CLOSE:
                    raise EOFError(f"close frame {frame.close_code}")
                if frame.opcode in (OP_PING, OP_PONG):
                    continue
                self._message.append(frame)
                if frame.fin:
                    payload = b"".join(part.payload for part in self._message)
                    self._message.clear()
                    decoded: dict[str, Any] = json.loads(payload)
                    return decoded

    async def recv_until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Skip messages until one matches ``predicate``; return it."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.recv_json(timeout=float("inf"))
                if predicate(message):
                    return message

    async def wait_cut(self, timeout: float = 5.0) -> str:
        """Read until the server ends the connection: ``"reset"``, ``"eof"`` or
        ``"close <code>"`` (a close frame read); ``"open"`` if still open at ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    frame = await self.recv_frame(timeout=float("inf"))
                    if frame.opcode == OP_CLOSE:
                        return f"close {frame.close_code}"
        except EOFError:
            return "eof"
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except TimeoutError:
            return "open"

    def reset(self) -> None:
        """Close with a TCP reset (``SO_LINGER`` 0): what a killed process or a dropped
        phone connection with unread data looks like to the server."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        """Close the socket (a FIN, or a reset if unread data is left)."""
        self.sock.close()


async def open_non_reader(
    url: str, rooms: Iterable[str] = (), path: str = "/ws", *, rcvbuf: int = 4096
) -> RawClient:
    """The test plan's non-reader: ``SO_RCVBUF`` = 4096, a hand-made upgrade request, the
    101 response read, then ``join`` sent for each room and nothing ever read again."""
    client = await RawClient.connect(url, path, rcvbuf=rcvbuf)
    for index, room in enumerate(rooms):
        await client.join(room, ref=f"nr{index}")
    return client


class SlowReader:
    """A client that keeps reading, but only ``rate`` bytes per second.

    It reads ``chunk`` bytes at a time with a pause between reads, on a socket whose
    receive buffer is small, so the server's writes back up behind it. Every ``message``
    frame it reads is kept in :attr:`messages` (room and id).
    """

    def __init__(self, client: RawClient, rate: float, chunk: int = 1024) -> None:
        self.client = client
        self.rate = rate
        self.chunk = chunk
        self.messages: list[tuple[str, int]] = []
        self.close_code: int | None = None
        self.ended: str | None = None
        """How the connection ended, once it did (see :meth:`RawClient.wait_cut`)."""
        self._fast = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pending: list[Frame] = []

    @classmethod
    async def connect(
        cls, url: str, rooms: Iterable[str], rate: float, *, chunk: int = 1024, rcvbuf: int = 4096
    ) -> SlowReader:
        client = await RawClient.connect(url, rcvbuf=rcvbuf)
        for index, room in enumerate(rooms):
            await client.join(room, ref=f"slow{index}")
        reader = cls(client, rate, chunk)
        return reader

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def full_speed(self) -> None:
        """Read as fast as possible from now on (to drain what is left)."""
        self._fast.set()

    async def _run(self) -> None:
        client = self.client
        pause = self.chunk / self.rate
        try:
            while True:
                size = self.chunk if not self._fast.is_set() else 65536
                if not await client.read_some(size):
                    self.ended = "eof"
                    return
                for frame in client._frames:
                    self._take(frame)
                client._frames.clear()
                if self.close_code is not None:
                    self.ended = f"close {self.close_code}"
                    return
                if not self._fast.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(pause):
                            await self._fast.wait()
        except (ConnectionResetError, BrokenPipeError):
            self.ended = "reset"

    def _take(self, frame: Frame) -> None:
        if frame.opcode == OP_CLOSE:
            self.close_code = frame.close_code
            return
        if frame.opcode not in (OP_TEXT, OP_BINARY, OP_CONTINUATION):
            return
        self._pending.append(frame)
        if not frame.fin:
            return
        payload = b"".join(part.payload for part in self._pending)
        self._pending.clear()
        message = json.loads(payload)
        if message.get("type") == "message":
            self.messages.append((message["room"], message["id"]))

    async def wait_ended(self, timeout: float) -> str | None:
        """Wait until the connection ended; how it ended (``None``: still open)."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
        return self.ended

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.client.close()


@dataclass
class Dripper:
    """Sends an upgrade request one header line every ``interval`` seconds (a slowloris).

    :meth:`run` returns once the server answers or closes, or once every line was sent;
    :attr:`answer` is what the server sent (``b""`` if it closed without a word) and
    :attr:`lines_sent` how many lines it took.
    """

    url: str
    interval: float = 2.0
    path: str = "/ws"
    answer: bytes | None = None
    lines_sent: int = 0
    elapsed: float = 0.0
    ended: str = ""

    async def run(self, timeout: float = 30.0) -> None:
        host, port = address_of(self.url)
        reader, writer = await asyncio.open_connection(host, port)
        started = time.monotonic()
        lines = upgrade_request(host, port, self.path)
        try:
            async with asyncio.timeout(timeout):
                for line in lines:
                    writer.write(line)
                    await writer.drain()
                    self.lines_sent += 1
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.interval):
                            self.answer = await reader.read(4096)
                            self.ended = "answered" if self.answer else "closed"
                            return
                self.answer = await reader.read(4096)
                self.ended = "answered"
        except (ConnectionResetError, BrokenPipeError):
            self.ended = "reset"
        except TimeoutError:
            self.ended = "timeout"
        finally:
            self.elapsed = time.monotonic() - started
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# A proxy that delays and freezes.


class _Link:
    """One proxied connection: two directions, each a reader and a delayed writer."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.tasks: list[asyncio.Task[None]] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def run(self, client: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        proxy = self.proxy
        c_reader, c_writer = client
        try:
            s_reader, s_writer = await asyncio.open_connection(proxy.target_host, proxy.target_port)
        except OSError:
            c_writer.close()
            return
        self.writers = [c_writer, s_writer]
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._direction(c_reader, s_writer)),
            loop.create_task(self._direction(s_reader, c_writer)),
        ]
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            writer.close()

    async def _direction(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        flowing = self.proxy._flowing
        delay = self.proxy.delay
        # Bounded: a frozen or slow destination stops this direction's reads, as a real
        # network path's window would.
        pipe: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            try:
                while True:
                    await flowing.wait()
                    data = await src.read(65536)
                    await pipe.put((loop.time() + delay, data))
                    if not data:
                        return
            except OSError:
                await pipe.put((loop.time(), b""))

        reading = loop.create_task(read())
        try:
            while True:
                due, data = await pipe.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await flowing.wait()
                if not data:
                    if dst.can_write_eof():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    return
                dst.write(data)
                await dst.drain()
        except OSError:
            dst.close()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading


class Proxy:
    """A userspace TCP proxy on 127.0.0.1 in front of ``target_port``.

    Each chunk is forwarded ``delay`` seconds after it was read, in order, in both
    directions (a round trip then takes ``2 * delay`` more). :meth:`freeze` stops
    forwarding in both directions without closing anything: to both ends the peer has
    vanished, as when a phone leaves coverage. :meth:`thaw` resumes.
    """

    def __init__(self, target_port: int, *, delay: float = 0.0, target_host: str = "127.0.0.1"):
        self.target_host = target_host
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self.frozen_at: float | None = None
        """``time.monotonic()`` of the last :meth:`freeze`."""
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()
        self._all_links: list[_Link] = []

    @classmethod
    async def to(cls, url: str, *, delay: float = 0.0) -> Proxy:
        """Start a proxy in front of a ``ws://`` URL."""
        host, port = address_of(url)
        proxy = cls(port, delay=delay, target_host=host)
        await proxy.start()
        return proxy

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(self)
        self._all_links.append(link)
        await link.run((reader, writer))

    def freeze(self) -> None:
        self.frozen_at = time.monotonic()
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [task for link in self._all_links for task in link.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in self._all_links:
            for writer in link.writers:
                writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Proxy:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# Measuring clients in a process of their own.


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) of ``values``, nearest rank; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values, default=0.0),
    }


class Swarm:
    """``clients`` measuring clients in a child process, joined to ``room``.

    The server publishes messages whose ``data`` is ``{"seq": n, "t": time.time_ns(),
    "phase": name, ...}``, ``seq`` counting from 1 without a hole. Each client records the
    latency of each message (by phase), and the sequence numbers it missed, got twice or
    got out of order. Clients connect to ``urls`` in turn (several nodes).

    Use as ``async with Swarm(urls, clients, room) as swarm:``, then
    ``await swarm.collect(last_seq)`` for the results.
    """

    def __init__(self, urls: Sequence[str], clients: int, room: str, path: str = "/ws") -> None:
        self.urls = list(urls)
        self.clients = clients
        self.room = room
        self.path = path
        self.process: asyncio.subprocess.Process | None = None
        self.connection_ids: list[str] = []

    async def __aenter__(self) -> Swarm:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.reliability.peers",
            "swarm",
            ",".join(self.urls),
            str(self.clients),
            self.room,
            self.path,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        ready = await self._line(30.0)
        self.connection_ids = ready["ids"]
        return self

    async def _line(self, timeout: float) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("the swarm process ended early")
        decoded: dict[str, Any] = json.loads(line)
        return decoded

    async def collect(
        self, last_seq: int, timeout: float = 30.0, *, until_closed: bool = False
    ) -> dict[str, Any]:
        """Wait until every open client has seen ``last_seq`` (or ``timeout``); the results:
        ``lost``, ``duplicates``, ``order_violations`` (totals over every client, closed or
        not: a closed client lost what it did not get before), ``closed`` (clients the
        server closed, with their codes), ``latency_ms`` (by phase: n, p50, p95, p99, max),
        ``loop_lag_ms`` (how late the swarm's own event loop ran at worst since the last
        collect: the machine's share of a latency spike). With ``until_closed``, wait
        instead until the server closed every client (or ``timeout``)."""
        assert self.process is not None and self.process.stdin is not None
        mode = "closed" if until_closed else "seen"
        self.process.stdin.write(f"collect {last_seq} {timeout} {mode}\n".encode())
        await self.process.stdin.drain()
        return await self._line(timeout + 30.0)

    async def __aexit__(self, *exc_info: object) -> None:
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(OSError):
                assert process.stdin is not None
                process.stdin.write(b"exit\n")
                await process.stdin.drain()
            try:
                await asyncio.wait_for(process.wait(), 10.0)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _swarm_main(urls: list[str], count: int, room: str, path: str) -> None:
    import websockets
    from websockets.typing import Subprotocol

    class Member:
        def __init__(self, ws: Any) -> None:
            self.ws = ws
            self.seen: set[int] = set()
            self.last = 0
            self.duplicates = 0
            self.disorder = 0
            self.close_code: int | None = None

    latencies: dict[str, list[float]] = {}
    progress = asyncio.Condition()

    async def open_member(index: int) -> tuple[Member, str]:
        url = urls[index % len(urls)]
        ws = await websockets.connect(
            url + path, subprotocols=[Subprotocol("wsroom.v1")], compression=None, max_size=None,
            open_timeout=20, ping_interval=None,
        )  # fmt: skip
        member = Member(ws)
        welcome = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "join", "room": room, "ref": "j"}))
        while json.loads(await ws.recv()).get("type") != "joined":
            pass
        return member, str(welcome["connection"])

    async def read(member: Member) -> None:
        try:
            async for raw in member.ws:
                now = time.time_ns()
                frame = json.loads(raw)
                if frame.get("type") != "message" or frame.get("room") != room:
                    continue
                data = frame["data"]
                seq = data["seq"]
                latencies.setdefault(data.get("phase", ""), []).append((now - data["t"]) / 1e6)
                if seq in member.seen:
                    member.duplicates += 1
                elif seq < member.last:
                    member.disorder += 1
                member.seen.add(seq)
                member.last = max(member.last, seq)
                async with progress:
                    progress.notify_all()
        except websockets.ConnectionClosed:
            pass
        rcvd = member.ws.close_code
        member.close_code = rcvd if rcvd is not None else 1006
        async with progress:
            progress.notify_all()

    worst_lag = [0.0]

    async def tick() -> None:
        # This process's own lateness: a latency spike it explains is the machine's.
        while True:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            worst_lag[0] = max(worst_lag[0], (loop.time() - due) * 1000)

    loop = asyncio.get_running_loop()
    ticker = asyncio.create_task(tick())
    opened: list[Any] = []
    for start in range(0, count, 50):  # not all at once: the accept backlog
        opened += await asyncio.gather(
            *(open_member(i) for i in range(start, min(count, start + 50)))
        )
    members = [member for member, _ in opened]
    readers = [asyncio.create_task(read(member)) for member in members]
    print(json.dumps({"ready": True, "ids": [cid for _, cid in opened]}), flush=True)

    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := (await stdin.readline()).decode().split():
        if line[0] == "exit":
            break
        last, timeout, until_closed = int(line[1]), float(line[2]), line[3] == "closed"

        def done(last: int = last, until_closed: bool = until_closed) -> bool:
            if until_closed:
                return all(m.close_code is not None for m in members)
            return all(m.last >= last or m.close_code is not None for m in members)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), progress:
                await progress.wait_for(done)
        expected = set(range(1, last + 1))
        result = {
            "clients": len(members),
            "lost": sum(len(expected - m.seen) for m in members),
            "duplicates": sum(m.duplicates for m in members),
            "order_violations": sum(m.disorder for m in members),
            "closed": [m.close_code for m in members if m.close_code is not None],
            "latency_ms": {phase: _summary(values) for phase, values in latencies.items()},
            "loop_lag_ms": worst_lag[0],
        }
        latencies.clear()
        worst_lag[0] = 0.0
        print(json.dumps(result), flush=True)
    for member in members:
        await member.ws.close()
    for task in [*readers, ticker]:
        task.cancel()


# Probes.


def server_has_socket(server_port: int, client_port: int) -> bool:
    """Whether this process still holds the server side of the TCP connection from
    ``client_port`` to ``server_port`` (an open file descriptor, whatever its state)."""
    import psutil

    for conn in psutil.Process().net_connections("tcp"):
        local, remote = tuple(conn.laddr), tuple(conn.raddr)
        if len(remote) == 2 and local[1] == server_port and remote[1] == client_port:
            return True
    return False


def pin_send_buffer(server_port: int, client_port: int, size: int) -> int:
    """Pin ``SO_SNDBUF`` of this process's server side of the connection from
    ``client_port`` (the kernel doubles it and stops autotuning it); the value now set.

    On loopback the kernel grows a socket's send buffer to ``tcp_wmem``'s maximum (4 MiB
    here), which a slow reader takes minutes to fill at a few KiB/s: pinning it small brings
    a test to the regime where the server's own queue fills, in seconds.
    """
    import psutil

    for conn in psutil.Process().net_connections("tcp"):
        local, remote = tuple(conn.laddr), tuple(conn.raddr)
        if len(remote) == 2 and local[1] == server_port and remote[1] == client_port:
            sock = socket.socket(fileno=os.dup(conn.fd))
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
                value: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
                return value
            finally:
                sock.close()
    raise LookupError(f"no server socket from port {client_port} to {server_port}")


class LoopLag:
    """The event loop's lateness: a 10 ms ticker records how late each tick fires.

    Use as ``async with LoopLag() as lag:``; :attr:`worst` and :meth:`p99` in ms. A server
    stalled by the machine (other processes on the same cores) shows here, which tells a
    latency spike of the machine from one of the code under test.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.lateness: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.lateness.append(max(0.0, (loop.time() - due) * 1000))

    @property
    def worst(self) -> float:
        return max(self.lateness, default=0.0)

    def p99(self) -> float:
        return percentile(self.lateness, 99)

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class ErrorWatch:
    """Everything that went wrong without raising into the test: ERROR log records (any
    logger), what the event loop's exception handler got, what threads died of.

    Use as a context manager on the running loop; :attr:`records` and :attr:`loop_errors`
    are what it caught, :meth:`unexpected` what is left once expected messages are
    filtered out.
    """

    records: list[logging.LogRecord] = field(default_factory=list)
    loop_errors: list[dict[str, Any]] = field(default_factory=list)
    thread_errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        watch = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                watch.records.append(record)

        self._handler = _Handler(logging.ERROR)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous_handler: Any = None
        self._previous_hook: Any = None

    def __enter__(self) -> ErrorWatch:
        logging.getLogger().addHandler(self._handler)
        self._loop = asyncio.get_running_loop()
        self._previous_handler = self._loop.get_exception_handler()
        self._loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self._previous_hook = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            self.thread_errors.append(f"{args.exc_type.__name__}: {args.exc_value}")

        threading.excepthook = hook
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger().removeHandler(self._handler)
        if self._loop is not None:
            self._loop.set_exception_handler(self._previous_handler)
        threading.excepthook = self._previous_hook

    def unexpected(self, *expected: str) -> list[str]:
        """What was caught, as text, except log records whose message contains one of
        ``expected``."""
        found = [
            f"{r.name} {r.levelname}: {r.getMessage()}"
            for r in self.records
            if not any(text in r.getMessage() for text in expected)
        ]
        found += [
            f"loop: {context.get('message')} {context.get('exception')!r}"
            for context in self.loop_errors
        ]
        found += [f"thread: {error}" for error in self.thread_errors]
        return found


# The servers of tests/helpers.py, which take the transport's own options.
asyncio_server = websockets_asyncio_server
sync_server = websockets_sync_server
uvicorn_server = starlette_server


@dataclass
class Nodes:
    """The server(s) under test: the node a test's special client connects to (and whose
    state it checks), its URL, the URLs clients spread over, the manager that publishes,
    and the Redis (URL and key prefix) the nodes share, if any."""

    manager: ConnectionManager
    url: str
    urls: list[str]
    publisher: ConnectionManager
    redis_url: str | None = None
    prefix: str | None = None


@asynccontextmanager
async def nodes(adapter: str, limits: Limits) -> AsyncIterator[Nodes]:
    """One server of ``adapter`` with a manager of these ``limits``, or, for
    ``websockets+redis``, two asyncio nodes sharing rooms through the shared Redis (under
    a fresh key prefix, deleted after): the publisher on the second, the node under test
    first."""
    from wsroom import ConnectionManager

    manager = ConnectionManager(limits=limits)
    if adapter != "websockets+redis":
        async with SERVERS[adapter](manager) as url:
            yield Nodes(manager, url, [url], manager)
        return
    import pytest

    from tests.redis_support import delete_prefix, fresh_prefix, shared_redis_url
    from wsroom.backplane.redis import RedisBackplane

    redis_url = shared_redis_url()
    if redis_url is None:
        pytest.skip("no Redis server (scripts/test.sh starts one)")
    prefix = fresh_prefix()
    manager = ConnectionManager(limits=limits, backplane=RedisBackplane(redis_url, prefix=prefix))
    other = ConnectionManager(limits=limits, backplane=RedisBackplane(redis_url, prefix=prefix))
    try:
        async with SERVERS["websockets"](manager) as url_a, SERVERS["websockets"](other) as url_b:
            yield Nodes(manager, url_a, [url_a, url_b], other, redis_url, prefix)
    finally:
        await delete_prefix(redis_url, prefix)


OptionsServerFactory = Callable[..., AbstractAsyncContextManager[str]]


def aiohttp_peer_server(
    manager: ConnectionManager, *, close_timeout: float | None = None, **options: Any
) -> AbstractAsyncContextManager[str]:
    """The aiohttp adapter's server; ``options`` go to its ``setup()``. Its close handshake
    waits ``manager.limits.close_timeout``, which takes the place of ``close_timeout``."""
    return aiohttp_server(manager, **options)


SERVERS: dict[str, OptionsServerFactory] = {
    "websockets": asyncio_server,
    "websockets_sync": sync_server,
    "starlette": uvicorn_server,
    "asgi": asgi_server,
    "aiohttp": aiohttp_peer_server,
}
"""Each adapter's server, by the names of ``tests.helpers.ADAPTERS``, taking options."""

UNDER_UVICORN = frozenset({"starlette", "asgi"})
"""The adapters whose servers are uvicorn, which takes uvicorn's options."""


def keepalive_options(
    adapter: str, interval: float | None, timeout: float | None
) -> dict[str, Any]:
    """The server options that set the transport's keepalive pings for ``adapter``."""
    if adapter in UNDER_UVICORN:
        return {"ws_ping_interval": interval, "ws_ping_timeout": timeout}
    if adapter == "aiohttp":
        # aiohttp's heartbeat pings every interval and gives up after half of it.
        return {"heartbeat": interval}
    return {"ping_interval": interval, "ping_timeout": timeout}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.peers")
    commands = parser.add_subparsers(dest="command", required=True)
    swarm = commands.add_parser("swarm", help="measuring clients; driven on stdin")
    swarm.add_argument("urls")
    swarm.add_argument("clients", type=int)
    swarm.add_argument("room")
    swarm.add_argument("path")
    arguments = parser.parse_args()
    asyncio.run(
        _swarm_main(arguments.urls.split(","), arguments.clients, arguments.room, arguments.path)
    )
