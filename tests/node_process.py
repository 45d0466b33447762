"""One wsroom node in a process of its own, for the multi-process tests.

    python -m tests.node_process REDIS_URL PREFIX
    python -m tests.node_process memory

prints its port, then serves until SIGINT (graceful) or until it is killed. ``memory``
serves alone on the in-memory backplane, without a rate limit (to measure the process).
Tests start one with :func:`node_process`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tests.helpers import TIMEOUT, Client
from wsroom import ConnectionManager, Handshake, Limits
from wsroom.adapters.websockets import serve
from wsroom.backplane.redis import RedisBackplane

HEARTBEAT = 0.3
NODE_TTL = 1.5

ROOT = Path(__file__).resolve().parent.parent


class Node:
    """A node process."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"

    async def connect(self, user: str) -> Client:
        return await Client.connect(self.url, f"/ws?user={user}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)


@asynccontextmanager
async def node_process(*args: str) -> AsyncIterator[Node]:
    """A node process started with ``args`` (see the module's docstring)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.node_process",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT * 2)
        yield Node(process, int(line))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()


def user_from_query(handshake: Handshake) -> str | None:
    return handshake.query.get("user") or None


async def main(args: list[str]) -> None:
    if args == ["memory"]:
        manager = ConnectionManager(
            authenticate=user_from_query, limits=Limits.without_rate_limits()
        )
    else:
        url, prefix = args
        backplane = RedisBackplane(
            url, prefix=prefix, heartbeat=HEARTBEAT, node_ttl=NODE_TTL, timeout=1.0
        )
        manager = ConnectionManager(authenticate=user_from_query, backplane=backplane)
    async with serve(manager, "127.0.0.1", 0) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1:]))
