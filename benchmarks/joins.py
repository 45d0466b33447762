"""Join/leave latency with 1,000 rooms, measured from the clients.

    python benchmarks/joins.py                        # 200 clients, 5,000 join+leave round trips
    python benchmarks/joins.py --clients 500 --operations 20000 --repeat 5
    python benchmarks/joins.py --quick                # smoke run: a few seconds

A fresh wsroom server (websockets asyncio adapter, memory backplane; and, when a Redis
answers, a second one with a ``RedisBackplane`` under a fresh key prefix, deleted
afterwards) gets N clients from fanout.py's raw-socket load client. First the clients
fill the 1,000 rooms (each client holds rooms/N of them for the whole run, so every room
exists and has a member). Then each client, one operation in flight at a time, joins a
random room among the 1,000 (not one it holds) with a ``ref``, waits for ``joined`` with
that ``ref``, sends ``leave`` and waits for ``left``, until the round trips of all clients
reach the total. Reported: p50/p99 join and leave latency, and completed joins per second.
The clients are anonymous, so no presence traffic. The server lifts the per-client rate
limit (``Limits.without_rate_limits()``), so no round trip is throttled. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field

from fanout import (
    BenchError,
    ClientProtocol,
    Conn,
    LoadClient,
    ServerProcess,
    client_frame,
    frame_bounds,
    percentile,
    raise_open_file_limit,
    redis_url_to_use,
    redis_version,
)
from slow_reader import SCENARIO_SCRIPT

WELCOME_ONLY = ClientProtocol(setup_frames=1)  # in once the welcome arrived


class JoinClient(LoadClient):
    """fanout.py's load client, reading every frame in full: each answer drives the next
    request of its client."""

    def __init__(self, rooms: int, seed: int) -> None:
        super().__init__(WELCOME_ONLY)
        self.rooms = rooms
        self.random = random.Random(seed)
        self.held: dict[int, set[int]] = {}  # client index -> rooms held all run long
        self.pending: dict[int, tuple[str, int | str, float]] = {}  # index -> (awaited, ref, since)
        self.remaining = 0  # round trips still to start
        self.done = 0  # round trips completed
        self.holding = 0  # resident joins still awaited
        self.join_s: list[float] = []
        self.leave_s: list[float] = []
        self.next_ref = 0

    # Frames.

    def _feed(self, conn: Conn, data: bytes) -> None:
        if conn.buf:
            data = conn.buf + data
        pos = 0
        while (bounds := frame_bounds(data, pos)) is not None:
            start, end = bounds
            opcode = data[pos] & 0x0F
            if opcode < 8 and data[pos] & 0x80:
                conn.frames += 1
                self.total += 1
                if conn.joined:
                    self._answer(conn, data[start:end])
                else:
                    self._advance(conn)
            elif not self._control(conn, opcode, data[start:end]):
                return
            pos = end
        conn.buf = data[pos:]

    def _answer(self, conn: Conn, payload: bytes) -> None:
        now = time.perf_counter()
        frame = json.loads(payload)
        kind = frame.get("type")
        if kind == "error":
            self._fail(conn, f"error from the server: {frame}")
            return
        awaited = self.pending.get(conn.index)
        if awaited is None or kind != awaited[0] or frame.get("ref") != awaited[1]:
            return  # not an answer to this client's request
        del self.pending[conn.index]
        since = awaited[2]
        if kind == "joined" and isinstance(frame.get("ref"), str):  # a room held all run
            self.holding -= 1
        elif kind == "joined":
            self.join_s.append(now - since)
            self._request(conn, "leave", "left", frame["room"])
        else:
            self.leave_s.append(now - since)
            self.done += 1
            self._next(conn)

    def _request(
        self, conn: Conn, kind: str, awaited: str, room: str, ref: int | str | None = None
    ) -> None:
        if ref is None:
            self.next_ref += 1
            ref = self.next_ref
        self.pending[conn.index] = (awaited, ref, time.perf_counter())
        body = json.dumps({"type": kind, "room": room, "ref": ref}, separators=(",", ":"))
        self._send(conn, client_frame(body.encode()))

    def _next(self, conn: Conn) -> None:
        if self.remaining <= 0:
            return
        self.remaining -= 1
        held = self.held[conn.index]
        room = self.random.randrange(self.rooms)
        while room in held:
            room = self.random.randrange(self.rooms)
        self._request(conn, "join", "joined", f"room-{room}")

    # Phases.

    def hold_rooms(self, deadline: float) -> None:
        """Spread the rooms over the clients, each joining its share (string refs)."""
        for conn in self.conns:
            self.held[conn.index] = set()
        for room in range(self.rooms):
            conn = self.conns[room % len(self.conns)]
            self.held[conn.index].add(room)
        self.holding = self.rooms
        queues = {c.index: sorted(self.held[c.index]) for c in self.conns}
        # One request in flight per client: wait for each answer before the next join.
        while self.holding:
            for conn in self.conns:
                if conn.index not in self.pending and queues[conn.index]:
                    room = queues[conn.index].pop()
                    self._request(conn, "join", "joined", f"room-{room}", f"hold-{room}")
            if self.errors or time.monotonic() > deadline:
                raise BenchError(f"{self.holding} rooms not joined: {self.errors[:1]}")
            self._poll(0.5)

    def round_trips(self, total: int, deadline: float) -> float:
        """Run ``total`` join+leave round trips; the wall time they took."""
        self.remaining = total
        self.done = 0
        start = time.perf_counter()
        for conn in self.conns:
            self._next(conn)
        while self.done < total:
            if self.errors or time.monotonic() > deadline:
                raise BenchError(f"{self.done} of {total} round trips: {self.errors[:1]}")
            self._poll(0.5)
        return time.perf_counter() - start


@dataclass
class Variant:
    name: str
    label: str
    server: str
    redis: bool = False


VARIANTS = {
    v.name: v
    for v in [
        Variant("wsroom", "wsroom asyncio, memory backplane", "joins-wsroom"),
        Variant("wsroom-redis", "wsroom asyncio, RedisBackplane", "joins-wsroom-redis", True),
    ]
}


@dataclass
class Run:
    join_p50_ms: float
    join_p99_ms: float
    leave_p50_ms: float
    leave_p99_ms: float
    joins_per_s: float


@dataclass
class Cell:
    variant: Variant
    runs: list[Run] = field(default_factory=list)
    skipped: str = ""

    def median(self, name: str) -> float:
        return float(statistics.median(getattr(r, name) for r in self.runs))


def run_once(variant: Variant, args: argparse.Namespace, seed: int) -> Run:
    extra: list[str] = []
    if variant.redis:
        prefix = f"wsroom-bench-joins-{secrets.token_hex(4)}"
        extra = ["--redis-url", args.redis_url, "--prefix", prefix, "--cleanup"]
    server = ServerProcess(variant.server, extra, script=SCENARIO_SCRIPT)
    client = JoinClient(args.rooms, seed)
    n = args.clients
    try:
        if not client.connect([server.port], n, time.monotonic() + 30 + n / 50):
            raise BenchError(f"{client.ready} of {n} clients connected: {client.errors[:1]}")
        server.count(n)
        client.hold_rooms(time.monotonic() + 60)
        warm = min(args.operations, 2 * n)
        client.round_trips(warm, time.monotonic() + 60)  # not measured
        client.join_s, client.leave_s = [], []
        wall = client.round_trips(args.operations, time.monotonic() + 60 + args.operations / 50)
        joins = sorted(client.join_s)
        leaves = sorted(client.leave_s)
        return Run(
            join_p50_ms=1000 * percentile(joins, 0.5),
            join_p99_ms=1000 * percentile(joins, 0.99),
            leave_p50_ms=1000 * percentile(leaves, 0.5),
            leave_p99_ms=1000 * percentile(leaves, 0.99),
            joins_per_s=args.operations / wall,
        )
    except (BenchError, OSError) as exc:
        tail = server.tail(400) if server.process.poll() is not None else ""
        raise BenchError(f"{exc}{'; server: ' + tail if tail else ''}") from None
    finally:
        client.close()
        server.stop()


def table(cells: list[Cell]) -> str:
    lines = [
        "| variant | join p50 ms | join p99 ms | leave p50 ms | leave p99 ms | joins/s |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for cell in cells:
        if cell.skipped:
            continue
        if not cell.runs:
            lines.append(f"| {cell.variant.label} | failed | - | - | - | - |")
            continue
        lines.append(
            f"| {cell.variant.label} | {cell.median('join_p50_ms'):.2f} "
            f"| {cell.median('join_p99_ms'):.2f} | {cell.median('leave_p50_ms'):.2f} "
            f"| {cell.median('leave_p99_ms'):.2f} | {cell.median('joins_per_s'):,.0f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--operations", type=int, default=5000, help="join+leave round trips")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians reported")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument(
        "--redis-url",
        help="default: WSROOM_BENCH_REDIS_URL, WSROOM_TEST_REDIS_URL or redis://127.0.0.1:6379/0",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: a few seconds")
    args = parser.parse_args(argv)
    args.redis_url = redis_url_to_use(args.redis_url)
    if args.quick:
        args.clients, args.rooms, args.operations, args.repeat = 10, 50, 100, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_file_limit()
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(unknown)}")
    cells = [Cell(VARIANTS[name]) for name in names]
    for cell in cells:
        if cell.variant.redis:
            try:
                import redis  # noqa: F401
            except ImportError:
                cell.skipped = "redis-py is not installed"
            else:
                if redis_version(args.redis_url) is None:
                    cell.skipped = f"no Redis answers at {args.redis_url}"
        if cell.skipped:
            print(f"skipped {cell.variant.name}: {cell.skipped}", flush=True)
    print(
        f"{args.clients} clients, {args.rooms} rooms, {args.operations} join+leave round trips "
        f"per run, {args.repeat} round(s)",
        flush=True,
    )
    for round_ in range(args.repeat):
        for cell in cells:
            if cell.skipped:
                continue
            try:
                run = run_once(cell.variant, args, seed=round_)
            except BenchError as exc:
                print(f"round {round_ + 1}: {cell.variant.name} failed: {exc}", flush=True)
                continue
            cell.runs.append(run)
            print(
                f"round {round_ + 1}: {cell.variant.name}: join p50 {run.join_p50_ms:.2f} ms, "
                f"p99 {run.join_p99_ms:.2f} ms; leave p50 {run.leave_p50_ms:.2f} ms, "
                f"p99 {run.leave_p99_ms:.2f} ms; {run.joins_per_s:,.0f} joins/s",
                flush=True,
            )
    print()
    print(table(cells))
    return 0 if all(cell.runs or cell.skipped for cell in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
