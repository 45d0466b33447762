"""F34 and E27's Redis part: what a node accepts from Redis, and what it asks Redis for.

wsroom trusts no bytes it reads from its Redis channels: whatever another process publishes
there is parsed as data (never unpickled or evaluated), checked against the bus format and
the room it arrived on, and dropped with a counter and a WARNING when it does not fit. A
well-formed message from anyone who may publish on the prefix's channels is, however,
indistinguishable from a node's: wsroom does not sign its bus messages (see the report's
F34 row), so Redis must be reachable by the nodes only.

In the other direction, room names reach Redis only once validated, as exact channel
names: the nodes SUBSCRIBE, never PSUBSCRIBE, which ``MONITOR`` on a private
``redis-server`` shows.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import os
import pickle
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import user_from_query, websockets_asyncio_server
from tests.redis_support import PrivateRedis, fresh_prefix, private_redis
from tests.reliability.nodes import Member, RedisView
from tests.reliability.suite import record
from wsroom import ConnectionManager, Limits
from wsroom.backplane.redis import RedisBackplane

pytestmark = pytest.mark.timeout(60)

SRC = Path(__file__).resolve().parent.parent.parent / "src" / "wsroom"


@pytest.fixture
def redis() -> Iterator[PrivateRedis]:
    with private_redis() as server:
        yield server


@asynccontextmanager
async def one_node(
    redis_url: str, **limits: Any
) -> AsyncIterator[tuple[ConnectionManager, RedisBackplane, str]]:
    """A node in the test's process (its counters and log are the test's to read)."""
    backplane = RedisBackplane(redis_url, prefix=fresh_prefix(), heartbeat=0.5, node_ttl=3)
    manager = ConnectionManager(
        authenticate=user_from_query,
        backplane=backplane,
        limits=Limits.without_rate_limits(**limits),
    )
    async with websockets_asyncio_server(manager) as url:
        yield manager, backplane, url


def exists(path: str) -> bool:
    return Path(path).exists()


class Marker:
    """Unpickling this creates a directory: proof that something unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


def item(envelope: bytes, exclude: bytes = b"") -> bytes:
    """An item of the bus format: ``<exclude>\\n<length>\\n<envelope>``."""
    return exclude + b"\n%d\n" % len(envelope) + envelope


def envelope(sender: Any, data: Any, ts: Any = 1) -> bytes:
    return json.dumps({"from": sender, "data": data, "ts": ts}).encode()


async def test_f34_forged_bus_messages_are_dropped_and_counted(
    redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    from redis import asyncio as aioredis

    marker = os.path.join(tempfile.mkdtemp(prefix="wsroom-f34-"), "unpickled")
    async with one_node(redis.url) as (_manager, backplane, url):
        prefix = backplane.prefix
        alice = await Member.connect(url, "alice")
        bob = await Member.connect(url, "bob")
        carol = await Member.connect(url, "carol")
        joined = await alice.join("lobby")
        await bob.join("lobby")
        await carol.join("other")
        epoch = joined["epoch"].encode()
        before = await alice.request({"type": "message", "room": "lobby", "data": "before"})
        assert before["type"] == "ack" and before["id"] == 1
        next_id = b"2"  # what a forger would claim: the room's next id

        room = f"{prefix}:room:lobby"
        user = f"{prefix}:user:alice"
        everyone = f"{prefix}:all"
        ten_mib = 10 * 1024 * 1024
        forged: list[tuple[str, str, bytes]] = [
            # Not the bus format.
            ("empty", room, b""),
            ("unknown kind", room, b"Z\nwhat"),
            ("not UTF-8", room, b"\xff\xfe\x00\x80garbage"),
            ("run without an id", room, b"M\n" + epoch + b"\n"),
            ("run with a bad id", room, b"M\n" + epoch + b"\nseven\n" + item(b"{}")),
            ("run with a truncated item", room, b"M\n" + epoch + b"\n" + next_id + b"\n\n99\n{}"),
            ("run with an envelope not an object", room, b"M\n" + epoch + b"\n2\n" + item(b"[]")),
            (
                "run with a sender not a string",
                room,
                b"M\n" + epoch + b"\n2\n" + item(envelope(7, 1)),
            ),
            (
                "run with a ts not an integer",
                room,
                b"M\n" + epoch + b"\n2\n" + item(envelope("x", 1, "now")),
            ),
            ("run in a forged epoch, bad envelope", room, b"M\nforged\n1\n" + item(b"{")),
            ("event not JSON", room, b"E\n\nnot json"),
            ("event without a type", room, b'E\n\n{"data":1}'),
            ("frame to everyone not an object", everyone, b"A\n[1,2]"),
            ("direct with a bad id", user, b"D\nx\n" + item(envelope(None, 1))),
            ("disconnect with a bad code", user, b"X\nsoon\nbye"),
            # Forged frames: a room the channel does not carry, protocol frames.
            ("event for another room", room, b'E\n\n{"type":"notice","room":"other","data":1}'),
            (
                "forged message frame",
                room,
                b'E\n\n{"type":"message","room":"lobby","id":99,"from":"admin","data":1,"ts":1}',
            ),
            (
                "forged gap frame",
                room,
                b'E\n\n{"type":"gap","room":"lobby","epoch":"x","offset":0}',
            ),
            ("forged welcome to everyone", everyone, b'A\n{"type":"welcome","connection":"x"}'),
            ("event to everyone naming a room", everyone, b'A\n{"type":"notice","room":"lobby"}'),
            # Serialized objects: parsed as data only, never unpickled.
            ("pickle", room, pickle.dumps(Marker(marker))),
            (
                "pickle in an item",
                room,
                b"M\n" + epoch + b"\n2\n" + item(pickle.dumps(Marker(marker))),
            ),
            # Larger than any client could be sent (Limits.max_queue_bytes): never delivered.
            (
                "10 MiB run",
                room,
                b"M\n" + epoch + b"\n2\n" + item(envelope("admin", "x" * ten_mib)),
            ),
            (
                "10 MiB event",
                room,
                b"E\n\n"
                + json.dumps({"type": "notice", "room": "lobby", "data": "x" * ten_mib}).encode(),
            ),
        ]
        # Channels of room names the protocol refuses: no node subscribes to them, and
        # SUBSCRIBE is exact, so Redis delivers them to nobody.
        injected = ["*", "lobby*", "[l]obby", "lob?y", "lobby\nx", "lobby x", "", "{lobby}"]

        client = aioredis.from_url(redis.url)
        caplog.set_level(logging.WARNING, logger="wsroom.backplane")
        try:
            received: dict[str, int] = {}
            for name, channel, payload in forged:
                received[name] = await client.publish(channel, payload)
            reached = {
                bad: await client.publish(f"{prefix}:room:{bad}", b'E\n\n{"type":"notice"}')
                for bad in injected
            }
            # A valid event last: once it arrives, everything before it was handled.
            await client.publish(room, b'E\n\n{"type":"notice","room":"lobby","data":"end"}')
            await client.publish(
                f"{prefix}:room:other", b'E\n\n{"type":"notice","room":"other","data":"end"}'
            )
        finally:
            await client.aclose()
        assert all(count == 1 for count in received.values()), received
        assert all(count == 0 for count in reached.values()), reached

        for member in (alice, bob, carol):
            await member.request({"type": "ping"})  # the end events were queued before
            await member.received("notice")
        # Nothing but the end event reached the clients (alice also has her own message).
        assert [f["type"] for f in alice.of_type("message", "notice", "gap", "welcome")] == [
            "message",
            "notice",
        ]
        assert [f.frame for f in bob.frames if f.frame["type"] != "presence"][-1]["data"] == "end"
        assert [f["type"] for f in bob.of_type("message", "notice", "gap")] == ["message", "notice"]
        assert [f["type"] for f in carol.of_type("message", "notice", "gap")] == ["notice"]
        assert alice.close_code is None and bob.close_code is None and carol.close_code is None
        assert not exists(marker), "a bus message was unpickled"

        # Each one was counted and logged once, as a WARNING.
        warnings = [
            r for r in caplog.records if r.name == "wsroom.backplane" and "dropped" in r.message
        ]
        assert backplane.dropped_messages == len(forged), (backplane.dropped_messages, len(forged))
        assert len(warnings) == len(forged)
        assert all(r.levelno == logging.WARNING for r in warnings)
        record("F34", "forged bus messages dropped", backplane.dropped_messages, "messages")
        record("F34", "forged bus messages delivered to clients", 0, "frames")
        record("F34", "injected channel names received by a node", sum(reached.values()), "")

        # The room's sequence was not disturbed: the next message follows without a gap.
        after = await alice.request({"type": "message", "room": "lobby", "data": "after"})
        assert after["id"] == 2
        await bob.received("message", "after")
        assert [f["id"] for f in bob.of_type("message")] == [1, 2]
        assert not bob.of_type("gap")
        for member in (alice, bob, carol):
            await member.close()


async def test_f34_a_well_formed_forgery_is_delivered(redis: PrivateRedis) -> None:
    """The trust boundary: wsroom does not sign the bus, so a well-formed message with a
    forged sender, published by anyone who can PUBLISH on the prefix's channels, reaches
    the room. Redis must be reachable by the nodes only (network isolation, ACLs)."""
    from redis import asyncio as aioredis

    async with one_node(redis.url) as (_manager, backplane, url):
        alice = await Member.connect(url, "alice")
        joined = await alice.join("lobby")
        client = aioredis.from_url(redis.url)
        try:
            payload = b"M\n%b\n1\n%b" % (
                joined["epoch"].encode(),
                item(envelope("admin", "forged")),
            )
            await client.publish(f"{backplane.prefix}:room:lobby", payload)
        finally:
            await client.aclose()
        await alice.received("message", "forged")
        assert alice.of_type("message")[0]["from"] == "admin"
        assert backplane.dropped_messages == 0
        await alice.close()


UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}


def test_f34_no_unsafe_deserialization_in_wsroom() -> None:
    """No module of wsroom imports a deserializer that runs code, or evaluates text."""
    found: list[str] = []
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                names = [node.func.id] if node.func.id in UNSAFE_CALLS else []
            elif isinstance(node, ast.Attribute) and node.attr in ("loads", "load"):
                base = node.value
                names = (
                    [base.id] if isinstance(base, ast.Name) and base.id in UNSAFE_MODULES else []
                )
            else:
                continue
            found += [
                f"{path.relative_to(SRC)}:{node.lineno}: {name}"
                for name in names
                if name in UNSAFE_MODULES | UNSAFE_CALLS
            ]
    assert not found, found
    record("F34", "unsafe deserializer imports or eval/exec calls in src/wsroom", 0, "")


# E27, the Redis part: room names reach Redis validated, as exact channel names.


class Monitor:
    """A raw ``MONITOR`` connection: every command Redis runs, with its arguments."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.commands: list[list[str]] = []
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def start(self) -> None:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writer.write(b"MONITOR\r\n")
        assert (await reader.readline()).startswith(b"+OK")
        self._task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            # +<time> [<db> <addr>] "ARG" "ARG"... (Lua calls show as [<db> lua])
            _, _, args = line.decode("latin-1").rstrip("\r\n").partition("] ")
            self.commands.append(parse_monitor_args(args))

    async def stop(self) -> None:
        assert self._writer is not None and self._task is not None
        self._writer.close()
        await asyncio.gather(self._task, return_exceptions=True)


def parse_monitor_args(text: str) -> list[str]:
    """Redis's quoted arguments (``sdscatrepr``): ``"a" "b\\n" "\\x00"``."""
    escapes = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", '"': '"', "\\": "\\"}
    args: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != '"':
            i += 1
            continue
        i += 1
        arg = []
        while text[i] != '"':
            if text[i] == "\\":
                if text[i + 1] == "x":
                    arg.append(chr(int(text[i + 2 : i + 4], 16)))
                    i += 4
                    continue
                arg.append(escapes.get(text[i + 1], text[i + 1]))
                i += 2
                continue
            arg.append(text[i])
            i += 1
        args.append("".join(arg))
        i += 1
    return args


# Names the protocol refuses (1 to 128 characters of [A-Za-z0-9_-.:@/]), and others.
BAD_ROOMS: list[Any] = [
    "*",
    "room?",
    "[ab]",
    "$priv",
    "#user",
    "a b",
    "a\x00b",
    "lobby\n",
    "\uff41",  # fullwidth a
    "\u0130",  # capital I with a dot: changes length when case-folded
    "{x}",
    "x}:meta",
    "x" * 129,
    "x" * 10_000,
    "",
    123,
    None,
    ["lobby"],
]
# Valid, though they look like paths or namespaces: exact names in Redis.
GOOD_ROOMS = ["lobby", "a:b", "a", "../x", "user:alice", "x.y@z/w"]
GLOB_USERS = ["u*", "u?", "u[x]"]


async def test_e27_room_names_reach_redis_validated_and_exact(redis: PrivateRedis) -> None:
    monitor = Monitor(redis.port)
    await monitor.start()
    try:
        async with one_node(redis.url) as (_manager, backplane, url):
            prefix = backplane.prefix
            alice = await Member.connect(url, "alice")
            matrix: dict[str, str] = {}
            for bad in BAD_ROOMS:
                answer = await alice.request({"type": "join", "room": bad})
                matrix[repr(bad)[:24]] = answer.get("code", answer["type"])
            assert set(matrix.values()) == {"invalid_message"}, matrix
            for good in GOOD_ROOMS:
                await alice.join(good)
            # Users are any string: their channels are exact names too.
            globs = {user: await Member.connect(url, user) for user in GLOB_USERS}
            ux = await Member.connect(url, "ux")
            for user in GLOB_USERS:
                ack = await alice.request({"type": "direct", "to": user, "data": user})
                assert ack["type"] == "ack", ack
            # A room's traffic stays in its room: "a" does not get "a:b"'s.
            bob = await Member.connect(url, "bob")
            await bob.join("a")
            await alice.request({"type": "message", "room": "a:b", "data": "for a:b"})
            await alice.request({"type": "message", "room": "a", "data": "for a"})
            await bob.received("message", "for a")
            for user, member in globs.items():
                await member.received("direct")
                assert [f["data"] for f in member.of_type("direct")] == [user]
            await ux.request({"type": "ping"})
            assert not ux.of_type("direct")
            assert [f["data"] for f in bob.of_type("message")] == ["for a"]

            view = RedisView(redis.url)
            try:
                view_channels = await view.channels(f"{prefix}:*")
            finally:
                await view.aclose()
            for member in (alice, bob, ux, *globs.values()):
                await member.close()
    finally:
        await monitor.stop()

    users = ["alice", "bob", "ux", *GLOB_USERS]
    expected = {f"{prefix}:all"} | {f"{prefix}:room:{r}" for r in GOOD_ROOMS}
    expected |= {f"{prefix}:user:{u}" for u in users}
    assert view_channels == expected
    commands = [c for c in monitor.commands if c]
    names = {c[0].upper() for c in commands}
    assert not names & {"PSUBSCRIBE", "PUNSUBSCRIBE", "KEYS"}, names
    subscribed = {arg for c in commands if c[0].upper() == "SUBSCRIBE" for arg in c[1:]}
    assert subscribed <= expected, subscribed - expected
    assert expected <= subscribed
    # Every room name in a key or channel is one the protocol accepted.
    rooms_in_redis: set[str] = set()
    for command in commands:
        for arg in command[1:]:
            if arg.startswith(f"{prefix}:room:{{") and arg.endswith(
                ("}:meta", "}:history", "}:members")
            ):
                rooms_in_redis.add(arg[len(f"{prefix}:room:{{") : arg.rindex("}")])
            elif arg.startswith(f"{prefix}:room:") and command[0].upper() in (
                "SUBSCRIBE",
                "UNSUBSCRIBE",
                "PUBLISH",
            ):
                rooms_in_redis.add(arg.removeprefix(f"{prefix}:room:"))
    assert rooms_in_redis <= set(GOOD_ROOMS), rooms_in_redis - set(GOOD_ROOMS)
    record("E27", "refused room names", len(BAD_ROOMS), "names", code="invalid_message")
    record("E27", "PSUBSCRIBE commands seen by MONITOR", 0, "")
    record("E27", "commands seen by MONITOR", len(commands), "")
