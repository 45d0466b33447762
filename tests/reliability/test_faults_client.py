"""Faults on the client's side of the connection (docs/reliability.md, C14 to C17).

Clients that die in the middle of a frame, vanish without a word (a proxy that freezes),
race each other joining, leaving and publishing, and application hooks that fail or hang:
whatever happens to one connection stays with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import websockets
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.helpers import ADAPTERS, TIMEOUT, Client, ServerFactory, adapter_name, wait_for
from tests.reliability.peers import (
    OP_CLOSE,
    OP_CONTINUATION,
    OP_TEXT,
    SERVERS,
    UNDER_UVICORN,
    ErrorWatch,
    Proxy,
    RawClient,
    client_frame,
    keepalive_options,
    percentile,
)
from tests.reliability.suite import SOAK, record, scale, seconds
from wsroom import Connection, ConnectionManager, Limits, Message, Room
from wsroom.testing import TestClient

MiB = 1024 * 1024

# The soak scale's phases run for minutes: beyond the suite's 60 s per test.
pytestmark = [pytest.mark.timeout(1800)] if SOAK else []


def _gone(manager: ConnectionManager, connection_id: str, room: str) -> Callable[[], bool]:
    """Whether the connection left the room and the manager."""
    return lambda: (
        manager.connection(connection_id) is None
        and all(c.id != connection_id for c in manager.connections_in(room))
    )


async def _time_until(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``predicate()`` holds (polled every 5 ms)."""
    started = time.monotonic()
    await wait_for(predicate, timeout=timeout, interval=0.005)
    return time.monotonic() - started


# C14. Client killed mid-send and mid-receive.


@pytest.mark.parametrize("adapter", list(ADAPTERS))
async def test_c14_client_killed_mid_send_and_mid_receive(adapter: str) -> None:
    """C14: (a) a client reset (``SO_LINGER`` 0) while the server sends it 1 MiB messages,
    (b) one reset halfway through a fragmented inbound message, (c) one that closes cleanly
    while a broadcast is in flight to it, reading on until the server's close frame. Each
    leaves its room within 1 s. (d) One that sends a close frame, then neither reads nor
    closes its TCP connection, while the room's traffic goes on: under Starlette it leaves
    at once; the ``websockets`` servers learn of the close only when the TCP connection
    ends, which ``websockets`` forces ``close_timeout`` (2 s here) after the close frame.
    A witness in the room gets every message throughout; no exception escapes (log, loop
    handler, threads)."""
    room = "c14"
    limits = Limits.without_rate_limits(max_queue_bytes=16 * MiB, max_frame_size=2 * MiB)
    manager = ConnectionManager(limits=limits)
    close_timeout = 2.0
    options = {} if adapter in UNDER_UVICORN else {"close_timeout": close_timeout}
    detection: dict[str, float] = {}
    big = "x" * MiB
    with ErrorWatch() as watch:
        async with SERVERS[adapter](manager, **options) as url:
            witness = await Client.connect(url, max_size=None)
            await witness.join(room)
            expected = 0

            async def burst() -> None:
                nonlocal expected
                for index in range(200):
                    await manager.broadcast(room, "z" * 10_000)
                    expected += 1
                    if index % 10 == 0:
                        await asyncio.sleep(0)

            # (a) Reset while the server is sending: several 1 MiB messages queued, a part
            # of the first one read, then the reset.
            raw = await RawClient.connect(url)
            welcome = await raw.recv_json()
            await raw.join(room, ref="a")
            await raw.recv_until(lambda frame: frame.get("type") == "joined")
            for _ in range(6):
                await manager.broadcast(room, big)
                expected += 1
            await raw.read_bytes(100_000)
            raw.reset()
            detection["reset mid-receive"] = await _time_until(
                _gone(manager, welcome["connection"], room), TIMEOUT
            )

            # (b) Reset halfway through a fragmented message the client sends.
            raw = await RawClient.connect(url)
            welcome = await raw.recv_json()
            await raw.join(room, ref="b")
            await raw.recv_until(lambda frame: frame.get("type") == "joined")
            text = '{"type": "message", "room": "c14", "data": "' + "y" * 500_000 + '"}'
            encoded = text.encode()
            await raw.send_raw(client_frame(encoded[:200_000], OP_TEXT, fin=False))
            await raw.send_raw(client_frame(encoded[200_000:400_000], OP_CONTINUATION, fin=False))
            raw.reset()
            detection["reset mid-send"] = await _time_until(
                _gone(manager, welcome["connection"], room), TIMEOUT
            )

            # (c) A clean close while a broadcast is in flight, reading on meanwhile.
            leaver = await Client.connect(url, max_size=None, close_timeout=1)
            await leaver.join(room)
            publishing = asyncio.create_task(burst())
            await leaver.recv_type("message")
            draining = asyncio.create_task(_drain(leaver))
            closing = asyncio.create_task(leaver.close())
            detection["clean close mid-broadcast"] = await _time_until(
                _gone(manager, leaver.welcome["connection"], room), TIMEOUT
            )
            await publishing
            await closing
            draining.cancel()

            # (d) A close frame, then silence: no more reading, no FIN.
            raw = await RawClient.connect(url)
            welcome = await raw.recv_json()
            await raw.join(room, ref="d")
            await raw.recv_until(lambda frame: frame.get("type") == "joined")
            await raw.send_raw(client_frame(struct.pack("!H", 1000), OP_CLOSE))
            closed = time.monotonic()
            publishing = asyncio.create_task(burst())
            gone = _gone(manager, welcome["connection"], room)
            with contextlib.suppress(TimeoutError):
                await wait_for(gone, timeout=close_timeout + 3.0, interval=0.005)
            detection["close frame then silence"] = time.monotonic() - closed
            await publishing
            raw.close()

            # The witness got everything, in order, through all of them.
            await manager.broadcast(room, "after")
            expected += 1
            ids: list[int] = []
            while len(ids) < expected:
                frame = await witness.recv(timeout=TIMEOUT)
                if frame["type"] == "message":
                    ids.append(frame["id"])
            assert ids == list(range(1, expected + 1))
            assert [c.id for c in manager.connections_in(room)] == [witness.welcome["connection"]]
            await witness.close()
    print(f"\n{adapter}: {detection}")
    for case, value in detection.items():
        record("C14", f"membership removed after {case}", round(value, 3), "s", adapter=adapter)
    for case in ("reset mid-receive", "reset mid-send", "clean close mid-broadcast"):
        assert detection[case] <= 1.0, (case, detection[case])
    bound = 1.0 if adapter in UNDER_UVICORN else close_timeout + 1.0
    assert detection["close frame then silence"] <= bound
    unexpected = watch.unexpected()
    record("C14", "exceptions escaping", len(unexpected), "", adapter=adapter)
    assert unexpected == []


async def _drain(client: Client) -> None:
    """Read and drop frames until the connection closes."""
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await client.ws.recv()


# C15. Half-open connection.


async def _half_open(
    adapter: str, *, manager: ConnectionManager, options: dict[str, Any], bound: float
) -> float:
    """Connect through a proxy, join, freeze the proxy; seconds until the connection left
    its room (``AssertionError`` past ``bound``)."""
    async with SERVERS[adapter](manager, **options) as url, await Proxy.to(url) as proxy:
        client = await Client.connect(proxy.url, ping_interval=None)
        await client.join("c15")
        connection_id = client.welcome["connection"]
        proxy.freeze()
        try:
            detected = await _time_until(_gone(manager, connection_id, "c15"), bound)
        except TimeoutError:
            raise AssertionError(f"{adapter}: still a member {bound} s after the freeze") from None
        finally:
            proxy.thaw()
            client.ws.transport.abort()
        return detected


PING_INTERVALS = [1.0, 20.0] if SOAK else [1.0]


@pytest.mark.parametrize("interval", PING_INTERVALS)
async def test_c15_half_open_detected_by_keepalive_pings(interval: float) -> None:
    """C15: a proxy freezes both ways without closing; with the server's keepalive pings at
    ``interval``/``interval`` the connection leaves its rooms within ``ping_interval +
    ping_timeout + 2 s``, every adapter at once. The ``websockets`` servers get
    ``close_timeout=1``: their own default (10 s) would add itself to the detection (see
    the next test)."""
    bound = interval + interval + 2.0

    def options(adapter: str) -> dict[str, Any]:
        keepalive = keepalive_options(adapter, interval, interval)
        return keepalive if adapter in UNDER_UVICORN else {**keepalive, "close_timeout": 1.0}

    with ErrorWatch() as watch:
        times = await asyncio.gather(
            *(
                _half_open(
                    adapter, manager=ConnectionManager(), options=options(adapter), bound=bound
                )
                for adapter in ADAPTERS
            )
        )
    for adapter, detected in zip(ADAPTERS, times, strict=True):
        print(f"\n{adapter}: pings {interval}/{interval}: {detected:.2f} s")
        figure = f"detection, pings {interval}/{interval} s"
        record("C15", figure, round(detected, 3), "s", adapter=adapter)
    # websockets' threading server logs its own keepalive failure at ERROR.
    assert watch.unexpected("keepalive ping failed") == []


async def test_c15_half_open_detected_by_the_heartbeat() -> None:
    """C15: the same freeze with transport pings off and wsroom's ``heartbeat=1``: the
    connection leaves its rooms 2 to 2.5 intervals after its last frame, closed with 1008."""
    heartbeat = 1.0
    limits = Limits(close_timeout=1.0)
    managers = {a: ConnectionManager(heartbeat=heartbeat, limits=limits) for a in ADAPTERS}
    with ErrorWatch() as watch:
        times = await asyncio.gather(
            *(
                _half_open(
                    adapter,
                    manager=managers[adapter],
                    options=keepalive_options(adapter, None, None),
                    bound=2.5 * heartbeat + 1.0,
                )
                for adapter in ADAPTERS
            )
        )
    for adapter, detected in zip(ADAPTERS, times, strict=True):
        print(f"\n{adapter}: heartbeat {heartbeat}: {detected:.2f} s")
        figure = f"detection, heartbeat {heartbeat} s"
        record("C15", figure, round(detected, 3), "s", adapter=adapter)
        assert detected >= 2 * heartbeat - 0.1
    assert watch.unexpected() == []


async def test_c15_keepalive_failure_bounded_by_limits_close_timeout() -> None:
    """C15 with the ``websockets`` servers' defaults: after the keepalive fails, the
    closing handshake websockets starts takes at most ``Limits.close_timeout``, as wsroom's
    own closes do, not websockets' own ``close_timeout`` (10 s)."""
    limits = Limits(close_timeout=1.0)
    bound = 1.0 + 1.0 + limits.close_timeout + 1.0
    await asyncio.gather(
        *(
            _half_open(
                adapter,
                manager=ConnectionManager(limits=limits),
                options=keepalive_options(adapter, 1.0, 1.0),
                bound=bound,
            )
            for adapter in ("websockets", "websockets_sync")
        )
    )


# C16. Concurrent join/leave/publish races.


@dataclass
class Racer:
    """One client of the race: joins, leaves and publishes at random, one request at a time,
    and checks every frame it gets against what it was told.

    Within a membership (from ``joined`` to ``left``) a room's messages must arrive with
    ids ``offset + 1, offset + 2...`` without a gap or a repeat; outside one, none may
    arrive. Together with the final message checked in every room, that is "every message
    reaches exactly the members present when it was published, once".
    """

    client: Client
    rng: random.Random
    rooms: list[str]
    member: dict[str, bool] = field(default_factory=dict)
    next_id: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    operations: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    _answers: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.client.welcome["connection"])

    async def read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                self.take(await self.client.recv(timeout=float("inf")))

    def take(self, frame: dict[str, Any]) -> None:
        kind, room = frame["type"], frame.get("room")
        if kind == "joined":
            assert isinstance(room, str)
            self.member[room] = True
            self.next_id[room] = frame["offset"] + 1
        elif kind == "left":
            assert isinstance(room, str)
            self.member[room] = False
        elif kind == "message":
            assert isinstance(room, str)
            if not self.member.get(room):
                self.violations.append(f"{self.id}: message {frame['id']} in {room}, not a member")
            elif frame["id"] != self.next_id[room]:
                self.violations.append(
                    f"{self.id}: {room} id {frame['id']}, expected {self.next_id[room]}"
                )
            self.next_id[room] = frame["id"] + 1
        if kind == "error":
            self.errors[frame["code"]] = self.errors.get(frame["code"], 0) + 1
        ref = frame.get("ref")
        if isinstance(ref, int) and kind in ("joined", "left", "ack", "error"):
            future = self._answers.pop(ref, None)
            if future is not None and not future.done():
                future.set_result(frame)

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        ref = self.client.next_ref()
        answer = self._answers[ref] = asyncio.get_running_loop().create_future()
        await self.client.send({**frame, "ref": ref})
        try:
            return await asyncio.wait_for(answer, 10.0)
        except TimeoutError:
            self.violations.append(f"{self.id}: no answer to {frame} within 10 s (deadlock?)")
            raise

    async def play(self, stop: asyncio.Event) -> None:
        rng = self.rng
        while not stop.is_set():
            joined = [room for room in self.rooms if self.member.get(room)]
            roll = rng.random()
            if not joined or (roll < 0.25 and len(joined) < len(self.rooms)):
                room = rng.choice([room for room in self.rooms if not self.member.get(room)])
                await self.request({"type": "join", "room": room})
            elif roll < 0.45:
                await self.request({"type": "leave", "room": rng.choice(joined)})
            else:
                await self.request({"type": "message", "room": rng.choice(joined), "data": "r"})
            self.operations += 1
            await asyncio.sleep(rng.uniform(0.02, 0.3))


@pytest.mark.parametrize("adapter", ["websockets", "websockets_sync"])
async def test_c16_concurrent_join_leave_publish(adapter: str) -> None:
    """C16: 200 clients (50 users with 4 connections each) join, leave and publish at
    random in 8 rooms at once; then a last message in every room. No message is missed,
    repeated or delivered to a non-member, every request is answered, the server's
    membership matches what each client was told, and nothing is logged as an error."""
    from tests.helpers import user_from_query

    count = scale(ci=200, soak=1000)
    rooms = [f"race-{index}" for index in range(8)]
    manager = ConnectionManager(authenticate=user_from_query, limits=Limits.without_rate_limits())
    rng = random.Random(1616)
    with ErrorWatch() as watch:
        async with SERVERS[adapter](manager) as url:
            clients: list[Client] = []
            for start in range(0, count, 50):
                clients += await asyncio.gather(
                    *(
                        Client.connect(url, f"/ws?user=u{index % 50}", compression=None)
                        for index in range(start, min(count, start + 50))
                    )
                )
            racers = [Racer(c, random.Random(rng.random()), rooms) for c in clients]
            readers = [asyncio.create_task(racer.read()) for racer in racers]
            stop = asyncio.Event()
            players = [asyncio.create_task(racer.play(stop)) for racer in racers]
            await asyncio.sleep(seconds(ci=3.0, soak=60.0))  # the race runs meanwhile
            stop.set()
            await asyncio.gather(*players)

            # A last message in every room reaches exactly its members.
            last = {room: await manager.broadcast(room, "final") for room in rooms}

            def settled() -> bool:
                return all(
                    racer.next_id[room] == last[room] + 1
                    for racer in racers
                    for room in rooms
                    if racer.member.get(room)
                )

            await wait_for(settled, timeout=TIMEOUT * 2)
            for room in rooms:
                on_server = {conn.id for conn in manager.connections_in(room)}
                told = {racer.id for racer in racers if racer.member.get(room)}
                assert on_server == told, room
            await asyncio.gather(*(client.close() for client in clients))
            for task in readers:
                task.cancel()
    operations = sum(racer.operations for racer in racers)
    violations = [v for racer in racers for v in racer.violations]
    errors: dict[str, int] = {}
    for racer in racers:
        for code, number in racer.errors.items():
            errors[code] = errors.get(code, 0) + number
    print(f"\n{adapter}: {operations} operations, {len(violations)} violations, errors {errors}")
    record("C16", "operations", operations, "", adapter=adapter, clients=count)
    record("C16", "violations", len(violations), "", adapter=adapter, clients=count)
    assert violations == []
    assert errors == {}
    assert watch.unexpected() == []


USERS = ("ann", "bob", "cy")
ROOMS = ("north", "south")


class RoomsMachine(RuleBasedStateMachine):
    """C16 as a model: connections of three users join, leave, publish and disconnect in
    any order through ``wsroom.testing``'s in-memory transport; after each step every
    connection must have received exactly the frames the model predicts (joined with the
    members and the offset, left, messages to every member and to no one else, presence
    when a user's first connection joins or its last one leaves, errors)."""

    connections = Bundle("connections")
    steps_run: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.manager = ConnectionManager(limits=Limits.without_rate_limits())
        self.clients: dict[int, TestClient] = {}
        self.user: dict[int, str] = {}
        self.members: dict[str, list[int]] = {room: [] for room in ROOMS}
        self.last_id: dict[str, int] = dict.fromkeys(ROOMS, 0)
        self.expected: dict[int, list[tuple[Any, ...]]] = {}
        self.steps = 0

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        RoomsMachine.steps_run += self.steps
        self.run(self.manager.shutdown(timeout=0.1))
        self.loop.close()

    def _users_in(self, room: str) -> set[str]:
        return {self.user[index] for index in self.members[room]}

    def _expect(self, indexes: list[int], frame: tuple[Any, ...]) -> None:
        for index in indexes:
            self.expected[index].append(frame)

    def _send(self, index: int, frame: dict[str, Any]) -> None:
        self.steps += 1
        self.run(self.clients[index].send({**frame, "ref": self.steps}))

    @rule(target=connections, user=st.sampled_from(USERS))
    def connect(self, user: str) -> int:
        index = len(self.user)
        client = TestClient(self.manager, user=user)
        self.run(client.connect())
        self.clients[index], self.user[index], self.expected[index] = client, user, []
        return index

    @rule(index=connections, room=st.sampled_from(ROOMS))
    def join(self, index: int, room: str) -> None:
        if index not in self.clients:
            return
        user = self.user[index]
        rejoin = index in self.members[room]
        first = user not in self._users_in(room)
        if not rejoin:
            self.members[room].append(index)
        members = tuple(sorted(self._users_in(room)))
        self._send(index, {"type": "join", "room": room})
        self._expect([index], ("joined", room, members, self.last_id[room]))
        if first:
            others = [i for i in self.members[room] if i != index]
            self._expect(others, ("presence", room, "join", user))

    @rule(index=connections, room=st.sampled_from(ROOMS))
    def leave(self, index: int, room: str) -> None:
        if index not in self.clients:
            return
        if index not in self.members[room]:
            self._send(index, {"type": "leave", "room": room})
            self._expect([index], ("error", "not_joined"))
            return
        self.members[room].remove(index)
        self._send(index, {"type": "leave", "room": room})
        self._expect([index], ("left", room))
        user = self.user[index]
        if user not in self._users_in(room):
            self._expect(self.members[room], ("presence", room, "leave", user))

    @rule(index=connections, room=st.sampled_from(ROOMS))
    def publish(self, index: int, room: str) -> None:
        if index not in self.clients:
            return
        self._send(index, {"type": "message", "room": room, "data": self.steps})
        if index not in self.members[room]:
            self._expect([index], ("error", "not_joined"))
            return
        self.last_id[room] += 1
        message_id = self.last_id[room]
        self._expect(self.members[room], ("message", room, message_id, self.user[index]))
        self._expect([index], ("ack", message_id))

    @rule(index=consumes(connections))
    def disconnect(self, index: int) -> None:
        client = self.clients.pop(index)
        self.run(client.close())
        user = self.user[index]
        for room in ROOMS:
            if index in self.members[room]:
                self.members[room].remove(index)
                if user not in self._users_in(room):
                    self._expect(self.members[room], ("presence", room, "leave", user))
        del self.expected[index]

    @invariant()
    def every_connection_got_exactly_what_the_model_says(self) -> None:
        for index, client in self.clients.items():
            got: list[tuple[Any, ...]] = []
            while (frame := client.receive_nowait()) is not None:
                kind = frame["type"]
                if kind == "joined":
                    members = tuple(sorted(frame["members"]))
                    got.append(("joined", frame["room"], members, frame["offset"]))
                elif kind == "message":
                    got.append(("message", frame["room"], frame["id"], frame["from"]))
                elif kind == "presence":
                    got.append(("presence", frame["room"], frame["event"], frame["user"]))
                elif kind == "left":
                    got.append(("left", frame["room"]))
                elif kind == "ack":
                    got.append(("ack", frame.get("id")))
                elif kind == "error":
                    got.append(("error", frame["code"]))
                else:
                    got.append((kind,))
            # In order within each room; the order across rooms is not specified (a
            # disconnection leaves its rooms in any order).
            assert _by_room(got) == _by_room(self.expected[index]), (index, got)
            self.expected[index] = []
        for room in ROOMS:
            on_server = sorted(c.id for c in self.manager.connections_in(room))
            in_model = sorted(self.clients[i].connection.id for i in self.members[room])  # type: ignore[union-attr]
            assert on_server == in_model, room


def _by_room(frames: list[tuple[Any, ...]]) -> dict[str, list[tuple[Any, ...]]]:
    """Frames grouped by room (answers without one under ``""``), each group in order."""
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for frame in frames:
        room = frame[1] if frame[0] in ("joined", "message", "presence", "left") else ""
        groups.setdefault(room, []).append(frame)
    return groups


def test_c16_rooms_model() -> None:
    """C16: the model above, run by Hypothesis; the steps it took are recorded."""
    RoomsMachine.steps_run = 0
    run_state_machine_as_test(
        RoomsMachine,
        settings=settings(
            max_examples=scale(ci=100, soak=1000),
            stateful_step_count=scale(ci=30, soak=60),
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    record("C16", "model steps checked", RoomsMachine.steps_run, "", adapter="wsroom.testing")


# C17. Application callback failure isolation.


class FragileRoom(Room):
    """Hooks that fail on demand: ``can_join`` raises for ``data == "boom"``;
    ``on_message`` raises for ``"boom"`` and waits on :attr:`release` for ``"hang"``."""

    release: ClassVar[asyncio.Event]
    SECRET: ClassVar[str] = "secret-detail-7f3a"

    def can_join(self, conn: Connection, data: Any) -> bool:
        if data == "boom":
            raise RuntimeError(f"can_join failed: {self.SECRET}")
        return True

    async def on_message(self, conn: Connection, message: Message) -> None:
        if message.data == "boom":
            raise RuntimeError(f"on_message failed: {self.SECRET}")
        if message.data == "hang":
            conn.state["hanging"] = True
            await self.release.wait()
            conn.state["hanging"] = False
        await self.broadcast(message)


def _hanging(manager: ConnectionManager) -> set[str]:
    """Ids of the connections whose ``on_message`` waits on ``FragileRoom.release``."""
    return {conn.id for conn in manager.connections if conn.state.get("hanging")}


async def _round_trips(client: Client, count: int) -> list[float]:
    """Milliseconds of ``count`` ping/pong round trips."""
    times = []
    for _ in range(count):
        began = time.perf_counter()
        ref = client.next_ref()
        await client.send({"type": "ping", "ref": ref})
        await client.recv_answer()
        times.append((time.perf_counter() - began) * 1000)
    return times


async def test_c17_application_callback_failure_isolation(start_server: ServerFactory) -> None:
    """C17: ``can_join`` and ``on_message`` raising, then ``on_message`` hanging. wsroom
    documents no 1011 close and no hook deadline: the failing request gets
    ``internal_error`` ("internal server error", no detail) and its connection stays open;
    a hanging hook holds only its own connection's next frames. The traceback is in the
    server's log only; the other clients' latency does not change."""
    adapter = adapter_name(start_server)
    room = "c17"
    FragileRoom.release = asyncio.Event()
    manager = ConnectionManager(FragileRoom, limits=Limits.without_rate_limits())
    samples = scale(ci=30, soak=300)
    with ErrorWatch() as watch:
        async with start_server(manager) as url:
            victim, bystander, listener = [await Client.connect(url) for _ in range(3)]
            for client in (victim, bystander, listener):
                await client.join(room)
            before = await _round_trips(bystander, samples)

            # can_join raising: an error, not a member, still connected.
            answer = await victim.request({"type": "join", "room": "other", "data": "boom"})
            assert answer["type"] == "error" and answer["code"] == "internal_error", answer
            assert answer["message"] == "internal server error"
            assert "other" not in manager.rooms()
            # on_message raising: an error, nothing broadcast, still connected.
            answer = await victim.request({"type": "message", "room": room, "data": "boom"})
            assert answer["type"] == "error" and answer["code"] == "internal_error", answer
            assert FragileRoom.SECRET not in str(answer)
            await victim.expect_nothing()
            await listener.expect_nothing()

            # on_message hanging: the victim's later frames wait, nobody else's do.
            await victim.send({"type": "message", "room": room, "data": "hang", "ref": "h"})
            await victim.send({"type": "ping", "ref": "after-hang"})
            during = await _round_trips(bystander, samples)
            ref = bystander.next_ref()
            await bystander.send(
                {"type": "message", "room": room, "data": "still here", "ref": ref}
            )
            assert (await listener.recv_type("message"))["data"] == "still here"
            with pytest.raises(TimeoutError):
                await victim.recv_answer(timeout=0.2)  # its ping waits behind the hook
            FragileRoom.release.set()
            answers = [await victim.recv_answer(), await victim.recv_answer()]
            assert [a["type"] for a in answers] == ["ack", "pong"], answers
            assert (await listener.recv_type("message"))["data"] == "hang"
            assert len(manager.connections_in(room)) == 3

            # A client that leaves while its hook hangs: it stays a member until the hook
            # returns (wsroom reads its next frame, the close, only then). Recorded.
            FragileRoom.release = asyncio.Event()
            await victim.send({"type": "message", "room": room, "data": "hang"})
            await wait_for(lambda: victim.welcome["connection"] in _hanging(manager))
            await victim.close()
            with contextlib.suppress(TimeoutError):
                await wait_for(_gone(manager, victim.welcome["connection"], room), timeout=0.5)
            member_while_hung = not _gone(manager, victim.welcome["connection"], room)()
            FragileRoom.release.set()
            await wait_for(_gone(manager, victim.welcome["connection"], room))
            for client in (bystander, listener):
                await client.close()

    # The tracebacks are in the server's log, and only there.
    logged = [r for r in watch.records if r.exc_info and FragileRoom.SECRET in str(r.exc_info[1])]
    assert len(logged) == 2, [r.getMessage() for r in watch.records]
    assert [r.getMessage() for r in watch.records if r not in logged] == []
    assert watch.loop_errors == [] and watch.thread_errors == []
    p99_before, p99_during = percentile(before, 99), percentile(during, 99)
    print(
        f"\n{adapter}: bystander ping p99 {p99_before:.2f} -> {p99_during:.2f} ms; "
        f"a gone client still a member while hung: {member_while_hung}"
    )
    context = {"adapter": adapter}
    record("C17", "close code after a hook failure", "none: internal_error, stays open", **context)
    still = "yes, until the hook returns" if member_while_hung else "no"
    record("C17", "a client gone while its hook hangs stays a member", still, **context)
    record("C17", "bystander round-trip p99 before", round(p99_before, 2), "ms", **context)
    figure = "bystander round-trip p99 during a hanging hook"
    record("C17", figure, round(p99_during, 2), "ms", **context)
    assert p99_during <= max(3 * p99_before, p99_before + 50)
