"""The examples run as their docstrings say: each is started with its one command, spoken
to over a real socket, and stopped the way its docstring says it stops."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email.message import Message
from typing import Any

import pytest
import websockets

from tests.helpers import ROOT, TIMEOUT, Client, check_frame, connect_as, example_command
from tests.redis_support import delete_prefix, fresh_prefix

PYTHON = sys.executable


def _http(
    url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Message, bytes]:
    """A GET, or a POST of ``body`` as JSON: the status, headers and body of the answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


async def http(
    url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Message, bytes]:
    return await asyncio.to_thread(_http, url, body, headers)


async def refused_status(url: str, path: str, **kwargs: Any) -> int:
    """The HTTP status refusing the upgrade to ``url + path``."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        await Client.connect(url, path, **kwargs)
    return refused.value.response.status_code


async def closed_codes(*clients: Client) -> list[int | None]:
    return list(await asyncio.gather(*(client.wait_closed() for client in clients)))


# 1. The chat on each transport: one room class and one authenticate, three servers.


@pytest.mark.parametrize(
    ("module", "stop_with", "status"),
    [
        # asyncio.run() raises KeyboardInterrupt once the graceful shutdown is done.
        ("chat", signal.SIGINT, -signal.SIGINT),
        ("chat_threaded", signal.SIGTERM, 0),
        ("chat_starlette", signal.SIGTERM, 0),
        ("aiohttp_chat", signal.SIGINT, 0),
        ("aiohttp_chat", signal.SIGTERM, 0),
    ],
)
async def test_chat_example_on_each_transport(module: str, stop_with: int, status: int) -> None:
    async with example_command(PYTHON, "-m", f"examples.{module}", "0") as example:
        url = f"ws://127.0.0.1:{example.port}"
        code, headers, script = await http(f"http://127.0.0.1:{example.port}/wsroom.js")
        assert code == 200
        assert headers["Content-Type"].startswith("text/javascript")
        assert b"export function connect(" in script

        assert await refused_status(url, "/ws") == 401  # no ?user=
        alice = await Client.connect(url, "/ws?user=alice")
        bob = await Client.connect(url, "/ws?user=bob")
        assert (await alice.join("staff:ops"))["members"] == ["alice"]
        assert (await bob.request({"type": "join", "room": "staff:ops"}))["code"] == "forbidden"
        await alice.join("lobby")
        assert (await bob.join("lobby"))["members"] == ["alice", "bob"]
        await bob.send({"type": "typing", "room": "lobby"})
        typing = await alice.recv_type("typing")
        assert typing == {"type": "typing", "room": "lobby", "data": {"user": "bob"}}
        await bob.send({"type": "message", "room": "lobby", "data": "hi"})
        message = await alice.recv_type("message")
        assert (message["from"], message["data"]) == ("bob", "hi")

        assert await example.stop(stop_with) == status
        assert await closed_codes(alice, bob) == [1001, 1001]  # a graceful shutdown


# 1b. The same chat beside a framework's pages, through wsroom's plain ASGI application.


@pytest.mark.parametrize(
    ("arguments", "page"),
    [
        # examples/django_chat/asgi.py, then channels_asgi.py.
        (("-m", "examples.django_chat", "0"), b"A Django page"),
        (("-m", "examples.django_chat", "--channels", "0"), b"A Django page"),
        (("-m", "examples.quart_chat", "0"), b"A Quart page"),
        (("-m", "examples.litestar_chat", "0"), b"A Litestar page"),
    ],
    ids=["django", "channels", "quart", "litestar"],
)
@pytest.mark.timeout(60)
async def test_chat_beside_a_framework(arguments: tuple[str, ...], page: bytes) -> None:
    async with example_command(PYTHON, *arguments) as example:
        base = f"127.0.0.1:{example.port}"
        url = f"ws://{base}"
        code, _, body = await http(f"http://{base}/")
        assert code == 200 and page in body, body
        code, headers, script = await http(f"http://{base}/wsroom.js")
        assert code == 200 and b"export function connect(" in script
        assert headers["Content-Type"].startswith("text/javascript")

        assert await refused_status(url, "/ws") == 401  # no ?user=
        alice = await Client.connect(url, "/ws?user=alice")
        bob = await Client.connect(url, "/ws?user=bob")
        await alice.join("lobby")
        assert (await bob.join("lobby"))["members"] == ["alice", "bob"]
        await bob.send({"type": "message", "room": "lobby", "data": "hi"})
        message = await alice.recv_type("message")
        assert (message["from"], message["data"]) == ("bob", "hi")
        # The framework's own view reaches the rooms.
        code, _, body = await http(f"http://{base}/rooms/lobby")
        assert code == 200, body
        assert json.loads(body) == {"room": "lobby", "members": ["alice", "bob"]}

        assert await example.stop(signal.SIGTERM) == 0
        assert await closed_codes(alice, bob) == [1001, 1001]  # a graceful shutdown


# 2. FastAPI: a token from POST /login, checked by Depends() before the handshake.


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _token(secret: bytes, user: str, expires: float) -> str:
    """A token as examples/fastapi_chat.py makes one, with any secret and expiry."""
    payload = _b64(f"{int(expires)}:{user}".encode())
    return f"{payload}.{_b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())}"


async def test_fastapi_example_logs_in_and_refuses_bad_tokens_with_401() -> None:
    secret = "test-secret"
    command = (PYTHON, "-m", "examples.fastapi_chat", "0")
    async with example_command(*command, env={"CHAT_SECRET": secret}) as example:
        base = f"127.0.0.1:{example.port}"
        url = f"ws://{base}"
        code, _, body = await http(f"http://{base}/login", {"name": "alice"})
        assert code == 200, body
        alice_token = json.loads(body)["token"]
        code, _, body = await http(f"http://{base}/login", {"name": "bob"})
        bob_token = json.loads(body)["token"]
        assert (await http(f"http://{base}/login", {"name": " bob"}))[0] == 422

        # Refused at the handshake, with 401 and a Bearer challenge: no token, a forged
        # one, a valid one for another name, an expired one.
        forged = _token(b"guessed-secret", "alice", time.time() + 60)
        payload, _, signature = alice_token.partition(".")
        claims = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        tampered = f"{_b64(claims.replace(b'alice', b'admin'))}.{signature}"
        expired = _token(secret.encode(), "alice", time.time() - 1)
        for path in ("/ws", f"/ws?token={forged}", f"/ws?token={tampered}"):
            assert await refused_status(url, path) == 401, path
        assert await refused_status(url, f"/ws?token={expired}") == 401
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(url, "/ws", additional_headers={"Authorization": "Bearer x.y"})
        assert refused.value.response.status_code == 401
        assert refused.value.response.headers["WWW-Authenticate"] == "Bearer"
        # wsroom's origin policy still applies to a valid token.
        evil = await refused_status(url, f"/ws?token={bob_token}", origin="https://evil.example")
        assert evil == 403

        # The token in the query string (browsers) or in an Authorization header.
        alice = await Client.connect(
            url, f"/ws?token={alice_token}", origin="https://chat.example.com"
        )
        bob = await Client.connect(
            url, "/ws", additional_headers={"Authorization": f"Bearer {bob_token}"}
        )
        assert (alice.welcome["user"], bob.welcome["user"]) == ("alice", "bob")
        # The forged tokens above differ from a good one by their secret only.
        carol_token = _token(secret.encode(), "carol", time.time() + 60)
        carol = await Client.connect(url, f"/ws?token={carol_token}")
        assert carol.welcome["user"] == "carol"
        await carol.close()
        await alice.join("lobby")
        assert (await bob.join("lobby"))["members"] == ["alice", "bob"]
        await bob.send({"type": "message", "room": "lobby", "data": "hi"})
        message = await alice.recv_type("message")
        assert (message["from"], message["data"]) == ("bob", "hi")

        code, _, body = await http(
            f"http://{base}/announce",
            {"room": "lobby", "text": "deploy done"},
            {"Authorization": f"Bearer {alice_token}"},
        )
        assert code == 200, body
        announced = await alice.recv_type("message")
        assert (announced["id"], announced["from"], announced["data"]) == (
            json.loads(body)["id"],
            None,
            {"text": "deploy done", "by": "alice"},
        )
        assert (await http(f"http://{base}/announce", {"room": "lobby", "text": "x"}))[0] == 401

        assert await example.stop(signal.SIGTERM) == 0
        assert await closed_codes(alice, bob) == [1001, 1001]
        assert "development secret" not in example.log


@pytest.mark.parametrize(("secret", "warned"), [("", True), ("s3cr3t", False)])
def test_fastapi_example_warns_without_a_secret(secret: str, warned: bool) -> None:
    output = subprocess.run(
        [PYTHON, "-c", "import examples.fastapi_chat"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=True,
        cwd=ROOT,
        env={**os.environ, "CHAT_SECRET": secret},
    )
    assert ("CHAT_SECRET is not set" in output.stderr) is warned, output.stderr


# 3. A ticker published from a plain thread on the threaded server.


async def test_ticker_example_streams_ticks_and_recovers_after_a_reconnect() -> None:
    command = (PYTHON, "-m", "examples.ticker", "0")
    async with example_command(*command, env={"TICK_MS": "20"}) as example:
        url = f"ws://127.0.0.1:{example.port}"
        reader = await Client.connect(url, "/")
        joined = await reader.join("ticker")
        ids = [message["id"] for message in joined["history"]]
        while len(ids) < len(joined["history"]) + 5:  # live ticks after the history
            tick = await reader.recv_type("message")
            assert tick["from"] is None  # from the server
            assert set(tick["data"]) == {"symbol", "price"}
            ids.append(tick["id"])
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # increasing, none missed
        refused = await reader.request({"type": "message", "room": "ticker", "data": "buy"})
        assert refused["code"] == "forbidden"  # read-only
        assert (await reader.request({"type": "join", "room": "chat"}))["code"] == "forbidden"

        # The reader leaves; another one watches the ticks it misses meanwhile.
        last, epoch = ids[-1], joined["epoch"]
        await reader.close()
        watcher = await Client.connect(url, "/")
        await watcher.join("ticker")
        while (await watcher.recv_type("message"))["id"] < last + 5:
            pass
        back = await Client.connect(url, "/")
        rejoined = await back.join("ticker", since=last, epoch=epoch)
        assert rejoined["recovered"] is True
        missed = [message["id"] for message in rejoined["history"]]
        assert missed == list(range(last + 1, rejoined["offset"] + 1))
        assert len(missed) >= 5
        assert (await back.recv_type("message"))["id"] == rejoined["offset"] + 1

        assert await example.stop(signal.SIGTERM) == 0
        assert await closed_codes(back, watcher) == [1001, 1001]


# 4. Two uvicorn workers sharing rooms through Redis.


async def test_redis_workers_example_shares_rooms_between_two_workers(shared_url: str) -> None:
    prefix = fresh_prefix()
    command = (
        *(PYTHON, "-m", "uvicorn", "examples.redis_workers:app", "--workers", "2"),
        *("--host", "127.0.0.1", "--port", "0", "--ws-max-size", "65536"),
    )
    env = {"WSROOM_REDIS_URL": shared_url, "WSROOM_REDIS_PREFIX": prefix}
    try:
        async with example_command(*command, ready="Uvicorn running on", env=env) as example:
            await example.wait_output("Application startup complete.", count=2)
            url = f"ws://127.0.0.1:{example.port}"
            # Connect until each worker holds a client; the kernel picks the worker.
            by_worker: dict[int, Client] = {}
            others: list[Client] = []
            for number in range(60):
                client = await Client.connect(url, f"/ws?user=user-{number}")
                await client.send({"type": "whoami"})
                worker = (await client.recv_type("worker"))["data"]["pid"]
                if worker in by_worker:
                    others.append(client)
                else:
                    by_worker[worker] = client
                if len(by_worker) == 2:
                    break
            assert len(by_worker) == 2, "every connection went to one worker"
            for client in others:
                await client.close()
            a, b = by_worker.values()
            a_user, b_user = a.welcome["user"], b.welcome["user"]

            # Members and presence across workers, then messages both ways.
            await a.join("lobby")
            assert sorted((await b.join("lobby"))["members"]) == sorted([a_user, b_user])
            presence = await a.recv_type("presence")
            assert (presence["event"], presence["user"]) == ("join", b_user)
            await a.send({"type": "message", "room": "lobby", "data": "from worker A"})
            message = await b.recv_type("message")
            assert (message["from"], message["data"]) == (a_user, "from worker A")
            await b.send({"type": "message", "room": "lobby", "data": "from worker B"})
            message = await a.recv_type("message")
            assert message["from"] == a_user  # its own message first
            message = await a.recv_type("message")
            assert (message["from"], message["data"]) == (b_user, "from worker B")
            await b.close()
            presence = await a.recv_type("presence")
            assert (presence["event"], presence["user"]) == ("leave", b_user)

            # As the docstring says: each worker drains its clients with 1001 before
            # uvicorn closes anything, and leaves Redis.
            assert await example.stop(signal.SIGTERM) == 0
            assert await closed_codes(a) == [1001]
            assert example.log.count("Application shutdown complete.") == 2
        from redis import asyncio as aioredis

        redis = aioredis.from_url(shared_url)
        try:
            assert await redis.zcard(f"{prefix}:nodes") == 0
        finally:
            await redis.aclose()
    finally:
        await delete_prefix(shared_url, prefix)


# 5. The game lobby: invited tables of four, custom frames answering with data.


async def answer(client: Client, frame: dict[str, Any]) -> Any:
    """The ``data`` of the ``ack`` answering ``frame``."""
    ack = check_frame(await client.request(frame), "ack")
    assert "data" in ack, ack
    return ack["data"]


async def refusal(client: Client, frame: dict[str, Any]) -> str:
    """The code of the ``error`` answering ``frame``."""
    error = check_frame(await client.request(frame), "error")
    return str(error["code"])


async def test_game_lobby_example_seats_four_invited_players_and_rolls_dice() -> None:
    async with example_command(PYTHON, "-m", "examples.game_lobby", "0") as example:
        url = f"ws://127.0.0.1:{example.port}"
        names = ("alice", "bob", "carol", "dave", "erin")
        alice, bob, carol, dave, erin = [await connect_as(url, name) for name in names]
        assert await answer(bob, {"type": "who"}) == sorted(names)

        opened = await answer(alice, {"type": "open_table"})
        table, invite = opened["room"], opened["invite"]
        assert table.startswith("table:") and isinstance(invite, str)

        # can_join: no invitation, a wrong one, another table's, or no table at all.
        other = (await answer(erin, {"type": "open_table"}))["room"]
        for frame in (
            {"type": "join", "room": table},
            {"type": "join", "room": table, "data": {"invite": "guess"}},
            {"type": "join", "room": other, "data": {"invite": invite}},
            {"type": "join", "room": "lobby", "data": {"invite": invite}},
        ):
            assert await refusal(erin, frame) == "forbidden"

        # Four invited players sit down; a fifth, invited too, finds the table full.
        joined = await alice.join(table, data={"invite": invite})
        assert joined["members"] == ["alice"]
        for client in (bob, carol, dave):
            await client.join(table, data={"invite": invite})
        full = {"type": "join", "room": table, "data": {"invite": invite}}
        assert await refusal(erin, full) == "room_full"

        # sit answers with the seat's number.
        assert await answer(alice, {"type": "sit", "room": table}) == 1
        assert await answer(bob, {"type": "sit", "room": table, "data": 3}) == 3
        assert await answer(carol, {"type": "sit", "room": table}) == 2
        assert await refusal(dave, {"type": "sit", "room": table, "data": 3}) == "forbidden"
        assert await answer(dave, {"type": "sit", "room": table}) == 4
        assert await answer(alice, {"type": "sit", "room": table}) == 1  # already seated

        # roll answers with the dice; the others see them in an event.
        dice = await answer(bob, {"type": "roll", "room": table, "data": {"dice": 3}})
        assert len(dice) == 3 and all(type(d) is int and 1 <= d <= 6 for d in dice)
        rolled = await carol.recv_type("rolled")
        assert rolled == {"type": "rolled", "room": table, "data": {"user": "bob", "dice": dice}}
        pair = await answer(dave, {"type": "roll", "room": table})
        assert len(pair) == 2
        too_many = {"type": "roll", "room": table, "data": {"dice": 9}}
        assert await refusal(dave, too_many) == "invalid_message"

        # status answers with the table's state.
        assert await answer(carol, {"type": "status", "room": table}) == {
            "table": table,
            "players": ["alice", "bob", "carol", "dave"],
            "seats": ["alice", "carol", "bob", "dave"],
            "free": 0,
            "rolls": {"bob": dice, "dave": pair},
        }

        # Dave leaves: his seat is free, erin takes it, and must sit before rolling.
        await dave.close()
        stood = await alice.recv_type("stood")
        assert stood["data"] == {"user": "dave"}
        assert await answer(alice, {"type": "who"}) == ["alice", "bob", "carol", "erin"]
        await erin.join(table, data={"invite": invite})
        assert await refusal(erin, {"type": "roll", "room": table}) == "forbidden"
        assert await answer(erin, {"type": "sit", "room": table}) == 4
        status = await answer(erin, {"type": "status", "room": table})
        assert (status["seats"], status["free"]) == (["alice", "carol", "bob", "erin"], 0)
        assert "dave" not in status["rolls"]

        # Ctrl+C: a graceful shutdown (1001 for every player), and the process ends.
        assert await example.stop(signal.SIGINT) == 0
        assert await closed_codes(alice, bob, carol, erin) == [1001] * 4
        assert "dave left (close code 1000)" in example.log
        assert "erin left (close code 1001)" in example.log


def test_starlette_adapter_without_starlette_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None  # as if Starlette were not installed\n"
        "try:\n"
        "    import wsroom.adapters.starlette\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    output = subprocess.run(
        [PYTHON, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert "pip install 'wsroom[starlette]'" in output.stdout
