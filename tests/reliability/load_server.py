"""A server under load in a process of its own, for the load and soak scenarios.

    python -m tests.reliability.load_server ADAPTER [--redis-url URL --prefix P] [--name N]
        [--anonymous] [--echo N]

ADAPTER is one of :data:`ADAPTERS`: wsroom on each of its three adapters, or the raw
transport under it (an echo server, ``--echo N`` copies of each message: the baseline a
figure is compared with). Clients connect to ``ws://127.0.0.1:<port>/ws?user=<id>``
(``/ws`` with ``--anonymous``). The process listens on 127.0.0.1 on a free port, prints
``READY <port>``, then answers one JSON command per line of its standard input with one
JSON line on its standard output:

``{"op": "stats"}``
    what the process holds, seen from inside: ``connections``, ``rooms``, ``memberships``,
    ``users``, ``queued_bytes``, ``messages_published``, ``evictions`` (wsroom's own
    counters; a raw server has ``connections`` only), ``tasks`` (asyncio tasks of the main
    loop, a 10 ms event-loop lag ticker included), ``threads`` (Python threads),
    ``loop_lag_p99_ms`` and ``loop_lag_max_ms`` (how late the ticker ran since the
    previous ``stats``), and ``errors`` (log records at ERROR or above and event-loop
    exception reports, "Task exception was never retrieved" included) with the first few
    in ``error_samples``;
``{"op": "publish", "room": R, "count": K, "rate": F, "pad": P}``
    publish ``K`` messages to room ``R`` from the server, message ``i`` due ``i / F``
    seconds after the start (back to back when late), each carrying its due time, its
    sequence number in this room and this node's name (:func:`tests.reliability.probes.
    message_data`'s fields); answers ``published``, ``seconds`` and the publish loop's
    lateness, ``late_p99_ms`` and ``late_max_ms``, and ``last``, the sequence number of
    the last message (they number on from one command to the next). A raw asyncio server
    publishes to every client with ``websockets.broadcast()``;
``{"op": "kick", "user": U}``
    ``manager.disconnect_user(U)``; answers ``closed``, the connections closed here;
``{"op": "heap"}``
    start ``tracemalloc`` if it is not tracing yet; answers ``traced``, the bytes traced
    and alive after a full garbage collection (the growth since the first ``heap``);
``{"op": "heap_stop"}``
    stop ``tracemalloc``;
``{"op": "quit"}`` (or the end of the input)
    shut down gracefully and exit.

Tests drive it with :func:`load_server`. RSS, file descriptors and CPU time are read from
outside with :func:`tests.reliability.probes.process_snapshot`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

from tests.reliability.probes import (
    HeapTracker,
    LoopLag,
    ProcessSnapshot,
    percentile,
    process_snapshot,
)

ADAPTERS = (
    "websockets",
    "websockets_sync",
    "starlette",
    "raw_websockets",
    "raw_sync",
    "raw_starlette",
)
"""wsroom on each adapter, then the bare transport each one runs on."""

BASELINE = {
    "websockets": "raw_websockets",
    "websockets_sync": "raw_sync",
    "starlette": "raw_starlette",
}
"""The raw transport under each wsroom adapter."""

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 120.0


# The server side.


class ErrorCounter(logging.Handler):
    """Counts log records at ERROR or above, and keeps the first few."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.samples: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.samples) < 5:
            self.samples.append(f"{record.name}: {record.getMessage()}"[:500])


class Node:
    """One server process's state: the server, its manager (wsroom) or clients (raw)."""

    def __init__(self, adapter: str, name: str, errors: ErrorCounter, echo: int = 1) -> None:
        self.adapter = adapter
        self.name = name
        self.echo = echo
        self.errors = errors
        self.manager: Any = None
        self.raw_clients: set[Any] = set()
        self.raw_lock = threading.Lock()
        self.sequences: dict[str, int] = {}
        self.stop = asyncio.Event()
        self.lag: LoopLag | None = None

    # Raw handlers: hold the connection, echo what the client sends (``echo`` times).

    async def raw_handler(self, ws: Any) -> None:
        self.raw_clients.add(ws)
        try:
            async for message in ws:
                for _ in range(self.echo):
                    await ws.send(message)
        except Exception:
            pass
        finally:
            self.raw_clients.discard(ws)

    def raw_sync_handler(self, ws: Any) -> None:
        with self.raw_lock:
            self.raw_clients.add(ws)
        try:
            for message in ws:
                for _ in range(self.echo):
                    ws.send(message)
        except Exception:
            pass
        finally:
            with self.raw_lock:
                self.raw_clients.discard(ws)

    async def raw_endpoint(self, websocket: Any) -> None:
        from starlette.websockets import WebSocketDisconnect

        await websocket.accept()
        self.raw_clients.add(websocket)
        try:
            while True:
                message = await websocket.receive_text()
                for _ in range(self.echo):
                    await websocket.send_text(message)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            self.raw_clients.discard(websocket)

    # Commands.

    def stats(self) -> dict[str, Any]:
        lags = self.lag.take() if self.lag is not None else []
        answer: dict[str, Any] = {
            "loop_lag_p99_ms": 1000 * percentile(lags, 0.99) if lags else 0.0,
            "loop_lag_max_ms": 1000 * max(lags, default=0.0),
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "errors": self.errors.count,
            "error_samples": self.errors.samples,
        }
        if self.manager is None:
            with self.raw_lock:
                answer["connections"] = len(self.raw_clients)
            return answer
        stats = self.manager.statistics()
        answer.update(
            connections=stats.connections,
            users=stats.users,
            rooms=stats.rooms,
            memberships=sum(len(self.manager.connections_in(r)) for r in self.manager.rooms()),
            queued_bytes=stats.queued_bytes,
            messages_published=stats.messages_published,
            evictions=stats.evictions,
        )
        return answer

    async def publish(self, room: str, count: int, rate: float, pad: str) -> dict[str, Any]:
        from websockets.asyncio.server import broadcast

        late: list[float] = []
        start = time.time()
        first = self.sequences.get(room, 0) + 1
        for index in range(count):
            due = start + index / rate
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            late.append(max(0.0, time.time() - due))
            data = {"t": due, "i": first + index, "src": self.name, "p": pad}
            if self.manager is not None:
                await self.manager.broadcast(room, data)
            elif self.adapter == "raw_websockets":
                broadcast(self.raw_clients, json.dumps(data))
            else:
                raise ValueError(f"{self.adapter} cannot publish")
        self.sequences[room] = first + count - 1
        return {
            "published": count,
            "last": first + count - 1,
            "seconds": time.time() - start,
            "late_p99_ms": 1000 * percentile(late, 0.99) if late else 0.0,
            "late_max_ms": 1000 * max(late, default=0.0),
        }

    async def command(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "stats":
            return self.stats()
        if op == "publish":
            return await self.publish(
                request["room"],
                int(request["count"]),
                float(request["rate"]),
                request.get("pad", ""),
            )
        if op == "kick":
            return {"closed": await self.manager.disconnect_user(request["user"])}
        if op == "heap":
            if not tracemalloc.is_tracing():
                tracemalloc.start()
            return {"traced": HeapTracker.traced()}
        if op == "heap_stop":
            tracemalloc.stop()
            return {}
        raise ValueError(f"unknown command {op!r}")


def user_from_query(handshake: Any) -> str | None:
    user: str | None = handshake.query.get("user") or None
    return user


def listening_socket() -> socket.socket:
    """127.0.0.1 on a free port, with a backlog for thousands of clients.

    Made with ``proto=IPPROTO_TCP``, as asyncio makes its own: asyncio disables Nagle's
    algorithm only on connections accepted from such a socket, and one from
    ``socket.create_server()`` (``proto`` 0) left a frame written right after another
    waiting for the client's delayed acknowledgement, up to 40 ms.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    return sock


async def serve_uvicorn(app: Any, sock: socket.socket, node: Node) -> None:
    import uvicorn

    options: dict[str, Any] = {
        "log_level": "warning",
        "lifespan": "off",
        "access_log": False,
        "timeout_graceful_shutdown": 2,
    }
    server: uvicorn.Server
    if node.manager is None:  # the bare transport, for the baselines
        server = uvicorn.Server(uvicorn.Config(app, **options))
    else:  # wsroom, the supported way
        from wsroom.adapters import uvicorn as wsroom_uvicorn

        config = wsroom_uvicorn.config(app, node.manager, **options)
        server = wsroom_uvicorn.Server(config, node.manager)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn has no event
        await asyncio.sleep(0.01)
    try:
        yield_ready(sock)
        await node.stop.wait()
    finally:
        server.should_exit = True
        await task


def yield_ready(sock: socket.socket) -> None:
    print(f"READY {sock.getsockname()[1]}", flush=True)


async def control(node: Node) -> None:
    """Answer the commands on standard input until ``quit`` or its end."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        request = json.loads(line)
        if request.get("op") == "quit":
            break
        try:
            answer = await node.command(request)
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    node.stop.set()


async def run(args: argparse.Namespace) -> None:
    async with contextlib.AsyncExitStack() as stack:
        await serve_node(args, stack)


async def serve_node(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> None:
    errors = ErrorCounter()
    # Warnings and errors go to standard error as usual; errors are also counted (the
    # event loop's exception reports are ERROR records of the "asyncio" logger).
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger().addHandler(errors)
    node = Node(args.adapter, args.name, errors, args.echo)
    controller = asyncio.create_task(control(node))
    node.lag = await stack.enter_async_context(LoopLag())
    sock = listening_socket()
    adapter = args.adapter
    if not adapter.startswith("raw_"):
        from wsroom import ConnectionManager, Limits

        backplane = None
        if args.redis_url:
            from wsroom.backplane.redis import RedisBackplane

            backplane = RedisBackplane(
                args.redis_url, prefix=args.prefix, heartbeat=0.5, node_ttl=3
            )
        node.manager = ConnectionManager(
            authenticate=None if args.anonymous else user_from_query,
            backplane=backplane,
            limits=Limits.without_rate_limits(),
        )
    try:
        if adapter == "websockets":
            from wsroom.adapters.websockets import serve

            async with serve(node.manager, sock=sock, shutdown_timeout=2):
                yield_ready(sock)
                await node.stop.wait()
        elif adapter == "websockets_sync":
            await serve_sync(node, sock, wsroom=True)
        elif adapter == "starlette":
            from starlette.applications import Starlette
            from starlette.routing import WebSocketRoute

            from wsroom.adapters.starlette import endpoint

            app = Starlette(routes=[WebSocketRoute("/{path:path}", endpoint(node.manager))])
            try:
                await serve_uvicorn(app, sock, node)
            finally:
                await node.manager.shutdown(2)
        elif adapter == "raw_websockets":
            from websockets.asyncio.server import serve as ws_serve

            async with ws_serve(node.raw_handler, sock=sock):
                yield_ready(sock)
                await node.stop.wait()
        elif adapter == "raw_sync":
            await serve_sync(node, sock, wsroom=False)
        elif adapter == "raw_starlette":
            from starlette.applications import Starlette
            from starlette.routing import WebSocketRoute

            app = Starlette(routes=[WebSocketRoute("/{path:path}", node.raw_endpoint)])
            await serve_uvicorn(app, sock, node)
        else:
            raise SystemExit(f"unknown adapter {adapter!r}")
    finally:
        controller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await controller


async def serve_sync(node: Node, sock: socket.socket, *, wsroom: bool) -> None:
    """A ``websockets.sync`` server in a thread; wsroom's manager runs on this loop."""
    from websockets.sync.server import serve as sync_serve

    if wsroom:
        from wsroom.adapters.websockets_sync import SyncAdapter

        await node.manager.start()
        adapter = SyncAdapter(node.manager)
        server = sync_serve(adapter.handler, sock=sock, **adapter.options())
    else:
        server = sync_serve(node.raw_sync_handler, sock=sock)
    thread = threading.Thread(target=server.serve_forever, name="sync-server", daemon=True)
    thread.start()
    try:
        yield_ready(sock)
        await node.stop.wait()
    finally:
        if wsroom:
            await node.manager.shutdown(2)
        await asyncio.to_thread(server.shutdown)
        await asyncio.to_thread(thread.join, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description="a server under load (reliability suite)")
    parser.add_argument("adapter", choices=ADAPTERS)
    parser.add_argument("--redis-url")
    parser.add_argument("--prefix", default="wsroom")
    parser.add_argument("--name", default="node0")
    parser.add_argument(
        "--echo", type=int, default=1, help="raw servers: copies sent back of each message"
    )
    parser.add_argument(
        "--anonymous", action="store_true", help="no authenticate hook: every client anonymous"
    )
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))


# The test side.


class LoadServer:
    """A running :mod:`tests.reliability.load_server` process, from :func:`load_server`."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, stderr: IO[bytes]) -> None:
        self.process = process
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"
        self._stderr = stderr
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        return self.process.pid

    async def command(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one command; its answer (an ``error`` answer raises)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        async with self._lock:
            self.process.stdin.write(json.dumps({"op": op, **fields}).encode() + b"\n")
            await self.process.stdin.drain()
            line = await asyncio.wait_for(self.process.stdout.readline(), COMMAND_TIMEOUT)
        if not line:
            raise RuntimeError(f"the server exited: {self.stderr()[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"{op}: {answer['error']}")
        return answer

    async def stats(self) -> dict[str, Any]:
        """The ``stats`` command's answer."""
        return await self.command("stats")

    async def wait_stats(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        """Poll ``stats`` until ``predicate`` holds (another process's state: no event)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"server state not reached in {timeout} s: {stats}")
            await asyncio.sleep(0.02)

    def snapshot(self) -> ProcessSnapshot:
        """RSS, file descriptors, threads and CPU time of the process."""
        return process_snapshot(self.pid)

    async def kill(self) -> None:
        """Kill the process now (SIGKILL): for a server whose shutdown is not under test."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def stderr(self) -> str:
        """What the process wrote on its standard error so far."""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")


@asynccontextmanager
async def load_server(
    adapter: str,
    *,
    redis_url: str | None = None,
    prefix: str | None = None,
    name: str = "node0",
    anonymous: bool = False,
    echo: int = 1,
    env: dict[str, str] | None = None,
) -> AsyncIterator[LoadServer]:
    """Start a load server for ``adapter`` (one of :data:`ADAPTERS`), wait for it to
    listen, and stop it gracefully on exit (killed after 10 s). ``anonymous``: no
    authenticate hook, every client is anonymous (no presence traffic). ``echo``: a raw
    server sends each message back that many times."""
    args = [adapter, "--name", name, "--echo", str(echo), *(["--anonymous"] if anonymous else [])]
    if redis_url is not None:
        args += ["--redis-url", redis_url, "--prefix", prefix or "wsroom"]
    with tempfile.TemporaryFile() as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.reliability.load_server",
            *args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT)
            if not line.startswith(b"READY "):
                stderr.seek(0)
                raise RuntimeError(f"{adapter} did not start: {stderr.read().decode()[-2000:]}")
            yield LoadServer(process, int(line.split()[1]), stderr)
        finally:
            await _stop(process)


@asynccontextmanager
async def load_servers(adapter: str, count: int, **options: Any) -> AsyncIterator[list[LoadServer]]:
    """``count`` load servers named ``node0``, ``node1``... started at once (``options`` as
    for :func:`load_server`: give them one Redis and one prefix to make a cluster)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(index: int) -> LoadServer:
            server = load_server(adapter, name=f"node{index}", **options)
            return await stack.enter_async_context(server)

        async with asyncio.TaskGroup() as group:
            started = [group.create_task(start(index)) for index in range(count)]
        yield [task.result() for task in started]


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(OSError, RuntimeError):
            assert process.stdin is not None
            process.stdin.write(b'{"op": "quit"}\n')
            await process.stdin.drain()
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


if __name__ == "__main__":
    main()
