"""The cluster layer's bus codec: items and bus messages, round trips and malformed input.

The cluster under test is a real manager's, serving real clients over sockets; bus messages
are handed to it as a backplane would.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.helpers import Client, connect_as, user_from_query, websockets_asyncio_server
from wsroom import ConnectionManager, MessageProtocol
from wsroom.backplane.base import Append, Record
from wsroom.backplane.cluster import Cluster

pytestmark = pytest.mark.timeout(30)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
records = st.builds(
    Record,
    sender=st.none() | st.text(min_size=1),
    data=json_values,
    ts=st.integers(0, 2**53),
    exclude=st.none() | st.text(alphabet="0123456789abcdef-", min_size=1, max_size=40),
)


def cluster_of(manager: ConnectionManager) -> Cluster:
    return manager._cluster


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(record=records)
def test_an_item_decodes_to_the_record_it_encodes(record: Record) -> None:
    cluster = cluster_of(ConnectionManager())
    item = cluster.encode_item(record)
    assert cluster.decode_item(item) == record


def raw(envelope: bytes, exclude: bytes = b"") -> bytes:
    """An item with the right length header around any envelope."""
    return b"%b\n%d\n%b" % (exclude, len(envelope), envelope)


@pytest.mark.parametrize(
    "item",
    [
        b"",
        b"no newline",
        b"\n5\n{}",  # shorter than its length
        b"\n-1\n",
        b"\nx\n{}",
        raw(b'{"data":1,"ts":1}') + b"more",  # bytes after the item
        raw(b"[]"),  # not an object
        raw(b"null"),
        raw(b'{"data":1}'),  # no ts
        raw(b'{"from":null,"ts":1}'),  # no data
        raw(b'{"data":1,"ts":"soon"}'),
        raw(b'{"from":5,"data":1,"ts":1}'),
        raw(b"\xff\xfe\xfd"),
        raw(b'{"data":1,"ts":1}', exclude=b"\xff"),
    ],
)
def test_what_is_not_an_item_is_refused(item: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the contract says ValueError, no more
        cluster_of(ConnectionManager()).decode_item(item)


@asynccontextmanager
async def one_member(room: str = "r") -> AsyncIterator[tuple[Cluster, Client, dict[str, Any]]]:
    manager = ConnectionManager(authenticate=user_from_query)
    async with websockets_asyncio_server(manager) as url:
        alice = await connect_as(url, "alice")
        joined = await alice.join(room)
        yield cluster_of(manager), alice, joined
        await alice.close()


async def test_a_run_of_items_reaches_members_in_order() -> None:
    async with one_member() as (cluster, alice, joined):
        first = Record("bob", {"text": "line\nbreak"}, 1)
        second = Record(None, "é\n" * 3, 2, exclude="not-alice")
        payload = b"M\n%b\n1\n%b%b" % (
            joined["epoch"].encode(),
            cluster.encode_item(first),
            cluster.encode_item(second),
        )
        cluster.received("room:r", payload)
        frames = [await alice.recv(), await alice.recv()]
        assert frames == [
            {"type": "message", "room": "r", "id": 1, "from": "bob", "data": first.data, "ts": 1},
            {"type": "message", "room": "r", "id": 2, "from": None, "data": second.data, "ts": 2},
        ]
        # The same ids again are duplicates; a skipped id is a gap, said before the message.
        cluster.received("room:r", payload)
        skip = b"M\n%b\n5\n%b" % (joined["epoch"].encode(), cluster.encode_item(first))
        cluster.received("room:r", skip)
        gap = await alice.recv()
        assert gap == {"type": "gap", "room": "r", "epoch": joined["epoch"], "offset": 4}
        assert (await alice.recv())["id"] == 5
        assert cluster.dropped_messages == 0


async def test_live_messages_wait_for_the_repair_after_the_bus_came_back() -> None:
    async with one_member() as (cluster, alice, joined):
        # Stored while this node's bus was down: nobody here got them.
        records = [Record("bob", n, n) for n in (1, 2, 3)]
        items = [cluster.encode_item(r) for r in records]
        await cluster.backplane.append([Append("r", records, items, 100, 60.0)])
        # The bus is back, and delivers a live message before the repair's task runs.
        cluster.resubscribed()
        live = cluster.encode_item(Record("bob", 4, 4))
        cluster.received("room:r", b"M\n%b\n4\n%b" % (joined["epoch"].encode(), live))
        frames = [await alice.recv() for _ in range(4)]
        # What the log held, then the live message: no gap.
        assert [(f["type"], f.get("id")) for f in frames] == [("message", n) for n in (1, 2, 3, 4)]


async def test_other_bus_messages_reach_their_connections() -> None:
    async with one_member() as (cluster, alice, _joined):
        protocol = MessageProtocol()
        event = protocol.dumps({"type": "typing", "room": "r", "data": 1})
        cluster.received("room:r", b"E\n\n" + event)
        assert await alice.recv() == {"type": "typing", "room": "r", "data": 1}
        cluster.received("all", b"A\n" + protocol.dumps({"type": "notice", "data": 2}))
        assert await alice.recv() == {"type": "notice", "data": 2}
        item = cluster.encode_item(Record("bob", "psst", 3))
        cluster.received("user:alice", b"D\n7\n" + item)
        direct = {"type": "direct", "id": 7, "from": "bob", "data": "psst", "ts": 3}
        assert await alice.recv() == direct
        cluster.received("user:alice", b"X\n4000\nbye now")
        assert await alice.wait_closed() == 4000


async def test_malformed_bus_messages_are_counted_logged_and_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with one_member() as (cluster, alice, joined):
        epoch = joined["epoch"].encode()
        item = cluster.encode_item(Record("bob", 1, 1))
        garbage = [
            ("room:r", b""),
            ("room:r", b"\x80\x04pickle"),
            ("room:r", b"M\nnot-a-number"),
            ("room:r", b"M\n" + epoch + b"\n1\n"),  # no item
            ("room:r", b"M\n" + epoch + b"\n0\n" + item),  # ids start at 1
            ("room:r", b"M\n" + epoch + b"\n1\n" + item[:-1]),  # truncated
            ("room:r", b"M\n" + epoch + b"\n1\n\n5\n[1,2]"),  # not an envelope
            ("room:r", b"E\nno frame"),
            ("room:r", b"D\n1\n" + item),  # a direct message on a room's channel
            ("user:alice", b"D\nseven\n" + item),
            ("user:alice", b"X\nbye"),
            ("all", b"M\n" + epoch + b"\n1\n" + item),
            ("room:r", b"Z\nwhat"),
        ]
        with caplog.at_level(logging.WARNING, logger="wsroom.backplane"):
            for channel, payload in garbage:
                cluster.received(channel, payload)
        assert cluster.dropped_messages == len(garbage)
        assert len([r for r in caplog.records if "malformed" in r.getMessage()]) == len(garbage)
        # Nothing reached the member; the next valid message is id 1.
        cluster.received("room:r", b"M\n" + epoch + b"\n1\n" + item)
        assert (await alice.recv())["id"] == 1
