"""Shared test helpers: a protocol-speaking WebSocket client and servers under test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from wsroom import ConnectionManager, Handshake
from wsroom.frames import ANSWER_TYPES

# One timing unit for the whole suite, scaled for slow machines (WSROOM_TEST_TIMEOUT_FACTOR).
TIMEOUT = 5.0 * float(os.environ.get("WSROOM_TEST_TIMEOUT_FACTOR", "1"))

ROOT = Path(__file__).resolve().parent.parent

ServerFactory = Callable[[ConnectionManager], AbstractAsyncContextManager[str]]
"""Starts a real server for a manager on 127.0.0.1 (port 0) and yields its ws:// URL."""


@asynccontextmanager
async def websockets_asyncio_server(
    manager: ConnectionManager, **options: Any
) -> AsyncIterator[str]:
    """``wsroom.adapters.websockets.serve`` on 127.0.0.1; ``options`` go to ``websockets``
    (``ping_interval``, ``close_timeout``, ``max_size``...) or are ``shutdown_timeout``."""
    from wsroom.adapters.websockets import serve

    async with serve(manager, "127.0.0.1", 0, **options) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


@asynccontextmanager
async def websockets_sync_server(manager: ConnectionManager, **options: Any) -> AsyncIterator[str]:
    """The threading adapter. The manager runs on the test's event loop, as it would next
    to an asyncio application; the server's threads reach it across threads. ``options``
    go to ``websockets.sync.server.serve`` through ``SyncAdapter.options``."""
    from websockets.sync.server import serve as sync_serve

    from wsroom.adapters.websockets_sync import SyncAdapter

    await manager.start()
    adapter = SyncAdapter(manager)
    server = sync_serve(adapter.handler, "127.0.0.1", 0, **adapter.options(**options))
    thread = threading.Thread(target=server.serve_forever, name="sync-server", daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}"
    finally:
        await manager.shutdown()
        await asyncio.to_thread(server.shutdown)
        await asyncio.to_thread(thread.join, TIMEOUT)


@asynccontextmanager
async def starlette_server(manager: ConnectionManager, **options: Any) -> AsyncIterator[str]:
    """The Starlette adapter as a route endpoint, under uvicorn as
    ``wsroom.adapters.uvicorn`` runs it, on the test's loop; ``options`` go to
    ``uvicorn.Config`` (``ws="websockets-sansio"``, ``ws_ping_interval``...)."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    from wsroom.adapters import uvicorn as wsroom_uvicorn
    from wsroom.adapters.starlette import endpoint

    app = Starlette(routes=[WebSocketRoute("/{path:path}", endpoint(manager))])
    async with uvicorn_server(manager, app, **options) as server:
        assert isinstance(server, wsroom_uvicorn.Server)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


@asynccontextmanager
async def asgi_server(manager: ConnectionManager, **options: Any) -> AsyncIterator[str]:
    """The plain ASGI adapter (``wsroom.adapters.asgi.WSRoomApp``, every path), under
    uvicorn as ``wsroom.adapters.uvicorn`` runs it, on the test's loop; ``options`` go to
    ``uvicorn.Config``."""
    from wsroom.adapters.asgi import WSRoomApp

    async with uvicorn_server(manager, WSRoomApp(manager), **options) as server:
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


@asynccontextmanager
async def uvicorn_server(
    manager: ConnectionManager, app: Any, **options: Any
) -> AsyncIterator[Any]:
    """``app`` served by ``wsroom.adapters.uvicorn.Server`` on 127.0.0.1 (port 0), on the
    test's loop; ``options`` go to ``wsroom.adapters.uvicorn.config``. Yields the server."""
    from wsroom.adapters import uvicorn as wsroom_uvicorn

    server_options = {name: options.pop(name) for name in ("handshake_timeout",) if name in options}
    config = wsroom_uvicorn.config(
        app,
        manager,
        **{
            "host": "127.0.0.1",
            "port": 0,
            "log_level": "warning",
            "lifespan": "off",
            "timeout_graceful_shutdown": 2,
            **options,
        },
    )
    server = wsroom_uvicorn.Server(config, manager, **server_options)
    # Server.serve() polls for its exit every 0.1 s; driving startup and shutdown directly
    # keeps each of the hundreds of conformance tests fast.
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    try:
        yield server
    finally:
        await manager.shutdown()
        # What uvicorn's Server.shutdown() does, without its fixed 0.1 s pauses: stop
        # listening, ask each connection to shut down, wait for their tasks.
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            connection.shutdown()
        await wait_for(lambda: not server.server_state.tasks, interval=0.002)
        for listener in server.servers:
            await listener.wait_closed()


ADAPTERS: dict[str, ServerFactory] = {
    "websockets": websockets_asyncio_server,
    "websockets_sync": websockets_sync_server,
    "starlette": starlette_server,
    "asgi": asgi_server,
}


_connections_made = 0


def _next_compression() -> str | None:
    """Every other client offers permessage-deflate, as browsers do; the others offer no
    extension. Rooms in every test thus mix compressed connections, which servers frame per
    connection, with plain ones, which get frames shared by every recipient."""
    global _connections_made
    _connections_made += 1
    return "deflate" if _connections_made % 2 else None


class Client:
    """A test client speaking the wsroom protocol over a real WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ref = 0
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def connect(
        cls,
        url: str,
        path: str = "/ws",
        *,
        subprotocols: list[str] | None = None,
        welcome: bool = True,
        **kwargs: Any,
    ) -> Client:
        offered = ["wsroom.v1"] if subprotocols is None else subprotocols
        kwargs.setdefault("compression", _next_compression())
        ws = await websockets.connect(
            url + path,
            # An empty list would send an empty Sec-WebSocket-Protocol header: send none.
            subprotocols=[Subprotocol(p) for p in offered] or None,
            open_timeout=TIMEOUT,
            **kwargs,
        )
        client = cls(ws)
        if welcome:
            client.welcome = await client.recv()
            assert client.welcome["type"] == "welcome", client.welcome
        return client

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), "the server must send text frames"
        frame = json.loads(raw)
        assert isinstance(frame, dict) and isinstance(frame.get("type"), str), frame
        return frame

    async def recv_type(self, type_: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout=timeout)
                if frame["type"] == type_:
                    return frame

    async def expect_nothing(self, wait: float = 0.2) -> None:
        """Assert no frame arrives: a ping round trip proves everything before it was sent."""
        ref = f"quiet-{self.next_ref()}"
        await self.send({"type": "ping", "ref": ref})
        frame = await self.recv()
        assert frame == {"type": "pong", "ref": ref}, f"unexpected frame {frame}"

    def next_ref(self) -> int:
        self._ref += 1
        return self._ref

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send with a fresh ref; return the direct answer (frames before it are skipped)."""
        ref = self.next_ref()
        await self.send({**frame, "ref": ref})
        async with asyncio.timeout(TIMEOUT):
            while True:
                answer = await self.recv()
                if answer.get("ref") == ref and answer["type"] in ANSWER_TYPES:
                    return answer

    async def join(self, room: str, **fields: Any) -> dict[str, Any]:
        answer = await self.request({"type": "join", "room": room, **fields})
        assert answer["type"] == "joined", answer
        return answer

    async def close(self) -> None:
        await self.ws.close()

    async def wait_closed(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server closes; return the close code it sent."""
        async with asyncio.timeout(timeout):
            try:
                while True:
                    await self.ws.recv()
            except websockets.ConnectionClosed:
                pass
        rcvd = self.ws.protocol.close_rcvd
        return rcvd.code if rcvd is not None else None

    async def recv_answer(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Skip broadcasts and events; return the next direct answer (joined, left, ack, ...)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout=timeout)
                if frame["type"] in ANSWER_TYPES:
                    return frame

    async def expect_close(self, timeout: float = TIMEOUT) -> int | None:
        """Assert the server closes before sending any other frame; return its close code."""
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed:
            rcvd = self.ws.protocol.close_rcvd
            return rcvd.code if rcvd is not None else None
        raise AssertionError(f"expected the server to close, got the frame {raw!r}")


async def wait_for(
    predicate: Callable[[], bool], timeout: float = TIMEOUT, interval: float = 0.01
) -> None:
    """Poll a condition that has no event to await (server-side state seen from a test)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - server state has no event to await
            await asyncio.sleep(interval)


def adapter_name(factory: ServerFactory) -> str:
    """The name of a ``start_server`` factory in :data:`ADAPTERS`."""
    for name, candidate in ADAPTERS.items():
        if candidate is factory:
            return name
    return getattr(factory, "__name__", repr(factory))


def single_node_only(factory: ServerFactory, why: str) -> None:
    """Skip a test that reads one node's server-side state when clients span two nodes."""
    if adapter_name(factory) == "two_nodes_over_redis":
        import pytest

        pytest.skip(f"{why}: asserts on the test's own node, clients alternate between two")


def user_from_query(handshake: Handshake) -> str | None:
    """An ``authenticate`` hook: the user id is the ``user`` query parameter (none: HTTP 401)."""
    return handshake.query.get("user") or None


async def connect_as(url: str, user: str, **kwargs: Any) -> Client:
    """Connect as ``user`` to a manager whose ``authenticate`` is :func:`user_from_query`."""
    return await Client.connect(url, f"/ws?user={user}", **kwargs)


async def connect_raw(url: str, path: str = "/ws", **kwargs: Any) -> ClientConnection:
    """A plain ``websockets`` client: no subprotocol offered unless given, welcome not read."""
    return await websockets.connect(url + path, open_timeout=TIMEOUT, **kwargs)


@asynccontextmanager
async def websockets_handler_server(
    manager: ConnectionManager, *, checks: bool = False
) -> AsyncIterator[str]:
    """A ``websockets`` server running ``WebsocketsAdapter(manager).handler``.

    With ``checks=False`` it is started with no options at all, so nothing runs before the
    upgrade (the handler's own fallback checks apply); with ``checks=True`` it gets the
    adapter's ``options()``. Unlike the adapter's ``serve``, it does not start the manager:
    the first connection does.
    """
    from websockets.asyncio.server import serve

    from wsroom.adapters.websockets import WebsocketsAdapter

    adapter = WebsocketsAdapter(manager)
    options = adapter.options() if checks else {}
    async with serve(adapter.handler, "127.0.0.1", 0, **options) as server:
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"ws://127.0.0.1:{port}"
        finally:
            await manager.shutdown()


# The exact fields of each server frame type (PROTOCOL.md, "Server to client").
SERVER_FRAME_FIELDS: dict[str, frozenset[str]] = {
    "welcome": frozenset({"type", "connection", "user", "protocol", "heartbeat"}),
    "joined": frozenset({"type", "room", "ref", "members", "history", "offset", "epoch"}),
    "left": frozenset({"type", "room", "ref"}),
    "message": frozenset({"type", "room", "id", "from", "data", "ts"}),
    "direct": frozenset({"type", "id", "from", "data", "ts"}),
    "presence": frozenset({"type", "room", "event", "user"}),
    "gap": frozenset({"type", "room", "epoch", "offset"}),
    "ack": frozenset({"type", "ref"}),
    "pong": frozenset({"type", "ref"}),
    "error": frozenset({"type", "code", "message", "ref"}),
}
SERVER_FRAME_OPTIONAL_FIELDS: dict[str, frozenset[str]] = {
    "joined": frozenset({"recovered"}),
    "ack": frozenset({"id", "data"}),
}
ERROR_CODES = frozenset(
    {
        "invalid_json",
        "invalid_message",
        "unknown_type",
        "not_joined",
        "forbidden",
        "room_full",
        "user_offline",
        "rate_limited",
        "internal_error",
    }
)


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_ref(value: object) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= 64) or _is_int(value)


def check_frame(frame: dict[str, Any], type_: str | None = None) -> dict[str, Any]:
    """Assert a server frame has exactly the fields PROTOCOL.md gives its type; return it."""
    kind = frame["type"]
    if type_ is not None:
        assert kind == type_, frame
    assert kind in SERVER_FRAME_FIELDS, f"not a protocol frame: {frame}"
    required = SERVER_FRAME_FIELDS[kind]
    optional = SERVER_FRAME_OPTIONAL_FIELDS.get(kind, frozenset())
    keys = set(frame)
    assert required <= keys, f"{kind} misses {sorted(required - keys)}: {frame}"
    assert keys <= required | optional, f"{kind} has extra {sorted(keys - required - optional)}"
    if "ref" in frame:
        assert _is_ref(frame["ref"]), frame
    if kind == "welcome":
        assert isinstance(frame["connection"], str), frame
        assert frame["connection"], frame
        assert frame["user"] is None or isinstance(frame["user"], str), frame
        assert _is_int(frame["protocol"]), frame
        heartbeat = frame["heartbeat"]
        assert heartbeat is None or isinstance(heartbeat, int | float), frame
    elif kind == "joined":
        assert isinstance(frame["room"], str), frame
        assert isinstance(frame["members"], list), frame
        assert all(isinstance(user, str) for user in frame["members"]), frame
        assert isinstance(frame["history"], list), frame
        for message in frame["history"]:
            check_frame(message, "message")
            assert message["room"] == frame["room"], frame
        ids = [message["id"] for message in frame["history"]]
        assert ids == sorted(set(ids)), f"history not oldest first: {ids}"
        assert _is_int(frame["offset"]), frame
        assert frame["offset"] >= 0, frame
        assert not ids or ids[-1] <= frame["offset"], frame
        assert isinstance(frame["epoch"], str), frame
        assert frame["epoch"], frame
        if "recovered" in frame:
            assert isinstance(frame["recovered"], bool), frame
    elif kind in ("message", "direct"):
        assert _is_int(frame["id"]), frame
        assert frame["id"] >= 1, frame
        assert frame["from"] is None or isinstance(frame["from"], str), frame
        assert _is_int(frame["ts"]), frame
        if kind == "message":
            assert isinstance(frame["room"], str), frame
    elif kind == "presence":
        assert isinstance(frame["room"], str), frame
        assert frame["event"] in ("join", "leave"), frame
        assert isinstance(frame["user"], str), frame
    elif kind == "ack":
        if "id" in frame:
            assert _is_int(frame["id"]), frame
        if "data" in frame:
            # Only an application's answer: a handler that answered nothing sends no data.
            assert frame["data"] is not None, frame
    elif kind == "error":
        assert frame["code"] in ERROR_CODES, frame
        assert isinstance(frame["message"], str), frame
        assert frame["message"], frame
    return frame


def check_error(frame: dict[str, Any], code: str, ref: str | int | None = None) -> dict[str, Any]:
    """Assert ``frame`` is an ``error`` with ``code`` echoing ``ref``; return it."""
    check_frame(frame, "error")
    assert frame["code"] == code, frame
    assert frame["ref"] == ref, frame
    assert type(frame["ref"]) is type(ref), frame
    return frame


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server that must be told its port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def demo_command(
    *arguments: str, port: int | None = None
) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    """``python -m wsroom demo --port PORT ARGUMENTS`` in a process of its own, once it has
    announced its address; yields its port and process. The test stops it (a signal) and
    checks how it ended; one still running at the end is killed."""
    port = free_port() if port is None else port
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsroom",
        "demo",
        "--port",
        str(port),
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT * 2)
        assert f"http://127.0.0.1:{port}/".encode() in line, line
        yield port, process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


class ExampleProcess:
    """A program under test started with one command, and everything it printed so far."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.output: list[str] = []
        self._printed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.port = 0

    async def _read(self) -> None:
        # Read until the end, so that a chatty server never blocks on a full pipe.
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.output.append(line.decode(errors="replace"))
            self._printed.set()
        self._printed.set()

    async def wait_output(self, text: str, count: int = 1) -> str:
        """Wait until ``text`` occurs in ``count`` lines of the output; return the last one."""
        async with asyncio.timeout(TIMEOUT * 2):
            while True:
                found = [line for line in self.output if text in line]
                if len(found) >= count:
                    return found[count - 1]
                if self._reader.done():
                    raise AssertionError(f"exited before printing {text!r}:\n{self.log}")
                self._printed.clear()
                await self._printed.wait()

    @property
    def log(self) -> str:
        return "".join(self.output)

    async def stop(self, signum: int = signal.SIGINT) -> int:
        """Send ``signum`` and return the exit status once the process has exited."""
        self.process.send_signal(signum)
        returncode = await asyncio.wait_for(self.process.wait(), TIMEOUT * 2)
        await asyncio.wait_for(self._reader, TIMEOUT)
        return returncode


@asynccontextmanager
async def example_command(
    *command: str, ready: str = "127.0.0.1:", env: dict[str, str] | None = None
) -> AsyncIterator[ExampleProcess]:
    """Run ``command`` (``python -m examples.chat 0``...) from the repository's root, its
    output and errors merged, until it prints a line holding ``ready`` and
    ``127.0.0.1:<port>``; yield it with that port. What is left of it at the end (its
    process group: uvicorn's workers too) is killed."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        start_new_session=True,  # its own process group, to kill with whatever it started
    )
    example = ExampleProcess(process)
    try:
        line = await example.wait_output(ready)
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match is not None, line
        example.port = int(match[1])
        yield example
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        # wait() also waits for the output pipe, which workers of the process may hold.
        await asyncio.wait_for(process.wait(), TIMEOUT)
        example._reader.cancel()


async def http_request(
    port: int, path: str, *, method: str = "GET", headers: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request to 127.0.0.1:``port`` over a socket of its own (``headers``:
    extra header lines, each ending in CRLF); the status, the response's headers (names in
    lower case) and its body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}"
        writer.write(f"{head}Connection: close\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
    raw_head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = raw_head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status_line.split(" ", 2)[1]), fields, body


# A client that stopped reading, and a room published to until it falls behind (the admin
# view's tests).


def stuck_reader(port: int, path: str, room: str) -> socket.socket:
    """A raw client that completes the handshake at ``path``, joins ``room`` and never
    reads again, with a 4 KiB receive buffer so that the server's queue for it fills soon.
    Blocking: call it with ``asyncio.to_thread``."""
    import base64

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response[:100]
    payload = json.dumps({"type": "join", "room": room, "ref": 1}).encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


async def fall_behind(
    manager: ConnectionManager, room: str, done: Callable[[], bool], size: int = 60_000
) -> None:
    """Publish ``size``-byte messages to ``room`` until ``done()`` (frames waiting in a
    stuck reader's queue, or its eviction), at most 2000 of them and within 2 TIMEOUTs."""
    chunk = "x" * size
    async with asyncio.timeout(TIMEOUT * 2):
        for _ in range(2000):
            if done():
                return
            await manager.broadcast(room, chunk)
            await asyncio.sleep(0)
    assert done()
