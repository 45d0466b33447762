"""A Redis that can fail over, for the tests: a primary, a replica and Sentinels of the
test's own, each on a free port in one temporary directory, stopped by PID."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.helpers import TIMEOUT
from tests.redis_support import PrivateRedis, free_port, redis_server_path

SERVICE = "wsroom-test"
"""The name the Sentinels monitor the primary under."""


def sentinel_command() -> list[str] | None:
    """How to start a Sentinel here: Debian's ``redis-sentinel``, else ``redis-server
    --sentinel`` (the same program); ``None`` without either."""
    found = shutil.which("redis-sentinel")
    if found:
        return [found]
    server = redis_server_path()
    return [server, "--sentinel"] if server else None


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class SentinelProcess:
    """One Sentinel, with its own configuration file (Sentinel rewrites it)."""

    def __init__(self, command: list[str], folder: Path, primary_port: int, **settings: Any):
        self.port = free_port()
        self.config = folder / f"sentinel-{self.port}.conf"
        self.log = folder / f"sentinel-{self.port}.log"
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "daemonize no",
            f'logfile "{self.log}"',
            f'dir "{folder}"',
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {settings['quorum']}",
            f"sentinel down-after-milliseconds {SERVICE} {settings['down_after_ms']}",
            f"sentinel failover-timeout {SERVICE} {settings['failover_timeout_ms']}",
            f"sentinel parallel-syncs {SERVICE} 1",
        ]
        self.config.write_text("\n".join(lines) + "\n")
        # redis-server reads its configuration file first, then the options after it.
        argv = [command[0], str(self.config), *command[1:]]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def started(self) -> bool:
        return _answers(self.port)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ReplicationLink:
    """A relay in front of the primary, through which everyone reaches it (so Sentinel sees
    the replica replicate from the address it monitors), whose replication stream the test
    can hold so that the replica falls behind: what the primary sends meanwhile stays here,
    and is dropped when the relay closes. Redis replication is asynchronous: acknowledged
    writes the replica did not get die with the primary."""

    def __init__(self, primary_port: int) -> None:
        self.primary_port = primary_port
        self.port = 0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._closed = False

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closed:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.primary_port)
        except OSError:
            writer.transport.abort()
            return
        except asyncio.CancelledError:  # the test's loop ends meanwhile
            writer.transport.abort()
            raise
        if self.closing():
            # Accepted while close() ran: nothing would drop this connection later.
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._writers += [writer, up_writer]
        replication = asyncio.Event()  # a replica's connection, once it says so

        async def pipe(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, upstream: bool
        ) -> None:
            try:
                while data := await src.read(65536):
                    if upstream and (b"REPLCONF" in data or b"PSYNC" in data):
                        replication.set()
                    if replication.is_set():
                        await self.flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        for task in (
            asyncio.create_task(pipe(reader, up_writer, upstream=True)),
            asyncio.create_task(pipe(up_reader, writer, upstream=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def closing(self) -> bool:
        """Whether :meth:`close` has begun (read again after each await)."""
        return self._closed

    def hold(self) -> None:
        """Keep what the primary and its replica send each other from now on."""
        self.flowing.clear()

    async def close(self) -> None:
        """Drop the connections and whatever they held."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class FailoverSet:
    """A primary, one replica of it and ``count`` Sentinels watching them. With ``link``,
    the primary is reached through that relay."""

    def __init__(
        self,
        server: str,
        command: list[str],
        *,
        count: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        link: ReplicationLink | None = None,
    ) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="wsroom-sentinel-"))
        self.primary = PrivateRedis(server)
        self.link = link
        if link is not None:
            link.primary_port = self.primary.port
        # With a relay, the primary's address for the replica and the Sentinels is the
        # relay's (a Sentinel would point a replica elsewhere back at the primary).
        self.address = link.port if link is not None else self.primary.port
        self.replica = PrivateRedis(server, ["--replicaof", "127.0.0.1", str(self.address)])
        self.command = command
        self.count = count
        self.settings = {
            "quorum": quorum,
            "down_after_ms": down_after_ms,
            "failover_timeout_ms": failover_timeout_ms,
        }
        self.sentinels: list[SentinelProcess] = []

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The Sentinels' addresses, as ``redis.asyncio.Sentinel`` takes them."""
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def start(self) -> None:
        """Start the servers, then the Sentinels (blocking: call in a thread)."""
        self.primary.start()
        self.replica.start()
        for _ in range(self.count):
            self.sentinels.append(
                SentinelProcess(self.command, self.folder, self.address, **self.settings)
            )
        deadline = time.monotonic() + TIMEOUT * 2
        while not all(s.started() for s in self.sentinels):
            if time.monotonic() > deadline or any(
                s.process.poll() is not None for s in self.sentinels
            ):
                raise RuntimeError(f"a Sentinel did not start: {self.logs()}")
            time.sleep(0.02)  # waiting for processes that have no readiness signal to await

    async def watching(self, timeout: float = TIMEOUT * 4) -> None:
        """Wait until the replica is in sync and every Sentinel knows the replica and the
        other Sentinels: only then can a failover happen."""
        from redis import asyncio as aioredis

        replica = aioredis.Redis(port=self.replica.port, socket_timeout=TIMEOUT)
        sentinels = [aioredis.Redis(port=s.port, socket_timeout=TIMEOUT) for s in self.sentinels]
        try:
            async with asyncio.timeout(timeout):
                while True:
                    info = await replica.info("replication")
                    ready = info.get("master_link_status") == "up"
                    for client in sentinels:
                        replicas: Any = await client.sentinel_slaves(SERVICE)
                        others: Any = await client.sentinel_sentinels(SERVICE)
                        ready = ready and len(replicas) == 1 and len(others) == self.count - 1
                        ready = ready and "s_down" not in str(replicas[0].get("flags", ""))
                    if ready:
                        return
                    await asyncio.sleep(0.1)  # Sentinels announce themselves every 2 s
        finally:
            for client in [replica, *sentinels]:
                await client.aclose()

    async def primary_port(self) -> set[int]:
        """The primary's port according to each Sentinel."""
        from redis import asyncio as aioredis

        ports = set()
        for sentinel in self.sentinels:
            client = aioredis.Redis(port=sentinel.port, socket_timeout=TIMEOUT)
            try:
                address: Any = await client.sentinel_get_master_addr_by_name(SERVICE)
                ports.add(int(address[1]))
            finally:
                await client.aclose()
        return ports

    def kill_primary(self) -> None:
        """SIGKILL the primary: whatever it had not sent to the replica is lost."""
        self.primary.kill()

    def logs(self) -> str:
        return "\n".join(
            f"== {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.folder.glob("*.log"))
        )

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.stop()
        self.primary.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@asynccontextmanager
async def failover_set(*, held: bool = False, **options: Any) -> AsyncIterator[FailoverSet]:
    """A started :class:`FailoverSet` whose Sentinels watch it; stopped after, by PID.
    With ``held``, its replica replicates through a :class:`ReplicationLink`."""
    import pytest

    server, command = redis_server_path(), sentinel_command()
    if server is None or command is None:
        pytest.skip("redis-server or redis-sentinel is not installed (scripts/test.sh installs it)")
    link = ReplicationLink(0) if held else None
    if link is not None:
        await link.start()
    cluster = FailoverSet(server, command, link=link, **options)
    try:
        await asyncio.to_thread(cluster.start)
        await cluster.watching()
        yield cluster
    finally:
        if link is not None:
            await link.close()
        await asyncio.to_thread(cluster.stop)
