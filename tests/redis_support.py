"""Redis for the tests: the shared server's URL, private servers to kill, two-node rooms."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager

from tests.helpers import TIMEOUT
from wsroom import ConnectionManager
from wsroom.backplane.base import Backplane


def shared_redis_url() -> str | None:
    """The Redis the test command found or started; else the machine's, if it answers."""
    url = os.environ.get("WSROOM_TEST_REDIS_URL")
    if url:
        return url
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(16).startswith(b"+PONG"):
                return "redis://127.0.0.1:6379/0"
    except OSError:
        pass
    return None


def redis_server_path() -> str | None:
    return os.environ.get("WSROOM_REDIS_SERVER") or shutil.which("redis-server")


def fresh_prefix() -> str:
    """A key prefix of its own, so tests never see each other's keys on a shared Redis."""
    return f"wsroom-test-{secrets.token_hex(4)}"


async def delete_prefix(url: str, prefix: str) -> None:
    from redis import asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A redis-server of the test's own on a free port, to kill, stop and restart by PID."""

    def __init__(self, path: str, extra: Sequence[str] = ()) -> None:
        self.path = path
        self.extra = list(extra)
        """More ``redis-server`` options (TLS, replication...)."""
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="wsroom-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.path,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--logfile",
                "",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline_ok = False
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        deadline_ok = True
                        break
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            import time

            time.sleep(0.02)  # waiting for a process that has no readiness signal to await
        if not deadline_ok:
            raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(TIMEOUT)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_redis(extra: Sequence[str] = ()) -> Iterator[PrivateRedis]:
    path = redis_server_path()
    if path is None:
        import pytest

        pytest.skip("redis-server is not installed (scripts/test.sh installs it)")
    server = PrivateRedis(path, extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def twin(manager: ConnectionManager, backplane: Backplane) -> ConnectionManager:
    """A second node configured like ``manager``, on ``backplane``."""
    other = ConnectionManager(
        manager._room_class,
        authenticate=manager.authenticate,
        protocol=manager.protocol,
        backplane=backplane,
        limits=manager.limits,
        heartbeat=manager.heartbeat,
        can_direct=manager.can_direct,
        on_connect=manager.on_connect,
        on_disconnect=manager.on_disconnect,
    )
    other.origins = manager.origins
    other._handlers.update(manager._handlers)  # the dispatcher holds this very dict
    return other


def use_backplane(manager: ConnectionManager, backplane: Backplane) -> None:
    """Put a not yet started manager on another backplane (tests build managers inline)."""
    assert not manager._started
    manager.cluster.backplane = backplane


class RoundRobinProxy:
    """A TCP proxy that sends each new connection to the next upstream port in turn."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.next = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self.ports[self.next % len(self.ports)]
        self.next += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        both = [
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ]
        self.tasks.update(both)
        await asyncio.gather(*both, return_exceptions=True)
        self.tasks.difference_update(both)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@asynccontextmanager
async def two_nodes_over_redis(manager: ConnectionManager) -> AsyncIterator[str]:
    """The test's manager and a twin node, each with its own server, sharing rooms through
    Redis; connections alternate between the two nodes through a proxy."""
    import pytest

    from wsroom.adapters.websockets import serve
    from wsroom.backplane.redis import RedisBackplane

    url = shared_redis_url()
    if url is None:
        pytest.skip("no Redis server (scripts/test.sh starts one)")
    prefix = fresh_prefix()
    use_backplane(manager, RedisBackplane(url, prefix=prefix, heartbeat=0.5, node_ttl=3))
    other = twin(manager, RedisBackplane(url, prefix=prefix, heartbeat=0.5, node_ttl=3))
    try:
        async with serve(manager, "127.0.0.1", 0) as node_a, serve(other, "127.0.0.1", 0) as node_b:
            proxy = RoundRobinProxy(
                [node_a.sockets[0].getsockname()[1], node_b.sockets[0].getsockname()[1]]
            )
            port = await proxy.start()
            try:
                yield f"ws://127.0.0.1:{port}"
            finally:
                await proxy.close()
    finally:
        await delete_prefix(url, prefix)
