"""One client that stops reading, among 100 fast ones: does it slow the others down?

    python benchmarks/slow_reader.py                  # 100 fast clients, 8,000 x 1 KiB at 1,000/s
    python benchmarks/slow_reader.py --rate 2000 --messages 16000 --variants wsroom --repeat 5
    python benchmarks/slow_reader.py --variants wsroom-sync,seed-sync --json out.json
    python benchmarks/slow_reader.py --quick          # smoke run: a few seconds

For each variant, and each round, two fresh servers are measured in turn: one with N fast
clients in the room, one with the same N plus a **non-reader**, a raw socket with a 4 KiB
receive buffer that completes the handshake, joins, and never reads again (a frozen tab or
a dead mobile link). The server publishes a paced stream (message *i* is due ``i / rate``
seconds after the start and carries that due time); the fast clients (fanout.py's load
client) count what they receive and sample the end-to-end latency. The figures: delivered
messages per fast client, p50/p99 latency, the ratio p99(with) / p99(without), and whether
and when the non-reader's connection was closed or reset by the server, and the wall time
of the server's publish calls (one per message: ``await manager.broadcast(...)``,
``manager.from_thread.broadcast(...)`` from a plain thread, or a seed's whole send loop),
p99 and max. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import os
import select
import socket
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fanout import (
    JOIN_FRAME,
    PROTOCOLS,
    BenchError,
    LoadClient,
    ServerProcess,
    client_frame,
    percentile,
    raise_open_file_limit,
)

HERE = Path(__file__).resolve().parent
SCENARIO_SCRIPT = HERE / "scenario_server.py"
SAMPLES = 20_000  # latencies sampled per stream, over all fast clients
RCVBUF = 4096


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    server: str
    kind: str  # the client side of the protocol, as in fanout.py
    needs: tuple[str, ...] = ()  # modules the server imports beyond websockets and wsroom


VARIANTS = {
    v.name: v
    for v in [
        Variant("wsroom", "wsroom, websockets asyncio", "paced-wsroom", "wsroom"),
        Variant("seed-loop", "seed loop, websockets asyncio", "paced-seed-loop", "plain"),
        Variant("wsroom-sync", "wsroom, websockets sync", "paced-wsroom-sync", "wsroom"),
        Variant("seed-sync", "seed loop, websockets sync", "paced-seed-sync", "plain"),
        Variant(
            "wsroom-starlette",
            "wsroom, Starlette/uvicorn",
            "paced-wsroom-starlette",
            "wsroom",
            needs=("starlette", "uvicorn"),
        ),
    ]
}
QUICK_VARIANTS = ["wsroom", "seed-loop", "wsroom-sync", "seed-sync"]


class NonReader:
    """Handshake, join, then never read: the kernel's 4 KiB receive buffer fills, then the
    server's send buffer. A thread watches the socket (poll, no read) for the server
    closing or resetting it."""

    def __init__(self, port: int, kind: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self._seen = b""
        self._read_until(b"\r\n\r\n", b"HTTP/1.1 101")
        if kind == "wsroom":
            self._frame()  # welcome
            self.sock.sendall(client_frame(JOIN_FRAME))
            # joined (with the room's history: it may be long), then nothing more is read
            while b'"joined"' not in self._frame()[:40]:
                pass
        self.start = 0.0
        self.ended_at: float | None = None  # monotonic time the server closed or reset it
        self.how = ""
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def _read_until(self, marker: bytes, prefix: bytes = b"") -> None:
        data = self._seen
        while marker not in data:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise BenchError("the non-reader was closed during its handshake")
            data += chunk
        if not data.startswith(prefix):
            raise BenchError(f"non-reader refused: {data[:60]!r}")
        self._seen = data[data.index(marker) + len(marker) :]

    def _frame(self) -> bytes:
        """The payload of the next whole server frame."""
        while True:
            data = self._seen
            if len(data) >= 4:
                length = data[1] & 0x7F
                start = 2
                if length == 126:
                    start, length = 4, int.from_bytes(data[2:4], "big")
                elif length == 127 and len(data) >= 10:
                    start, length = 10, int.from_bytes(data[2:10], "big")
                if length != 127 and len(data) >= start + length:
                    self._seen = data[start + length :]
                    return data[start : start + length]
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("the non-reader was closed during its handshake")
            self._seen += chunk

    def watch(self) -> None:
        """From now on, note when the server ends the connection."""
        self.start = time.monotonic()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        poller = select.poll()
        # POLLIN is not asked for: unread data is always there. POLLERR (a reset) and
        # POLLHUP are always reported; POLLRDHUP is the server's FIN.
        poller.register(self.sock.fileno(), getattr(select, "POLLRDHUP", 0x2000))
        while not self._stop.is_set():
            if poller.poll(100):
                self.ended_at = time.monotonic()
                err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                self.how = "reset" if err else "closed"
                return

    def finish(self, rate: float) -> Ending:
        """Read at last: everything the kernel kept, then the end of the connection (if the
        server ended it), or a second of silence. Say whether, how and when it ended."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(1)
        self.sock.settimeout(1.0)
        data = self._seen
        end = "open"
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    end = "EOF"
                    break
                data += chunk
        except TimeoutError:
            pass
        except ConnectionResetError:
            end = "reset"
        messages, last, close_code = parse_frames(data)
        if self.ended_at is not None:
            how = f"{self.how} seen at {self.ended_at - self.start:.2f} s"
        elif end == "open":
            how = "still open"
        else:
            how = f"{end} once read"
        return Ending(
            ended=self.ended_at is not None or end != "open" or close_code is not None,
            how=how,
            received=messages,
            last_due_s=last / rate if last is not None else None,
            close_code=close_code,
        )

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(1)
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass
class Ending:
    """What became of the non-reader, seen from its side."""

    ended: bool  # the server closed or reset the connection
    how: str
    received: int  # messages it found when it read at last
    last_due_s: float | None  # the due time of the last of them, from the stream's start
    close_code: int | None

    def __str__(self) -> str:
        return (
            f"{'yes' if self.ended else 'no'}, {self.how}; {self.received} msgs received"
            + (f", the last due at {self.last_due_s:.2f} s" if self.last_due_s is not None else "")
            + (f"; close code {self.close_code}" if self.close_code is not None else "")
        )


def parse_frames(data: bytes) -> tuple[int, int | None, int | None]:
    """Server frames: (data frames, the last message's ``"i"``, the close code if any)."""
    pos = 0
    messages = 0
    last: int | None = None
    close_code: int | None = None
    while pos + 2 <= len(data):
        length = data[pos + 1] & 0x7F
        start = pos + 2
        if length == 126:
            start = pos + 4
            length = int.from_bytes(data[pos + 2 : start], "big")
        elif length == 127:
            start = pos + 10
            length = int.from_bytes(data[pos + 2 : start], "big")
        end = start + length
        if end > len(data):
            break
        opcode = data[pos] & 0x0F
        if opcode in (1, 2):
            messages += 1
            found = data.find(b'"i":', start, end)
            if found >= 0:
                digits = data[found + 4 : end].split(b",", 1)[0].strip(b" }")
                with contextlib.suppress(ValueError):
                    last = int(digits)
        elif opcode == 8 and length >= 2:
            close_code = int.from_bytes(data[start : start + 2], "big")
        pos = end
    return messages, last, close_code


@dataclass
class Run:
    delivered_min: int
    delivered_mean: float
    p50_ms: float | None
    p99_ms: float | None
    published: int
    ending: Ending | None  # None without a non-reader
    # The wall time of the server's publish calls, one per message (None: not reported).
    publish_calls: int | None = None
    publish_p50_ms: float | None = None
    publish_p99_ms: float | None = None
    publish_max_ms: float | None = None  # a lower bound when publish_stuck
    publish_stuck: bool = False  # a call had not returned when the publisher gave up


@dataclass
class Cell:
    variant: Variant
    with_reader: bool
    runs: list[Run] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, name: str) -> float | None:
        values = [v for r in self.runs if (v := getattr(r, name)) is not None]
        return statistics.median(values) if values else None


@dataclass
class PublishReport:
    """The server's ``PUBLISHED n [calls=k p50_ms=x p99_ms=y max_ms=z stuck=0|1]`` answer."""

    published: int
    calls: int | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    stuck: bool = False

    @classmethod
    def parse(cls, line: str) -> PublishReport:
        words = line.split()
        fields = dict(word.split("=", 1) for word in words[2:] if "=" in word)

        def number(key: str) -> float | None:
            return float(fields[key]) if key in fields else None

        return cls(
            published=int(words[1]),
            calls=int(fields["calls"]) if "calls" in fields else None,
            p50_ms=number("p50_ms"),
            p99_ms=number("p99_ms"),
            max_ms=number("max_ms"),
            stuck=fields.get("stuck") == "1",
        )


def run_once(variant: Variant, args: argparse.Namespace, with_reader: bool) -> Run:
    duration = args.messages / args.rate
    limit = duration + args.grace
    server = ServerProcess(
        variant.server,
        ["--rate", str(args.rate), "--size", str(args.size), "--time-limit", f"{limit:.3f}"],
        script=SCENARIO_SCRIPT,
    )
    client = LoadClient(PROTOCOLS[variant.kind])
    reader: NonReader | None = None
    n = args.clients
    try:
        if not client.connect([server.port], n, time.monotonic() + 30 + n / 50):
            raise BenchError(f"{client.ready} of {n} clients connected: {client.errors[:1]}")
        server.count(n)

        def stream(messages: int, sample_every: int, deadline: float) -> PublishReport:
            client.reset(sample_every)
            server.send(f"BURST {messages}")
            client.expect(n * messages, deadline)
            report = PublishReport.parse(server.expect("PUBLISHED", limit + 30))
            server.expect("SENT", 30)
            return report

        warm = max(10, args.messages // 20)  # not measured
        stream(warm, 0, time.monotonic() + 10 + warm / args.rate)
        if client.total < n * warm:
            raise BenchError(f"warm-up: {client.total} of {n * warm} deliveries")

        if with_reader:
            reader = NonReader(server.port, variant.kind)
            server.count(n + 1)
            reader.watch()
        before = [conn.frames for conn in client.conns]
        every = max(1, n * args.messages // SAMPLES)
        report = stream(args.messages, every, time.monotonic() + limit + 1)
        if client.errors:
            raise BenchError(client.errors[0])
        counts = [conn.frames - b for conn, b in zip(client.conns, before, strict=True)]
        latencies = sorted(client.latencies)
        return Run(
            delivered_min=min(counts),
            delivered_mean=sum(counts) / n,
            p50_ms=1000 * percentile(latencies, 0.50) if latencies else None,
            p99_ms=1000 * percentile(latencies, 0.99) if latencies else None,
            published=report.published,
            ending=reader.finish(args.rate) if reader is not None else None,
            publish_calls=report.calls,
            publish_p50_ms=report.p50_ms,
            publish_p99_ms=report.p99_ms,
            publish_max_ms=report.max_ms,
            publish_stuck=report.stuck,
        )
    except (BenchError, OSError) as exc:
        tail = server.tail(400) if server.process.poll() is not None else ""
        raise BenchError(f"{exc}{'; server: ' + tail if tail else ''}") from None
    finally:
        if reader is not None:
            reader.close()
        client.close()
        server.stop()


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def publish_max(runs: list[Run]) -> str:
    """The publish calls' max, marked when a call never returned (its time is a floor)."""
    values = [r.publish_max_ms for r in runs if r.publish_max_ms is not None]
    text = fmt(statistics.median(values), ".2f") if values else "-"
    return f">{text} (stuck)" if any(r.publish_stuck for r in runs) else text


def table(cells: list[Cell], messages: int) -> str:
    lines = [
        f"| variant | non-reader | delivered/client (of {messages}) | p50 ms | p99 ms "
        "| p99 with/without | publish p99 ms | publish max ms | non-reader evicted |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for cell in cells:
        if not cell.runs:
            lines.append(
                f"| {cell.variant.label} | {'with' if cell.with_reader else 'without'} "
                f"| failed | - | - | - | - | - | - |"
            )
            continue
        ratio = "-"
        if cell.with_reader:
            alone = [c for c in cells if c.variant is cell.variant and not c.with_reader]
            base = alone[0].median("p99_ms")
            p99 = cell.median("p99_ms")
            if base and p99 is not None:
                ratio = f"{p99 / base:.2f}"
        delivered = min(r.delivered_min for r in cell.runs)
        evicted = "-"
        endings = [r.ending for r in cell.runs if r.ending is not None]
        if endings:
            evicted = f"{sum(e.ended for e in endings)}/{len(endings)}: {endings[0]}"
        lines.append(
            f"| {cell.variant.label} | {'with' if cell.with_reader else 'without'} "
            f"| {delivered} | {fmt(cell.median('p50_ms'))} | {fmt(cell.median('p99_ms'))} "
            f"| {ratio} | {fmt(cell.median('publish_p99_ms'), '.2f')} | {publish_max(cell.runs)} "
            f"| {evicted} |"
        )
    return "\n".join(lines)


def write_json(
    path: Path, args: argparse.Namespace, cells: list[Cell], skipped: dict[str, list[str]]
) -> None:
    medians = [
        "delivered_mean",
        "p50_ms",
        "p99_ms",
        "publish_p50_ms",
        "publish_p99_ms",
        "publish_max_ms",
    ]
    output = {
        "settings": {
            "clients": args.clients,
            "messages": args.messages,
            "rate": args.rate,
            "size": args.size,
            "repeat": args.repeat,
            "grace": args.grace,
            "rcvbuf": RCVBUF,
            "variants": [cell.variant.name for cell in cells if not cell.with_reader],
            "skipped": skipped,
        },
        "results": [
            {
                "variant": cell.variant.name,
                "label": cell.variant.label,
                "non_reader": cell.with_reader,
                "delivered_min": min((r.delivered_min for r in cell.runs), default=None),
                "median": {name: cell.median(name) for name in medians},
                "publish_stuck": any(r.publish_stuck for r in cell.runs),
                "runs": [asdict(run) for run in cell.runs],
                "errors": cell.errors,
            }
            for cell in cells
        ],
    }
    path.write_text(json.dumps(output, indent=2) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=100, help="fast clients")
    parser.add_argument("--messages", type=int, default=8000, help="messages per stream")
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    parser.add_argument("--size", type=int, default=1024, help="bytes per message (JSON)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians reported")
    parser.add_argument(
        "--grace", type=float, default=5.0, help="seconds a stream may run past its schedule"
    )
    parser.add_argument(
        "--variants",
        help=f"comma-separated, of {', '.join(VARIANTS)} (default: all; "
        f"with --quick: {', '.join(QUICK_VARIANTS)})",
    )
    parser.add_argument("--json", metavar="PATH", help="write every run and the medians as JSON")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: a few seconds, only the variants that need no extra package",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.messages, args.rate, args.repeat, args.grace = 10, 200, 1000.0, 1, 1.5
    if args.variants is None:
        args.variants = ",".join(QUICK_VARIANTS if args.quick else VARIANTS)
    return args


def missing(variant: Variant) -> list[str]:
    """The modules the variant's server needs and this Python lacks."""
    return [name for name in variant.needs if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_file_limit()
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(unknown)}")
    skipped = {name: lacking for name in names if (lacking := missing(VARIANTS[name]))}
    for name, lacking in skipped.items():
        print(f"skipped {name}: needs {', '.join(lacking)}", flush=True)
    cells = [
        Cell(VARIANTS[name], with_reader)
        for name in names
        if name not in skipped
        for with_reader in (False, True)
    ]
    print(
        f"{args.clients} fast clients, {args.messages} messages of ~{args.size} bytes at "
        f"{args.rate:g}/s, {args.repeat} round(s); non-reader: {RCVBUF}-byte receive buffer",
        flush=True,
    )
    for round_ in range(args.repeat):
        for cell in cells:
            try:
                run = run_once(cell.variant, args, cell.with_reader)
            except BenchError as exc:
                cell.errors.append(str(exc))
                print(f"round {round_ + 1}: {cell.variant.name} failed: {exc}", flush=True)
                continue
            cell.runs.append(run)
            print(
                f"round {round_ + 1}: {cell.variant.name} "
                f"{'with' if cell.with_reader else 'without'} non-reader: "
                f"{run.delivered_min}/{args.messages} delivered (published {run.published}), "
                f"p50 {fmt(run.p50_ms)} ms, p99 {fmt(run.p99_ms)} ms; "
                f"{fmt(run.publish_calls, 'd')} publish calls: "
                f"p50 {fmt(run.publish_p50_ms, '.2f')} ms, p99 {fmt(run.publish_p99_ms, '.2f')} "
                f"ms, max {publish_max([run])} ms"
                + (f"; non-reader evicted: {run.ending}" if run.ending else ""),
                flush=True,
            )
    print()
    print(table(cells, args.messages))
    if args.json:
        write_json(Path(args.json), args, cells, skipped)
    return 0 if all(cell.runs for cell in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
