"""Probes for the reliability suite: what a server holds, and how messages reach clients.

Server probes:

* :func:`process_snapshot`: RSS, open file descriptors, threads and CPU time of a process
  (this one or another, by PID), through psutil; :func:`sockets_to` counts its TCP
  connections to a port (a Redis client's pool, say), :func:`dead_sockets` those it
  keeps open for connections that are over;
* :func:`machine_snapshot`: how busy the whole machine is (other processes included), to
  tell a slow server from a starved test;
* :func:`task_count` and :func:`thread_count`: asyncio tasks of the running loop and Python
  threads of this process;
* :class:`HeapTracker`: the growth of the ``tracemalloc``-traced heap since a baseline,
  after a full garbage collection;
* :class:`LoopLag`: a ticker that records how late the event loop wakes it up.

Client-side measurement:

* :class:`SequenceLog`: per-stream accounting of sequence numbers (loss, duplicates, order
  violations) and latencies, in memory bounded by the gaps, not by the traffic;
* :class:`MeasuringClient`: a ``websockets`` client speaking the wsroom protocol that feeds
  a :class:`SequenceLog` from every ``message`` it receives. Messages carry, in ``data``, the
  time they were published (``"t"``, :func:`time.time` seconds, as the fan-out benchmark's
  messages do), the publisher's own sequence number (``"i"``) and its name (``"src"``):
  :func:`message_data` builds them. :func:`connect_many` and :func:`close_all` handle many
  clients at once, :func:`reset_abruptly` ends one with an RST.

Every figure is reported with :func:`percentile` and :class:`DeliveryReport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import socket
import struct
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import psutil
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

__all__ = [
    "DeliveryReport",
    "HeapTracker",
    "LoopLag",
    "MachineSnapshot",
    "MeasuringClient",
    "ProcessSnapshot",
    "SequenceLog",
    "close_all",
    "connect_many",
    "dead_sockets",
    "machine_snapshot",
    "message_data",
    "percentile",
    "process_snapshot",
    "reset_abruptly",
    "sockets_to",
    "task_count",
    "thread_count",
]

# Statistics.


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) of ``values`` by the nearest rank; NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = math.ceil(q * len(ordered)) - 1
    return ordered[min(len(ordered) - 1, max(0, rank))]


# Server probes.


@dataclass(frozen=True)
class ProcessSnapshot:
    """One look at a process, from :func:`process_snapshot`."""

    rss: int
    """Resident set size, in bytes."""
    fds: int
    """Open file descriptors (sockets, pipes, files, epoll)."""
    threads: int
    """Operating-system threads."""
    cpu: float
    """User plus system CPU time so far, in seconds (psutil's clock: 10 ms ticks)."""
    at: float
    """``time.monotonic()`` when it was taken."""

    def cpu_percent_since(self, earlier: ProcessSnapshot) -> float:
        """CPU time used between ``earlier`` and this snapshot, as a percentage of one
        core (200 = both cores of a 2-core machine busy)."""
        wall = self.at - earlier.at
        return 100.0 * (self.cpu - earlier.cpu) / wall if wall > 0 else math.nan


def process_snapshot(pid: int | None = None) -> ProcessSnapshot:
    """RSS, open file descriptors, threads and CPU time of process ``pid`` (default: this
    one)."""
    process = psutil.Process(pid if pid is not None else os.getpid())
    with process.oneshot():
        memory = process.memory_info()
        cpu = process.cpu_times()
        return ProcessSnapshot(
            rss=memory.rss,
            fds=process.num_fds(),
            threads=process.num_threads(),
            cpu=cpu.user + cpu.system,
            at=time.monotonic(),
        )


@dataclass(frozen=True)
class MachineSnapshot:
    """The whole machine's CPU time so far, from :func:`machine_snapshot`."""

    busy: float
    """CPU seconds spent not idle, every core together."""
    total: float
    """CPU seconds elapsed, every core together."""

    def busy_percent_since(self, earlier: MachineSnapshot) -> float:
        """How busy the machine was between ``earlier`` and this snapshot, as a percentage
        of all its cores (100: every core busy all the time). Other processes, other test
        runs included: a figure measured while this is near 100 measured a starved test."""
        total = self.total - earlier.total
        return 100.0 * (self.busy - earlier.busy) / total if total > 0 else math.nan


def machine_snapshot() -> MachineSnapshot:
    """The machine's CPU time, busy and total, every core together."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    total = sum(times)
    return MachineSnapshot(busy=total - idle, total=total)


def sockets_to(port: int, pid: int | None = None) -> int:
    """TCP sockets of process ``pid`` (default: this one) connected to ``port`` on any
    host (the connections of a client pool to a server, say)."""
    process = psutil.Process(pid if pid is not None else os.getpid())
    return sum(
        1
        for conn in process.net_connections(kind="tcp")
        if getattr(conn.raddr, "port", None) == port  # raddr is () when not connected
    )


def dead_sockets(pid: int | None = None) -> int:
    """Sockets process ``pid`` (default: this one) holds open for a connection that is
    over: in ``CLOSE_WAIT`` (the peer closed it), or closed by a reset and so gone from
    the kernel's connection tables while the descriptor stays open."""
    process = psutil.Process(pid if pid is not None else os.getpid())
    fd_dir = f"/proc/{process.pid}/fd"
    sockets = 0
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):  # closed meanwhile
            sockets += os.readlink(f"{fd_dir}/{fd}").startswith("socket:")
    listed = process.net_connections(kind="all")
    waiting = sum(1 for conn in listed if conn.status == psutil.CONN_CLOSE_WAIT)
    return max(0, sockets - len(listed)) + waiting


def task_count() -> int:
    """Tasks of the running event loop that are not done, the caller's included."""
    return len(asyncio.all_tasks())


def thread_count() -> int:
    """Python threads of this process that are alive, the main thread included."""
    return threading.active_count()


class HeapTracker:
    """The growth of the Python heap since a baseline, measured with ``tracemalloc``.

    ``with HeapTracker() as heap: ...; heap.growth()`` starts tracing (if nothing traces
    yet) and takes the baseline after a full garbage collection; it stops tracing on exit
    if it started it. Only allocations made while tracing are seen: enter it after what
    may allocate once (imports, first-use caches), before the work whose leaks it should
    catch. :meth:`growth` reads ``tracemalloc``'s running total (cheap); :meth:`top` takes
    a snapshot (slow with many live objects: for assertion messages).

    Args:
        frames: Frames kept per allocation (:meth:`top` groups by the innermost one).
    """

    def __init__(self, frames: int = 1) -> None:
        self.frames = frames
        self._started = False
        self._baseline = 0

    def __enter__(self) -> Self:
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
            self._started = True
        self.reset()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._started:
            tracemalloc.stop()
            self._started = False

    @staticmethod
    def traced() -> int:
        """Bytes traced and alive now, after a full garbage collection."""
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    def reset(self) -> None:
        """Take a new baseline now."""
        self._baseline = self.traced()

    def growth(self) -> int:
        """Bytes allocated since the baseline and still alive (negative: more was freed)."""
        return self.traced() - self._baseline

    def top(self, limit: int = 10) -> list[str]:
        """The source lines holding the most traced memory (allocated since tracing
        started and still alive), for an assertion message."""
        stats = tracemalloc.take_snapshot().statistics("lineno")
        return [str(stat) for stat in stats[:limit]]


class LoopLag:
    """How late the event loop runs a ticker that asks to wake up every ``interval``.

    ``async with LoopLag() as lag: ...`` runs the ticker in the background; afterwards
    :attr:`lags` holds each tick's lateness in seconds. A loop blocked by synchronous work
    (or starved of CPU) shows up as lateness.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._tick(), name="loop-lag")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, loop.time() - asked - self.interval))

    def take(self) -> list[float]:
        """The lateness of each tick so far, which is then forgotten (per-phase figures)."""
        taken, self.lags = self.lags, []
        return taken

    def p99_ms(self) -> float:
        """The 99th percentile of the lateness, in milliseconds."""
        return 1000 * percentile(self.lags, 0.99)

    def max_ms(self) -> float:
        """The worst lateness, in milliseconds (0 before any tick)."""
        return 1000 * max(self.lags, default=0.0)


# Delivery accounting.


@dataclass
class _Stream:
    first: int | None = None  # the first sequence number expected or seen
    last: int | None = None  # the highest seen
    received: int = 0  # distinct sequence numbers seen
    missing: set[int] = field(default_factory=set)  # skipped over, not (yet) seen
    late: int = 0  # seen after a higher one (order violations)
    duplicates: int = 0


@dataclass(frozen=True)
class DeliveryReport:
    """What a :class:`SequenceLog` saw, summed over its streams."""

    received: int
    """Distinct messages received."""
    lost: int
    """Messages never received: skipped sequence numbers, plus those expected after the
    last one seen (see :meth:`SequenceLog.expect`)."""
    duplicates: int
    """Messages received more than once (the extra copies)."""
    order_violations: int
    """Messages received after a message with a higher sequence number of the same stream."""
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @property
    def clean(self) -> bool:
        """No loss, no duplicate, no order violation."""
        return not (self.lost or self.duplicates or self.order_violations)

    def __str__(self) -> str:
        return (
            f"{self.received} received, {self.lost} lost, {self.duplicates} duplicates, "
            f"{self.order_violations} out of order; latency p50 {self.p50_ms:.1f} ms, "
            f"p95 {self.p95_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms"
        )


class SequenceLog:
    """Per-stream sequence accounting and latencies, for one client or many.

    A stream is anything that numbers its messages 1, 2, 3...: a room (wsroom's ``id``), or
    one publisher in a room (the publisher's own counter). :meth:`observe` takes each
    received message; memory grows with the gaps and the latencies kept, not with the
    sequence numbers seen.

    Args:
        by_stream: Also keep each stream's latencies apart, in :attr:`stream_latencies`.
    """

    def __init__(self, *, by_stream: bool = False) -> None:
        self._streams: dict[str, _Stream] = {}
        self._expected_last: dict[str, int] = {}
        self.latencies: list[float] = []
        """Latency of each message observed with a send time, in seconds."""
        self.stream_latencies: dict[str, list[float]] | None = {} if by_stream else None
        """Latencies per stream, with ``by_stream``."""
        self.gaps_signalled = 0
        """Streams restarted by :meth:`restart` (a ``gap`` frame from the server)."""

    def start_at(self, stream: str, first: int) -> None:
        """Expect ``stream`` to begin at ``first``: anything below is ignored, anything
        between ``first`` and the first message seen counts as lost."""
        state = self._streams.setdefault(stream, _Stream())
        if state.first is None:
            state.first = first

    def expect(self, stream: str, last: int) -> None:
        """``stream``'s messages up to ``last`` were all sent: those never seen are lost."""
        self._expected_last[stream] = last

    def restart(self, stream: str) -> None:
        """Forget where ``stream`` was (the server signalled a gap, the ids may restart)."""
        self._streams.pop(stream, None)
        self._expected_last.pop(stream, None)
        self.gaps_signalled += 1

    def observe(self, stream: str, seq: int, sent_at: float | None = None) -> None:
        """Account for one received message of ``stream`` with sequence number ``seq``,
        published at ``sent_at`` (``time.time()`` seconds; ``None``: no latency)."""
        if sent_at is not None:
            latency = time.time() - sent_at
            self.latencies.append(latency)
            if self.stream_latencies is not None:
                self.stream_latencies.setdefault(stream, []).append(latency)
        state = self._streams.get(stream)
        if state is None:
            state = self._streams[stream] = _Stream()
        if state.first is not None and seq < state.first:
            return
        if state.last is None:
            if state.first is not None and seq > state.first:
                state.missing.update(range(state.first, seq))
            else:
                state.first = seq
            state.last = seq
            state.received = 1
            return
        if seq > state.last:
            if seq > state.last + 1:
                state.missing.update(range(state.last + 1, seq))
            state.last = seq
            state.received += 1
        elif seq in state.missing:
            state.missing.discard(seq)
            state.late += 1
            state.received += 1
        else:
            state.duplicates += 1

    def missing(self, stream: str) -> list[int]:
        """``stream``'s sequence numbers never received: the gaps, and those after the last
        one seen up to what :meth:`expect` said was sent."""
        state = self._streams.get(stream)
        expected = self._expected_last.get(stream, 0)
        if state is None or state.last is None:
            first = state.first if state is not None and state.first is not None else 1
            return list(range(first, expected + 1))
        return sorted(state.missing) + list(range(state.last + 1, expected + 1))

    def take_latencies(self) -> list[float]:
        """The latencies observed so far, which are then forgotten (for per-bucket
        percentiles in long runs)."""
        taken, self.latencies = self.latencies, []
        return taken

    def last(self, stream: str) -> int | None:
        """The highest sequence number seen on ``stream``."""
        state = self._streams.get(stream)
        return state.last if state is not None else None

    def received(self, stream: str | None = None) -> int:
        """Distinct messages received on ``stream``, or on every stream."""
        if stream is not None:
            state = self._streams.get(stream)
            return state.received if state is not None else 0
        return sum(state.received for state in self._streams.values())

    def streams(self) -> list[str]:
        return list(self._streams)

    def report(self, latencies: Sequence[float] | None = None) -> DeliveryReport:
        """The totals over every stream; ``latencies`` replaces the ones kept."""
        duplicates = late = received = 0
        for state in self._streams.values():
            duplicates += state.duplicates
            late += state.late
            received += state.received
        names = set(self._streams) | set(self._expected_last)
        lost = sum(len(self.missing(name)) for name in names)
        values = self.latencies if latencies is None else latencies
        return DeliveryReport(
            received=received,
            lost=lost,
            duplicates=duplicates,
            order_violations=late,
            p50_ms=1000 * percentile(values, 0.50),
            p95_ms=1000 * percentile(values, 0.95),
            p99_ms=1000 * percentile(values, 0.99),
            max_ms=1000 * max(values, default=math.nan),
        )

    @staticmethod
    def merge(logs: Iterable[SequenceLog]) -> DeliveryReport:
        """One report for several logs (every client's): totals summed, latencies pooled."""
        logs = list(logs)
        reports = [log.report(latencies=()) for log in logs]
        pooled = [value for log in logs for value in log.latencies]
        return DeliveryReport(
            received=sum(r.received for r in reports),
            lost=sum(r.lost for r in reports),
            duplicates=sum(r.duplicates for r in reports),
            order_violations=sum(r.order_violations for r in reports),
            p50_ms=1000 * percentile(pooled, 0.50),
            p95_ms=1000 * percentile(pooled, 0.95),
            p99_ms=1000 * percentile(pooled, 0.99),
            max_ms=1000 * max(pooled, default=math.nan),
        )


def message_data(seq: int, src: str, pad: str = "") -> dict[str, Any]:
    """The ``data`` of a measured message: its publication time ``t``, the publisher's
    sequence number ``i`` and name ``src`` (and ``p``, padding to a wanted size)."""
    data: dict[str, Any] = {"t": time.time(), "i": seq, "src": src}
    if pad:
        data["p"] = pad
    return data


# The measuring client.


class MeasuringClient:
    """A ``websockets`` client speaking the wsroom protocol, measuring what it receives.

    After :meth:`connect` a reader task takes every frame:

    * each ``message`` whose ``data`` carries ``src`` and ``i`` feeds :attr:`log`, stream
      ``"<room>/<src>"`` (the publisher's own order), with the latency from ``data["t"]``;
    * each ``message`` feeds :attr:`room_log`, stream ``"<room>"``, with wsroom's ``id``
      (the room's sequence, which :meth:`join` starts after the joined ``offset``);
    * each ``gap`` restarts the room's stream (the server said messages may be missing);
    * each answer (``joined``, ``left``, ``ack``, ``pong``, ``error``) resolves the
      :meth:`request` that carried its ``ref``;
    * every frame is counted by type in :attr:`frames`.

    With ``bare=True`` the server sends the measured ``data`` objects themselves, not wsroom
    frames (a raw ``websockets`` baseline): each one is a message of room ``bare_room``.
    """

    def __init__(
        self, ws: ClientConnection, name: str, *, bare: bool = False, by_stream: bool = False
    ) -> None:
        self.ws = ws
        self.name = name
        self.bare = bare
        self.bare_room = "bench"
        self.log = SequenceLog(by_stream=by_stream)
        """Per-publisher streams ``"<room>/<src>"``, with latencies."""
        self.room_log = SequenceLog()
        """Per-room streams of wsroom's message ids."""
        self.frames: Counter[str] = Counter()
        self.welcome: dict[str, Any] = {}
        self.published = 0
        """Messages this client published and had acknowledged (its sequence so far)."""
        self._refs = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._welcomed: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(), name=f"measure-{name}")

    @classmethod
    async def connect(
        cls,
        url: str,
        name: str,
        *,
        user: str | None = None,
        compression: str | None = None,
        bare: bool = False,
        by_stream: bool = False,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> MeasuringClient:
        """Connect to ``url`` (``/ws?user=<user>`` appended when a user is given) and wait
        for ``welcome`` (not with ``bare``). ``compression="deflate"`` offers
        permessage-deflate; ``by_stream`` keeps latencies per stream."""
        target = url + (f"/ws?user={user}" if user is not None else "/ws")
        ws = await websockets.connect(
            target,
            subprotocols=None if bare else [Subprotocol("wsroom.v1")],
            compression=compression,
            open_timeout=timeout,
            proxy=None,  # finding a proxy reads the whole environment at each connection
            **kwargs,
        )
        client = cls(ws, name, bare=bare, by_stream=by_stream)
        if not bare:
            client.welcome = await asyncio.wait_for(asyncio.shield(client._welcomed), timeout)
        return client

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self._take(raw)
        except websockets.ConnectionClosed:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"{self.name}: connection closed"))
            if not self._welcomed.done():
                self._welcomed.set_exception(ConnectionError(f"{self.name}: no welcome"))
                self._welcomed.exception()  # retrieved: connect() may no longer wait for it

    def _take(self, raw: str | bytes) -> None:
        decoded = json.loads(raw)
        for frame in decoded if isinstance(decoded, list) else [decoded]:
            if self.bare:
                self.frames["message"] += 1
                self._measure(self.bare_room, None, frame)
                continue
            kind = frame.get("type")
            self.frames[kind] += 1
            if kind == "message":
                self._measure(frame["room"], frame["id"], frame.get("data"))
            elif kind == "gap":
                self.room_log.restart(frame["room"])
            elif kind == "welcome" and not self._welcomed.done():
                self._welcomed.set_result(frame)
            ref = frame.get("ref")
            if isinstance(ref, int) and ref in self._pending:
                future = self._pending.pop(ref)
                if not future.done():
                    future.set_result(frame)

    def _measure(self, room: str, room_id: int | None, data: Any) -> None:
        sent_at = None
        if isinstance(data, dict) and "i" in data:
            sent_at = data.get("t")
            self.log.observe(f"{room}/{data.get('src', '')}", data["i"], sent_at)
        if room_id is not None:
            self.room_log.observe(room, room_id)
        elif sent_at is None:
            self.frames["unmeasured"] += 1

    async def request(self, frame: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        """Send ``frame`` with a fresh ``ref``; return the server's direct answer to it."""
        self._refs += 1
        ref = self._refs
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await self.ws.send(json.dumps({**frame, "ref": ref}))
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(ref, None)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: the send failed before it was awaited

    async def join(self, room: str, timeout: float = 10.0) -> dict[str, Any]:
        """Join ``room``; the room's stream starts after the joined ``offset``."""
        answer = await self.request({"type": "join", "room": room}, timeout)
        if answer.get("type") != "joined":
            raise AssertionError(f"{self.name}: join {room!r} answered {answer}")
        self.room_log.start_at(room, answer["offset"] + 1)
        return answer

    async def leave(self, room: str, timeout: float = 10.0) -> dict[str, Any]:
        """Leave ``room``; the answer (``left`` or ``error``)."""
        return await self.request({"type": "leave", "room": room}, timeout)

    async def publish(
        self, room: str, *, pad: str = "", ack: bool = True, timeout: float = 10.0
    ) -> dict[str, Any] | None:
        """Publish the next measured message of this client in ``room``.

        With ``ack`` (the default), wait for the answer: an ``ack`` advances
        :attr:`published`, anything else is returned for the caller to judge and the same
        sequence number is used again next time. Without ``ack`` the message is only sent.
        """
        frame = {
            "type": "message",
            "room": room,
            "data": message_data(self.published + 1, self.name, pad),
        }
        if not ack:
            await self.ws.send(json.dumps(frame))
            self.published += 1
            return None
        answer = await self.request(frame, timeout)
        if answer.get("type") == "ack":
            self.published += 1
        return answer

    @property
    def closed(self) -> bool:
        """Whether the connection ended (its reader is done)."""
        return self._reader.done()

    @property
    def close_code(self) -> int | None:
        """The close code the server sent, once closed."""
        rcvd = self.ws.protocol.close_rcvd
        return rcvd.code if rcvd is not None else None

    async def close(self) -> None:
        """Close with the closing handshake, then stop the reader."""
        await self.ws.close()
        await self.stop()

    def abort(self) -> None:
        """Reset the TCP connection (RST, no closing handshake), as a crashed client does."""
        reset_abruptly(self.ws)

    async def stop(self) -> None:
        """Wait for the reader to end (it ends when the connection does)."""
        if not self._reader.done():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 10)
        if not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def reset_abruptly(ws: ClientConnection) -> None:
    """Close ``ws``'s TCP connection with an RST: ``SO_LINGER`` 0, then abort."""
    sock = ws.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


async def connect_many(
    url: str,
    count: int,
    *,
    prefix: str = "c",
    users: bool = True,
    compression: str | None = None,
    bare: bool = False,
    concurrency: int = 64,
    start: int = 0,
) -> list[MeasuringClient]:
    """``count`` clients named ``<prefix><index>`` (and connected as that user when
    ``users``), ``concurrency`` handshakes at a time; every one must connect."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> MeasuringClient:
        name = f"{prefix}{index}"
        async with gate:
            return await MeasuringClient.connect(
                url,
                name,
                user=name if users else None,
                compression=compression,
                bare=bare,
            )

    return list(await asyncio.gather(*(one(start + i) for i in range(count))))


async def close_all(clients: Iterable[MeasuringClient], concurrency: int = 128) -> None:
    """Close every client (closing handshakes ``concurrency`` at a time)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(client: MeasuringClient) -> None:
        async with gate:
            await client.close()

    await asyncio.gather(*(one(client) for client in clients))
