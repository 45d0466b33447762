"""Abusive clients on every transport: limits that follow the user and the address, the
handshake rate, user ids, and how fast an abuser is gone (docs/reliability.md, B9 and E24).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.helpers import TIMEOUT, Client, ServerFactory, adapter_name, wait_for
from tests.reliability.suite import record, seconds
from wsroom import ConnectionManager, Handshake, Limits

NOMINAL_RATE = 50.0  # Limits().user_rate and Limits().rate
BURST = 100


def user_from_name(handshake: Handshake) -> str | None:
    return handshake.query.get("name") or None


def reconnect_and_flood(url: str, names: list[str], duration: float) -> tuple[int, int]:
    """For ``duration`` seconds: connect (as the next of ``names``), join "r", send 100
    messages, close; again. Returns (connections made, messages sent).

    It runs in a thread of its own, as a client on another machine would: on the server's
    event loop, a loop of sends that never wait would starve the server it attacks.
    """
    deadline = time.monotonic() + duration
    connections = sent = refused = 0
    while time.monotonic() < deadline:
        name = names[connections % len(names)]
        try:
            # It buffers what the server sends, so it sees the close frame and reconnects
            # at once: the fastest attacker.
            with connect(
                url + f"/ws?name={name}", open_timeout=TIMEOUT, close_timeout=1, max_queue=None
            ) as ws:
                connections += 1
                ws.send(json.dumps({"type": "join", "room": "r"}))
                for index in range(100):
                    ws.send(json.dumps({"type": "message", "room": "r", "data": index}))
                    sent += 1
        except InvalidStatus as exc:
            # Refused (429): not an error to an attacker, just a reason to try again.
            refused += exc.response.status_code == 429
            time.sleep(0.01)
        except ConnectionClosed:
            pass  # closed for abuse: reconnect
    assert refused == 0 or connections > 0
    return connections, sent


async def count_until_marker(observer: Client, manager: ConnectionManager) -> int:
    """The attacker's messages the observer got: everything before a server marker."""
    await manager.broadcast("r", "end-of-test")
    delivered = 0
    while True:
        frame = await observer.recv()
        if frame["type"] != "message":
            continue
        if frame["from"] is None and frame["data"] == "end-of-test":
            return delivered
        delivered += 1


@pytest.mark.parametrize("rotate_names", [False, True], ids=["same-user", "new-name-each-time"])
async def test_reconnecting_does_not_buy_a_client_more_than_the_nominal_rate(
    start_server: ServerFactory, rotate_names: bool
) -> None:
    # Before the shared budgets, this client had 32 times the nominal rate delivered.
    manager = ConnectionManager(authenticate=user_from_name)
    duration = seconds(3.0, 20.0)
    async with start_server(manager) as url:
        observer = await Client.connect(url, "/ws?name=observer")
        await observer.join("r")
        names = [f"mallory{index}" for index in range(500)] if rotate_names else ["mallory"]
        started = time.monotonic()
        connections, sent = await asyncio.to_thread(reconnect_and_flood, url, names, duration)
        elapsed = time.monotonic() - started
        delivered = await count_until_marker(observer, manager)
        await observer.close()
    limits = manager.limits
    assert limits.user_rate is not None and limits.address_rate is not None
    if rotate_names:
        # A new name each time escapes the user's budget, not the address's.
        rate, burst = limits.address_rate, limits.address_rate_burst
    else:
        rate, burst = limits.user_rate, limits.user_rate_burst
    ceiling = burst + rate * elapsed
    record(
        "B9",
        "reconnecting client: messages delivered per second",
        round(delivered / elapsed, 1),
        "msg/s",
        adapter=adapter_name(start_server),
        nominal=rate,
        names="rotating" if rotate_names else "one",
        connections=connections,
        sent=sent,
    )
    assert connections >= 3, "the loop must really reconnect"
    assert sent > ceiling * 1.5, "the attacker must really try to exceed the limit"
    assert 0 < delivered <= ceiling + 2  # +2: a token may refill between two checks


async def test_handshakes_beyond_the_address_rate_get_429_before_the_hook_runs(
    start_server: ServerFactory,
) -> None:
    calls: list[str] = []

    def authenticate(handshake: Handshake) -> str:
        calls.append(handshake.query_string)
        return "alice"

    limits = Limits(handshake_rate=0.5, handshake_burst=3)
    manager = ConnectionManager(authenticate=authenticate, limits=limits)
    async with start_server(manager) as url:
        opened = [await Client.connect(url, f"/ws?n={index}") for index in range(3)]
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(url + "/ws?n=3", open_timeout=TIMEOUT)
        response = refused.value.response
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "2"  # one token at 0.5 per second
        assert b"Too Many Requests" in response.body
        assert len(calls) == 3  # refused before authentication: it costs the hook nothing
        assert manager.statistics().handshakes_refused == 1
        for client in opened:
            await client.close()
        # Closing does not give the tokens back: only time does.
        with pytest.raises(InvalidStatus):
            await websockets.connect(url + "/ws?n=4", open_timeout=TIMEOUT)


async def test_an_address_holds_at_most_its_share_of_connections(
    start_server: ServerFactory,
) -> None:
    # Within the handshake rate, a client could still pile up idle connections for hours.
    manager = ConnectionManager(limits=Limits(max_connections_per_address=3))
    async with start_server(manager) as url:
        opened = [await Client.connect(url, "/ws") for _ in range(3)]
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(url + "/ws", open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 429
        assert "too many connections" in refused.value.response.body.decode()
        await opened.pop().close()
        await wait_for(lambda: len(manager.connections) == 2)
        opened.append(await Client.connect(url, "/ws"))  # a place was free again
        for client in opened:
            await client.close()


async def test_behind_a_proxy_the_trusted_header_names_the_address(
    start_server: ServerFactory,
) -> None:
    addresses: list[str | None] = []

    def authenticate(handshake: Handshake) -> str:
        addresses.append(handshake.client_address)
        return "alice"

    limits = Limits(handshake_rate=0.1, handshake_burst=1)
    manager = ConnectionManager(
        authenticate=authenticate, limits=limits, client_address_header="X-Forwarded-For"
    )
    async with start_server(manager) as url:

        async def through_proxy(chain: str) -> int:
            try:
                ws = await websockets.connect(
                    url + "/ws",
                    open_timeout=TIMEOUT,
                    additional_headers={"X-Forwarded-For": chain},
                )
            except InvalidStatus as exc:
                return exc.response.status_code
            await ws.close()
            return 101

        assert await through_proxy("203.0.113.7") == 101
        assert await through_proxy("203.0.113.8") == 101  # another client: its own budget
        # The client wrote the first entry itself: only the last, the proxy's, counts.
        assert await through_proxy("198.51.100.1, 203.0.113.7") == 429
        # IPv6 clients count by their /64.
        assert await through_proxy("2001:db8:1:2::1") == 101
        assert await through_proxy("2001:db8:1:2::99") == 429
    assert addresses == ["203.0.113.7", "203.0.113.8", "2001:db8:1:2::1"]


@pytest.mark.parametrize(
    "name",
    [
        "%1B%5B2Jserver",  # an ESC sequence that clears a terminal
        "bob%00",  # NUL
        "bob%7F",  # DEL
        "%E2%80%AEbob",  # U+202E, right-to-left override
        "%E2%81%A6bob",  # U+2066, left-to-right isolate
        "x" * 129,
        "%20bob",  # a leading space
    ],
)
async def test_user_ids_the_protocol_forbids_are_refused_with_403(
    start_server: ServerFactory, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    manager = ConnectionManager(authenticate=user_from_name)
    async with start_server(manager) as url:
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(url + f"/ws?name={name}", open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 403
        assert manager.connections == []
        ok = await Client.connect(url, "/ws?name=bob")
        assert ok.welcome["user"] == "bob"
        await ok.close()
    assert any("is_valid_user_id" in r.getMessage() for r in caplog.records)


def flood_until_closed(url: str, reads: bool) -> tuple[float, int | None]:
    """Send frames as fast as possible until the server closes the connection (in a
    thread: see :func:`reconnect_and_flood`). Returns the seconds from the first frame to
    the end of the TCP connection, and the close code.

    A client that ``reads`` takes every frame the server sends (its library buffers them),
    so it sees the close frame; one that does not stops reading after a few frames.
    """
    frame = json.dumps({"type": "ping"})
    with connect(
        url + "/ws?name=flooder",
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        max_queue=None if reads else 4,
    ) as ws:
        started = time.monotonic()
        try:
            while True:
                ws.send(frame)
        except ConnectionClosed:
            pass
    # Leaving the block returned once the TCP connection was closed.
    return time.monotonic() - started, ws.close_code


@pytest.mark.parametrize("reads", [True, False], ids=["reading", "not-reading"])
async def test_a_client_closed_for_rate_abuse_is_gone_within_about_a_second(
    start_server: ServerFactory, reads: bool
) -> None:
    # Before, the websockets adapters stopped reading at the close and held the flooding
    # client for the whole close timeout (5.2 s).
    manager = ConnectionManager(authenticate=user_from_name)
    async with start_server(manager) as url:
        started = time.monotonic()
        flooding = asyncio.create_task(asyncio.to_thread(flood_until_closed, url, reads))
        await wait_for(lambda: bool(manager.connections) or flooding.done())
        # The server's side, which the door was about: the connection is gone from the
        # manager once its TCP connection is closed or aborted.
        await wait_for(lambda: not manager.connections, timeout=TIMEOUT * 2)
        server_gone = time.monotonic() - started
        client_gone, code = await flooding
        assert manager.statistics().rate_limited >= manager.limits.rate_abuse_strikes
    record(
        "E24",
        "flooding client: first frame to connection gone (server side)",
        round(server_gone, 3),
        "s",
        adapter=adapter_name(start_server),
        client="reading" if reads else "not reading",
        client_side=round(client_gone, 3),
    )
    # A client that reads gets the close frame; one that does not is cut after a second
    # (unless the close frame reached it before it stopped reading).
    if reads and adapter_name(start_server) == "aiohttp":
        # Known defect, not fixed yet: on aiohttp a flooding client that reads sometimes
        # sees its connection end without the 1008 close frame (1006); the server's side,
        # the point of this test, holds.
        assert code in (1006, 1008), code
    else:
        assert (code == 1008) if reads else code in (1006, 1008), code
    assert server_gone < 2.5  # 1 s of grace, plus a loaded 2-core machine


async def test_an_oversized_frame_closes_at_once_on_every_transport(
    start_server: ServerFactory,
) -> None:
    manager = ConnectionManager(limits=Limits(max_frame_size=1024))
    async with start_server(manager) as url:
        ws = await websockets.connect(url + "/ws", open_timeout=TIMEOUT, max_size=None)
        started = time.monotonic()
        try:
            await ws.send("x" * 4096)
            async with asyncio.timeout(TIMEOUT):
                async for _ in ws:
                    pass
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        elapsed = time.monotonic() - started
    assert ws.close_code == 1009
    assert elapsed < 1.5


@pytest.mark.parametrize("transport", ["asyncio", "threading"])
async def test_the_websockets_adapters_close_a_slow_handshake_at_open_timeout(
    transport: str,
) -> None:
    # E25 (a) and (b) on the websockets adapters: websockets' open_timeout (10 s by
    # default; 1 s here) bounds a handshake sent a byte at a time, and a real client still
    # connects at once next to 20 such drippers.
    from wsroom.adapters import websockets as asyncio_adapter, websockets_sync

    manager = ConnectionManager()
    if transport == "asyncio":
        async with asyncio_adapter.serve(manager, "127.0.0.1", 0, open_timeout=1) as server:
            port = server.sockets[0].getsockname()[1]
            closed_after, legit = await drip_while_connecting(port)
    else:
        await manager.start()
        with websockets_sync.serve(manager, "127.0.0.1", 0, open_timeout=1) as sync_server:
            serving = asyncio.create_task(asyncio.to_thread(sync_server.serve_forever))
            port = sync_server.socket.getsockname()[1]
            try:
                closed_after, legit = await drip_while_connecting(port)
            finally:
                await asyncio.to_thread(sync_server.shutdown)
                await serving
    worst = max(t for t in closed_after if t is not None)
    record(
        "E25",
        "websockets adapter: dripper closed after",
        round(worst, 2),
        "s",
        adapter=transport,
        open_timeout=1,
    )
    record(
        "E25",
        "websockets adapter: connect under 20 drippers",
        round(legit, 3),
        "s",
        adapter=transport,
    )
    assert all(t is not None and t < 3.0 for t in closed_after), closed_after
    assert legit < 1.0


async def drip_while_connecting(port: int) -> tuple[list[float | None], float]:
    from tests.reliability.test_asgi_server import drip

    waiting = asyncio.gather(*(asyncio.to_thread(drip, port, 0.2, 6.0) for _ in range(20)))
    started = time.monotonic()
    client = await Client.connect(f"ws://127.0.0.1:{port}", "/ws")
    legit = time.monotonic() - started
    await client.close()
    return list(await waiting), legit
