"""C18: the Redis primary dies and Sentinel promotes its replica under a conversation.

The test runs its own primary, replica and three Sentinels (quorum 2) on free ports
(``tests/sentinel_support.py``), and two in-process nodes, each a ``ConnectionManager``
whose ``RedisBackplane`` is built by docs/operating.md's Sentinel snippet, served by
``wsroom.adapters.websockets.serve``. Clients on both nodes converse in a room with
history; mid-conversation the primary gets SIGKILL. Redis replicates asynchronously, so
the promoted replica may lack messages that were acknowledged and delivered: what the
test checks is that no client is left unaware of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets
from redis.exceptions import RedisError

from tests.helpers import ROOT, TIMEOUT, wait_for
from tests.reliability.nodes import Member, Tracker, poll
from tests.reliability.suite import record
from tests.sentinel_support import SERVICE, FailoverSet, failover_set
from wsroom import ConnectionManager, Handshake, Room
from wsroom.adapters.websockets import serve
from wsroom.backplane.redis import RedisBackplane

pytestmark = pytest.mark.timeout(120)

ROOM = "talk"
RATE = 40.0  # messages per second from each of the two talkers
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class Talk(Room):
    history_size = 100


def user_from_query(handshake: Handshake) -> str | None:
    return handshake.query.get("user") or None


def sentinel_backplane(failover: FailoverSet) -> RedisBackplane:
    """The backplane docs/operating.md shows, on the test's Sentinels."""
    path = ROOT / "docs_src" / "operating" / "sentinel_client.py"
    spec = importlib.util.spec_from_file_location("docs_src_sentinel_client", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    backplane: RedisBackplane = module.sentinel_backplane(failover.addresses, SERVICE)
    return backplane


@asynccontextmanager
async def sentinel_node(failover: FailoverSet) -> AsyncIterator[tuple[ConnectionManager, str]]:
    backplane = sentinel_backplane(failover)
    manager = ConnectionManager(Talk, authenticate=user_from_query, backplane=backplane)
    client = backplane.client
    assert client is not None
    try:
        async with serve(manager, "127.0.0.1", 0) as server:
            yield manager, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        # The client, and the Sentinel's, are the application's to close.
        await client.aclose()
        for sentinel in client.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
            await sentinel.aclose()


@dataclass
class Sent:
    seq: int
    by: str
    sent_at: float
    ack: int | None = None
    error: str | None = None


@dataclass
class Talkers:
    """Members that each send sequence-numbered messages at a steady rate, numbered from
    one counter so that every message is told apart."""

    members: list[Member]
    sent: list[Sent] = field(default_factory=list)
    _seqs: itertools.count[int] = field(default_factory=itertools.count)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _answers: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._talk(m)) for m in self.members]

    async def _talk(self, member: Member) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while not self._stop.is_set():
            entry = Sent(next(self._seqs), member.user, time.monotonic())
            self.sent.append(entry)
            try:
                answer = await member.send(
                    {"type": "message", "room": ROOM, "data": {"seq": entry.seq}}
                )
            except websockets.ConnectionClosed:
                return
            task = loop.create_task(self._answer(entry, answer))
            self._answers.add(task)
            task.add_done_callback(self._answers.discard)
            due += 1 / RATE
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def _answer(self, entry: Sent, answer: asyncio.Future[dict[str, Any]]) -> None:
        try:
            frame = await asyncio.wait_for(answer, TIMEOUT * 2)
        except (TimeoutError, ConnectionError):
            entry.error = "no answer"
        else:
            if frame["type"] == "ack":
                entry.ack = frame["id"]
            else:
                entry.error = str(frame.get("code"))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self._answers:
            await asyncio.wait(self._answers, timeout=TIMEOUT * 2)

    def acked(self) -> list[Sent]:
        return [s for s in self.sent if s.ack is not None]


async def numsub(failover: FailoverSet, channels: list[str]) -> dict[str, int]:
    """``PUBSUB NUMSUB`` on the replica: after the failover, the primary."""
    from redis import asyncio as aioredis

    client = aioredis.Redis(port=failover.replica.port, socket_timeout=TIMEOUT)
    try:
        pairs = await client.pubsub_numsub(*channels)
        return {(n.decode() if isinstance(n, bytes) else n): int(c) for n, c in pairs}
    finally:
        await client.aclose()


async def replica_lag(failover: FailoverSet) -> int:
    """How many of the room's ids the primary gave that the replica does not have."""
    from redis import asyncio as aioredis

    key = f"chat:room:{{{ROOM}}}:meta"
    seqs = []
    for port in (failover.primary.port, failover.replica.port):
        client = aioredis.Redis(port=port, socket_timeout=TIMEOUT)
        try:
            seqs.append(int(await client.hget(key, "seq") or 0))
        finally:
            await client.aclose()
    return seqs[0] - seqs[1]


async def test_c18_sentinel_failover_under_a_conversation() -> None:
    async with (
        failover_set(
            held=True, down_after_ms=DOWN_AFTER_MS, failover_timeout_ms=FAILOVER_TIMEOUT_MS
        ) as fo,
        AsyncExitStack() as stack,
    ):
        (_node_a, url_a), (_node_b, url_b) = [
            await stack.enter_async_context(sentinel_node(fo)) for _ in range(2)
        ]
        members = {
            name: await Member.connect(url, name)
            for name, url in [("a1", url_a), ("a2", url_a), ("b1", url_b), ("b2", url_b)]
        }
        for member in members.values():
            stack.push_async_callback(member.close)
        joined = {name: await member.join(ROOM) for name, member in members.items()}
        first_epoch = joined["a1"]["epoch"]
        talkers = Talkers([members["a1"], members["b1"]])
        talkers.start()
        await wait_for(lambda: len(talkers.acked()) >= 40, TIMEOUT * 2)

        # b2 drops just before the failover and comes back after it, with since/epoch.
        leaver = members.pop("b2")
        await leaver.close()
        left_at = Tracker.of(leaver, ROOM, joined["b2"])

        # The replica stops receiving; messages are still acked and delivered.
        assert fo.link is not None
        fo.link.hold()
        held_from = len(talkers.acked())
        await wait_for(lambda: len(talkers.acked()) >= held_from + 30, TIMEOUT * 2)
        behind = await replica_lag(fo)

        killed_at = time.monotonic()
        await asyncio.to_thread(fo.kill_primary)
        await fo.link.close()  # what it held is lost with the primary

        async def promoted() -> bool:
            return fo.replica.port in await fo.primary_port()

        channels = ["chat:all", f"chat:room:{ROOM}"]

        async def resubscribed() -> bool:
            with contextlib.suppress(RedisError):  # a replica refuses nothing, but may lag
                return set((await numsub(fo, channels)).values()) == {2}
            return False

        # Measured from the kill, side by side: a Sentinel names the replica as primary;
        # both nodes subscribe to it again (PUBSUB NUMSUB on the replica).
        promotion, resubscribed_after = await asyncio.gather(
            poll(promoted, timeout=TIMEOUT * 6, what="the replica promoted"),
            poll(resubscribed, timeout=TIMEOUT * 6, what="both nodes resubscribed"),
        )

        # A message sent after the kill crosses from each node to the other.
        def across(sender: str, reader: str) -> float | None:
            sent_at = {s.seq: s.sent_at for s in talkers.sent if s.by == sender}
            for received in members[reader].frames:
                frame = received.frame
                seq = frame["data"].get("seq", -1) if frame["type"] == "message" else -1
                if sent_at.get(seq, 0) > killed_at:
                    return received.at - killed_at
            return None

        await wait_for(lambda: None not in (across("a1", "b1"), across("b1", "a2")), TIMEOUT * 2)
        delivered_after = {"a to b": across("a1", "b1"), "b to a": across("b1", "a2")}

        rejoined = await Member.connect(url_a, "b2")
        stack.push_async_callback(rejoined.close)
        rejoin = await rejoined.join(ROOM, since=left_at.last, epoch=left_at.epoch)

        await asyncio.sleep(1.0)  # traffic after the failover
        await talkers.stop()
        last = {by: max(s.seq for s in talkers.acked() if s.by == by) for by in ("a1", "b1")}

        def caught_up() -> bool:
            for member in members.values():
                got = {f["data"].get("seq") for f in member.of_type("message")}
                if not set(last.values()) <= got:
                    return False
            return True

        await wait_for(caught_up, TIMEOUT * 2)

    # Nothing acknowledged was lost silently: each member got it, or a gap covering it.
    acked = [s.seq for s in talkers.acked()]
    trackers = {name: Tracker.of(m, ROOM, joined[name]) for name, m in members.items()}
    known: dict[int, tuple[str, int]] = {}
    for tracker in trackers.values():
        known.update(tracker.seqs)
    lost: dict[str, int] = {}
    for name, tracker in trackers.items():
        missing = tracker.missing(acked)
        assert not tracker.duplicates and not tracker.order_violations, name
        assert not tracker.unsignalled(missing, known), (name, missing)
        assert tracker.consecutive_after_last_gap(), name
        # The failover started a new epoch, and every member was told.
        assert any(gap["epoch"] != first_epoch for gap in tracker.gaps), (name, tracker.gaps)
        lost[name] = len(missing)

    # No id was handed out twice: one message per (epoch, id), one (epoch, id) per message.
    by_id: dict[tuple[str, int], set[int]] = {}
    by_seq: dict[int, set[tuple[str, int]]] = {}
    replayed = [(rejoin["epoch"], m["id"], m["data"]["seq"]) for m in rejoin["history"]]
    pairs = [(e, i, seq) for t in trackers.values() for seq, (e, i) in t.seqs.items()]
    pairs += [(e, i, seq) for seq, (e, i) in left_at.seqs.items()]
    for epoch, id_, seq in pairs + replayed:
        by_id.setdefault((epoch, id_), set()).add(seq)
        by_seq.setdefault(seq, set()).add((epoch, id_))
    assert all(len(seqs) == 1 for seqs in by_id.values()), by_id
    assert all(len(ids) == 1 for ids in by_seq.values()), by_seq

    # The promoted replica was behind what clients saw: ids it would hand out again in the
    # old epoch were already taken, so its messages start a new epoch (checked above).
    assert behind >= 10, behind

    # The client that came back in the new epoch is told it may have missed messages.
    assert rejoin["epoch"] != left_at.epoch
    assert rejoin["recovered"] is False

    record("C18", "replica promoted after the kill", round(promotion, 2), "s")
    record("C18", "every node resubscribed after the kill", round(resubscribed_after, 2), "s")
    for direction, after in delivered_after.items():
        assert after is not None
        record(
            "C18",
            "first message across nodes after the kill",
            round(after, 2),
            "s",
            direction=direction,
        )
    failed = [s for s in talkers.sent if s.error is not None]
    record(
        "C18",
        "publishes refused during the failover",
        len(failed),
        "messages",
        sent=len(talkers.sent),
    )
    record("C18", "acked messages the promoted replica lacked", behind, "messages")
    record("C18", "acked messages missed (each covered by a gap)", max(lost.values()), "messages")
