"""Shutdown and draining (docs/reliability.md, D18 and D19).

A server that stops delivers what it has queued, then says goodbye with 1001; it stops
accepting newcomers first, gives up on clients that do not read within its timeout, and
exits in bounded time. A message followed by a close arrives whole, then the close code,
whatever its size and the round-trip time.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import sys
import time
from typing import Any

import pytest
import websockets

from tests.helpers import TIMEOUT, Client, wait_for
from tests.reliability.peers import (
    SERVERS,
    ErrorWatch,
    Proxy,
    RawClient,
    Swarm,
    nodes,
    open_non_reader,
    pin_send_buffer,
)
from tests.reliability.suite import SOAK, record, scale
from wsroom import ConnectionManager, Limits

MiB = 1024 * 1024

# The soak scale's phases run for minutes: beyond the suite's 60 s per test.
pytestmark = [pytest.mark.timeout(1800)] if SOAK else []
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def _refused(url: str) -> str:
    """What a new client gets: ``"503"`` (refused at the handshake), ``"refused"`` (nobody
    listens), or what else happened."""
    try:
        client = await RawClient.connect(url, timeout=TIMEOUT)
    except (ConnectionRefusedError, ConnectionResetError):
        return "refused"  # nobody listens any more, or the listener closed under us
    except ConnectionError as exc:
        text = str(exc)
        return "503" if " 503 " in text else text
    client.close()
    return "accepted"


async def _numsub(redis_url: str, channel: str) -> int:
    from redis import asyncio as aioredis

    client = aioredis.from_url(redis_url)
    try:
        counts = await client.pubsub_numsub(channel)
        return int(counts[0][1])
    finally:
        await client.aclose()


# D18. Graceful shutdown with queued messages.


@pytest.mark.parametrize(
    "adapter", ["websockets", "websockets_sync", "starlette", "websockets+redis"]
)
async def test_d18_graceful_shutdown_with_queued_messages(adapter: str) -> None:
    """D18: 200 measuring clients (a process of their own) and 5 clients that stopped
    reading share a room; 50 messages are queued to each, then the manager shuts down
    (with two nodes over Redis: one of them). New handshakes get HTTP 503 meanwhile; every
    reading client gets its 50 messages then 1001; the stuck ones are aborted at the
    shutdown's timeout, which bounds its duration; over Redis the node's subscriptions
    are released and the other node's clients are untouched."""
    room = "d18"
    count, queued_each, stuck_count, timeout = scale(ci=200, soak=1000), 50, 5, 1.5
    pad = "x" * 4000  # 200 KB each: more than the buffers of the stuck clients
    async with nodes(adapter, Limits.without_rate_limits()) as cluster:
        manager = cluster.manager
        async with Swarm(cluster.urls, count, room) as swarm:
            stuck = [await open_non_reader(cluster.url, [room]) for _ in range(stuck_count)]
            local = count // len(cluster.urls) + (count % len(cluster.urls) > 0)
            await wait_for(lambda: len(manager.connections_in(room)) == local + stuck_count)
            for client in stuck:
                pin_send_buffer(_port(cluster.url), client.local_port, 4096)
            stuck_ids = {c.id for c in manager.connections if c.id not in swarm.connection_ids}
            if cluster.redis_url is not None:
                channel = f"{cluster.prefix}:room:{room}"
                assert await _numsub(cluster.redis_url, channel) == 2

            with ErrorWatch() as watch:
                for seq in range(1, queued_each + 1):
                    data = {"seq": seq, "t": time.time_ns(), "phase": "d18", "pad": pad}
                    # Published by the node that shuts down: queued to its clients at once
                    # (a message still on its way through Redis is not queued yet).
                    await manager.broadcast(room, data)
                stats = manager.statistics()
                stuck_queued = sum(
                    c.queued_frames for c in manager.connections if c.id in stuck_ids
                )
                started = time.monotonic()
                shutting_down = asyncio.create_task(manager.shutdown(timeout))
                newcomer = await _refused(cluster.url)
                await shutting_down
                duration = time.monotonic() - started
                if cluster.redis_url is None:
                    result = await swarm.collect(queued_each, TIMEOUT * 2, until_closed=True)
                else:  # the other node's clients stay
                    result = await swarm.collect(queued_each, TIMEOUT * 2)
                stuck_ends = [await client.wait_cut(TIMEOUT) for client in stuck]
            for client in stuck:
                client.close()
            unexpected = watch.unexpected()
            if cluster.redis_url is not None:
                subscribed = await _numsub(cluster.redis_url, channel)

    closed = result["closed"]
    clean = closed.count(1001)
    healthy_here = local
    delivered = count * queued_each - result["lost"]
    print(
        f"\n{adapter}: {stats.queued_frames} frames queued at shutdown, {duration:.2f} s, "
        f"{clean}/{healthy_here} clean 1001, {delivered}/{count * queued_each} delivered, "
        f"stuck: {stuck_ends}, newcomer: {newcomer}"
    )
    context = {"adapter": adapter, "clients": count}
    record("D18", "frames queued at shutdown", stats.queued_frames, "", **context)
    record("D18", "shutdown duration", round(duration, 3), "s", **context)
    share = round(100 * clean / healthy_here, 1)
    record("D18", "clean 1001 closes (reading clients)", share, "%", **context)
    share = round(100 * clean / (healthy_here + stuck_count), 1)
    record("D18", "clean 1001 closes (all clients)", share, "%", **context)
    record("D18", "messages flushed to reading clients", delivered, "", **context)
    record("D18", "frames dropped (stuck clients)", stuck_queued, "", **context)
    record("D18", "newcomer during shutdown", newcomer, "", **context)
    assert newcomer == "503"
    assert result["lost"] == 0 and result["duplicates"] == 0, result
    assert result["order_violations"] == 0, result
    assert clean == healthy_here and len(closed) == healthy_here, closed
    assert all(end in ("reset", "eof") for end in stuck_ends), stuck_ends
    assert timeout - 0.1 <= duration <= timeout + 1.0
    assert unexpected == []
    if cluster.redis_url is not None:
        assert subscribed == 1  # the other node's


async def _start_demo(transport: str) -> tuple[asyncio.subprocess.Process, str]:
    """``python -m wsroom demo --transport ...`` on a free port; its process and URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wsroom",
        "demo",
        "--transport",
        transport,
        "--port",
        str(port),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT * 4)
    assert b"wsroom demo: open" in line, line
    return process, f"ws://127.0.0.1:{port}"


@pytest.mark.parametrize("transport", ["asyncio", "sync", "starlette"])
async def test_d18_sigterm_drains_a_real_process(transport: str) -> None:
    """D18 with a real process: ``wsroom demo`` gets SIGTERM right after 50 messages were
    published to 20 clients (from one of them, acknowledged). Every client gets every
    message then 1001, newcomers are refused, and the process exits with 0 in bounded
    time."""
    room, clients_count, messages = "lobby", scale(ci=20, soak=200), 50
    process, url = await _start_demo(transport)
    try:
        clients = [
            await Client.connect(url, f"/ws?name=user{index}") for index in range(clients_count)
        ]
        for client in clients:
            await client.join(room)
        publisher = clients[0]
        for index in range(messages):
            await publisher.send({"type": "message", "room": room, "data": index, "ref": index})
        acked = echoed = 0
        while acked < messages:
            kind = (await publisher.recv())["type"]
            acked += kind == "ack"
            echoed += kind == "message"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)

        async def drain(client: Client) -> tuple[int, int | None]:
            got = 0
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    frame = await client.recv(timeout=TIMEOUT * 2)
                    if frame["type"] == "message":
                        got += 1
            rcvd = client.ws.protocol.close_rcvd
            return got, rcvd.code if rcvd is not None else None

        ends = await asyncio.gather(*(drain(client) for client in clients))
        ends[0] = (ends[0][0] + echoed, ends[0][1])  # the publisher read its echoes already
        newcomer = await _refused(url)
        exit_code = await asyncio.wait_for(process.wait(), TIMEOUT * 2)
        duration = time.monotonic() - started
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    clean = sum(1 for _, code in ends if code == 1001)
    print(f"\n{transport}: exit {exit_code} after {duration:.2f} s, {clean}/{clients_count} 1001")
    context = {"adapter": transport, "clients": clients_count, "process": "wsroom demo"}
    record("D18", "SIGTERM to exit", round(duration, 3), "s", **context)
    record("D18", "exit code after SIGTERM", exit_code, "", **context)
    share = round(100 * clean / clients_count, 1)
    record("D18", "clean 1001 closes after SIGTERM", share, "%", **context)
    # The publisher's own messages come back to it too (echo): everyone got all of them.
    assert [got for got, _ in ends] == [messages] * clients_count
    assert clean == clients_count, ends
    assert newcomer in ("503", "refused"), newcomer
    assert exit_code == 0
    assert duration <= 5.0 + 2.0  # the demo's shutdown timeout, and a margin


# D19. Final message then close.


async def _final_message(
    url: str, manager: ConnectionManager, size: int
) -> tuple[bool, int | None]:
    """A client connects; the server sends it one ``size``-byte event then closes with
    1000. Whether the client got it whole, and the close code it saw."""
    client = await Client.connect(url, max_size=None, compression=None)
    conn = manager.connection(client.welcome["connection"])
    assert conn is not None
    conn.send_event("final", "x" * size)
    closing = asyncio.create_task(conn.close(1000, "bye"))
    whole = False
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            frame = await client.recv(timeout=TIMEOUT * 2)
            if frame["type"] == "final":
                whole = len(frame["data"]) == size
    await closing
    rcvd = client.ws.protocol.close_rcvd
    return whole, rcvd.code if rcvd is not None else None


def _d19_servers() -> list[Any]:
    """Each adapter, and each WebSocket implementation of uvicorn installed."""
    servers = [
        pytest.param("websockets", {}, id="websockets"),
        pytest.param("websockets_sync", {}, id="websockets_sync"),
        # uvicorn deprecates its "websockets" implementation, built on websockets' legacy
        # API, which websockets deprecates too (their warnings, not wsroom's).
        pytest.param(
            "starlette",
            {"ws": "websockets"},
            id="starlette-websockets",
            marks=[
                pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated"),
                pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
                pytest.mark.filterwarnings("ignore::DeprecationWarning:websockets"),
            ],
        ),
        pytest.param("starlette", {"ws": "websockets-sansio"}, id="starlette-websockets-sansio"),
    ]
    if importlib.util.find_spec("wsproto") is not None:
        servers.append(pytest.param("starlette", {"ws": "wsproto"}, id="starlette-wsproto"))
    return servers


@pytest.mark.parametrize(("adapter", "options"), _d19_servers())
async def test_d19_final_message_then_close(adapter: str, options: dict[str, Any]) -> None:
    """D19: 9 KB, 900 KB and 5 MB messages, each followed at once by a close with 1000,
    through a proxy adding 0.5 ms and 10 ms each way (1 ms and 20 ms round trips): the
    client gets the message whole and the close code, never 1006. Under uvicorn, with each
    of its WebSocket implementations installed (wsproto is not, here)."""
    limits = Limits.without_rate_limits(max_queue_bytes=8 * MiB)
    matrix: dict[str, str] = {}
    for rtt in (0.001, 0.020):
        manager = ConnectionManager(limits=limits)
        async with (
            SERVERS[adapter](manager, **options) as url,
            await Proxy.to(url, delay=rtt / 2) as proxy,
        ):
            for size in (9_000, 900_000, 5_000_000):
                whole, code = await _final_message(proxy.url, manager, size)
                case = f"{size // 1000} KB, RTT {rtt * 1000:.0f} ms"
                matrix[case] = f"{'whole' if whole else 'cut'}, {code}"
    name = adapter if adapter != "starlette" else f"starlette ({options['ws']})"
    print(f"\n{name}: {matrix}")
    for case, outcome in matrix.items():
        record("D19", case, outcome, "", adapter=name)
    assert all(outcome == "whole, 1000" for outcome in matrix.values()), matrix
