"""Both websockets adapters with the fast path off: everything through websockets' public API.

The fast path (``wsroom/adapters/_websockets_fastpath.py``) frames and writes itself, which
relies on internals of ``websockets``; it is off when ``WSROOM_WEBSOCKETS_FASTPATH=0`` or
when the installed ``websockets`` lacks one of them. Here both adapters run with it off, over
real sockets: the conformance tests of messages and close codes and the write-timeout test
run again (imported below: pytest collects them in this module, with this module's
``start_server``), then a reader that stops reading among readers that must get everything,
and the import-time check itself.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection as AsyncioServerConnection
from websockets.server import ServerProtocol

from tests.helpers import TIMEOUT, Client, wait_for, websockets_sync_server
from wsroom import ConnectionManager, Limits, Transport
from wsroom.adapters import _websockets_fastpath as fastpath
from wsroom.adapters.websockets import WebsocketsTransport, serve
from wsroom.adapters.websockets_sync import SyncTransport
from wsroom.conformance import Server
from wsroom.conformance.test_close_codes import *  # noqa: F403
from wsroom.conformance.test_messages import *  # noqa: F403
from wsroom.conformance.test_slow_client import (
    PAYLOAD,
    _here,
    _stuck_client,
    _wait_reset,
    test_stuck_reader_is_evicted_by_the_write_timeout,  # noqa: F401 - run here again
)


@contextmanager
def fast_path_off() -> Iterator[None]:
    """What the environment variable or an older ``websockets`` does, for adapters made here."""
    saved = fastpath.ENABLED
    fastpath.ENABLED = False
    try:
        yield
    finally:
        fastpath.ENABLED = saved


@asynccontextmanager
async def websockets_public_api(manager: ConnectionManager) -> AsyncIterator[str]:
    """The asyncio adapter on the public API. ``close_timeout`` is how long websockets waits
    before it aborts the connection of a client evicted for not reading (10 s by default)."""
    with fast_path_off():
        async with serve(manager, "127.0.0.1", 0, close_timeout=1) as server:
            yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@asynccontextmanager
async def websockets_sync_public_api(manager: ConnectionManager) -> AsyncIterator[str]:
    """The threading adapter on the public API."""
    with fast_path_off():
        async with websockets_sync_server(manager) as url:
            yield url


PUBLIC_API: dict[str, Server] = {
    "websockets_public_api": Server(websockets_public_api, name="websockets_public_api"),
    "websockets_sync_public_api": Server(
        websockets_sync_public_api, name="websockets_sync_public_api"
    ),
}
TRANSPORTS: dict[str, type[Transport]] = {
    "websockets_public_api": WebsocketsTransport,
    "websockets_sync_public_api": SyncTransport,
}


@pytest.fixture(params=sorted(PUBLIC_API))
def start_server(request: pytest.FixtureRequest) -> Server:
    """Each websockets adapter with the fast path off."""
    return PUBLIC_API[request.param]


async def test_the_adapters_write_through_the_public_api(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        (conn,) = manager.connections
        assert isinstance(conn.transport, TRANSPORTS[start_server.name])
        await client.close()


async def test_stuck_reader_is_evicted_while_the_others_get_everything(
    start_server: Server,
) -> None:
    limits = Limits(max_queue=64, max_queue_bytes=128 * 1024, write_timeout=30)
    manager = ConnectionManager(limits=limits)
    async with start_server(manager) as url:
        fast = [await Client.connect(url) for _ in range(3)]
        for client in fast:
            await client.join("alpha")
        stuck = await asyncio.to_thread(_stuck_client, url)
        await wait_for(lambda: len(_here(manager, "alpha")) == 4)
        fast_ids = {client.welcome["connection"] for client in fast}
        stuck_conn = next(c for c in manager.connections if c.id not in fast_ids)
        received: list[list[int]] = [[] for _ in fast]

        async def read(client: Client, ids: list[int]) -> None:
            while True:
                frame = await client.recv()
                if frame["type"] == "message" and frame["room"] == "alpha":
                    ids.append(frame["id"])

        readers = [asyncio.create_task(read(c, ids)) for c, ids in zip(fast, received, strict=True)]
        sent = 0

        async def publish(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                await manager.broadcast("alpha", PAYLOAD)
                sent += 1
            # The readers keep up (a burst fits their queues); nothing waits for the one
            # that stopped reading.
            await wait_for(lambda: all(len(ids) == sent for ids in received))

        started = time.monotonic()
        while not stuck_conn.closed and sent < 20_000 and time.monotonic() - started < 20:
            await publish(20)
        assert stuck_conn.closed, f"not evicted after {sent} messages"
        assert stuck_conn.close_code == 1013
        assert manager.statistics().evictions == 1
        assert stuck_conn.rooms == frozenset()
        assert stuck_conn not in _here(manager, "alpha")
        for _ in range(5):
            await publish(20)
        for ids in received:
            assert ids == list(range(ids[0], ids[0] + sent))  # every message, in order
        # Cut through the public API: websockets' close timeout on asyncio, the socket the
        # connection was created with on threads.
        waited = await asyncio.to_thread(_wait_reset, stuck, TIMEOUT * 2)
        assert waited < TIMEOUT * 2
        stuck.close()
        for task in readers:
            task.cancel()
        for client in fast:
            await client.close()


# The check made at import.


def test_the_installed_websockets_has_what_the_fast_path_uses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(fastpath.ENVIRONMENT_VARIABLE, raising=False)
    assert fastpath._unusable() is None


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_the_environment_variable_turns_it_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(fastpath.ENVIRONMENT_VARIABLE, value)
    assert fastpath._unusable() == f"WSROOM_WEBSOCKETS_FASTPATH={value}"


def test_the_environment_variable_is_read_at_import_and_the_reason_logged() -> None:
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format='%(message)s')\n"
        "from wsroom.adapters import _websockets_fastpath as fastpath\n"
        "print('enabled:', fastpath.ENABLED)\n"
    )
    env = {**os.environ, fastpath.ENVIRONMENT_VARIABLE: "0"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    assert "websockets fast path off (WSROOM_WEBSOCKETS_FASTPATH=0)" in result.stdout
    assert "enabled: False" in result.stdout


class _NoContinuationFlag(ServerProtocol):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        del self.expect_continuation_frame


class _NoDrain(AsyncioServerConnection):
    drain = None  # type: ignore[assignment]


class _NoMutex:
    def __init__(self, socket: object) -> None:
        self.socket = socket


def _other_header(opcode: int, payload: bytes) -> bytes:
    return bytes((opcode, 127)) + len(payload).to_bytes(8, "big") + payload


@pytest.mark.parametrize(
    ("name", "replacement", "reason"),
    [
        ("ServerProtocol", _NoContinuationFlag, "no 'expect_continuation_frame'"),
        ("frame", _other_header, "frames a 0-byte message differently"),
        ("ServerConnection", _NoDrain, "no drain() coroutine"),
        ("SyncServerConnection", _NoMutex, "no 'protocol_mutex'"),
    ],
)
def test_a_missing_internal_turns_it_off(
    monkeypatch: pytest.MonkeyPatch, name: str, replacement: object, reason: str
) -> None:
    monkeypatch.delenv(fastpath.ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.setattr(fastpath, name, replacement)
    unusable = fastpath._unusable()
    assert unusable is not None and reason in unusable
