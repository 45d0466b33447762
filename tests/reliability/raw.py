"""Hand-built WebSocket peers for the hostile-input scenarios (E21-E28, F30-F33).

A real client library refuses to send what these scenarios need: a frame header that
declares 2^63 bytes, a message split into fragments past the server's limit, a text frame
that is not UTF-8, reserved bits and opcodes, a deflate bomb. :class:`RawWebSocket` speaks
the protocol over a plain asyncio stream and builds every frame by hand; permessage-deflate
is negotiated by hand too, and messages are compressed with :mod:`zlib`.

It also holds the probes these scenarios measure with: the peak RSS of this process
(:class:`PeakRss`) and every log record of the servers under test (:class:`LogCapture`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

from tests.helpers import TIMEOUT

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

DEFLATE_TAIL = b"\x00\x00\xff\xff"


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    masked: bool = True,
    length: int | None = None,
    mask_key: bytes | None = None,
) -> bytes:
    """One client frame, header and (masked) payload, exactly as asked.

    Args:
        length: The payload length the header declares, when it must differ from
            ``len(payload)`` (a header that announces 2^63 - 1 bytes and sends none).
        mask_key: The 4-byte masking key; random by default. ``b"\\0\\0\\0\\0"`` leaves the
            payload unchanged, so one prepared payload can be sent many times for free.
    """
    declared = len(payload) if length is None else length
    first = (fin << 7) | (rsv1 << 6) | (rsv2 << 5) | (rsv3 << 4) | (opcode & 0x0F)
    mask_bit = 0x80 if masked else 0
    if declared < 126:
        header = struct.pack("!BB", first, mask_bit | declared)
    elif declared < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, declared)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, declared)
    if not masked:
        return header + payload
    key = os.urandom(4) if mask_key is None else mask_key
    if key == b"\0\0\0\0" or not payload:
        return header + key + payload
    return header + key + apply_mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


@dataclass
class Received:
    """One frame from the server."""

    opcode: int
    payload: bytes
    fin: bool
    rsv1: bool


@dataclass
class Closed:
    """How a connection ended: the close frame's code and reason, or none (EOF, reset)."""

    code: int | None
    reason: str
    at: float
    """``time.monotonic()`` when the close frame (or the end of the stream) was read."""


class HandshakeFailed(Exception):
    """The server answered the upgrade with another status than 101."""

    def __init__(self, status: int | None, head: bytes) -> None:
        super().__init__(f"handshake refused: {status} {head[:200]!r}")
        self.status = status
        self.head = head


def _address(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("ws://").partition(":")
    return host, int(port.split("/")[0])


def upgrade_request(
    url: str,
    path: str = "/ws",
    *,
    headers: Sequence[tuple[str, str]] = (),
    subprotocol: str | None = "wsroom.v1",
    extensions: str | None = None,
) -> bytes:
    host, port = _address(url)
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}")
    if extensions is not None:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def status_of(head: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(match.group(1)) if match else None


class RawWebSocket:
    """A WebSocket client whose every frame is built by hand (see :func:`frame`)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.head = head
        self.deflate_bits: int | None = None
        """The window the server's inflater uses for our messages, when deflate was
        negotiated (``None``: no compression)."""
        self._inflater: Any = None
        self.closed: Closed | None = None
        self._keeper: asyncio.Task[None] | None = None
        match = re.search(rb"(?im)^sec-websocket-extensions:\s*(.*?)\r$", head)
        if match and b"permessage-deflate" in match.group(1):
            bits = re.search(rb"client_max_window_bits=(\d+)", match.group(1))
            self.deflate_bits = int(bits.group(1)) if bits else 15
            self._inflater = zlib.decompressobj(-15)

    @classmethod
    async def open(
        cls,
        url: str,
        path: str = "/ws",
        *,
        headers: Sequence[tuple[str, str]] = (),
        subprotocol: str | None = "wsroom.v1",
        deflate: bool = False,
        timeout: float = TIMEOUT,
    ) -> RawWebSocket:
        """Open a connection and complete the upgrade (:class:`HandshakeFailed` if refused).

        With ``deflate``, permessage-deflate is offered; the server's answer tells the window
        our compressed messages must use.
        """
        host, port = _address(url)
        extensions = "permessage-deflate; client_max_window_bits" if deflate else None
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 24)
            writer.write(
                upgrade_request(
                    url, path, headers=headers, subprotocol=subprotocol, extensions=extensions
                )
            )
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                writer.close()
                raise HandshakeFailed(status_of(exc.partial), exc.partial) from None
        status = status_of(head)
        if status != 101:
            writer.close()
            raise HandshakeFailed(status, head)
        return cls(reader, writer, head)

    # Sending.

    def write(self, data: bytes | memoryview) -> None:
        self.writer.write(data)

    async def send(self, data: bytes) -> None:
        """Write raw bytes (frames) and wait until the socket takes them."""
        self.writer.write(data)
        await self.writer.drain()

    async def send_text(self, text: str | bytes, *, compress: bool = False) -> None:
        payload = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        await self.send(self.message(OP_TEXT, payload, compress=compress))

    def message(self, opcode: int, payload: bytes, *, compress: bool = False) -> bytes:
        """A whole message in one frame; compressed (RSV1) when asked and negotiated."""
        if compress:
            return frame(opcode, self.deflate(payload), rsv1=True)
        return frame(opcode, payload)

    def deflate(self, payload: bytes) -> bytes:
        """``payload`` compressed as one permessage-deflate message (no context kept)."""
        if self.deflate_bits is None:
            raise RuntimeError("permessage-deflate was not negotiated")
        return deflated(payload, self.deflate_bits)

    # Receiving.

    async def read_frame(self, timeout: float = TIMEOUT) -> Received | None:
        """The next server frame; ``None`` at the end of the stream (EOF or reset)."""
        try:
            async with asyncio.timeout(timeout):
                first, second = await self.reader.readexactly(2)
                length = second & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", await self.reader.readexactly(2))
                elif length == 127:
                    (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
                payload = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return Received(first & 0x0F, payload, bool(first & 0x80), bool(first & 0x40))

    async def read_message(self, timeout: float = TIMEOUT) -> tuple[int, bytes] | None:
        """The next whole message (fragments joined, inflated), or a control frame;
        ``None`` at the end of the stream. A close frame is returned as ``(OP_CLOSE, ...)``
        and recorded in :attr:`closed`."""
        parts: list[bytes] = []
        opcode = OP_CONT
        compressed = False
        while True:
            received = await self.read_frame(timeout)
            if received is None:
                if self.closed is None:
                    self.closed = Closed(None, "", time.monotonic())
                return None
            if received.opcode == OP_CLOSE:
                code, reason = None, ""
                if len(received.payload) >= 2:
                    (code,) = struct.unpack("!H", received.payload[:2])
                    reason = received.payload[2:].decode("utf-8", "replace")
                self.closed = Closed(code if code is not None else 1005, reason, time.monotonic())
                with contextlib.suppress(OSError):  # answer it, as a browser would
                    self.write(frame(OP_CLOSE, received.payload[:2]))
                return OP_CLOSE, received.payload
            if received.opcode in (OP_PING, OP_PONG):
                if received.opcode == OP_PING:
                    self.write(frame(OP_PONG, received.payload))
                continue
            if received.opcode != OP_CONT:
                opcode, compressed = received.opcode, received.rsv1
            parts.append(received.payload)
            if received.fin:
                data = b"".join(parts)
                if compressed:
                    data = self._inflater.decompress(data + DEFLATE_TAIL)
                return opcode, data

    async def recv_text(self, timeout: float = TIMEOUT) -> str:
        """The next text message; :class:`ConnectionError` if the connection closes."""
        message = await self.read_message(timeout)
        if message is None or message[0] == OP_CLOSE:
            raise ConnectionError(f"closed: {self.closed}")
        opcode, data = message
        assert opcode == OP_TEXT, f"the server sent opcode {opcode}"
        return data.decode("utf-8")

    async def wait_closed(self, timeout: float = TIMEOUT) -> Closed:
        """Read (and drop) messages until the server closes; how it closed."""
        async with asyncio.timeout(timeout):
            while self.closed is None:
                await self.read_message(timeout)
        return self.closed

    def keep_alive(self) -> None:
        """From now on, read (and drop) everything in the background, answering the
        server's keepalive pings, so an idle connection is not closed for silence."""
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep())

    async def _keep(self) -> None:
        with contextlib.suppress(TimeoutError):
            while await self.read_message(timeout=3600) is not None:
                pass

    def abort(self) -> None:
        transport = self.writer.transport
        transport.abort()

    async def aclose(self) -> None:
        """Close politely when still open, else just drop the socket."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        with contextlib.suppress(OSError):
            if self.closed is None:
                self.writer.write(frame(OP_CLOSE, close_payload(1000)))
                await asyncio.wait_for(self.writer.drain(), 1.0)
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


def deflated(payload: bytes, window_bits: int = 15) -> bytes:
    """``payload`` as one permessage-deflate message body (RFC 7692, section 7.2.1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -window_bits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(DEFLATE_TAIL)
    return data[:-4]


@functools.cache
def deflated_zeros(size: int, window_bits: int) -> bytes:
    """``size`` zero bytes as one permessage-deflate message body, compressed a MiB at a
    time: the bomb is built without ever holding its inflated size in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -window_bits)
    chunk = bytes(min(size, 1 << 20))
    parts = []
    left = size
    while left:
        step = min(left, len(chunk))
        parts.append(compressor.compress(chunk[:step] if step < len(chunk) else chunk))
        left -= step
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(parts)
    assert data.endswith(DEFLATE_TAIL)
    return data[:-4]


async def http_exchange(
    url: str, request: bytes, timeout: float = TIMEOUT
) -> tuple[int | None, bytes]:
    """Send a raw HTTP request; the status and the bytes read until the server closed or
    stopped sending (a 101 upgrade is closed at once)."""
    host, port = _address(url)
    reader, writer = await asyncio.open_connection(host, port)
    data = b""
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(timeout):
                while b"\r\n\r\n" not in data:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    data += chunk
    finally:
        writer.transport.abort()
    return status_of(data), data


# Probes.


_libc: Any = None
_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter


def _glibc() -> Any:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else False
    return _libc


def _fresh_pages_for_large_blocks() -> None:
    """Serve every block of 128 KiB or more from fresh pages (mmap), returned at its free.

    glibc raises this threshold by itself after a large block is freed (up to 32 MiB), and
    then serves later large blocks from memory it kept: a buffer would not show in RSS
    when an earlier test freed one as large. Fixing the threshold turns that off.
    """
    libc = _glibc()
    if libc and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)


def _malloc_trim() -> None:
    libc = _glibc()
    if libc and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class PeakRss:
    """How far this process's resident memory rose above where it stood at the start.

    The kernel keeps the peak (``VmHWM``) and lets a process reset it
    (``/proc/self/clear_refs``), so no short-lived buffer escapes the measurement. Before
    the reset, freed heap memory is handed back to the kernel (``malloc_trim``) and large
    blocks are set to come from fresh pages: memory an earlier test freed but the allocator
    kept would otherwise be reused without showing. (That setting stays for the rest of the
    process: large blocks are then mapped and unmapped each time, as glibc does by default
    until its first large free.)
    """

    def __init__(self) -> None:
        self.start_kib = 0

    @staticmethod
    def available() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
                refs.write("5")
        except OSError:
            return False
        return True

    def reset(self) -> None:
        _fresh_pages_for_large_blocks()
        gc.collect()
        _malloc_trim()
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        self.start_kib = _status_kib("VmRSS")

    @property
    def growth(self) -> int:
        """Bytes the peak RSS rose above the RSS at :meth:`reset`."""
        return max(0, _status_kib("VmHWM") - self.start_kib) * 1024


class LogCapture(logging.Handler):
    """Every record logged while it is installed, from wsroom, websockets, uvicorn and
    anything that propagates to the root logger (uvicorn's loggers do not).

    ``levels`` lowers chosen loggers' levels for the duration (e.g. ``{"wsroom": DEBUG}``).
    """

    LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")

    def __init__(self, levels: dict[str, int] | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._seen: set[int] = set()
        self._levels = levels or {}
        self._saved: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if id(record) not in self._seen:
            self._seen.add(id(record))
            self.records.append(record)

    def attach(self) -> None:
        """(Re)install the handler and the levels: uvicorn's logging setup, run by each
        ``uvicorn.Config``, resets its loggers. Call it once a Starlette server is up."""
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            if self not in logger.handlers:
                logger.addHandler(self)
        for name, level in self._levels.items():
            logger = logging.getLogger(name)
            self._saved.setdefault(name, logger.level)
            logger.setLevel(level)

    def lower(self, levels: dict[str, int]) -> None:
        """Set more loggers' levels from now on (restored on exit)."""
        self._levels.update(levels)
        self.attach()

    def __enter__(self) -> LogCapture:
        self.attach()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)
        for name, level in self._saved.items():
            logging.getLogger(name).setLevel(level)

    def tracebacks(self) -> list[logging.LogRecord]:
        """Records at ERROR or above, or carrying an exception: what counts as a crash."""
        return [r for r in self.records if r.levelno >= logging.ERROR or r.exc_info]

    def text(self, record: logging.LogRecord) -> str:
        """Everything a log file would hold for ``record``: message and traceback."""
        parts = [record.name, record.getMessage()]
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            parts.append(record.stack_info)
        return "\n".join(parts)

    def containing(self, secret: str) -> list[logging.LogRecord]:
        return [r for r in self.records if secret in self.text(r)]


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as elapsed:`` then ``elapsed[0]`` holds the block's duration."""
    elapsed = [0.0]
    start = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed[0] = time.perf_counter() - start
