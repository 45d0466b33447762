"""The core, through the in-memory transport: hooks, server API, limits, shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from wsroom import (
    CloseCode,
    ConfigurationError,
    Connection,
    ConnectionClosedError,
    ConnectionManager,
    EncodeError,
    Handshake,
    HandshakeRejected,
    Limits,
    Message,
    ProtocolError,
    Room,
)
from wsroom.testing import MemoryTransport, TestClient


class Recorder(Room):
    """A room that records its hooks, as def and async def."""

    events: list[tuple[str, str, str | None]] = []

    def can_join(self, conn: Connection, data: Any) -> bool:
        return bool(data != "let me down")

    async def on_join(self, conn: Connection) -> None:
        self.events.append(("join", self.name, conn.user))

    def on_leave(self, conn: Connection) -> None:
        self.events.append(("leave", self.name, conn.user))

    def on_shout(self, conn: Connection, message: Message) -> None:
        conn.send_event("echo", str(message.data).upper(), room=self.name)

    async def on_fail(self, conn: Connection, message: Message) -> None:
        raise RuntimeError("secret database password in this text")

    async def on_refuse(self, conn: Connection, message: Message) -> None:
        raise ProtocolError("forbidden", "not you")


@pytest.fixture(autouse=True)
def _clear_events() -> None:
    Recorder.events = []


async def test_hooks_def_and_async_are_called() -> None:
    manager = ConnectionManager(Recorder)
    async with TestClient(manager, user="ann") as ann:
        assert (await ann.join("r1"))["type"] == "joined"
        refused = await ann.join("r2", data="let me down")
        assert refused["code"] == "forbidden"
        assert manager.rooms() == ["r1"]  # the refused room was not kept
        await ann.send({"type": "shout", "room": "r1", "data": "hey", "ref": "s"})
        assert await ann.receive() == {"type": "echo", "data": "HEY", "room": "r1"}
        assert await ann.receive() == {"type": "ack", "ref": "s"}
        await ann.leave("r1")
    assert Recorder.events == [("join", "r1", "ann"), ("leave", "r1", "ann")]
    assert manager.rooms() == []


async def test_hook_exception_is_logged_and_answered_without_detail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = ConnectionManager(Recorder)
    async with TestClient(manager, user="ann") as ann:
        await ann.join("r")
        with caplog.at_level(logging.ERROR, "wsroom"):
            error = await ann.request({"type": "fail", "room": "r"})
        assert error["code"] == "internal_error"
        assert "secret" not in error["message"]
        assert "secret database password" in caplog.text
        refused = await ann.request({"type": "refuse", "room": "r"})
        assert (refused["code"], refused["message"]) == ("forbidden", "not you")
        # The connection lives on.
        assert (await ann.request({"type": "ping"}))["type"] == "pong"


async def test_room_class_function_chooses_class_or_refuses() -> None:
    class Small(Room):
        max_members = 1

    def choose(name: str) -> type[Room] | None:
        if name.startswith("small:"):
            return Small
        return Room if name.startswith("open:") else None

    manager = ConnectionManager(choose)
    async with TestClient(manager, user="a") as a, TestClient(manager, user="b") as b:
        assert (await a.join("nowhere"))["code"] == "forbidden"
        await a.join("small:x")
        assert isinstance(manager.room("small:x"), Small)
        assert (await b.join("small:x"))["code"] == "room_full"
        assert (await b.join("open:x"))["type"] == "joined"


def test_invalid_settings_fail_at_construction() -> None:
    class Bad(Room):
        history_size = -1

    with pytest.raises(ConfigurationError, match="history_size"):
        ConnectionManager(Bad)
    with pytest.raises(ConfigurationError, match="subclass"):
        ConnectionManager(int)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="heartbeat"):
        ConnectionManager(heartbeat=0)
    with pytest.raises(ConfigurationError, match="rate"):
        Limits(rate=-1)
    with pytest.raises(ConfigurationError, match="overflow"):
        Limits(overflow="block")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_queue"):
        Limits(max_queue=0)
    manager = ConnectionManager()
    with pytest.raises(ConfigurationError, match="protocol"):
        manager.handler("join")


async def test_server_api_reaches_rooms_users_and_everyone() -> None:
    manager = ConnectionManager()
    async with (
        TestClient(manager, user="ann") as ann,
        TestClient(manager, user="ann") as ann2,
        TestClient(manager, user="bob") as bob,
    ):
        await ann.join("lobby")
        await bob.join("lobby")
        await ann.receive_type("presence")
        message_id = await manager.broadcast("lobby", {"notice": "hello"})
        for client in (ann, bob):
            frame = await client.receive_type("message")
            assert (frame["id"], frame["from"], frame["data"]) == (
                message_id,
                None,
                {"notice": "hello"},
            )
        # Rooms without members keep the message in their history.
        assert await manager.broadcast("empty", "kept") == 1
        assert (await bob.join("empty"))["history"][0]["data"] == "kept"

        direct_id = await manager.send_to_user("ann", "psst", sender="system")
        for client in (ann, ann2):
            frame = await client.receive_type("direct")
            assert (frame["id"], frame["from"], frame["data"]) == (direct_id, "system", "psst")
        assert await manager.send_to_user("nobody", "x") is None

        await manager.send_all("maintenance", {"in": 5})
        for client in (ann, ann2, bob):
            assert await client.receive_type("maintenance") == {
                "type": "maintenance",
                "data": {"in": 5},
            }

        await manager.broadcast_event("lobby", "poll", [1, 2])
        assert (await bob.receive_type("poll"))["room"] == "lobby"

        assert sorted(await manager.members("lobby")) == ["ann", "bob"]
        assert {c.user for c in manager.user_connections("ann")} == {"ann"}
        assert manager.connection(ann.welcome["connection"]) is ann.connection  # type: ignore[index]

        assert await manager.disconnect_user("ann", CloseCode.POLICY_VIOLATION, "banned") == 2
        assert await ann.wait_closed() == 1008
        assert await ann2.wait_closed() == 1008
        assert manager.user_connections("ann") == []
        leave = await bob.receive_type("presence")
        assert (leave["event"], leave["user"]) == ("leave", "ann")
        stats = manager.statistics()
        assert (stats.connections, stats.users, stats.rooms) == (1, 1, 2)


async def test_server_api_rejects_misuse_clearly() -> None:
    manager = ConnectionManager()
    async with TestClient(manager, user="ann") as ann:
        with pytest.raises(ValueError, match="invalid room name"):
            await manager.broadcast("bad name", 1)
        with pytest.raises(ValueError, match="protocol itself"):
            await manager.send_all("message", 1)
        with pytest.raises(EncodeError, match="JSON"):
            await manager.broadcast("lobby", {1, 2})
        conn = ann.connection
        assert conn is not None
        with pytest.raises(ValueError, match="protocol itself"):
            conn.send_event("joined")
        await conn.close()
        assert ann.close_code == 1000
        with pytest.raises(ConnectionClosedError):
            conn.send_event("later")


async def test_registered_handler_for_roomless_frames() -> None:
    manager = ConnectionManager()
    seen: list[Any] = []

    @manager.handler("whoami")
    async def whoami(conn: Connection, message: Message) -> None:
        seen.append(message.data)
        conn.send_event("you", {"user": conn.user})

    async with TestClient(manager, user="ann") as ann:
        await ann.send({"type": "whoami", "data": 7, "ref": 1})
        assert await ann.receive() == {"type": "you", "data": {"user": "ann"}}
        assert await ann.receive() == {"type": "ack", "ref": 1}
        assert seen == [7]
        assert (await ann.request({"type": "whoisit"}))["code"] == "unknown_type"


async def test_echo_false_and_exclude() -> None:
    class Quiet(Room):
        echo = False

    manager = ConnectionManager(Quiet)
    async with TestClient(manager, user="a") as a, TestClient(manager, user="b") as b:
        await a.join("q")
        await b.join("q")
        ack = await a.message("q", "hi")
        assert ack["id"] == 1
        assert (await b.receive_type("message"))["data"] == "hi"
        pong = await a.request({"type": "ping"})
        assert pong["type"] == "pong"  # nothing was queued to the sender before it
        assert a.receive_nowait() is None


async def test_overflow_evicts_only_the_slow_client() -> None:
    limits = Limits(max_queue=8, max_queue_bytes=10_000)
    manager = ConnectionManager(limits=limits)
    async with (
        TestClient(manager, user="fast") as fast,
        TestClient(manager, user="slow", reading=False) as slow,
    ):
        await fast.join("r")
        assert slow.connection is not None
        await manager.receive(slow.connection, '{"type":"join","room":"r"}')
        for index in range(20):
            await manager.broadcast("r", index)
        assert slow.connection.closed
        assert slow.connection.close_code == 1013
        assert manager.statistics().evictions == 1
        room = manager.room("r")
        assert room is not None and slow.connection not in room.connections
        # Its closing handshake cannot finish; the deadline aborts it.
        assert await slow.wait_closed(timeout=3) == 1006
        assert slow.transport.aborted
        received = [(await fast.receive_type("message"))["data"] for _ in range(20)]
        assert received == list(range(20))


async def test_drop_oldest_keeps_the_newest_frames() -> None:
    manager = ConnectionManager(limits=Limits(max_queue=5, overflow="drop_oldest"))
    async with TestClient(manager, user="slow", reading=False) as slow:
        assert slow.connection is not None
        await manager.receive(slow.connection, '{"type":"join","room":"r"}')
        for index in range(10):
            await manager.broadcast("r", index)
        assert not slow.connection.closed
        assert manager.statistics().dropped_frames > 0
        slow.transport.resume_reading()
        frames = [slow.receive_nowait() for _ in range(5)]
        assert [f["data"] for f in frames if f] == [5, 6, 7, 8, 9]


async def test_rate_limit_errors_then_closes_on_abuse() -> None:
    limits = Limits(rate=1, rate_burst=2, rate_abuse_strikes=3, rate_abuse_window=60)
    manager = ConnectionManager(limits=limits)
    async with TestClient(manager, user="spam") as spam:
        for ref in range(2):
            await spam.send({"type": "ping", "ref": ref})
            assert (await spam.receive())["type"] == "pong"
        for ref in range(2, 5):
            await spam.send({"type": "ping", "ref": ref})
            error = await spam.receive()
            assert (error["code"], error["ref"]) == ("rate_limited", ref)
        assert await spam.wait_closed() == 1008


async def test_frame_too_large_closes_with_1009() -> None:
    manager = ConnectionManager(limits=Limits(max_frame_size=100))
    async with TestClient(manager, user="big") as big:
        # 30 characters of 4 bytes each: 120 bytes, over the limit though only 30 long.
        await big.send('{"type":"ping","x":"' + "\U0001f600" * 30 + '"}')
        assert await big.wait_closed() == 1009


async def test_heartbeat_closes_silent_clients() -> None:
    manager = ConnectionManager(heartbeat=0.05)
    async with TestClient(manager, user="quiet") as quiet:
        assert quiet.welcome is not None and quiet.welcome["heartbeat"] == 0.05
        assert await quiet.wait_closed() == 1008
        assert quiet.transport.close_reason == "heartbeat timeout"
    await manager.shutdown()


async def test_limits_on_rooms() -> None:
    manager = ConnectionManager(limits=Limits(max_rooms_per_connection=2, max_rooms=3))
    async with TestClient(manager, user="a") as a, TestClient(manager, user="b") as b:
        await a.join("r1")
        await a.join("r2")
        assert (await a.join("r3"))["code"] == "forbidden"
        await b.join("r3")
        assert (await b.join("r4"))["code"] == "forbidden"
        assert (await b.join("r1"))["type"] == "joined"  # existing rooms stay joinable


async def test_rejoin_answers_joined_again_without_presence() -> None:
    manager = ConnectionManager()
    async with TestClient(manager, user="a") as a, TestClient(manager, user="b") as b:
        await a.join("r")
        await b.join("r")
        await a.receive_type("presence")
        again = await b.join("r")
        assert again["type"] == "joined" and again["members"] == ["a", "b"]
        await a.request({"type": "ping"})
        assert a.receive_nowait() is None


async def test_shutdown_flushes_then_closes_and_refuses_new_clients() -> None:
    manager = ConnectionManager()
    async with TestClient(manager, user="a") as a:
        await a.join("r")
        await manager.broadcast("r", "last words")
        await manager.shutdown(timeout=1)
        assert (await a.receive_type("message"))["data"] == "last words"
        assert await a.wait_closed() == 1001
        with pytest.raises(HandshakeRejected) as refused:
            await TestClient(manager).connect()
        assert refused.value.status == 503
    assert manager.statistics().connections == 0


async def test_disconnect_leaves_rooms_and_fires_presence_once() -> None:
    manager = ConnectionManager(Recorder)
    async with TestClient(manager, user="watcher") as watcher:
        await watcher.join("r")
        tab1 = TestClient(manager, user="ann")
        tab2 = TestClient(manager, user="ann")
        await tab1.connect()
        await tab2.connect()
        await tab1.join("r")
        await tab2.join("r")
        assert (await watcher.receive_type("presence"))["event"] == "join"
        await tab1.close()
        await tab2.close()
        leave = await watcher.receive_type("presence")
        assert (leave["event"], leave["user"]) == ("leave", "ann")
        await watcher.request({"type": "ping"})
        assert watcher.receive_nowait() is None
    assert Recorder.events.count(("leave", "r", "ann")) == 2


async def test_manager_is_bound_to_one_loop() -> None:
    manager = ConnectionManager()
    await manager.start()

    def other_loop() -> None:
        with pytest.raises(RuntimeError, match="another event loop"):
            asyncio.run(manager.start())

    await asyncio.to_thread(other_loop)
    await manager.shutdown()


async def test_statistics_count_traffic() -> None:
    manager = ConnectionManager()
    async with TestClient(manager, user="a") as a:
        await a.join("r")
        await a.message("r", 1)
        await a.send("not json")
        await a.receive_type("error")
        stats = manager.statistics()
        assert stats.frames_received == 3
        assert stats.messages_published == 1
        assert stats.errors_sent == 1
        assert stats.queued_frames == 0 and stats.queued_bytes == 0


async def test_a_handshake_that_raced_shutdown_is_closed_too() -> None:
    manager = ConnectionManager()
    await manager.start()
    await manager.shutdown()
    transport = MemoryTransport()
    conn = await manager.accept(transport, Handshake("/ws"), "late")
    assert conn.closed
    await asyncio.wait_for(transport.closed.wait(), 2)
    assert transport.close_code == 1001
    assert manager.statistics().connections == 0


async def test_server_api_works_before_any_client_connected() -> None:
    manager = ConnectionManager()
    assert await manager.broadcast("news", "first") == 1
    assert await manager.members("news") == []
    async with TestClient(manager, user="a") as a:
        assert (await a.join("news"))["history"][0]["data"] == "first"
    await manager.shutdown()


async def test_custom_hook_that_stores_the_message_acks_its_id() -> None:
    class Polls(Room):
        async def on_vote(self, conn: Connection, message: Message) -> None:
            await self.broadcast(message)

    manager = ConnectionManager(Polls)
    async with TestClient(manager, user="a") as a:
        await a.join("p")
        ack = await a.request({"type": "vote", "room": "p", "data": "yes"})
        assert ack == {"type": "ack", "ref": ack["ref"], "id": 1}


async def test_a_manager_that_was_shut_down_stays_down() -> None:
    manager = ConnectionManager()
    await manager.broadcast("news", 1)
    await manager.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        await manager.broadcast("news", 2)


@pytest.mark.parametrize("queued", [0, 3])
async def test_joined_replay_fits_half_the_queue_whatever_is_queued(queued: int) -> None:
    limits = Limits.without_rate_limits(max_queue_bytes=20_000, max_frame_size=4_000)
    manager = ConnectionManager(limits=limits)
    async with TestClient(manager, user="poster") as poster:
        await poster.join("r")
        for i in range(30):
            await poster.message("r", {"n": i, "pad": "x" * 3_000})
        async with TestClient(manager, user="late", reading=False) as late:
            assert late.connection is not None
            for _ in range(queued):
                late.connection.send_event("note", "y" * 1_000)
            before = late.connection.queued_bytes
            await late.send({"type": "join", "room": "r", "since": 0, "ref": 1})
            joined_size = late.connection.queued_bytes - before
            assert 0 < joined_size <= limits.max_queue_bytes // 2 - before
            late.transport.resume_reading()
            frames = [await late.receive() for _ in range(queued + 2)]  # welcome first
            joined = frames[-1]
            assert joined["type"] == "joined" and joined["recovered"] is False
            ids = [message["id"] for message in joined["history"]]
            assert ids == list(range(31 - len(ids), 31))
            assert late.close_code is None


# Answers with data, through the in-memory client.


async def test_custom_hooks_answer_with_data_in_the_test_client() -> None:
    class Table(Room):
        def on_sit(self, conn: Connection, message: Message) -> int:
            return 2

        async def on_vote(self, conn: Connection, message: Message) -> dict[str, Any]:
            return {"stored": await self.broadcast(message)}

        def on_message(self, conn: Connection, message: Message) -> Any:
            # on_message's result is not an answer: a message's ack carries its id only.
            return self.broadcast(message)

    manager = ConnectionManager(Table)

    @manager.handler("whoami")
    async def whoami(conn: Connection, message: Message) -> str | None:
        return conn.user

    async with TestClient(manager, user="ann") as ann:
        await ann.join("t")
        sit = await ann.request({"type": "sit", "room": "t"})
        assert sit == {"type": "ack", "ref": sit["ref"], "data": 2}
        vote = await ann.request({"type": "vote", "room": "t", "data": "yes"})
        assert vote == {"type": "ack", "ref": vote["ref"], "id": 1, "data": {"stored": 1}}
        posted = await ann.message("t", "hello")
        assert posted == {"type": "ack", "ref": posted["ref"], "id": 2}
        who = await ann.request({"type": "whoami"})
        assert who == {"type": "ack", "ref": who["ref"], "data": "ann"}
        # Without a ref there is no ack, so the answer goes nowhere.
        await ann.send({"type": "sit", "room": "t"})
        assert (await ann.request({"type": "ping"}))["type"] == "pong"


async def test_an_answer_too_large_for_any_queue_is_refused_before_it_evicts() -> None:
    class Big(Room):
        def on_dump(self, conn: Connection, message: Message) -> str:
            return "x" * int(message.data)

    limits = Limits(max_queue_bytes=10_000)
    manager = ConnectionManager(Big, limits=limits)
    async with TestClient(manager, user="ann") as ann:
        await ann.join("b")
        fits = await ann.request({"type": "dump", "room": "b", "data": 9_000})
        assert len(fits["data"]) == 9_000
        refused = await ann.request({"type": "dump", "room": "b", "data": 10_000})
        assert refused["code"] == "internal_error"
        stats = manager.statistics()
        assert (ann.close_code, stats.evictions, stats.errors_sent) == (None, 0, 1)


# on_connect and on_disconnect, through the in-memory client.


async def test_connection_hooks_set_after_construction_and_the_test_clients_code() -> None:
    calls: list[tuple[str, str | None, int | None]] = []
    manager = ConnectionManager()
    manager.on_connect = lambda conn: calls.append(("connect", conn.user, None))

    async def on_disconnect(conn: Connection, code: int | None) -> None:
        calls.append(("disconnect", conn.user, code))

    manager.on_disconnect = on_disconnect
    async with TestClient(manager, user="ann"):
        assert calls == [("connect", "ann", None)]
    ben = TestClient(manager, user="ben")
    await ben.connect()
    await ben.close(4000)
    assert calls == [
        ("connect", "ann", None),
        ("disconnect", "ann", 1000),
        ("connect", "ben", None),
        ("disconnect", "ben", 4000),
    ]


async def test_on_disconnect_waits_for_on_connect_and_runs_once() -> None:
    gate = asyncio.Event()
    started = asyncio.Event()
    calls: list[tuple[str, int | None]] = []

    async def on_connect(conn: Connection) -> None:
        started.set()
        await gate.wait()
        calls.append(("connect", None))

    def on_disconnect(conn: Connection, code: int | None) -> None:
        calls.append(("disconnect", code))

    manager = ConnectionManager(on_connect=on_connect, on_disconnect=on_disconnect)
    client = TestClient(manager, user="ann")
    connecting = asyncio.create_task(client.connect())
    await asyncio.wait_for(started.wait(), 2)
    [conn] = manager.connections
    manager.evict(conn)  # the connection ends while on_connect still runs
    await conn.wait_closed()
    assert conn.closed and calls == []
    gate.set()
    await asyncio.wait_for(connecting, 2)
    assert calls == [("connect", None), ("disconnect", 1013)]
    await client.close()
    assert calls == [("connect", None), ("disconnect", 1013)]


async def test_a_close_from_inside_on_connect_does_not_wait_for_itself() -> None:
    calls: list[tuple[str, int | None]] = []

    async def on_connect(conn: Connection) -> None:
        await conn.close(4002, "not today")
        calls.append(("connect", conn.close_code))

    async def on_disconnect(conn: Connection, code: int | None) -> None:
        calls.append(("disconnect", code))

    manager = ConnectionManager(on_connect=on_connect, on_disconnect=on_disconnect)
    client = TestClient(manager, user="ann")
    await asyncio.wait_for(client.connect(), 2)
    assert await client.wait_closed() == 4002
    assert calls == [("connect", 4002), ("disconnect", 4002)]


async def test_an_accept_cancelled_during_on_connect_closes_the_connection() -> None:
    started = asyncio.Event()
    codes: list[int | None] = []

    async def on_connect(conn: Connection) -> None:
        started.set()
        await asyncio.Event().wait()  # forever

    manager = ConnectionManager(
        on_connect=on_connect, on_disconnect=lambda conn, code: codes.append(code)
    )
    transport = MemoryTransport()
    accepting = asyncio.create_task(manager.accept(transport, Handshake("/ws"), "ann"))
    await asyncio.wait_for(started.wait(), 2)
    accepting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await accepting
    await asyncio.wait_for(transport.closed.wait(), 2)
    assert transport.close_code == 1001
    assert manager.connections == []
    await manager.shutdown()
    assert codes == [1001]


async def test_a_connection_accepted_as_shutdown_began_gets_both_hooks() -> None:
    calls: list[tuple[str, int | None]] = []
    manager = ConnectionManager(
        on_connect=lambda conn: calls.append(("connect", None)),
        on_disconnect=lambda conn, code: calls.append(("disconnect", code)),
    )
    await manager.start()
    await manager.shutdown()
    transport = MemoryTransport()
    conn = await manager.accept(transport, Handshake("/ws"), "late")
    await conn.wait_closed()
    assert calls == [("connect", None), ("disconnect", 1001)]
