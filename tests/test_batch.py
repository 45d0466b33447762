"""Batched frames in the core: packing, selection, and the TestClient's batch option."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, strategies as st

from wsroom import (
    BATCH_SUBPROTOCOL,
    ConfigurationError,
    Connection,
    ConnectionManager,
    HandshakeRejected,
    Limits,
    Message,
    MessageProtocol,
    Room,
)
from wsroom._batch import batch_size, pack
from wsroom.testing import TestClient

pytestmark = pytest.mark.timeout(30)


def frame(i: int, size: int = 0) -> bytes:
    return json.dumps({"type": "tick", "i": i, "pad": "x" * size}, separators=(",", ":")).encode()


def unpack(messages: list[bytes]) -> list[Any]:
    frames: list[Any] = []
    for message in messages:
        value = json.loads(message)
        frames.extend(value if isinstance(value, list) else [value])
    return frames


# Packing


def test_nothing_and_one_frame_are_left_as_they_are() -> None:
    assert pack([], 100) == []
    one = [frame(1)]
    assert pack(one, 100) is one
    assert pack([frame(1, 500)], 100) == [frame(1, 500)]


def test_frames_that_fit_make_one_array() -> None:
    frames = [frame(i) for i in range(5)]
    packed = pack(frames, 10_000)
    assert packed == [b"[" + b",".join(frames) + b"]"]
    assert len(packed[0]) == batch_size(frames)


def test_the_limit_is_inclusive() -> None:
    frames = [frame(i) for i in range(3)]
    exact = batch_size(frames)
    assert len(pack(frames, exact)) == 1
    assert len(pack(frames, exact - 1)) == 2


def test_a_frame_that_does_not_fit_starts_the_next_batch() -> None:
    frames = [frame(i, 40) for i in range(10)]
    limit = batch_size(frames[:3])
    packed = pack(frames, limit)
    assert [len(json.loads(m)) for m in packed[:3]] == [3, 3, 3]
    assert json.loads(packed[3]) == json.loads(frames[9])  # a run of one is an object
    assert unpack(packed) == [json.loads(f) for f in frames]


def test_a_big_frame_travels_alone_between_batches() -> None:
    small = [frame(i) for i in range(4)]
    big = frame(99, 1000)
    packed = pack([*small[:2], big, *small[2:]], 200)
    assert packed[1] is big
    assert json.loads(packed[0]) == [json.loads(f) for f in small[:2]]
    assert json.loads(packed[2]) == [json.loads(f) for f in small[2:]]


@given(
    st.lists(st.integers(min_value=0, max_value=300), max_size=60),
    st.integers(min_value=1, max_value=2000),
)
def test_packing_keeps_every_frame_in_order_within_the_limit(sizes: list[int], limit: int) -> None:
    frames = [frame(i, size) for i, size in enumerate(sizes)]
    packed = pack(frames, limit)
    assert unpack(packed) == [json.loads(f) for f in frames]
    for message in packed:
        if message.startswith(b"["):
            assert len(message) <= limit
            assert len(json.loads(message)) >= 2
        else:
            assert message in frames
    # Greedy: two neighbouring messages could not have been one.
    runs = [json.loads(m) if m.startswith(b"[") else [json.loads(m)] for m in packed]
    for left, right in itertools.pairwise(runs):
        joined = [json.dumps(f, separators=(",", ":")).encode() for f in [*left, right[0]]]
        assert batch_size(joined) > limit


# Selection


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ((), None),
        (("wsroom.v1",), "wsroom.v1"),
        (("wsroom.v1", BATCH_SUBPROTOCOL), BATCH_SUBPROTOCOL),
        ((BATCH_SUBPROTOCOL, "wsroom.v1"), BATCH_SUBPROTOCOL),
        ((BATCH_SUBPROTOCOL,), BATCH_SUBPROTOCOL),
        (("chat", BATCH_SUBPROTOCOL), BATCH_SUBPROTOCOL),
    ],
)
def test_selection(offered: tuple[str, ...], chosen: str | None) -> None:
    assert ConnectionManager().select_subprotocol(offered) == chosen


def test_only_unknown_subprotocols_are_still_refused() -> None:
    with pytest.raises(HandshakeRejected) as refused:
        ConnectionManager().select_subprotocol(["wsroom.v1.batchy", "chat"])
    assert refused.value.status == 400


class MsgpackLike(MessageProtocol):
    subprotocol = "wsroom.v1.other"
    binary = True


class OwnJsonName(MessageProtocol):
    subprotocol = "chat.v3"
    batch_subprotocol = "chat.v3.batch"


class OnlyValidation(MessageProtocol):
    def validate_custom(self, message: Message) -> None:
        pass


def test_custom_protocols_do_not_inherit_batches() -> None:
    assert MessageProtocol.batch_subprotocol == BATCH_SUBPROTOCOL
    assert MsgpackLike.batch_subprotocol is None
    assert OwnJsonName.batch_subprotocol == "chat.v3.batch"
    # Checks of its own change nothing on the wire: batches stay.
    assert OnlyValidation.batch_subprotocol == BATCH_SUBPROTOCOL
    manager = ConnectionManager(protocol=MsgpackLike())
    assert manager.select_subprotocol([BATCH_SUBPROTOCOL, "wsroom.v1.other"]) == ("wsroom.v1.other")
    own = ConnectionManager(protocol=OwnJsonName())
    assert own.select_subprotocol(["chat.v3", "chat.v3.batch"]) == "chat.v3.batch"


def test_impossible_batch_settings_are_refused() -> None:
    class BinaryBatch(MessageProtocol):
        binary = True
        batch_subprotocol = "x.batch"

    class SameName(MessageProtocol):
        batch_subprotocol = "wsroom.v1"

    class Empty(MessageProtocol):
        batch_subprotocol = ""

    for protocol in (BinaryBatch, SameName, Empty):
        with pytest.raises(ConfigurationError):
            ConnectionManager(protocol=protocol())


# The queue and the TestClient


class Burst(Room):
    def on_burst(self, conn: Connection, message: Message) -> None:
        for i in range(message.data):
            conn.send_event("tick", {"i": i}, room=self.name)


async def test_a_batch_client_gets_the_frames_queued_together_in_one_batch() -> None:
    manager = ConnectionManager(Burst)
    async with TestClient(manager, user="alice", batch=True) as alice:
        assert alice.batched and alice.connection is not None
        assert alice.handshake.subprotocol == BATCH_SUBPROTOCOL
        await alice.join("r")
        await alice.send({"type": "burst", "room": "r", "data": 5})
        batch = await alice.receive_batch()
        assert [f["data"]["i"] for f in batch] == [0, 1, 2, 3, 4]
        await alice.send({"type": "burst", "room": "r", "data": 3})
        assert (await alice.receive())["data"]["i"] == 0
        assert await alice.receive_batch() == [
            {"type": "tick", "room": "r", "data": {"i": i}} for i in (1, 2)
        ]
        pong = await alice.request({"type": "ping"})
        assert pong["type"] == "pong"


async def test_a_plain_test_client_gets_frames_one_by_one() -> None:
    manager = ConnectionManager(Burst)
    async with TestClient(manager, user="bob") as bob:
        assert not bob.batched
        await bob.join("r")
        await bob.send({"type": "burst", "room": "r", "data": 3})
        for i in range(3):
            assert await bob.receive_batch() == [{"type": "tick", "room": "r", "data": {"i": i}}]


async def test_a_batch_client_through_the_handshake_checks() -> None:
    manager = ConnectionManager(Burst, authenticate=lambda handshake: "carol")
    async with TestClient(manager, batch=True) as carol:
        assert carol.batched


async def test_a_reader_that_resumes_gets_its_backlog_in_batches_within_the_limit() -> None:
    limit = 1024
    manager = ConnectionManager(Burst, limits=Limits(max_frame_size=limit))
    async with TestClient(manager, user="dave", batch=True) as dave:
        await dave.join("r")
        conn = dave.connection
        assert conn is not None
        dave.transport.reading = False
        await dave.send({"type": "burst", "room": "r", "data": 200})
        assert conn.queued_frames == 200
        dave.transport.resume_reading()
        messages = []
        while not dave.transport.frames.empty():
            messages.append(dave.transport.frames.get_nowait())
        assert len(messages) > 1
        assert all(len(m) <= limit for m in messages)
        assert [f["data"]["i"] for f in unpack(messages)] == list(range(200))
