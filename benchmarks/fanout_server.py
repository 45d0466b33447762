"""One server of the fan-out benchmark, in a process of its own (started by fanout.py).

    python benchmarks/fanout_server.py VARIANT [--redis-url URL --prefix P --cleanup]

It listens on 127.0.0.1 on a free port, prints ``READY <port>``, then obeys one command
per line on its standard input and answers each on its standard output:

``COUNT n``
    wait until exactly ``n`` clients are in the room (``OK n``, or ``TIMEOUT k``);
``BURST k [rate]``
    publish ``k`` messages back to back, each carrying its creation time (``SENT <s>``);
    with a rate (messages per second), message ``i`` is published when it is due, ``i /
    rate`` seconds after the start, and carries its due time instead: a publisher that
    falls behind pays for it in latency;
``CPU``
    answer ``CPU <seconds>``: the process's CPU time so far, every thread included;
``QUIT`` (or end of input)
    exit at once.

Every variant publishes from the server itself, the way an application pushes an event
to a room; only the way the frames reach the sockets differs. Every server runs with its
library's defaults, permessage-deflate included: a client that offers it gets it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import resource
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

ROOM = "bench"
PAD = "x" * 56  # the JSON payload is about 100 bytes
COUNT_TIMEOUT = 120.0


def payload(index: int, due: float | None = None) -> dict[str, Any]:
    """The message: its creation time (or its due time, when paced) first, so the client
    finds it without a JSON parser."""
    return {"t": time.time() if due is None else due, "i": index, "p": PAD}


def schedule(messages: int, rate: float | None) -> Iterator[tuple[int, float | None, float]]:
    """Each message's index, due time and the seconds to wait before publishing it, worked
    out when the previous one is done: back to back (no due time) when ``rate`` is ``None``;
    else message ``i`` is due ``i / rate`` seconds after the start (no wait when late)."""
    if rate is None:
        for i in range(messages):
            yield i, None, 0.0
        return
    start = time.time()
    for i in range(messages):
        due = start + i / rate
        yield i, due, due - time.time()


async def paced(messages: int, rate: float | None) -> AsyncIterator[dict[str, Any]]:
    """The messages of a burst, for an asyncio publisher (see :func:`schedule`), each
    carrying its due time when paced."""
    for i, due, delay in schedule(messages, rate):
        if delay > 0:
            await asyncio.sleep(delay)
        yield payload(i, due)


def paced_sync(messages: int, rate: float | None) -> Iterator[dict[str, Any]]:
    """:func:`paced` for a publishing thread: ``time.sleep`` until each message is due."""
    for i, due, delay in schedule(messages, rate):
        if delay > 0:
            time.sleep(delay)
        yield payload(i, due)


def text_frame(data: bytes) -> bytes:
    """An unmasked text frame, as a server sends it."""
    length = len(data)
    if length < 126:
        return bytes([0x81, length]) + data
    if length < 65536:
        return bytes([0x81, 126]) + length.to_bytes(2, "big") + data
    return bytes([0x81, 127]) + length.to_bytes(8, "big") + data


WANTED_FILES = 65_536


def raise_open_file_limit() -> int:
    """Raise the open-file limit to 65,536 (the hard limit too, where this user may: the
    websockets sync server holds four descriptors per connection), else to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = hard == resource.RLIM_INFINITY
    attempts = [(WANTED_FILES, hard if unlimited else max(hard, WANTED_FILES))]
    if not unlimited:
        attempts.append((hard, hard))
    for limits in attempts:
        if limits[0] <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def listening_socket() -> socket.socket:
    """127.0.0.1 on a free port, with a backlog for thousands of clients."""
    return socket.create_server(("127.0.0.1", 0), backlog=4096)


class Variant:
    """What the control loop needs from a server: how many are in the room, and publish."""

    # Messages per second of the burst in progress (set by ``BURST k rate``); ``None``:
    # back to back.
    rate: float | None = None

    def count(self) -> int:
        raise NotImplementedError

    def burst(self, messages: int) -> None:
        """Publish ``messages`` messages; called from the control thread."""
        raise NotImplementedError


class AsyncVariant(Variant):
    """A server running on an asyncio loop in the main thread; commands hop onto it."""

    loop: asyncio.AbstractEventLoop

    async def publish(self, messages: int) -> None:
        raise NotImplementedError

    def local_count(self) -> int:
        raise NotImplementedError

    def count(self) -> int:
        async def read() -> int:
            return self.local_count()

        return asyncio.run_coroutine_threadsafe(read(), self.loop).result()

    def burst(self, messages: int) -> None:
        asyncio.run_coroutine_threadsafe(self.publish(messages), self.loop).result()


def control(variant: Variant, port: int, on_quit: Callable[[], None]) -> None:
    """Answer the orchestrator's commands; exit the process on QUIT or end of input."""
    print(f"READY {port}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        command = words[0]
        if command == "COUNT":
            wanted = int(words[1])
            deadline = time.monotonic() + COUNT_TIMEOUT
            have = variant.count()
            while have != wanted and time.monotonic() < deadline:
                time.sleep(0.005)
                have = variant.count()
            print(f"{'OK' if have == wanted else 'TIMEOUT'} {have}", flush=True)
        elif command == "BURST":
            variant.rate = float(words[2]) if len(words) > 2 else None
            start = time.perf_counter()
            variant.burst(int(words[1]))
            print(f"SENT {time.perf_counter() - start:.6f}", flush=True)
        elif command == "CPU":
            print(f"CPU {time.process_time():.6f}", flush=True)
        elif command == "QUIT":
            break
    on_quit()
    sys.stdout.flush()
    os._exit(0)


def start_control(variant: Variant, port: int, on_quit: Callable[[], None] = lambda: None) -> None:
    threading.Thread(target=control, args=(variant, port, on_quit), daemon=True).start()


# websockets, asyncio: raw broadcast() and the two seed patterns.


class WebsocketsPeer(AsyncVariant):
    def __init__(self, mode: str) -> None:
        from websockets.asyncio.server import ServerConnection

        self.mode = mode
        self.clients: set[ServerConnection] = set()

    def local_count(self) -> int:
        return len(self.clients)

    async def handler(self, ws: Any) -> None:
        self.clients.add(ws)
        try:
            async for _ in ws:
                pass
        except Exception:
            pass
        finally:
            self.clients.discard(ws)

    async def publish(self, messages: int) -> None:
        from websockets.asyncio.server import broadcast
        from websockets.exceptions import ConnectionClosed

        if self.mode == "ceiling" and self.rate is None:
            # Not a library: the fan-out's physical limit here. Each message is encoded and
            # framed once, and each client gets all of them in one write.
            blob = b"".join(text_frame(json.dumps(payload(i)).encode()) for i in range(messages))
            for ws in self.clients:
                ws.transport.write(blob)
        elif self.mode == "ceiling":  # paced: one write per client per message
            async for msg in paced(messages, self.rate):
                frame = text_frame(json.dumps(msg).encode())
                for ws in self.clients:
                    ws.transport.write(frame)
        elif self.mode == "raw":
            async for msg in paced(messages, self.rate):
                broadcast(self.clients, json.dumps(msg))
        elif self.mode == "loop":
            # The seeds' pattern: encode per recipient, await each send in turn.
            async for msg in paced(messages, self.rate):
                for ws in list(self.clients):
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(json.dumps(msg))
        else:
            async for msg in paced(messages, self.rate):
                await asyncio.gather(
                    *(ws.send(json.dumps(msg)) for ws in list(self.clients)),
                    return_exceptions=True,
                )

    async def main(self) -> None:
        from websockets.asyncio.server import serve

        self.loop = asyncio.get_running_loop()
        sock = listening_socket()
        async with serve(self.handler, sock=sock):
            start_control(self, sock.getsockname()[1])
            await asyncio.Future()


# websockets, threads: the seed loop with one thread per connection.


class SyncPeer(Variant):
    def __init__(self) -> None:
        self.clients: set[Any] = set()
        self.lock = threading.Lock()

    def count(self) -> int:
        with self.lock:
            return len(self.clients)

    def handler(self, ws: Any) -> None:
        with self.lock:
            self.clients.add(ws)
        try:
            for _ in ws:
                pass
        except Exception:
            pass
        finally:
            with self.lock:
                self.clients.discard(ws)

    def burst(self, messages: int) -> None:
        from websockets.exceptions import ConnectionClosed

        for msg in paced_sync(messages, self.rate):
            with self.lock:
                clients = list(self.clients)
            for ws in clients:
                with contextlib.suppress(ConnectionClosed):
                    ws.send(json.dumps(msg))

    def main(self) -> None:
        from websockets.sync.server import serve

        sock = listening_socket()
        with serve(self.handler, sock=sock) as server:
            start_control(self, sock.getsockname()[1])
            server.serve_forever()


# Starlette under uvicorn: the seed loop.


async def serve_uvicorn(
    app: Any, variant: AsyncVariant, on_quit: Callable[[], None] = lambda: None
) -> None:
    import uvicorn

    variant.loop = asyncio.get_running_loop()
    sock = listening_socket()
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", access_log=False, backlog=4096
    )
    server = uvicorn.Server(config)
    start_control(variant, sock.getsockname()[1], on_quit)
    await server.serve(sockets=[sock])


class StarlettePeer(AsyncVariant):
    """The seed loop; a client's text is relayed the same way, as the seeds' chat endpoint
    (FastAPI's ``ConnectionManager``) does (--relay)."""

    def __init__(self) -> None:
        self.clients: set[Any] = set()

    def local_count(self) -> int:
        return len(self.clients)

    async def endpoint(self, websocket: Any) -> None:
        from starlette.websockets import WebSocketDisconnect

        await websocket.accept()
        self.clients.add(websocket)
        try:
            while True:
                text = await websocket.receive_text()
                for client in list(self.clients):
                    with contextlib.suppress(Exception):
                        await client.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            self.clients.discard(websocket)

    async def publish(self, messages: int) -> None:
        async for msg in paced(messages, self.rate):
            for websocket in list(self.clients):
                with contextlib.suppress(Exception):
                    await websocket.send_text(json.dumps(msg))

    async def main(self) -> None:
        from starlette.applications import Starlette
        from starlette.routing import WebSocketRoute

        app = Starlette(routes=[WebSocketRoute("/", self.endpoint)])
        await serve_uvicorn(app, self)


# python-socketio: AsyncServer (ASGI) under uvicorn, room emit, alone or over Redis.


class SocketIOPeer(AsyncVariant):
    def __init__(self, redis_url: str | None, prefix: str | None, cleanup: bool) -> None:
        socketio = socketio_module()
        self.redis_url = redis_url
        self.prefix = prefix
        self.cleanup = cleanup
        options: dict[str, Any] = {}
        if redis_url is not None:
            # python-socketio's pub/sub manager: each emit goes to this node's members and,
            # through Redis, to every other node's; rooms stay local to each node.
            options["client_manager"] = socketio.AsyncRedisManager(
                redis_url, channel=prefix or "wsroom-bench-socketio"
            )
        # Long ping intervals: a run never waits on Engine.IO's own heartbeat.
        self.sio = socketio.AsyncServer(
            async_mode="asgi", ping_interval=600, ping_timeout=600, **options
        )
        self.members: set[str] = set()
        self.sio.on("join", self.join)
        self.sio.on("disconnect", self.disconnect)

    async def join(self, sid: str, data: Any = None) -> None:
        await self.sio.enter_room(sid, ROOM)
        self.members.add(sid)

    async def disconnect(self, sid: str, reason: Any = None) -> None:
        self.members.discard(sid)

    def local_count(self) -> int:
        """This node's members of the room (python-socketio's rooms are per node)."""
        return len(self.members)

    async def publish(self, messages: int) -> None:
        async for msg in paced(messages, self.rate):
            await self.sio.emit("bench", msg, room=ROOM)

    def on_quit(self) -> None:
        if self.cleanup and self.redis_url and self.prefix:
            delete_prefix(self.redis_url, self.prefix)

    async def main(self) -> None:
        await serve_uvicorn(socketio_module().ASGIApp(self.sio), self, self.on_quit)


def socketio_module() -> Any:
    """python-socketio, a benchmark-only dependency without type information."""
    return importlib.import_module("socketio")


# wsroom, on each adapter, alone or over Redis.


def wsroom_manager(redis_url: str | None, prefix: str | None) -> Any:
    from wsroom import ConnectionManager, Limits

    # Every load client connects from 127.0.0.1: the per-address limits would take them
    # all for one abusive client.
    limits = Limits.without_rate_limits()
    if redis_url is None:
        return ConnectionManager(limits=limits)
    from wsroom.backplane.redis import RedisBackplane

    backplane = RedisBackplane(redis_url, prefix=prefix or "wsroom-bench")
    return ConnectionManager(backplane=backplane, limits=limits)


def wsroom_count(manager: Any) -> int:
    room = manager.room(ROOM)
    return len(room.connections) if room is not None else 0


class WsroomAsync(AsyncVariant):
    """The asyncio adapter. The publisher awaits each ``broadcast()`` in turn, or, when
    ``pipelined``, starts them all in order and awaits them together at the end (the
    Redis backplane then sends the publishes waiting at once in one round trip)."""

    def __init__(
        self, redis_url: str | None, prefix: str | None, cleanup: bool, *, pipelined: bool
    ) -> None:
        self.manager = wsroom_manager(redis_url, prefix)
        self.redis_url = redis_url
        self.prefix = prefix
        self.cleanup = cleanup
        self.pipelined = pipelined

    def local_count(self) -> int:
        return wsroom_count(self.manager)

    async def publish(self, messages: int) -> None:
        broadcast = self.manager.broadcast
        if not self.pipelined:
            async for msg in paced(messages, self.rate):
                await broadcast(ROOM, msg)
            return
        started: list[asyncio.Task[int]] = []
        create_task = asyncio.get_running_loop().create_task
        async for msg in paced(messages, self.rate):
            started.append(create_task(broadcast(ROOM, msg)))
        await asyncio.gather(*started)

    def on_quit(self) -> None:
        if self.cleanup and self.redis_url and self.prefix:
            delete_prefix(self.redis_url, self.prefix)

    async def main(self) -> None:
        from wsroom.adapters.websockets import serve

        self.loop = asyncio.get_running_loop()
        sock = listening_socket()
        async with serve(self.manager, sock=sock):
            start_control(self, sock.getsockname()[1], self.on_quit)
            await asyncio.Future()


class WsroomSync(Variant):
    """The threading adapter; the publisher is a plain thread, as in a threaded app."""

    def __init__(self) -> None:
        self.manager = wsroom_manager(None, None)

    def count(self) -> int:
        result: int = self.manager.from_thread.call(wsroom_count, self.manager)
        return result

    def burst(self, messages: int) -> None:
        # The way to publish a stream from a thread: hand each message over without waiting
        # for the loop (in order); wait for the last one at the end of the burst.
        broadcast = self.manager.from_thread.broadcast_nowait
        last = None
        for msg in paced_sync(messages, self.rate):
            last = broadcast(ROOM, msg)
        if last is not None:
            last.result()

    def main(self) -> None:
        from wsroom.adapters.websockets_sync import serve

        sock = listening_socket()
        with serve(self.manager, sock=sock) as server:
            start_control(self, sock.getsockname()[1])
            server.serve_forever()


class WsroomStarlette(AsyncVariant):
    def __init__(self) -> None:
        self.manager = wsroom_manager(None, None)

    def local_count(self) -> int:
        return wsroom_count(self.manager)

    async def publish(self, messages: int) -> None:
        broadcast = self.manager.broadcast
        async for msg in paced(messages, self.rate):
            await broadcast(ROOM, msg)

    async def main(self) -> None:
        from starlette.applications import Starlette
        from starlette.routing import WebSocketRoute

        from wsroom.adapters.starlette import endpoint

        app = Starlette(routes=[WebSocketRoute("/", endpoint(self.manager))])
        await serve_uvicorn(app, self)


# aiohttp.web: the seed loop, python-socketio on aiohttp, and wsroom's adapter. With
# --relay, a client's message is sent on to the room by the server (the chat pattern).


async def serve_aiohttp(app: Any, variant: AsyncVariant) -> None:
    from aiohttp import web

    variant.loop = asyncio.get_running_loop()
    sock = listening_socket()
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    start_control(variant, sock.getsockname()[1])
    await asyncio.Future()


class AiohttpSeed(AsyncVariant):
    """What users write by hand: a set of open ``WebSocketResponse``s and a loop of
    ``await ws.send_str(...)``; a client's text is relayed the same way."""

    def __init__(self) -> None:
        self.clients: set[Any] = set()

    def local_count(self) -> int:
        return len(self.clients)

    async def handler(self, request: Any) -> Any:
        from aiohttp import WSMsgType, web

        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.clients.add(ws)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    for other in list(self.clients):
                        with contextlib.suppress(Exception):
                            await other.send_str(msg.data)
        finally:
            self.clients.discard(ws)
        return ws

    async def publish(self, messages: int) -> None:
        async for msg in paced(messages, self.rate):
            for ws in list(self.clients):
                with contextlib.suppress(Exception):
                    await ws.send_str(json.dumps(msg))

    async def main(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/", self.handler)
        await serve_aiohttp(app, self)


class SocketIOAiohttp(SocketIOPeer):
    """python-socketio's ``AsyncServer`` attached to an aiohttp application; a client's
    ``msg`` event is emitted to the room."""

    def __init__(self) -> None:
        socketio = socketio_module()
        self.redis_url = self.prefix = None
        self.cleanup = False
        self.sio = socketio.AsyncServer(async_mode="aiohttp", ping_interval=600, ping_timeout=600)
        self.members = set()
        self.sio.on("join", self.join)
        self.sio.on("disconnect", self.disconnect)
        self.sio.on("msg", self.relay)

    async def relay(self, sid: str, data: Any = None) -> None:
        await self.sio.emit("bench", data, room=ROOM)

    async def main(self) -> None:
        from aiohttp import web

        app = web.Application()
        self.sio.attach(app)
        await serve_aiohttp(app, self)


class WsroomAiohttp(AsyncVariant):
    """``wsroom.adapters.aiohttp.setup``; a client's ``message`` is relayed by the default
    ``Room.on_message``."""

    def __init__(self) -> None:
        self.manager = wsroom_manager(None, None)

    def local_count(self) -> int:
        return wsroom_count(self.manager)

    async def publish(self, messages: int) -> None:
        broadcast = self.manager.broadcast
        async for msg in paced(messages, self.rate):
            await broadcast(ROOM, msg)

    async def main(self) -> None:
        from aiohttp import web

        from wsroom.adapters import aiohttp as wsroom_aiohttp

        app = web.Application()
        wsroom_aiohttp.setup(app, self.manager, "/")
        await serve_aiohttp(app, self)


class WsroomASGI(WsroomStarlette):
    async def main(self) -> None:
        from wsroom.adapters.asgi import WSRoomApp

        await serve_uvicorn(WSRoomApp(self.manager), self)


def delete_prefix(url: str, prefix: str) -> None:
    """Remove the run's keys from Redis (the node that quits last does it)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


def build(args: argparse.Namespace) -> Callable[[], Awaitable[None] | None]:
    name: str = args.variant
    if name == "ceiling":
        return WebsocketsPeer("ceiling").main
    if name == "raw":
        return WebsocketsPeer("raw").main
    if name == "seed-loop":
        return WebsocketsPeer("loop").main
    if name == "seed-gather":
        return WebsocketsPeer("gather").main
    if name == "seed-sync":
        return SyncPeer().main
    if name == "seed-starlette":
        return StarlettePeer().main
    if name == "socketio":
        return SocketIOPeer(None, None, False).main
    if name == "socketio-redis":
        return SocketIOPeer(args.redis_url, args.prefix, args.cleanup).main
    if name == "wsroom":
        return WsroomAsync(None, None, False, pipelined=args.pipelined).main
    if name == "wsroom-redis":
        return WsroomAsync(args.redis_url, args.prefix, args.cleanup, pipelined=args.pipelined).main
    if name == "wsroom-sync":
        return WsroomSync().main
    if name == "wsroom-starlette":
        return WsroomStarlette().main
    if name == "seed-aiohttp":
        return AiohttpSeed().main
    if name == "socketio-aiohttp":
        return SocketIOAiohttp().main
    if name == "wsroom-aiohttp":
        if args.no_fastpath:  # read when wsroom.adapters.aiohttp is imported, in main()
            os.environ["WSROOM_AIOHTTP_FASTPATH"] = "0"
        return WsroomAiohttp().main
    if name == "wsroom-asgi":
        return WsroomASGI().main
    raise SystemExit(f"unknown server variant {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description="one server of the fan-out benchmark")
    parser.add_argument("variant")
    parser.add_argument("--redis-url")
    parser.add_argument("--prefix")
    parser.add_argument("--cleanup", action="store_true", help="delete the prefix's keys on QUIT")
    parser.add_argument(
        "--pipelined",
        action="store_true",
        help="wsroom asyncio: start every broadcast of a burst, then await them together",
    )
    parser.add_argument(
        "--no-fastpath",
        action="store_true",
        help="wsroom on aiohttp: every frame through send_frame(), as compressed connections",
    )
    args = parser.parse_args()
    raise_open_file_limit()
    # Clients vanish without a close frame at the end of a run: nothing worth logging.
    logging.basicConfig(level=logging.CRITICAL)
    run = build(args)
    result = run()
    if asyncio.iscoroutine(result):
        asyncio.run(result)


if __name__ == "__main__":
    main()
