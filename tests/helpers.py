"""Shared test helpers: the servers under test, and the conformance suite's client.

The client and the frame checks live in the package (``wsroom.conformance``), which the
authors of adapters run; they are re-exported here for the project's other tests."""

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
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from wsroom import ConnectionManager
from wsroom.conformance import ServerFactory
from wsroom.conformance._client import (
    TIMEOUT,
    Client,
    connect_as,
    connect_raw,
    user_from_query,
    wait_for,
)
from wsroom.conformance._frames import (
    ERROR_CODES,
    SERVER_FRAME_FIELDS,
    SERVER_FRAME_OPTIONAL_FIELDS,
    check_error,
    check_frame,
)

# The conformance suite's helpers, which the project's other tests import from here.
__all__ = [
    "ERROR_CODES",
    "SERVER_FRAME_FIELDS",
    "SERVER_FRAME_OPTIONAL_FIELDS",
    "TIMEOUT",
    "Client",
    "ServerFactory",
    "check_error",
    "check_frame",
    "connect_as",
    "connect_raw",
    "user_from_query",
    "wait_for",
]

ROOT = Path(__file__).resolve().parent.parent


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


@asynccontextmanager
async def aiohttp_server(manager: ConnectionManager, **options: Any) -> AsyncIterator[str]:
    """``wsroom.adapters.aiohttp.setup`` in an ``aiohttp.web`` application on 127.0.0.1, on
    the test's loop, stopped as ``web.run_app`` stops it (the manager's graceful shutdown
    first); ``options`` go to ``setup`` (``heartbeat``, ``compress``...)."""
    from aiohttp import web

    from wsroom.adapters import aiohttp as wsroom_aiohttp

    app = web.Application()
    # Every path, as the other factories serve: tests connect to /ws and to paths of their own.
    wsroom_aiohttp.setup(app, manager, "/{path:.*}", **options)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        sockets = runner.addresses
        yield f"ws://127.0.0.1:{sockets[0][1]}"
    finally:
        await runner.cleanup()


ADAPTERS: dict[str, ServerFactory] = {
    "websockets": websockets_asyncio_server,
    "websockets_sync": websockets_sync_server,
    "starlette": starlette_server,
    "asgi": asgi_server,
    "aiohttp": aiohttp_server,
}


def adapter_name(factory: ServerFactory) -> str:
    """The name of a ``start_server`` factory in :data:`ADAPTERS`."""
    for name, candidate in ADAPTERS.items():
        if candidate is factory:
            return name
    return getattr(factory, "__name__", repr(factory))


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
