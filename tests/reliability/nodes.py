"""Node processes over one private redis-server, and the clients that measure them.

The Redis fault scenarios (C10-C13, D20, E27, E29, F34) run wsroom the way it is deployed:
several processes, each with its own ``ConnectionManager`` and ``RedisBackplane``, sharing
rooms through one ``redis-server`` that the test kills, stops and restarts by PID.

* A **node process** (``python -m tests.reliability.nodes --redis URL --prefix P ...``)
  serves one manager with the websockets asyncio adapter or with Starlette under uvicorn,
  prints one JSON line (its port, pid and node id) once it serves, logs to stderr (kept in
  a file the test reads) and shuts down gracefully on SIGTERM or SIGINT. It answers a
  custom ``probe`` frame with its counters and the lag of its event loop (a 10 ms ticker
  whose lateness is recorded), so a test sees inside it without a test hook.
* :class:`NodeProcess` starts, kills (SIGKILL), stalls (SIGSTOP/SIGCONT) and restarts one
  on the same port; :class:`RedisView` reads what Redis says about them (``CLIENT LIST``,
  ``PUBSUB NUMSUB``, ``INFO``), attributing Redis connections to processes by their ports.
* :class:`Member` is a protocol client that records every frame it gets with its arrival
  time and matches answers to requests by ``ref``, so that a publisher can keep
  publishing while earlier requests wait; :class:`Tracker` applies PROTOCOL.md's rules
  (ids per room and epoch, ``gap``) to what a member received.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import websockets
from websockets.asyncio.client import ClientConnection

from tests.helpers import TIMEOUT, wait_for

ROOT = Path(__file__).resolve().parent.parent.parent

# What every node of these scenarios uses unless a test says otherwise: the plan's Redis
# timeout of 1 s, a heartbeat that notices Redis coming back within half a second, and
# the default reconnection cap.
HEARTBEAT = 0.5
NODE_TTL = 3.0
REDIS_TIMEOUT = 1.0
RECONNECT_MAX = 2.0


# The node process.


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.nodes")
    parser.add_argument("--redis", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--adapter", choices=("websockets", "starlette"), default="websockets")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT)
    parser.add_argument("--node-ttl", type=float, default=NODE_TTL)
    parser.add_argument("--timeout", type=float, default=REDIS_TIMEOUT)
    parser.add_argument("--reconnect-max", type=float, default=RECONNECT_MAX)
    parser.add_argument("--history-size", type=int, default=100)
    parser.add_argument("--history-ttl", type=float, default=3600.0)
    parser.add_argument(
        "--retry-start",
        type=float,
        default=0.0,
        help="seconds between start attempts while Redis is absent (0: fail at once)",
    )
    return parser.parse_args(argv)


class _LoopLag:
    """A 10 ms ticker; its lateness is the event loop's lag."""

    def __init__(self) -> None:
        self.lags: deque[float] = deque(maxlen=60_000)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 0.01
        due = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            self.lags.append(now - due)
            due = now + interval

    def take(self) -> dict[str, float]:
        """Lag percentiles (ms) since the last call."""
        lags, self.lags = sorted(self.lags), deque(maxlen=60_000)
        if not lags:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0, "ticks": 0}
        return {
            "p50": lags[len(lags) // 2] * 1000,
            "p99": lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000,
            "max": lags[-1] * 1000,
            "ticks": len(lags),
        }


async def _node_main(options: argparse.Namespace) -> int:
    from wsroom import BackplaneError, Connection, ConnectionManager, Handshake, Limits, Room
    from wsroom.backplane.redis import RedisBackplane
    from wsroom.protocol import Message

    class NodeRoom(Room):
        history_size = options.history_size
        history_ttl = options.history_ttl

    def user_from_query(handshake: Handshake) -> str | None:
        return handshake.query.get("user") or None

    backplane = RedisBackplane(
        options.redis,
        prefix=options.prefix,
        heartbeat=options.heartbeat,
        node_ttl=options.node_ttl,
        timeout=options.timeout,
        reconnect_max=options.reconnect_max,
    )
    # No rate limits: the scenarios' publishers send 100 msg/s on one connection, and
    # every client comes from 127.0.0.1 (the reconnect storm opens hundreds at once).
    manager = ConnectionManager(
        NodeRoom,
        authenticate=user_from_query,
        backplane=backplane,
        limits=Limits.without_rate_limits(),
    )
    lag = _LoopLag()
    started_at = time.time()

    @manager.handler("probe")
    def probe(conn: Connection, message: Message) -> None:
        stats = manager.statistics()
        conn.send_event(
            "probe",
            {
                "node": backplane.node_id,
                "pid": os.getpid(),
                "available": backplane.available,
                "dropped_messages": backplane.dropped_messages,
                "connections": stats.connections,
                "rooms": stats.rooms,
                "queued_bytes": stats.queued_bytes,
                "messages_published": stats.messages_published,
                "evictions": stats.evictions,
                "lag_ms": lag.take(),
                "uptime": time.time() - started_at,
            },
        )

    attempts = 0
    while True:
        attempts += 1
        try:
            await manager.start()
            break
        except BackplaneError as exc:
            if not options.retry_start:
                print(f"refused to start: {exc}", file=sys.stderr, flush=True)
                return 3
            logging.getLogger("node").warning("start attempt %d failed: %s", attempts, exc)
            await asyncio.sleep(options.retry_start)
    ticker = asyncio.create_task(lag.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def announce(port: int) -> None:
        ready = {"port": port, "pid": os.getpid(), "node": backplane.node_id, "attempts": attempts}
        print(json.dumps(ready), flush=True)

    try:
        if options.adapter == "websockets":
            from wsroom.adapters.websockets import serve

            async with serve(manager, "127.0.0.1", options.port) as server:
                announce(server.sockets[0].getsockname()[1])
                await stop.wait()
        else:
            from starlette.applications import Starlette
            from starlette.routing import WebSocketRoute

            from wsroom.adapters import uvicorn as wsroom_uvicorn
            from wsroom.adapters.starlette import endpoint

            app = Starlette(routes=[WebSocketRoute("/{path:path}", endpoint(manager))])
            config = wsroom_uvicorn.config(
                app, manager, log_level="warning", lifespan="off", timeout_graceful_shutdown=2
            )
            uvicorn_server = wsroom_uvicorn.Server(config, manager)
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", options.port))
            listener.listen(2048)
            served = asyncio.create_task(uvicorn_server.serve(sockets=[listener]))
            while not uvicorn_server.started:
                if served.done():
                    return 4
                await asyncio.sleep(0.01)  # uvicorn announces its start with a flag only
            # uvicorn installed its own signal handlers: they end serve() after a graceful
            # shutdown of the WebSockets, which the manager then finishes.
            announce(listener.getsockname()[1])
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([served, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            uvicorn_server.should_exit = True
            await manager.shutdown(2.0)
            await served
    finally:
        ticker.cancel()
    return 0


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format="%(created).3f %(levelname)s %(name)s %(message)s",
    )
    return asyncio.run(_node_main(_parse(argv)))


# The test side: node processes.


@dataclass
class LogLine:
    at: float
    level: str
    logger: str
    text: str


class NodeProcess:
    """A node process started by the test; restartable on the same port."""

    def __init__(self, redis_url: str, prefix: str, *, adapter: str = "websockets", **options: Any):
        self.redis_url = redis_url
        self.prefix = prefix
        self.adapter = adapter
        self.options = options
        self.port = 0
        self.pid = 0
        self.node = ""
        self.attempts = 0
        self.process: asyncio.subprocess.Process | None = None
        self.log_dir = tempfile.mkdtemp(prefix="wsroom-node-")
        self.runs = 0
        self.stderr_paths: list[Path] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        args = ["--redis", self.redis_url, "--prefix", self.prefix, "--adapter", self.adapter]
        args += ["--port", str(self.port)]
        for name, value in self.options.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        return args

    async def start(self, *, wait: bool = True) -> None:
        """Start (or restart, on the same port once it had one) the process."""
        self.runs += 1
        path = Path(self.log_dir) / f"stderr-{self.runs}.log"
        self.stderr_paths.append(path)
        with path.open("wb") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.reliability.nodes",
                *self.argv(),
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.pid = self.process.pid
        if wait:
            await self.ready()

    async def ready(self, timeout: float = TIMEOUT * 4) -> None:
        """Wait for the process's JSON line; it then serves."""
        assert self.process is not None and self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            code = await self.process.wait()
            raise RuntimeError(f"node exited with {code}: {self.stderr_text()[-2000:]}")
        info = json.loads(line)
        self.port, self.pid, self.node = info["port"], info["pid"], info["node"]
        self.attempts = info["attempts"]

    async def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), TIMEOUT * 2)
        except TimeoutError:
            process.kill()
            await process.wait()

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def redis_ports(self, redis_port: int) -> set[int]:
        """Local ports of this process's TCP connections to Redis."""
        try:
            connections = psutil.Process(self.pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            return set()
        return {
            c.laddr.port
            for c in connections
            if c.status == psutil.CONN_ESTABLISHED and c.raddr.port == redis_port
        }

    def redis_sockets(self, redis_port: int) -> dict[str, int]:
        """This process's TCP sockets to Redis, by state (a leaked one stays CLOSE_WAIT)."""
        try:
            connections = psutil.Process(self.pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            return {}
        states: dict[str, int] = {}
        for c in connections:
            remote: tuple[Any, ...] = tuple(c.raddr)  # empty for a listening socket
            if remote[1:2] == (redis_port,):
                states[c.status] = states.get(c.status, 0) + 1
        return states

    def stderr_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.stderr_paths if p.exists())

    def log(self) -> list[LogLine]:
        """The wsroom log lines the process wrote (every run)."""
        lines = []
        for raw in self.stderr_text().splitlines():
            parts = raw.split(" ", 3)
            if len(parts) == 4 and parts[1] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
                with contextlib.suppress(ValueError):
                    lines.append(LogLine(float(parts[0]), parts[1], parts[2], parts[3]))
        return lines

    async def probe(self) -> dict[str, Any]:
        """The node's counters and loop lag since the previous probe."""
        member = await Member.connect(self.url, "prober")
        try:
            frame = await member.request({"type": "probe"}, event="probe")
            return dict(frame["data"])
        finally:
            await member.close()


@asynccontextmanager
async def node_cluster(
    redis_url: str, prefix: str, adapters: Sequence[str], **options: Any
) -> AsyncIterator[list[NodeProcess]]:
    """One node process per entry of ``adapters``, all on ``redis_url`` with ``prefix``."""
    nodes = [NodeProcess(redis_url, prefix, adapter=a, **options) for a in adapters]
    try:
        for node in nodes:
            await node.start(wait=False)
        await asyncio.gather(*(node.ready() for node in nodes))
        yield nodes
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


class RedisView:
    """What one Redis server says about the nodes (a client of the test's own)."""

    def __init__(self, url: str) -> None:
        from redis import asyncio as aioredis

        self.url = url
        self.port = int(url.rsplit(":", 1)[1].split("/")[0])
        self.client = aioredis.from_url(url, socket_timeout=TIMEOUT)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def numsub(self, *channels: str) -> dict[str, int]:
        return {
            (name.decode() if isinstance(name, bytes) else name): int(count)
            for name, count in await self.client.pubsub_numsub(*channels)
        }

    async def channels(self, pattern: str) -> set[str]:
        """``PUBSUB CHANNELS pattern``."""
        found = await self.client.pubsub_channels(pattern)
        return {c.decode() if isinstance(c, bytes) else c for c in found}

    async def clients(self, kind: str | None = None) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = await self.client.client_list(_type=kind)
        return listed

    async def pubsub_of(self, nodes: Sequence[NodeProcess]) -> dict[int, list[dict[str, Any]]]:
        """Each node's subscriber connections as Redis lists them, by node pid."""
        listed = await self.clients("pubsub")
        by_port = {int(c["addr"].rsplit(":", 1)[1]): c for c in listed}
        found: dict[int, list[dict[str, Any]]] = {}
        for node in nodes:
            ports = node.redis_ports(self.port)
            found[node.pid] = [by_port[p] for p in ports if p in by_port]
        return found

    async def connections_of(self, nodes: Sequence[NodeProcess]) -> dict[int, int]:
        """How many connections Redis lists for each node (matched by port)."""
        listed = {int(c["addr"].rsplit(":", 1)[1]) for c in await self.clients()}
        return {node.pid: len(node.redis_ports(self.port) & listed) for node in nodes}

    async def info(self, section: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.client.info(section)
        return found


# The test side: clients.


@dataclass
class Received:
    at: float
    frame: dict[str, Any]


class Member:
    """A protocol client that records what it receives, in the background."""

    def __init__(self, ws: ClientConnection, user: str) -> None:
        self.ws = ws
        self.user = user
        self.welcome: dict[str, Any] = {}
        self.frames: list[Received] = []
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self._ref = 0
        self._answers: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._events: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str, user: str, *, timeout: float = TIMEOUT) -> Member:
        ws = await websockets.connect(
            f"{url}/ws?user={user}",
            subprotocols=[websockets.Subprotocol("wsroom.v1")],
            open_timeout=timeout,
            max_size=None,
            compression=None,
        )
        member = cls(ws, user)
        raw = await asyncio.wait_for(ws.recv(), timeout)
        member.welcome = json.loads(raw)
        assert member.welcome["type"] == "welcome", member.welcome
        member._task = asyncio.create_task(member._read())
        return member

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                now = time.monotonic()
                ref = frame.get("ref")
                if ref is not None and frame["type"] in ("joined", "left", "ack", "pong", "error"):
                    future = self._answers.pop(str(ref), None)
                    if future is not None and not future.done():
                        future.set_result(frame)
                    continue
                waiting = self._events.pop(frame["type"], None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(frame)
                self.frames.append(Received(now, frame))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed_at = time.monotonic()
            rcvd = self.ws.protocol.close_rcvd
            self.close_code = rcvd.code if rcvd is not None else None
            for future in [*self._answers.values(), *self._events.values()]:
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))
                    future.exception()  # whoever awaits it gets the error; nobody must

    async def send(self, frame: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Send a frame with a fresh ref; the future gets its answer."""
        self._ref += 1
        ref = f"{self.user}-{self._ref}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[ref] = future
        await self.ws.send(json.dumps({**frame, "ref": ref}))
        return future

    async def request(
        self, frame: dict[str, Any], *, event: str | None = None, timeout: float = TIMEOUT
    ) -> dict[str, Any]:
        """Send and wait for the answer (or, with ``event``, for the next such event)."""
        waiting: asyncio.Future[dict[str, Any]] | None = None
        if event is not None:
            waiting = asyncio.get_running_loop().create_future()
            self._events[event] = waiting
        answer = await asyncio.wait_for(await self.send(frame), timeout)
        if waiting is not None:
            if answer["type"] == "error":
                raise AssertionError(answer)
            return await asyncio.wait_for(waiting, timeout)
        return answer

    async def join(self, room: str, **fields: Any) -> dict[str, Any]:
        answer = await self.request({"type": "join", "room": room, **fields})
        assert answer["type"] == "joined", answer
        return answer

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [r.frame for r in self.frames if r.frame["type"] in types]

    async def received(self, type_: str, data: Any = None, timeout: float = TIMEOUT) -> None:
        """Wait until a frame of ``type_`` (with ``data``, when given) was received."""

        def arrived() -> bool:
            return any(data is None or f.get("data") == data for f in self.of_type(type_))

        await wait_for(arrived, timeout)

    async def close(self) -> None:
        await self.ws.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, TIMEOUT)


class Resilient:
    """A client of one room that reconnects with jittered exponential backoff after its
    connection drops, and rejoins with ``since`` and ``epoch`` (PROTOCOL.md, Recovery)."""

    def __init__(self, url: str, user: str, room: str) -> None:
        self.url = url
        self.user = user
        self.room = room
        self.member: Member | None = None
        self.joined: dict[str, Any] = {}
        self.dropped_at: float | None = None
        self.rejoined_at: float | None = None
        self.handshakes: list[float] = []
        """When each reconnection's handshake succeeded."""
        self.refused = 0
        """Reconnection attempts that failed (connection refused, HTTP error, timeout)."""
        self.rejoin: dict[str, Any] | None = None
        """The ``joined`` answer to the rejoin."""
        self.since: tuple[str, int] | None = None
        """The epoch and last id the rejoin asked from."""
        self.exact: bool | None = None
        """Whether a recovered rejoin replayed exactly the ids after ``since``."""

    async def start(self) -> None:
        self.member = await Member.connect(self.url, self.user)
        self.joined = await self.member.join(self.room)

    async def reconnect(self, *, deadline: float) -> None:
        """Wait for the connection to drop, then reconnect and rejoin (until ``deadline``)."""
        assert self.member is not None and self.member._task is not None
        await asyncio.shield(self.member._task)
        self.dropped_at = time.monotonic()
        tracker = Tracker.of(self.member, self.room, self.joined)
        self.since = (tracker.epoch, tracker.last)
        attempt = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(jittered_backoff(attempt))
            attempt += 1
            try:
                member = await Member.connect(self.url, self.user, timeout=TIMEOUT)
            except (OSError, TimeoutError, websockets.InvalidHandshake):
                self.refused += 1
                continue
            self.handshakes.append(time.monotonic())
            answer = await member.request(
                {"type": "join", "room": self.room, "since": tracker.last, "epoch": tracker.epoch}
            )
            if answer["type"] != "joined":  # e.g. internal_error: try again later
                await member.close()
                continue
            self.member, self.rejoin = member, answer
            self.rejoined_at = time.monotonic()
            if answer.get("recovered"):
                ids = [m["id"] for m in answer["history"]]
                self.exact = answer["epoch"] == tracker.epoch and ids == list(
                    range(tracker.last + 1, answer["offset"] + 1)
                )
            return

    async def close(self) -> None:
        if self.member is not None:
            await self.member.close()


async def connect_many(url: str, users: Sequence[str], *, concurrency: int = 50) -> list[Member]:
    """Connect many members, a bounded number of handshakes at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(user: str) -> Member:
        async with gate:
            return await Member.connect(url, user)

    return list(await asyncio.gather(*(one(user) for user in users)))


@dataclass
class Tracker:
    """PROTOCOL.md's client bookkeeping for one room, applied to what a member received:
    message ids per epoch, ``gap`` frames, the publisher's sequence numbers."""

    room: str
    epoch: str
    last: int
    ids: list[int] = field(default_factory=list)
    seqs: dict[int, tuple[str, int]] = field(default_factory=dict)
    """Sequence number -> (epoch, id) of every message received."""
    gaps: list[dict[str, Any]] = field(default_factory=list)
    after_last_gap: list[int] = field(default_factory=list)
    """Ids received after the last gap (all of them without one)."""
    order_violations: int = 0
    duplicates: int = 0

    @classmethod
    def of(cls, member: Member, room: str, joined: dict[str, Any]) -> Tracker:
        tracker = cls(room, joined["epoch"], joined["offset"])
        for received in member.frames:
            frame = received.frame
            if frame.get("room") != room:
                continue
            if frame["type"] == "gap":
                tracker.gaps.append(frame)
                tracker.epoch, tracker.last = frame["epoch"], frame["offset"]
                tracker.after_last_gap = []
            elif frame["type"] == "message":
                if frame["id"] <= tracker.last:
                    tracker.order_violations += 1
                tracker.last = frame["id"]
                tracker.ids.append(frame["id"])
                tracker.after_last_gap.append(frame["id"])
                data = frame["data"]
                if isinstance(data, dict) and isinstance(data.get("seq"), int):
                    if data["seq"] in tracker.seqs:
                        tracker.duplicates += 1
                    tracker.seqs[data["seq"]] = (tracker.epoch, frame["id"])
        return tracker

    def missing(self, acked: Sequence[int]) -> list[int]:
        """The acked sequence numbers this member did not receive."""
        return [seq for seq in acked if seq not in self.seqs]

    def unsignalled(self, missing: Sequence[int], known: dict[int, tuple[str, int]]) -> list[int]:
        """The missed messages no ``gap`` told of: a gap in another epoch than the
        message's, or whose offset is at or past its id, covers it. ``known`` maps
        sequence numbers to their (epoch, id), from whoever received them; a message
        nobody received (its epoch unknown) is covered by any gap."""
        uncovered = []
        for seq in missing:
            if seq not in known:
                covered = bool(self.gaps)
            else:
                epoch, id_ = known[seq]
                covered = any(g["epoch"] != epoch or g["offset"] >= id_ for g in self.gaps)
            if not covered:
                uncovered.append(seq)
        return uncovered

    def consecutive_after_last_gap(self) -> bool:
        ids = self.after_last_gap
        return ids == list(range(ids[0], ids[0] + len(ids))) if ids else True


@dataclass
class Published:
    seq: int
    room: str
    sent_at: float
    answered_at: float = 0.0
    id: int | None = None
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.answered_at - self.sent_at


class Publisher:
    """Sends sequence-numbered messages at a steady rate without waiting for answers."""

    def __init__(self, member: Member, rooms: Sequence[str], rate: float, pad: int = 0) -> None:
        self.member = member
        self.rooms = list(rooms)
        self.rate = rate
        self.pad = "x" * pad
        self.published: list[Published] = []
        self._pending: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = 1 / self.rate
        due = loop.time()
        seq = 0
        while not self._stop.is_set():
            room = self.rooms[seq % len(self.rooms)]
            entry = Published(seq, room, time.monotonic())
            self.published.append(entry)
            try:
                data = {"seq": seq, "t": time.time_ns(), "pad": self.pad}
                answer = await self.member.send({"type": "message", "room": room, "data": data})
            except websockets.ConnectionClosed:
                return
            task = loop.create_task(self._answer(entry, answer))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
            seq += 1
            due += interval
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def _answer(self, entry: Published, answer: asyncio.Future[dict[str, Any]]) -> None:
        try:
            frame = await asyncio.wait_for(answer, TIMEOUT * 2)
        except (TimeoutError, ConnectionError):
            entry.error = "no answer"
        else:
            entry.id = frame.get("id") if frame["type"] == "ack" else None
            entry.error = None if frame["type"] == "ack" else str(frame.get("code"))
        entry.answered_at = time.monotonic()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        if self._pending:
            await asyncio.wait(self._pending, timeout=TIMEOUT * 2)

    def acked(self) -> list[Published]:
        return [p for p in self.published if p.error is None and p.answered_at]

    def failed(self) -> list[Published]:
        return [p for p in self.published if p.error is not None]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


async def poll(
    check: Any, *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> float:
    """Await an async predicate of another process's state; return the time it took."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(interval)  # another process's state has no event to await
    return time.monotonic() - started


def jittered_backoff(attempt: int, *, base: float = 0.1, cap: float = 2.0) -> float:
    """Exponential backoff with jitter of -50% to +50% (what browsers' clients do)."""
    return min(cap, base * 2.0**attempt) * (0.5 + random.random())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
