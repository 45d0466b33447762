"""Fan-out to one room over real sockets: wsroom on each adapter against its peers.

    python benchmarks/fanout.py                       # every variant, N = 100, 1,000 and 5,000
    python benchmarks/fanout.py --sizes 100,1000,5000 --repeat 5 --json out.json --plot out.png
    python benchmarks/fanout.py --variants raw,wsroom --sizes 1000
    python benchmarks/fanout.py --quick               # smoke run: a few seconds
    python benchmarks/fanout.py --rate 1000 --messages 1000   # the latency run: paced
    python benchmarks/fanout.py --compress            # clients offer permessage-deflate
    python benchmarks/fanout.py --relay --variants seed-starlette,wsroom-starlette-batch

For each size N and each variant, a fresh server process gets N clients in one room and
publishes 100 back-to-back ~100-byte JSON messages (or paced ones, ``--rate``); this
process is the load client and measures deliveries per second, end-to-end latency (from a
timestamp in the message), the server's CPU time and memory per idle connection, the
connect time, and its own CPU. Variants run interleaved within each repeat, so their
ratios come from the same conditions; each cell is repeated and its median reported. See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import importlib.metadata
import importlib.util
import json
import os
import platform
import queue
import secrets
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import psutil
from fanout_server import raise_open_file_limit as raise_open_file_limit

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE / "fanout_server.py"

JOIN_FRAME = b'{"type":"join","room":"bench"}'
SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"
RECV_SIZE = 65536  # below glibc's mmap threshold: no mmap/munmap per recv()
CONNECT_WINDOW = 64  # handshakes in flight at once
SAMPLES_PER_BURST = 2000  # timestamps parsed per burst, spread over every client
CLIENT_BOUND = 0.8  # client CPU / wall time above which a figure is the client's limit
# What a browser offers (RFC 7692): the client takes what the server answers.
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
INFLATED_CONNS = 16  # with compression offered: the connections that inflate, for latency


# The variants.


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    server: str
    kind: str = "plain"  # the client side of the protocol: plain, wsroom or socketio
    nodes: int = 1
    needs: tuple[tuple[str, str], ...] = ()  # (module, package to install)
    redis: bool = False
    server_args: tuple[str, ...] = ()  # given to every server process of the variant
    # Open files the server holds per connection: the websockets sync server has a socket
    # pair and a selector besides the connection's socket.
    files_per_connection: int = 1
    # The server relays a client's message to the room (--relay).
    relays: bool = False
    # Environment of its server processes (--before: PYTHONPATH of another checkout).
    env: tuple[tuple[str, str], ...] = ()


STARLETTE = (("starlette", "starlette"), ("uvicorn", "uvicorn"))
SOCKETIO = (("socketio", "python-socketio"), ("uvicorn", "uvicorn"))
AIOHTTP = (("aiohttp", "aiohttp"),)
REDIS = (("redis", "redis"),)
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("ceiling", "pre-framed, one write per client", "ceiling"),
        Variant("raw", "raw websockets.broadcast()", "raw"),
        Variant("seed-loop", "seed loop, websockets asyncio", "seed-loop"),
        Variant("seed-gather", "seed asyncio.gather", "seed-gather"),
        Variant(
            "seed-starlette",
            "seed loop, Starlette/uvicorn",
            "seed-starlette",
            needs=STARLETTE,
            relays=True,
        ),
        Variant("seed-sync", "seed loop, websockets sync", "seed-sync", files_per_connection=4),
        Variant(
            "socketio",
            "python-socketio room emit",
            "socketio",
            kind="socketio",
            needs=SOCKETIO,
        ),
        Variant(
            "socketio-redis2",
            "python-socketio, 2 nodes over Redis",
            "socketio-redis",
            kind="socketio",
            nodes=2,
            needs=(*SOCKETIO, *REDIS),
            redis=True,
        ),
        Variant("wsroom", "wsroom, websockets asyncio", "wsroom", kind="wsroom", relays=True),
        # The same servers, with clients that offer batched frames (wsroom.v1.batch) first,
        # as wsroom.js does: the frames waiting in a connection's queue come as one array.
        Variant(
            "wsroom-batch",
            "wsroom asyncio, batch clients",
            "wsroom",
            kind="wsroom-batch",
            relays=True,
        ),
        Variant(
            "wsroom-sync-batch",
            "wsroom sync, batch clients",
            "wsroom-sync",
            kind="wsroom-batch",
            files_per_connection=4,
            relays=True,
        ),
        Variant(
            "wsroom-starlette-batch",
            "wsroom Starlette, batch clients",
            "wsroom-starlette",
            kind="wsroom-batch",
            needs=STARLETTE,
            relays=True,
        ),
        Variant(
            "wsroom-sync",
            "wsroom, websockets sync",
            "wsroom-sync",
            kind="wsroom",
            files_per_connection=4,
            relays=True,
        ),
        Variant(
            "wsroom-starlette",
            "wsroom, Starlette/uvicorn",
            "wsroom-starlette",
            kind="wsroom",
            needs=STARLETTE,
            relays=True,
        ),
        Variant(
            "wsroom-asgi",
            "wsroom, plain ASGI/uvicorn",
            "wsroom-asgi",
            kind="wsroom",
            needs=(("uvicorn", "uvicorn"),),
        ),
        Variant("seed-aiohttp", "seed loop, aiohttp", "seed-aiohttp", needs=AIOHTTP, relays=True),
        Variant(
            "socketio-aiohttp",
            "python-socketio on aiohttp",
            "socketio-aiohttp",
            kind="socketio",
            needs=(("socketio", "python-socketio"), *AIOHTTP),
            relays=True,
        ),
        Variant(
            "wsroom-aiohttp",
            "wsroom, aiohttp",
            "wsroom-aiohttp",
            kind="wsroom",
            needs=AIOHTTP,
            relays=True,
        ),
        # Every frame through aiohttp's send_frame() (as compressed connections are sent):
        # the adapter without its fast path.
        Variant(
            "wsroom-aiohttp-sendframe",
            "wsroom, aiohttp, send_frame() per frame",
            "wsroom-aiohttp",
            kind="wsroom",
            needs=AIOHTTP,
            server_args=("--no-fastpath",),
            relays=True,
        ),
        Variant(
            "wsroom-redis2",
            "wsroom, 2 nodes over Redis",
            "wsroom-redis",
            kind="wsroom",
            nodes=2,
            needs=REDIS,
            redis=True,
        ),
        Variant(
            "wsroom-redis3",
            "wsroom, 3 nodes over Redis",
            "wsroom-redis",
            kind="wsroom",
            nodes=3,
            needs=REDIS,
            redis=True,
        ),
        # The same servers with a publisher that starts every broadcast of the burst
        # before awaiting them: over Redis, what waits is sent in one round trip.
        Variant(
            "wsroom-pipelined",
            "wsroom asyncio, pipelined publisher",
            "wsroom",
            kind="wsroom",
            server_args=("--pipelined",),
        ),
        Variant(
            "wsroom-redis2-pipelined",
            "wsroom, 2 nodes, pipelined publisher",
            "wsroom-redis",
            kind="wsroom",
            nodes=2,
            needs=REDIS,
            redis=True,
            server_args=("--pipelined",),
        ),
        Variant(
            "wsroom-redis3-pipelined",
            "wsroom, 3 nodes, pipelined publisher",
            "wsroom-redis",
            kind="wsroom",
            nodes=3,
            needs=REDIS,
            redis=True,
            server_args=("--pipelined",),
        ),
    ]
}
QUICK_VARIANTS = ["raw", "seed-loop", "wsroom", "wsroom-sync"]
BASELINE = "raw"


# The load client: raw sockets, one selector, frame headers only.


@dataclass(frozen=True)
class ClientProtocol:
    """What a client does before it is in the room."""

    path: str = "/"
    # (data frames received so far, frame to send then): the join sequence.
    script: tuple[tuple[int, bytes], ...] = ()
    # Data frames the server sends before the client is in the room (welcome, joined...).
    setup_frames: int = 0
    # What wraps a JSON message a client sends for the server to relay (--relay).
    relay: tuple[bytes, bytes] = (b"", b"")
    # The Sec-WebSocket-Protocol header offered, if any.
    subprotocols: str | None = None
    # Count the frames inside a message that is a JSON array (a batch of wsroom frames).
    batches: bool = False


WSROOM_RELAY = (b'{"type":"message","room":"bench","data":', b"}")
PROTOCOLS = {
    "plain": ClientProtocol(),
    # welcome, then join -> joined; anonymous, so no presence traffic.
    "wsroom": ClientProtocol(script=((1, JOIN_FRAME),), setup_frames=2, relay=WSROOM_RELAY),
    # The same, offering batched frames first (a server without them selects wsroom.v1).
    "wsroom-batch": ClientProtocol(
        script=((1, JOIN_FRAME),),
        setup_frames=2,
        relay=WSROOM_RELAY,
        subprotocols="wsroom.v1.batch, wsroom.v1",
        batches=True,
    ),
    # Engine.IO open, then Socket.IO connect -> connected, then the "join" event.
    "socketio": ClientProtocol(
        path=SOCKETIO_PATH,
        script=((1, b"40"), (2, b'42["join"]')),
        setup_frames=2,
        relay=(b'42["msg",', b"]"),
    ),
}

CONNECTING, HANDSHAKE, OPEN, CLOSED = range(4)
TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455 section 5.3)."""
    length = len(payload)
    if length < 126:
        header = bytes([0x80 | opcode, 0x80 | length])
    elif length < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    mask = os.urandom(4)
    if not length:
        return header + mask
    key = (mask * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
    return header + mask + masked


def frame_bounds(data: bytes, pos: int) -> tuple[int, int] | None:
    """Where the payload of the (unmasked, server) frame at ``pos`` starts and ends, or
    ``None`` when ``data`` does not hold all of it yet."""
    size = len(data)
    if pos + 2 > size:
        return None
    length = data[pos + 1] & 0x7F
    start = pos + 2
    if length == 126:
        start = pos + 4
        if start > size:
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
    elif length == 127:
        start = pos + 10
        if start > size:
            return None
        length = int.from_bytes(data[pos + 2 : start], "big")
    end = start + length
    return (start, end) if end <= size else None


def timestamp_of(payload: bytes) -> float | None:
    """The ``"t"`` field of a message, found without parsing the JSON."""
    start = payload.find(b'"t":')
    if start < 0:
        return None
    end = payload.find(b",", start)
    try:
        return float(payload[start + 4 : end])
    except ValueError:
        return None


def deflate_parameters(head: bytes) -> dict[str, str] | None:
    """The permessage-deflate parameters of a handshake response (RFC 7692), or ``None``
    when the server did not accept the extension."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() != b"sec-websocket-extensions":
            continue
        for extension in value.decode("latin-1").split(","):
            token, *params = (part.strip() for part in extension.split(";"))
            if token.lower() == "permessage-deflate":
                pairs = (param.partition("=") for param in params)
                return {key.strip().lower(): val.strip().strip('"') for key, _, val in pairs}
    return None


def inflated_indexes(count: int, nodes: int, wanted: int = INFLATED_CONNS) -> set[int]:
    """Up to ``wanted`` of ``count`` clients dealt round-robin over ``nodes``: as many on
    each node, spread over its clients."""
    chosen: set[int] = set()
    per_node = max(1, wanted // nodes)
    for node in range(nodes):
        members = range(node, count, nodes)
        step = max(1, len(members) // per_node)
        chosen.update(members[::step][:per_node])
    return chosen


class Conn:
    __slots__ = (
        "buf",
        "compressed",
        "deflate",
        "frames",
        "index",
        "inflate",
        "inflater",
        "joined",
        "no_takeover",
        "parts",
        "port",
        "script_pos",
        "sock",
        "state",
        "wbits",
    )

    def __init__(self, sock: socket.socket, index: int, port: int) -> None:
        self.sock = sock
        self.index = index
        self.port = port
        self.state = CONNECTING
        self.buf = b""
        self.frames = 0  # data frames received
        self.script_pos = 0
        self.joined = False  # in the room
        self.deflate = False  # the server accepted permessage-deflate
        # Read every message in full (inflated when compressed), for latency samples.
        self.inflate = False
        self.inflater: Any = None  # zlib decompressor, when ``inflate`` and ``deflate``
        self.wbits = -15
        self.no_takeover = False  # server_no_context_takeover: a fresh window per message
        self.compressed = False  # the message in progress has RSV1 set
        self.parts: list[bytes] = []  # the message in progress, inflated


class LoadClient:
    """N WebSocket clients in one thread: handshakes by hand, then frames counted by header.

    Only every k-th data frame (counted over all clients) has its payload looked at, for
    its timestamp; the others are skipped by their length. A frame costs the client well
    under a microsecond when many arrive in one read, and a read (system call and wake-up
    included) a few microseconds when each brings a single frame.

    With ``compress``, every client offers permessage-deflate, as browsers do, and takes
    what the server answers. Compressed payloads cannot be searched, so a fixed set of
    connections (:data:`INFLATED_CONNS`, spread over the nodes) inflates every message it
    receives, and only their messages give latency samples; the others only count.
    """

    def __init__(
        self, protocol: ClientProtocol, *, quickack: bool = False, compress: bool = False
    ) -> None:
        self.protocol = protocol
        # Acknowledge every read at once instead of letting the kernel delay ACKs
        # (a diagnostic: real clients, browsers included, delay them).
        self.quickack = quickack
        self.compress = compress
        self.selector = selectors.DefaultSelector()
        self.conns: list[Conn] = []
        self.total = 0  # data frames received by all clients since reset
        self.ready = 0  # clients in the room
        self.closed = 0
        self.errors: list[str] = []
        self.sampling = False
        self.every = 1
        self.countdown = 1
        self.sampling_inflated = False  # every message of the inflating connections
        self.latencies: list[float] = []

    # Connecting.

    def connect(self, ports: Sequence[int], count: int, deadline: float) -> bool:
        """Open ``count`` clients, spread over ``ports``, until each is in the room."""
        target = len(self.conns) + count
        base = len(self.conns)
        inflated = inflated_indexes(count, len(ports)) if self.compress else set()
        if self.compress and self.protocol.batches:
            # A compressed batch is counted from its inflated frames: every client inflates.
            inflated = set(range(count))
        opened = 0
        goal = self.ready + count
        while self.ready < goal:
            while opened < count and len(self.conns) - self.ready - self.closed < CONNECT_WINDOW:
                index = base + opened
                self._open(index, ports[index % len(ports)], inflate=opened in inflated)
                opened += 1
            if self.errors or time.monotonic() > deadline:
                return False
            self._poll(min(0.5, max(0.0, deadline - time.monotonic())))
        return len(self.conns) == target and not self.errors

    def deflated(self) -> int:
        """Open connections on which the server accepted permessage-deflate."""
        return sum(1 for conn in self.conns if conn.deflate and conn.state == OPEN)

    def _open(self, index: int, port: int, *, inflate: bool = False) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        conn = Conn(sock, index, port)
        conn.inflate = inflate
        self.conns.append(conn)
        err = sock.connect_ex(("127.0.0.1", port))
        if err not in (0, errno.EINPROGRESS):
            self._fail(conn, f"connect: {os.strerror(err)}")
            return
        self.selector.register(sock, selectors.EVENT_WRITE, conn)

    def _connected(self, conn: Conn) -> None:
        sock = conn.sock
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(conn, f"connect: {os.strerror(err)}")
            return
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {self.protocol.path} HTTP/1.1\r\nHost: 127.0.0.1:{conn.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            + (f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if self.compress else "")
            + (
                f"Sec-WebSocket-Protocol: {self.protocol.subprotocols}\r\n"
                if self.protocol.subprotocols
                else ""
            )
            + "\r\n"
        )
        self._send(conn, request.encode())
        conn.state = HANDSHAKE
        self.selector.modify(sock, selectors.EVENT_READ, conn)

    def _handshake(self, conn: Conn, data: bytes) -> None:
        conn.buf += data
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.buf) > 16384:
                self._fail(conn, "handshake response too long")
            return
        head, rest = conn.buf[:end], conn.buf[end + 4 :]
        conn.buf = b""
        if not head.startswith(b"HTTP/1.1 101"):
            status = head.split(b"\r\n", 1)[0]
            self._fail(conn, f"handshake refused: {status!r}")
            return
        params = deflate_parameters(head) if self.compress else None
        if params is not None:
            conn.deflate = True
            # -15 would inflate any window; the server's maximum is what it uses.
            bits = params.get("server_max_window_bits") or "15"
            conn.wbits = -max(9, min(15, int(bits) if bits.isdigit() else 15))
            conn.no_takeover = "server_no_context_takeover" in params
            if conn.inflate:
                conn.inflater = zlib.decompressobj(conn.wbits)
        conn.state = OPEN
        self._advance(conn)
        if rest:
            self._feed(conn, rest)

    def _advance(self, conn: Conn) -> None:
        """Send the join sequence as its frames arrive; count the client in once done."""
        script = self.protocol.script
        while conn.script_pos < len(script) and conn.frames >= script[conn.script_pos][0]:
            self._send(conn, client_frame(script[conn.script_pos][1]))
            conn.script_pos += 1
        if (
            not conn.joined
            and conn.state == OPEN
            and conn.script_pos == len(script)
            and conn.frames >= self.protocol.setup_frames
        ):
            conn.joined = True
            self.ready += 1

    # Receiving.

    def _poll(self, timeout: float) -> None:
        feed = self._feed
        fast = not self.quickack
        for key, mask in self.selector.select(timeout):
            conn: Conn = key.data
            if conn.state == OPEN and fast:  # the hot path, inlined
                try:
                    data = conn.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._fail(conn, f"recv: {exc}")
                    continue
                if data:
                    feed(conn, data)
                else:
                    self._fail(conn, "closed by the server")
            elif conn.state == CONNECTING:
                if mask & selectors.EVENT_WRITE:
                    self._connected(conn)
            elif conn.state != CLOSED:
                self._readable(conn)

    def _readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(conn, f"recv: {exc}")
            return
        if not data:
            self._fail(conn, "closed by the server")
            return
        if conn.state == HANDSHAKE:
            self._handshake(conn, data)
        else:
            self._feed(conn, data)
        if self.quickack and conn.state == OPEN:
            conn.sock.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)

    def _feed(self, conn: Conn, data: bytes) -> None:
        if conn.inflate:
            self._feed_inflating(conn, data)
            return
        if conn.buf:
            data = conn.buf + data
        size = len(data)
        pos = 0
        frames = 0
        sampling = self.sampling
        countdown = self.countdown
        batches = self.protocol.batches
        now = 0.0
        # frame_bounds(), inlined: this loop runs for every frame of every client.
        while pos + 2 <= size:
            length = data[pos + 1] & 0x7F  # server frames are never masked
            if length < 126:
                start = pos + 2
            elif length == 126:
                start = pos + 4
                if start > size:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
            else:
                start = pos + 10
                if start > size:
                    break
                length = int.from_bytes(data[pos + 2 : start], "big")
            end = start + length
            if end > size:
                break
            first = data[pos]
            if first & 0x0F < 8:
                if first & 0x80:  # the last frame of a message
                    # A batch (unfragmented: wsroom never fragments) holds one frame per
                    # '{"type":' at its top level; the benchmark's data has no such key.
                    count = (
                        data.count(b'{"type":', start, end)
                        if batches and data[start] == 0x5B  # '['
                        else 1
                    )
                    frames += count
                    if sampling:
                        countdown -= count
                        if countdown <= 0:
                            # A batch gives one sample: its first, oldest frame.
                            countdown = self.every
                            stamp = timestamp_of(data[start:end])
                            if stamp is not None:
                                if not now:
                                    now = time.time()
                                self.latencies.append(now - stamp)
            elif not self._control(conn, first & 0x0F, data[start:end]):
                return
            pos = end
        conn.buf = data[pos:] if pos < size else b""
        self.countdown = countdown
        if frames:
            conn.frames += frames
            self.total += frames
            if not conn.joined:
                self._advance(conn)

    def _control(self, conn: Conn, opcode: int, payload: bytes) -> bool:
        """Handle a control frame: answer a ping (websockets closes a client that does not,
        after a while); a close frame fails the connection. ``False`` when it is done."""
        if opcode == 9:
            self._send(conn, client_frame(payload, 0xA))
        elif opcode == 8:
            self._fail(conn, f"close frame from the server: {payload!r}")
            return False
        return True

    def _feed_inflating(self, conn: Conn, data: bytes) -> None:
        """:meth:`_feed` for an inflating connection: each message read in full, inflated
        when compressed (RFC 7692: its frames' payloads, then 00 00 ff ff, through one
        raw-deflate stream unless the server takes no context over), and, while sampling,
        each one a latency sample."""
        if conn.buf:
            data = conn.buf + data
        size = len(data)
        pos = 0
        frames = 0
        now = 0.0
        while (bounds := frame_bounds(data, pos)) is not None:
            start, end = bounds
            first = data[pos]
            opcode = first & 0x0F
            if opcode < 8:
                body = data[start:end]
                if opcode:  # a message's first frame: RSV1 says whether it is compressed
                    conn.compressed = bool(first & 0x40)
                    conn.parts = []
                if conn.compressed:
                    if conn.inflater is None:
                        self._fail(conn, "compressed frame without permessage-deflate")
                        return
                    try:
                        body = conn.inflater.decompress(body)
                        if first & 0x80:
                            body += conn.inflater.decompress(b"\x00\x00\xff\xff")
                    except zlib.error as exc:
                        self._fail(conn, f"inflate: {exc}")
                        return
                    if first & 0x80 and conn.no_takeover:
                        conn.inflater = zlib.decompressobj(conn.wbits)
                conn.parts.append(body)
                if first & 0x80:
                    message = b"".join(conn.parts) if len(conn.parts) > 1 else conn.parts[0]
                    batched = self.protocol.batches and message[:1] == b"["
                    frames += message.count(b'{"type":') if batched else 1
                    conn.parts = []
                    if self.sampling_inflated:
                        stamp = timestamp_of(message)
                        if stamp is not None:
                            if not now:
                                now = time.time()
                            self.latencies.append(now - stamp)
            elif not self._control(conn, opcode, data[start:end]):
                return
            pos = end
        conn.buf = data[pos:] if pos < size else b""
        if frames:
            conn.frames += frames
            self.total += frames
            if not conn.joined:
                self._advance(conn)

    def _send(self, conn: Conn, data: bytes) -> None:
        try:
            sent = conn.sock.send(data)
        except OSError as exc:
            self._fail(conn, f"send: {exc}")
            return
        if sent != len(data):  # a few hundred bytes into an empty socket buffer
            self._fail(conn, "short send")

    def _fail(self, conn: Conn, reason: str) -> None:
        if conn.state == CLOSED:
            return
        conn.state = CLOSED
        self.closed += 1
        if conn.joined:
            conn.joined = False
            self.ready -= 1
        if len(self.errors) < 5:
            self.errors.append(f"client {conn.index}: {reason}")
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(conn.sock)
        conn.sock.close()

    def relay(self, messages: int) -> None:
        """Send ``messages`` messages from the first client, in one write, for the server to
        relay to the room; each carries its creation time, as the server's own do."""
        conn = self.conns[0]
        before, after = self.protocol.relay
        frames = []
        for i in range(messages):
            text = json.dumps({"t": time.time(), "i": i, "p": "x" * 56})
            frames.append(client_frame(before + text.encode() + after))
        # More than an empty socket buffer may take at once: blocking, briefly.
        conn.sock.setblocking(True)
        try:
            conn.sock.sendall(b"".join(frames))
        except OSError as exc:
            self._fail(conn, f"send: {exc}")
        finally:
            conn.sock.setblocking(False)

    # Measuring.

    def expect(self, frames: int, deadline: float) -> bool:
        """Pump until ``frames`` data frames arrived since :meth:`reset`."""
        while self.total < frames:
            if self.errors or time.monotonic() > deadline:
                return False
            self._poll(min(0.5, max(0.0, deadline - time.monotonic())))
        return True

    def reset(self, sample_every: int = 0) -> None:
        self.total = 0
        self.latencies = []
        # Offering compression, only the inflating connections sample: all their messages.
        self.sampling = sample_every > 0 and not self.compress
        self.sampling_inflated = sample_every > 0
        self.every = self.countdown = max(1, sample_every)

    def close(self, first: int = 0) -> None:
        """Close the clients from index ``first`` on, without a closing handshake."""
        for conn in self.conns[first:]:
            if conn.state != CLOSED:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(conn.sock)
                conn.sock.close()
                if conn.joined:
                    conn.joined = False
                    self.ready -= 1
                conn.state = CLOSED
        del self.conns[first:]
        self.closed = sum(1 for c in self.conns if c.state == CLOSED)


# The servers.


class Sampler:
    """py-spy sampling one server process, from now until :meth:`stop`."""

    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        self.process = subprocess.Popen(
            [*PY_SPY_RECORD, "--pid", str(pid), "--output", str(output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # py-spy gives no sign that it is attached (its stdout is buffered until it exits);
        # it takes a few milliseconds. Not part of any measured figure.
        time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)  # py-spy writes what it sampled, then exits
        try:
            _, errors = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            errors = "py-spy did not stop"
        if not self.output.exists():
            print(f"  profile {self.output.name}: nothing written ({errors.strip()[-200:]})")


PY_SPY_RECORD = (
    str(Path(sys.executable).with_name("py-spy")),
    "record",
    "--rate",
    "2000",
    "--format",
    "raw",
)


class ServerProcess:
    """One benchmark server (fanout_server.py) and the pipes that drive it."""

    def __init__(
        self,
        variant: str,
        extra: Sequence[str] = (),
        *,
        script: Path = SERVER_SCRIPT,
        env: Sequence[tuple[str, str]] = (),
    ) -> None:
        # Closed in stop(): the server's stderr, shown when it fails.
        self.stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, str(script), variant, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
            env={**os.environ, **dict(env)} if env else None,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            self.psutil = psutil.Process(self.process.pid)
            self.port = int(self.expect("READY", 30).split()[1])
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def expect(self, word: str, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"server did not answer {word} within {timeout:.0f} s") from None
        if line is None:
            raise BenchError(f"server exited: {self.tail()}")
        if not line.startswith(word):
            raise BenchError(f"server answered {line!r}, expected {word}")
        return line

    def count(self, wanted: int) -> None:
        self.send(f"COUNT {wanted}")
        line = self.expect("", 130)
        if not line.startswith("OK"):
            raise BenchError(f"only {line.split()[-1]} of {wanted} clients in the room")

    def cpu(self) -> float:
        """The server's CPU time so far, every thread included (its own clock: psutil only
        sees 10 ms ticks, too coarse for a 50 ms burst)."""
        self.send("CPU")
        return float(self.expect("CPU", 30).split()[1])

    def rss(self) -> int:
        return int(self.psutil.memory_info().rss)

    def tail(self, size: int = 1500) -> str:
        """The end of the server's standard error."""
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace").strip()
        return text[-size:] if text else "(no output)"

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send("QUIT")
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.join(5)  # it reads until the end of the exited server's output
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.stderr.close()


class BenchError(Exception):
    pass


# One cell: one variant, one size, one repeat.


@dataclass
class Sample:
    deliveries: int
    rate: float  # deliveries per second
    p50_ms: float
    p99_ms: float
    server_cpu_s: float
    client_cpu_s: float
    wall_s: float
    rss_per_conn_kib: float
    connect_s: float
    server_send_s: float
    redis_cpu_s: float | None = None  # the Redis server's, when it runs on this machine
    # With --compress: of the N connections, those on which the server accepted
    # permessage-deflate (None: not offered).
    deflate_conns: int | None = None
    repeat: int = 0  # which round of the run: variants of one round ran back to back


@dataclass
class Cell:
    variant: str
    label: str
    n: int
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, name: str) -> float | None:
        values = [v for s in self.samples if (v := getattr(s, name)) is not None]
        return statistics.median(values) if values else None


def shares(total: int, nodes: int) -> list[int]:
    """How many of ``total`` clients (dealt round-robin) each node gets."""
    return [len(range(i, total, nodes)) for i in range(nodes)]


def run_once(
    variant: Variant,
    n: int,
    messages: int,
    redis_url: str | None,
    *,
    quickack: bool = False,
    compress: bool = False,
    rate: float | None = None,
    profile: Path | None = None,
    relay: bool = False,
) -> Sample:
    """One cell's run. ``compress``: the clients offer permessage-deflate; ``rate``: the
    server publishes ``rate`` messages per second, each carrying its due time; ``profile``:
    sample every server with py-spy during the measured burst, into ``<profile>-node<i>.txt``
    (collapsed stacks; ``benchmarks/profile_summary.py`` reads them); ``relay``: the first
    client sends the messages and the server relays them to the room."""
    extra: list[list[str]] = [list(variant.server_args) for _ in range(variant.nodes)]
    if variant.redis:
        assert redis_url is not None
        prefix = f"wsroom-bench-{secrets.token_hex(4)}"
        for i, args in enumerate(extra):
            args += ["--redis-url", redis_url, "--prefix", prefix]
            if i == 0:
                args.append("--cleanup")  # node 0 quits last and removes the run's keys
    servers: list[ServerProcess] = []
    client = LoadClient(PROTOCOLS[variant.kind], quickack=quickack, compress=compress)
    try:
        for args in extra:
            servers.append(ServerProcess(variant.server, args, env=variant.env))
        ports = [s.port for s in servers]
        publisher = servers[0]
        warm = max(1, min(10, messages // 5))

        def in_room(total: int) -> None:
            for server, share in zip(servers, shares(total, len(servers)), strict=True):
                server.count(share)

        def burst(count: int, sample_every: int = 0) -> tuple[float, float]:
            """Publish ``count`` messages; (seconds until the last delivery, send time)."""
            client.reset(sample_every)
            # At least 2k deliveries/s, after the paced schedule if any.
            deadline = time.monotonic() + 30 + n * count / 2_000 + (count / rate if rate else 0)
            start = time.perf_counter()
            if relay:
                client.relay(count)
            else:
                publisher.send(f"BURST {count} {rate!r}" if rate else f"BURST {count}")
            if not client.expect(n * count, deadline):
                raise BenchError(
                    f"{client.total} of {n * count} deliveries"
                    + (f"; {client.errors[0]}" if client.errors else "")
                )
            elapsed = time.perf_counter() - start
            if relay:
                return elapsed, 0.0
            sent = float(publisher.expect("SENT", 60).split()[1])
            return elapsed, sent

        # A few clients first, gone again before measuring: lazy imports and first-use
        # allocations of the server do not count as memory per connection.
        warmers = min(4, n)
        if not client.connect(ports, warmers, time.monotonic() + 30):
            raise BenchError(f"warm-up clients failed: {client.errors[:1]}")
        in_room(warmers)
        client.close()
        in_room(0)

        rss_before = sum(s.rss() for s in servers)
        start = time.perf_counter()
        if not client.connect(ports, n, time.monotonic() + 30 + n / 50):
            raise BenchError(f"{client.ready} of {n} clients connected: {client.errors[:1]}")
        in_room(n)
        connect_s = time.perf_counter() - start
        rss_after = sum(s.rss() for s in servers)
        deflate_conns = client.deflated() if compress else None

        burst(warm)  # not measured: first bursts allocate buffers
        redis = redis_process(redis_url) if variant.redis and redis_url else None
        redis_before = process_cpu(redis)
        samplers = (
            [Sampler(s.process.pid, Path(f"{profile}-node{i}.txt")) for i, s in enumerate(servers)]
            if profile is not None
            else []
        )
        cpu_before = sum(s.cpu() for s in servers)
        client_before = time.process_time()
        try:
            wall, sent = burst(messages, max(1, n * messages // SAMPLES_PER_BURST))
        finally:
            for sampler in samplers:
                sampler.stop()
        client_cpu = time.process_time() - client_before
        server_cpu = sum(s.cpu() for s in servers) - cpu_before
        redis_after = process_cpu(redis)
        latencies = sorted(client.latencies)
        if not latencies:
            raise BenchError("no timestamp found in the frames")
        return Sample(
            deliveries=client.total,
            rate=client.total / wall,
            p50_ms=1000 * percentile(latencies, 0.50),
            p99_ms=1000 * percentile(latencies, 0.99),
            server_cpu_s=server_cpu,
            client_cpu_s=client_cpu,
            wall_s=wall,
            rss_per_conn_kib=(rss_after - rss_before) / n / 1024,
            connect_s=connect_s,
            server_send_s=sent,
            redis_cpu_s=(
                redis_after - redis_before
                if redis_after is not None and redis_before is not None
                else None
            ),
            deflate_conns=deflate_conns,
        )
    except (BenchError, OSError, psutil.Error) as exc:
        details = "; ".join(
            f"server {'exited' if s.process.poll() is not None else 'said'}: {s.tail(400)}"
            for s in servers
            if s.process.poll() is not None or s.tail(1) != "(no output)"
        )
        raise BenchError(f"{exc}{'; ' + details if details else ''}") from None
    finally:
        client.close()
        for server in reversed(servers):
            server.stop()


def percentile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# Environment.


def redis_url_to_use(given: str | None) -> str:
    return (
        given
        or os.environ.get("WSROOM_BENCH_REDIS_URL")
        or os.environ.get("WSROOM_TEST_REDIS_URL")
        or "redis://127.0.0.1:6379/0"
    )


def redis_version(url: str) -> str | None:
    """The Redis server's version, or ``None`` when it does not answer."""
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1
        ) as sock:
            if parts.password:
                user = parts.username or "default"
                sock.sendall(f"AUTH {user} {parts.password}\r\n".encode())
                sock.recv(256)
            sock.sendall(b"INFO server\r\n")
            data = b""
            while b"redis_version:" not in data or b"\r\n" not in data.split(b"redis_version:")[1]:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                data += chunk
            return data.split(b"redis_version:")[1].split(b"\r\n")[0].decode()
    except OSError:
        return None


def redis_process(url: str) -> psutil.Process | None:
    """The local redis-server listening on the URL's port, to read its CPU time."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    port = parts.port or 6379
    try:
        for conn in psutil.net_connections(kind="tcp"):
            listening = conn.status == psutil.CONN_LISTEN
            if listening and getattr(conn.laddr, "port", None) == port and conn.pid:
                return psutil.Process(conn.pid)
    except (psutil.Error, OSError):
        pass
    return None


def process_cpu(process: psutil.Process | None) -> float | None:
    if process is None:
        return None
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def steal_seconds() -> float | None:
    """CPU time the hypervisor took from this machine since boot (all CPUs), if known."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def wsroom_source() -> str | None:
    """Where the servers import wsroom from (``PYTHONPATH=<checkout>/src`` runs the code
    of another checkout, for before/after figures)."""
    spec = importlib.util.find_spec("wsroom")
    return str(Path(spec.origin).parent) if spec is not None and spec.origin else None


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(redis_url: str | None) -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = [
        "wsroom",
        "websockets",
        "starlette",
        "uvicorn",
        "python-socketio",
        "python-engineio",
        "aiohttp",
        "redis",
        "psutil",
        "matplotlib",
    ]
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "packages": {name: package_version(name) for name in packages},
        "redis_server": redis_version(redis_url) if redis_url else None,
    }
    try:
        from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol
    except ImportError:
        pass
    else:
        # The WebSocket implementation uvicorn's ws="auto" picks, which the servers use.
        info["uvicorn_ws"] = getattr(AutoWebSocketsProtocol, "__name__", None)
    return info


def missing(variant: Variant, redis_url: str) -> str | None:
    """Why a variant cannot run here, or ``None``."""
    for module, package in variant.needs:
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install {package})"
    if variant.redis and redis_version(redis_url) is None:
        return f"no Redis answers at {redis_url}"
    return None


# Report.


def fmt_rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def axis_rate(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ratio(cell: Cell, base: Cell | None) -> float | None:
    """Median over the rounds of the cell's rate over the baseline's in the same round:
    machine-wide slow spells hit both sides of each ratio."""
    if base is None:
        return None
    base_rates = {s.repeat: s.rate for s in base.samples}
    ratios = [s.rate / base_rates[s.repeat] for s in cell.samples if s.repeat in base_rates]
    return statistics.median(ratios) if ratios else None


def saturation(cell: Cell) -> str:
    """`` !`` when the client was busy nearly all the burst and the server was not (the
    figure is the client's limit), `` ~`` when both were (it may understate the server)."""
    wall = cell.median("wall_s")
    client_cpu = cell.median("client_cpu_s")
    server_cpu = cell.median("server_cpu_s")
    if wall is None or client_cpu is None or server_cpu is None:
        return ""
    if client_cpu < CLIENT_BOUND * wall:
        return ""
    per_node = server_cpu / VARIANTS[cell.variant].nodes
    return " ~" if per_node >= CLIENT_BOUND * wall else " !"


def table(cells: list[Cell], sizes: list[int], *, compress: bool = False) -> str:
    """The results; with ``compress``, a last column: connections (of N) that negotiated
    permessage-deflate."""
    headers = [
        "variant",
        "N",
        "deliv/s",
        "x raw",
        "p50 ms",
        "p99 ms",
        "srv CPU s",
        "cli CPU s",
        "RSS/conn KiB",
        "connect s",
    ]
    if compress:
        headers.append("deflate")
    rows: list[list[str]] = []
    for n in sizes:
        base = next((c for c in cells if c.n == n and c.variant == BASELINE), None)
        for cell in (c for c in cells if c.n == n):
            rate = cell.median("rate")
            client_cpu = cell.median("client_cpu_s")
            if not cell.samples:
                rows.append([cell.label, str(n), "failed", *["-"] * (len(headers) - 3)])
                continue
            deflate = cell.median("deflate_conns")
            rows.append(
                [
                    cell.label,
                    str(n),
                    fmt_rate(rate),
                    fmt(ratio(cell, base), ".2f"),
                    fmt(cell.median("p50_ms"), ".1f"),
                    fmt(cell.median("p99_ms"), ".1f"),
                    fmt(cell.median("server_cpu_s"), ".3f"),
                    fmt(client_cpu, ".3f") + saturation(cell),
                    fmt(cell.median("rss_per_conn_kib"), ".1f"),
                    fmt(cell.median("connect_s"), ".2f"),
                    *([f"{fmt(deflate, '.0f')}/{n}"] if compress else []),
                ]
            )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|"
        + "|".join(("-" * (w + 1) + ":") if i else "-" * (w + 2) for i, w in enumerate(widths))
        + "|",
    ]
    for row in rows:
        cols = [
            value.ljust(w) if i == 0 else value.rjust(w)
            for i, (value, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def burst_description(messages: int, rate: float | None, compress: bool) -> str:
    """How the measured burst was published, for the plot's title."""
    how = f"~100-byte messages paced at {rate:g}/s" if rate else "back-to-back ~100-byte messages"
    return f"{messages} {how}" + ("\n(clients offer permessage-deflate)" if compress else "")


def plot(cells: list[Cell], sizes: list[int], description: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(9, 5.5))
    labels = list(dict.fromkeys(c.label for c in cells))
    colors = plt.get_cmap("tab20")
    for index, label in enumerate(labels):
        points = sorted(
            (c.n, rate)
            for c in cells
            if c.label == label and (rate := c.median("rate")) is not None
        )
        if not points:
            continue
        ours = label.startswith("wsroom")
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            "-" if ours else "--",
            marker="o" if ours else "s",
            linewidth=2 if ours else 1.2,
            color=colors((2 * index) % 20 + (index // 10) % 2),
            label=label,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: axis_rate(value)))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("clients in the room (N)")
    ax.set_ylabel("deliveries per second (log)")
    ax.set_title(f"Fan-out to one room: {description}")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# Main.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="variants: " + ", ".join(VARIANTS),
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny N, a few seconds")
    parser.add_argument("--sizes", help="comma-separated N (default 100,1000,5000)")
    parser.add_argument("--messages", type=int, help="messages per burst (default 100)")
    parser.add_argument("--repeat", type=int, help="runs per cell, median reported (default 3)")
    parser.add_argument("--variants", help="comma-separated variants (default: all)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="plot deliveries/s against N (matplotlib)")
    parser.add_argument(
        "--replot",
        nargs="+",
        metavar="JSON",
        help="measure nothing: plot the cells of earlier --json outputs into --plot (a cell "
        "of a later file replaces the same variant and N of an earlier one)",
    )
    parser.add_argument("--redis-url", help="Redis for the multi-node variant")
    parser.add_argument(
        "--quickack",
        action="store_true",
        help="clients acknowledge every read at once (TCP_QUICKACK): shows what delayed ACKs "
        "cost a server; costs the client a system call per read",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample every server with py-spy during the measured burst (pip install py-spy); "
        "collapsed stacks go to DIR/<variant>-n<N>-r<round>-node<i>.txt",
    )
    parser.add_argument(
        "--compress",
        action="store_true",
        help="clients offer permessage-deflate, as browsers do; latency is sampled from up "
        f"to {INFLATED_CONNS} connections that inflate every message",
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="paced publishing: messages per second, each carrying its due time (default: "
        "back to back); --rate 1000 --messages 1000 is the latency run",
    )
    parser.add_argument(
        "--relay",
        action="store_true",
        help="the first client sends the burst and the server relays each message to the "
        "room (the chat pattern); only the variants whose server relays",
    )
    parser.add_argument(
        "--before",
        metavar="SRC",
        help="also run each wsroom variant with the wsroom of another checkout (its src "
        "directory on PYTHONPATH), side by side in every round: '<variant>@before' rows",
    )
    parser.add_argument(
        "--time-limit", type=float, help="seconds after which no new cell starts (default 1200)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.sizes = [int(s) for s in (args.sizes or ("5" if quick else "100,1000,5000")).split(",")]
    args.messages = args.messages or (10 if quick else 100)
    args.repeat = args.repeat or (1 if quick else 3)
    args.time_limit = args.time_limit or (60.0 if quick else 1200.0)
    names = args.variants.split(",") if args.variants else (QUICK_VARIANTS if quick else VARIANTS)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose among {', '.join(VARIANTS)}")
    args.variant_names = list(names)
    if min(args.sizes) < 1 or args.messages < 1 or args.repeat < 1:
        parser.error("sizes, messages and repeat must be positive")
    if args.rate is not None and not args.rate > 0:
        parser.error("rate must be positive")
    if args.relay and args.rate is not None:
        parser.error("--relay sends back to back: it does not combine with --rate")
    return args


def replot(paths: list[str], output: str) -> None:
    """Plot the cells of earlier ``--json`` outputs, later files winning."""
    cells: dict[tuple[str, int], Cell] = {}
    descriptions: list[str] = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        settings = data["settings"]
        descriptions.append(
            burst_description(settings["messages"], settings.get("rate"), settings["compress"])
        )
        for result in data["results"]:
            cell = Cell(result["variant"], result["label"], result["n"])
            cell.samples = [Sample(**run) for run in result["runs"]]
            cells[(cell.variant, cell.n)] = cell
    sizes = sorted({n for _, n in cells})
    # A size within 20% of the next one (4,500 next to 5,000) gets no tick of its own.
    ticks = [
        n
        for n, bigger in zip(sizes, [*sizes[1:], None], strict=True)
        if not bigger or bigger > 1.2 * n
    ]
    plot(list(cells.values()), ticks, descriptions[0], output)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("--plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return 2
    if args.replot:
        if not args.plot:
            print("--replot needs --plot PATH", file=sys.stderr)
            return 2
        replot(args.replot, args.plot)
        return 0
    limit = raise_open_file_limit()
    if max(args.sizes) + 100 > limit:
        print(f"open-file limit {limit} is too low for N={max(args.sizes)}", file=sys.stderr)
        return 2
    redis_url = redis_url_to_use(args.redis_url)
    selected: list[Variant] = []
    skipped: dict[str, str] = {}
    for name in args.variant_names:
        variant = VARIANTS[name]
        reason = missing(variant, redis_url)
        if reason is None and args.relay and not variant.relays:
            reason = "its server does not relay client messages (--relay)"
        if reason is None:
            selected.append(variant)
        else:
            skipped[name] = reason
    if args.before:
        # Each wsroom variant's twin on the other checkout's wsroom, right after it in
        # every round, so that before and after share the machine's conditions.
        src = (("PYTHONPATH", str(Path(args.before).resolve())),)
        selected = [
            twin
            for variant in selected
            for twin in (
                [variant]
                + (
                    [
                        replace(
                            variant,
                            name=f"{variant.name}@before",
                            label=f"{variant.label} (before)",
                            env=src,
                        )
                    ]
                    if variant.kind == "wsroom"
                    else []
                )
            )
        ]
    env = environment(redis_url if any(v.redis for v in selected) else None)
    print(f"wsroom fan-out benchmark: {args.messages} messages per burst, ", end="")
    print(f"sizes {args.sizes}, repeat {args.repeat}")
    print(
        "publishing: "
        + (
            "relayed: the first client sends the messages back to back, the server relays "
            "each to the room"
            if args.relay
            else f"paced, {args.rate:g} messages/s, each carrying its due time"
            if args.rate
            else "relayed: the first client sends them back to back, each carrying its "
            "creation time"
            if args.relay
            else "back to back, each message carrying its creation time"
        )
    )
    print(f"wsroom from {wsroom_source()}")
    print(
        "compression: "
        + (
            f"clients offer {DEFLATE_OFFER}; latency from up to {INFLATED_CONNS} "
            "connections that inflate every message"
            if args.compress
            else "off (no client offers permessage-deflate)"
        )
    )
    print(
        "python " + env["python"] + ", " + env["platform"] + f", {env['cpus']} CPUs ({env['cpu']})"
    )
    print(", ".join(f"{k} {v}" for k, v in env["packages"].items() if v is not None))
    if env.get("uvicorn_ws"):
        print(f"uvicorn WebSocket protocol: {env['uvicorn_ws']}")
    if env["redis_server"]:
        print(f"redis-server {env['redis_server']}")
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    sys.stdout.flush()

    started = time.monotonic()
    steal_before = steal_seconds()
    load_before = os.getloadavg()[0]
    cells = {(v.name, n): Cell(v.name, v.label, n) for n in args.sizes for v in selected}
    stopped_early = False
    for n in args.sizes:
        for round_ in range(args.repeat):
            for variant in selected:
                if time.monotonic() - started > args.time_limit:
                    stopped_early = True
                    break
                cell = cells[(variant.name, n)]
                needed = variant.files_per_connection * n + 100
                if needed > limit:
                    # It would fail after connecting thousands of clients: say why instead.
                    reason = f"needs about {needed:,} open files, the limit is {limit:,}"
                    if reason not in cell.errors:
                        cell.errors.append(reason)
                        print(f"  {variant.name} N={n}: not run: {reason}", file=sys.stderr)
                    continue
                try:
                    sample = run_once(
                        variant,
                        n,
                        args.messages,
                        redis_url,
                        quickack=args.quickack,
                        compress=args.compress,
                        rate=args.rate,
                        relay=args.relay,
                        profile=(
                            args.profile / f"{variant.name}-n{n}-r{round_}"
                            if args.profile is not None
                            else None
                        ),
                    )
                except BenchError as exc:
                    cell.errors.append(str(exc))
                    print(f"  {variant.name} N={n}: failed: {exc}", file=sys.stderr)
                    continue
                sample.repeat = round_
                cell.samples.append(sample)
                redis_cpu = (
                    f"  redis CPU {sample.redis_cpu_s:.2f} s"
                    if sample.redis_cpu_s is not None
                    else ""
                )
                deflate = (
                    f"  deflate {sample.deflate_conns}/{n}"
                    if sample.deflate_conns is not None
                    else ""
                )
                print(
                    f"  {variant.name:<17} N={n:<5} {fmt_rate(sample.rate):>7} deliveries/s"
                    f"  p99 {sample.p99_ms:7.1f} ms  server CPU {sample.server_cpu_s:5.3f} s"
                    f"  client CPU {sample.client_cpu_s:5.3f} s{redis_cpu}{deflate}",
                    flush=True,
                )
    steal_after = steal_seconds()
    stolen = (
        steal_after - steal_before if steal_after is not None and steal_before is not None else None
    )
    if stopped_early:
        print(f"time limit of {args.time_limit:.0f} s reached: some cells were not run")
    results = list(cells.values())
    print()
    print(table(results, args.sizes, compress=args.compress))
    print()
    print(
        f"medians of {args.repeat} run(s); 'x raw' is the median of the ratios to raw "
        "websockets.broadcast() at the same N in the same round; '!' marks a client-bound "
        f"figure (client CPU >= {CLIENT_BOUND:.0%} of the burst's wall time, server below), "
        "'~' one where client and server were both that busy (the server's figure may be "
        "understated)"
        + (
            "; 'deflate': connections of N on which the server accepted permessage-deflate"
            if args.compress
            else ""
        )
        + (
            "; paced run: latency (from each message's due time) is the figure, deliveries/s "
            "mostly the schedule's"
            if args.rate
            else ""
        )
    )
    print(
        f"machine: load average {load_before:.2f} at the start"
        + (
            f", {stolen:.1f} s of CPU stolen by the host during the run"
            if stolen is not None
            else ""
        )
        + f"; run took {time.monotonic() - started:.0f} s"
    )
    if args.json:
        output = {
            "environment": env,
            "settings": {
                "sizes": args.sizes,
                "messages": args.messages,
                "repeat": args.repeat,
                "variants": [v.name for v in selected],
                "skipped": skipped,
                "quickack": args.quickack,
                "compress": args.compress,
                "deflate_offer": DEFLATE_OFFER if args.compress else None,
                "inflated_conns": INFLATED_CONNS if args.compress else None,
                "rate": args.rate,
                "relay": args.relay,
                "before": args.before,
                "wsroom_src": wsroom_source(),
            },
            "machine": {"load_average_at_start": load_before, "steal_s": stolen},
            "results": [
                {
                    "variant": c.variant,
                    "label": c.label,
                    "n": c.n,
                    "median": {
                        name: c.median(name)
                        for name in Sample.__dataclass_fields__
                        if name != "repeat"
                    },
                    "ratio_to_raw": ratio(c, cells.get((BASELINE, c.n))),
                    "runs": [asdict(s) for s in c.samples],
                    "errors": c.errors,
                }
                for c in results
            ],
        }
        Path(args.json).write_text(json.dumps(output, indent=2) + "\n")
    if args.plot:
        description = burst_description(args.messages, args.rate, args.compress)
        plot(results, args.sizes, description, args.plot)
    failed = [c for c in results if not c.samples]
    return 1 if failed and not stopped_early else 0


if __name__ == "__main__":
    sys.exit(main())
