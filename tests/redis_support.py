"""Redis for the tests: the shared server's URL, private servers to kill, two-node rooms."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager

from tests.helpers import TIMEOUT, websockets_asyncio_server
from wsroom import ConnectionManager
from wsroom.conformance import over_redis
from wsroom.conformance._nodes import (
    RoundRobinProxy,
    delete_prefix,
    fresh_prefix,
    twin,
    use_backplane,
)

# Re-exported from the conformance suite for the project's other tests.
__all__ = ["RoundRobinProxy", "delete_prefix", "fresh_prefix", "twin", "use_backplane"]


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


def two_nodes_over_redis(manager: ConnectionManager) -> AbstractAsyncContextManager[str]:
    """The test's manager and a twin node, each with its own ``websockets`` asyncio server,
    sharing rooms through the shared Redis behind a round-robin proxy (skipped without
    one): the conformance suite's :func:`~wsroom.conformance.over_redis`, for tests that
    build such a pair by hand."""
    return over_redis(websockets_asyncio_server, shared_redis_url())(manager)
