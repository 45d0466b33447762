"""RedisBackplane(client=...): a redis.asyncio client the application built and keeps.

Against real servers: the shared Redis, private ones with an ACL user or TLS, killed and
restarted by PID. The Sentinel form and a failover are in
tests/reliability/test_redis_failover.py.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from redis import asyncio as aioredis

from tests.helpers import ROOT, TIMEOUT, Client, wait_for, websockets_asyncio_server
from tests.redis_support import delete_prefix, free_port, fresh_prefix, private_redis, twin
from wsroom import BackplaneError, ConnectionManager, Handshake
from wsroom.backplane.redis import RedisBackplane

pytestmark = pytest.mark.timeout(60)


def user_from_query(handshake: Handshake) -> str | None:
    return handshake.query.get("user") or None


def snippet(name: str) -> ModuleType:
    """``docs_src/operating/<name>.py``, the page's snippet, as a module."""
    path = ROOT / "docs_src" / "operating" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docs_src_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def next_of(client: Client, *types: str) -> dict[str, Any]:
    while True:
        frame = await client.recv()
        if frame["type"] in types:
            return frame


async def until(attempt: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT * 2) -> None:
    """Try an operation until it succeeds: refused while the node reconnects to Redis."""
    async with asyncio.timeout(timeout):
        while not await attempt():  # noqa: ASYNC110 - a retry, not a wait for a state
            await asyncio.sleep(0.1)


def in_use(client: aioredis.Redis) -> int:
    """Connections of the client's pool taken out and not returned."""
    return len(client.connection_pool._in_use_connections)


@asynccontextmanager
async def two_nodes(
    first: RedisBackplane, second: RedisBackplane
) -> AsyncIterator[tuple[ConnectionManager, str, ConnectionManager, str]]:
    node_a = ConnectionManager(authenticate=user_from_query, backplane=first)
    node_b = twin(node_a, second)
    async with (
        websockets_asyncio_server(node_a) as url_a,
        websockets_asyncio_server(node_b) as url_b,
    ):
        yield node_a, url_a, node_b, url_b


async def converse(url_a: str, url_b: str, room: str = "lobby") -> None:
    """Alice on one node and Bob on the other talk; a newcomer gets the history."""
    alice = await Client.connect(url_a, "/ws?user=alice")
    bob = await Client.connect(url_b, "/ws?user=bob")
    try:
        await alice.join(room)
        assert (await bob.join(room))["members"] == ["alice", "bob"]
        ack = await bob.request({"type": "message", "room": room, "data": "hi"})
        assert ack["type"] == "ack", ack
        frame = await next_of(alice, "message")
        assert (frame["id"], frame["from"], frame["data"]) == (ack["id"], "bob", "hi")
        carol = await Client.connect(url_a, "/ws?user=carol")
        history = (await carol.join(room))["history"]
        assert [m["data"] for m in history][-1:] == ["hi"]
        await carol.close()
    finally:
        await alice.close()
        await bob.close()


async def test_one_client_of_the_application_serves_two_nodes(shared_url: str) -> None:
    client = aioredis.Redis.from_url(shared_url)
    prefix = fresh_prefix()
    try:
        first = RedisBackplane(client=client, prefix=prefix, heartbeat=0.5, node_ttl=3)
        second = RedisBackplane(client=client, prefix=prefix, heartbeat=0.5, node_ttl=3)
        assert (first.client, first.url) == (client, None)
        async with two_nodes(first, second) as (_a, url_a, _b, url_b):
            await converse(url_a, url_b)
            assert first.available and second.available
        # Stopped: the subscriptions went back to the pool, and the client still works.
        assert in_use(client) == 0
        assert await client.ping()
    finally:
        await delete_prefix(shared_url, prefix)
        await client.aclose()


async def test_the_client_is_checked_before_anything_starts() -> None:
    with pytest.raises(TypeError, match=r"redis\.asyncio"):
        RedisBackplane(client=redis.Redis())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"redis\.asyncio\.Redis"):
        RedisBackplane(client=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="a URL or a client, not both"):
        RedisBackplane("redis://127.0.0.1:6379/0", client=aioredis.Redis())
    with pytest.raises(ValueError, match="decode_responses") as refused:
        RedisBackplane(client=aioredis.Redis(decode_responses=True))
    assert "without decode_responses" in str(refused.value)
    sentinel = aioredis.Sentinel([("127.0.0.1", free_port())])
    with pytest.raises(ValueError, match="master_for"):
        RedisBackplane(client=sentinel.slave_for("mymaster"))
    RedisBackplane(client=sentinel.master_for("mymaster"))
    with pytest.raises(ValueError, match="at least three connections"):
        RedisBackplane(client=aioredis.Redis(max_connections=2))
    RedisBackplane(client=aioredis.Redis(max_connections=3))
    blocking = aioredis.BlockingConnectionPool(max_connections=2)
    RedisBackplane(client=aioredis.Redis(connection_pool=blocking))
    with pytest.raises(ValueError, match="max_connections"):
        RedisBackplane(client=aioredis.Redis(), max_connections=0)


async def test_commands_in_flight_are_bounded_by_max_connections(shared_url: str) -> None:
    pool = aioredis.BlockingConnectionPool.from_url(shared_url, max_connections=3)
    client = aioredis.Redis.from_pool(pool)
    prefix = fresh_prefix()
    backplane = RedisBackplane(client=client, prefix=prefix, max_connections=2)
    manager = ConnectionManager(backplane=backplane)
    try:
        async with websockets_asyncio_server(manager) as url:
            reader = await Client.connect(url)
            await reader.join("feed")
            # Far more concurrent operations than connections: they wait their turn.
            ids = await asyncio.gather(*(manager.broadcast("feed", n) for n in range(50)))
            assert sorted(ids) == list(range(1, 51))
            members = await asyncio.gather(*(manager.members("feed") for _ in range(20)))
            assert members == [[]] * 20
            assert [(await next_of(reader, "message"))["id"] for _ in range(50)] == sorted(ids)
            await reader.close()
    finally:
        await delete_prefix(shared_url, prefix)
        await client.aclose()


async def test_a_client_of_a_restarted_redis_reconnects_without_closing(
    tmp_path: Path,
) -> None:
    with private_redis() as server:
        client = aioredis.Redis(port=server.port, socket_timeout=TIMEOUT)
        try:
            options: dict[str, Any] = {"heartbeat": 0.3, "node_ttl": 2, "timeout": 1}
            first = RedisBackplane(client=client, **options)
            second = RedisBackplane(client=client, **options)
            async with two_nodes(first, second) as (_a, url_a, _b, url_b):
                alice = await Client.connect(url_a, "/ws?user=alice")
                bob = await Client.connect(url_b, "/ws?user=bob")
                joined = await alice.join("lobby")
                await bob.join("lobby")
                await bob.request({"type": "message", "room": "lobby", "data": 1})
                assert (await next_of(alice, "message"))["data"] == 1

                await asyncio.to_thread(server.kill)
                await wait_for(lambda: not first.available and not second.available, TIMEOUT)
                await asyncio.to_thread(server.start)  # empty, on the same port

                async def talks() -> bool:
                    answer = await bob.request({"type": "message", "room": "lobby", "data": 2})
                    return bool(answer["type"] == "ack")

                await until(talks)
                # Alice is told her ids restarted, then gets the new message.
                gap = await next_of(alice, "gap")
                assert gap["epoch"] != joined["epoch"]
                assert (await next_of(alice, "message"))["data"] == 2
                await alice.close()
                await bob.close()
            assert in_use(client) == 0
            assert await client.ping()
        finally:
            await client.aclose()


async def test_an_acl_user_with_a_credential_provider(tmp_path: Path) -> None:
    with private_redis() as server:
        admin = aioredis.Redis(port=server.port, socket_timeout=TIMEOUT)
        secret = tmp_path / "redis-password"
        secret.write_text("first-secret\n")
        # What docs/deployment.md recommends: a user limited to the prefix.
        await admin.acl_setuser(
            "wsroom",
            enabled=True,
            reset=True,
            passwords=["+first-secret"],
            keys=["chat:*"],
            channels=["chat:*"],
            commands=["+@all", "-@dangerous", "+info"],
        )
        make = snippet("credential_provider").acl_backplane
        try:
            backplane = make("127.0.0.1", server.port, "wsroom", str(secret))
            manager = ConnectionManager(backplane=backplane)
            async with websockets_asyncio_server(manager) as url:
                reader = await Client.connect(url)
                await reader.join("lobby")
                assert await manager.broadcast("lobby", "one") == 1
                assert (await next_of(reader, "message"))["data"] == "one"

                # The secret rotates; the old connections are cut: the new ones use it.
                secret.write_text("second-secret\n")
                await admin.acl_setuser(
                    "wsroom", enabled=True, passwords=["-first-secret", "+second-secret"]
                )
                assert await admin.client_kill_filter(user="wsroom") >= 2

                async def published() -> bool:
                    try:
                        await manager.broadcast("lobby", "two")
                    except BackplaneError:
                        return False
                    return True

                await until(published)
                frame = await next_of(reader, "message")
                assert frame["data"] == "two"
                await reader.close()
            assert backplane.client is not None
            await backplane.client.aclose()

            # A wrong secret: start fails, and the error never shows it.
            secret.write_text("wrong-secret\n")
            wrong = make("127.0.0.1", server.port, "wsroom", str(secret))
            with pytest.raises(BackplaneError) as failed:
                await ConnectionManager(backplane=wrong).start()
            await wrong.client.aclose()
            assert "wrong-secret" not in str(failed.value)
            assert f"redis://127.0.0.1:{server.port}/0" in str(failed.value)
        finally:
            await admin.aclose()


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (scripts/test.sh installs it)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT * 2,
    )
    return cert, key


async def test_tls_with_a_client(tmp_path: Path) -> None:
    cert, key = certificate(tmp_path)
    tls_port = free_port()
    tls = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "optional"]
    with private_redis(tls):
        make = snippet("tls_client").tls_backplane
        backplane = make("127.0.0.1", tls_port, str(cert), None, None)
        assert backplane.client is not None
        manager = ConnectionManager(backplane=backplane)
        try:
            async with websockets_asyncio_server(manager) as url:
                reader = await Client.connect(url)
                await reader.join("lobby")
                assert await manager.broadcast("lobby", "over TLS") == 1
                assert (await next_of(reader, "message"))["data"] == "over TLS"
                await reader.close()
        finally:
            await backplane.client.aclose()
        # A server whose certificate the client does not trust is refused.
        (tmp_path / "other").mkdir()
        other_cert, _ = certificate(tmp_path / "other")
        untrusted = make("127.0.0.1", tls_port, str(other_cert), None, None)
        with pytest.raises(BackplaneError, match=rf"rediss://127\.0\.0\.1:{tls_port}/0"):
            await ConnectionManager(backplane=untrusted).start()
        await untrusted.client.aclose()


async def test_a_full_pool_the_application_shares_is_not_a_redis_down(shared_url: str) -> None:
    client = aioredis.Redis.from_url(shared_url, max_connections=3)
    prefix = fresh_prefix()
    # A heartbeat that stays quiet during the test: only the subscription holds a connection.
    backplane = RedisBackplane(client=client, prefix=prefix, heartbeat=30, node_ttl=60)
    manager = ConnectionManager(backplane=backplane)
    try:
        async with websockets_asyncio_server(manager):
            assert await manager.broadcast("feed", 1) == 1
            await wait_for(lambda: in_use(client) == 1)
            # The application's own subscriptions take every connection the backplane's left.
            held = [client.pubsub() for _ in range(2)]
            for n, pubsub in enumerate(held):
                await pubsub.subscribe(f"{prefix}:app:{n}")
            with pytest.raises(BackplaneError):
                await manager.broadcast("feed", 2)
            assert backplane.available
            for pubsub in held:
                await pubsub.aclose()
            assert await manager.broadcast("feed", 3) >= 2
    finally:
        await delete_prefix(shared_url, prefix)
        await client.aclose()
