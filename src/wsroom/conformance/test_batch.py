"""PROTOCOL.md, "Batched frames": ``wsroom.v1.batch`` over real sockets, on every adapter."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from wsroom import Connection, ConnectionManager, Limits, Message, Room
from wsroom.conformance._client import TIMEOUT, Client, connect_raw
from wsroom.conformance._frames import check_frame
from wsroom.conformance._server import Server

BATCH = "wsroom.v1.batch"


class BurstRoom(Room):
    """``burst`` queues ``data`` ticks to the sender at once (one loop iteration): they wait
    together in its queue, which is what the server may batch."""

    def on_burst(self, conn: Connection, message: Message) -> dict[str, Any]:
        count, size = message.data["count"], message.data.get("size", 0)
        for i in range(count):
            conn.send_event("tick", {"i": i, "pad": "x" * size}, room=self.name)
        return {"sent": count}

    def on_big(self, conn: Connection, message: Message) -> None:
        conn.send_event("tick", {"i": 0, "pad": "x" * 10}, room=self.name)
        conn.send_event("tick", {"i": 1, "pad": "y" * message.data}, room=self.name)
        conn.send_event("tick", {"i": 2, "pad": "z" * 10}, room=self.name)

    async def on_shout(self, conn: Connection, message: Message) -> None:
        for i in range(message.data):
            await self.broadcast_event("shout", {"i": i})


class BatchClient(Client):
    """A client that reads batches: it keeps every raw message it received, and hands out
    the frames of a batch one by one."""

    def __init__(self, ws: Any) -> None:
        super().__init__(ws)
        self.messages: list[str] = []
        self._unread: list[Any] = []

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        if not self._unread:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
            assert isinstance(raw, str), "the server must send text frames"
            self.messages.append(raw)
            value = json.loads(raw)
            if isinstance(value, list):
                assert self.ws.subprotocol == BATCH, f"a batch for a plain client: {raw}"
                assert value, "a batch holds at least one frame"
                self._unread.extend(value)
            else:
                self._unread.append(value)
        frame = self._unread.pop(0)
        assert isinstance(frame, dict) and isinstance(frame.get("type"), str), frame
        return frame

    @property
    def batches(self) -> list[list[dict[str, Any]]]:
        """The batches (JSON arrays) received so far."""
        return [value for raw in self.messages if isinstance(value := json.loads(raw), list)]


async def batch_client(url: str, offered: list[str] | None = None, **kwargs: Any) -> BatchClient:
    client = await BatchClient.connect(
        url, subprotocols=[BATCH, "wsroom.v1"] if offered is None else offered, **kwargs
    )
    assert isinstance(client, BatchClient)
    return client


async def burst(client: Client, count: int, size: int = 0) -> list[dict[str, Any]]:
    """Ask for ``count`` ticks; return them, checking the ack comes after them all."""
    ref = client.next_ref()
    await client.send(
        {"type": "burst", "room": "r", "data": {"count": count, "size": size}, "ref": ref}
    )
    ticks = [await client.recv() for _ in range(count)]
    assert [tick["data"]["i"] for tick in ticks] == list(range(count))
    assert all(tick["type"] == "tick" and tick["room"] == "r" for tick in ticks)
    ack = await client.recv()
    assert ack == {"type": "ack", "ref": ref, "data": {"sent": count}}
    return ticks


# Selection


@pytest.mark.parametrize(
    "offered",
    [[BATCH, "wsroom.v1"], ["wsroom.v1", BATCH], ["chat", BATCH, "wsroom.v2"], [BATCH]],
)
async def test_batch_is_selected_whatever_the_order(
    start_server: Server, offered: list[str]
) -> None:
    manager = ConnectionManager(BurstRoom)
    async with start_server(manager) as url:
        client = await batch_client(url, offered)
        assert client.ws.subprotocol == BATCH
        check_frame(client.welcome, "welcome")
        await client.join("r")
        await burst(client, 50)
        assert client.batches, "50 frames queued at once should travel in batches"
        await client.close()


@pytest.mark.parametrize("offered", [["wsroom.v1"], [], ["chat", "wsroom.v1"]])
async def test_a_plain_client_never_gets_a_batch(start_server: Server, offered: list[str]) -> None:
    manager = ConnectionManager(BurstRoom)
    async with start_server(manager) as url:
        client = await batch_client(url, offered)
        assert client.ws.subprotocol == ("wsroom.v1" if offered else None)
        await client.join("r")
        await burst(client, 200)
        await client.request({"type": "message", "room": "r", "data": "hello"})
        assert client.batches == []
        assert all(raw.startswith("{") for raw in client.messages)
        await client.close()


async def test_a_server_without_batches_selects_wsroom_v1(start_server: Server) -> None:
    """A protocol with batch_subprotocol = None (any custom codec) never selects it."""
    from wsroom import MessageProtocol

    class Plain(MessageProtocol):
        batch_subprotocol = None

    manager = ConnectionManager(BurstRoom, protocol=Plain())
    async with start_server(manager) as url:
        client = await batch_client(url)
        assert client.ws.subprotocol == "wsroom.v1"
        await client.join("r")
        await burst(client, 50)
        assert client.batches == []
        await client.close()


# Every v1 rule per frame


async def test_order_ids_and_refs_hold_inside_batches(start_server: Server) -> None:
    manager = ConnectionManager(BurstRoom)
    async with start_server(manager) as url:
        client = await batch_client(url)
        await client.join("r")
        await burst(client, 100)
        # Pipelined messages: every ack echoes its ref, in order, and the echoed messages
        # have strictly increasing ids.
        refs = [client.next_ref() for _ in range(60)]
        for i, ref in enumerate(refs):
            await client.send({"type": "message", "room": "r", "data": i, "ref": ref})
        acks: list[dict[str, Any]] = []
        echoed: list[dict[str, Any]] = []
        async with asyncio.timeout(TIMEOUT):
            while len(acks) < len(refs) or len(echoed) < len(refs):
                frame = await client.recv()
                (acks if frame["type"] == "ack" else echoed).append(check_frame(frame))
        assert [ack["ref"] for ack in acks] == refs
        assert [message["data"] for message in echoed] == list(range(len(refs)))
        ids = [message["id"] for message in echoed]
        assert ids == sorted(set(ids))
        assert [ack["id"] for ack in acks] == ids
        for batch in client.batches:
            for frame in batch:
                if frame["type"] != "tick":
                    check_frame(frame)
        await client.close()


async def test_a_batch_never_exceeds_the_max_frame_size(start_server: Server) -> None:
    limit = 2048
    manager = ConnectionManager(BurstRoom, limits=Limits(max_frame_size=limit))
    async with start_server(manager) as url:
        client = await batch_client(url)
        await client.join("r")
        await burst(client, 120, size=100)
        assert len(client.batches) >= 2, "120 ticks of 150 bytes need several batches"
        for raw in client.messages:
            if raw.startswith("["):
                assert len(raw.encode("utf-8")) <= limit
        # Full batches: a frame started the next one only when it did not fit.
        sizes = [len(raw.encode()) for raw in client.messages if raw.startswith("[")]
        assert max(sizes) > limit - 200
        await client.close()


async def test_a_frame_larger_than_the_limit_travels_alone(start_server: Server) -> None:
    limit = 2048
    manager = ConnectionManager(BurstRoom, limits=Limits(max_frame_size=limit))
    async with start_server(manager) as url:
        client = await batch_client(url)
        await client.join("r")
        before = len(client.messages)
        await client.send({"type": "big", "room": "r", "data": 3 * limit})
        ticks = [await client.recv() for _ in range(3)]
        assert [tick["data"]["i"] for tick in ticks] == [0, 1, 2]
        big = [raw for raw in client.messages[before:] if "yyy" in raw]
        assert len(big) == 1 and big[0].startswith("{"), "the big frame is a plain object"
        await client.close()


async def test_no_waiting_at_low_load(start_server: Server) -> None:
    """A frame alone in the queue leaves at once, as a plain object."""
    manager = ConnectionManager(BurstRoom)
    async with start_server(manager) as url:
        client = await batch_client(url)
        assert client.messages[0].startswith("{")  # the welcome
        joined = await client.join("r")
        assert joined["room"] == "r"
        for _ in range(5):
            ref = client.next_ref()
            await client.send({"type": "ping", "ref": ref})
            assert await client.recv() == {"type": "pong", "ref": ref}
            assert client.messages[-1] == json.dumps(
                {"type": "pong", "ref": ref}, separators=(",", ":")
            )
        assert client.batches == []
        await client.close()


async def test_batching_is_per_connection(start_server: Server) -> None:
    """In one room, the batch client gets batches and the plain one objects, the same
    frames in the same order."""
    manager = ConnectionManager(BurstRoom)
    async with start_server(manager) as url:
        batched = await batch_client(url)
        plain = await batch_client(url, ["wsroom.v1"])
        no_subprotocol = BatchClient(await connect_raw(url))
        no_subprotocol.welcome = await no_subprotocol.recv()
        clients = (batched, plain, no_subprotocol)
        for client in clients:
            await client.join("r")
        count = 100
        await batched.send({"type": "shout", "room": "r", "data": count})
        for client in clients:
            shouts = [await client.recv_type("shout") for _ in range(count)]
            assert [shout["data"]["i"] for shout in shouts] == list(range(count))
        assert plain.batches == [] and no_subprotocol.batches == []
        for client in clients:
            await client.close()
