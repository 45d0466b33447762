"""The examples run as their docstrings say: each is started with its one command, spoken
to over a real socket, and stopped the way its docstring says it stops."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import Message
from typing import Any

import pytest
import websockets

from tests.helpers import TIMEOUT, Client, example_command, wait_for
from wsroom import ConnectionManager
from wsroom.adapters import uvicorn as wsroom_uvicorn

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


@asynccontextmanager
async def run_app(app: Any, manager: ConnectionManager) -> AsyncIterator[int]:
    """``app`` under uvicorn as the example runs it (``wsroom.adapters.uvicorn``)."""
    config = wsroom_uvicorn.config(
        app, manager, host="127.0.0.1", port=0, log_level="warning", lifespan="off"
    )
    server = wsroom_uvicorn.Server(config, manager)
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, TIMEOUT)


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        result: dict[str, Any] = json.load(response)
        return result


async def test_fastapi_example_authenticates_with_depends() -> None:
    from examples import fastapi_chat

    async with run_app(fastapi_chat.app, fastapi_chat.manager) as port:
        url = f"ws://127.0.0.1:{port}"
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(url, "/ws?token=wrong")
        assert refused.value.response.status_code == 403
        with pytest.raises(websockets.InvalidStatus) as foreign:
            await Client.connect(url, "/ws?token=s3cr3t-bob", origin="https://evil.example")
        assert foreign.value.response.status_code == 403

        alice = await Client.connect(
            url, "/ws?token=s3cr3t-alice", origin="https://chat.example.com"
        )
        bob = await Client.connect(url, "/ws?token=s3cr3t-bob")
        assert (alice.welcome["user"], bob.welcome["user"]) == ("alice", "bob")
        await alice.join("lobby")
        joined = await bob.join("lobby")
        assert joined["members"] == ["alice", "bob"]
        await bob.send({"type": "message", "room": "lobby", "data": "hi"})
        assert (await alice.recv_type("message"))["from"] == "bob"

        answer = await asyncio.to_thread(
            _post,
            f"http://127.0.0.1:{port}/announce?token=s3cr3t-alice",
            {"room": "lobby", "text": "deploy done"},
        )
        frame = await bob.recv_type("message")
        while frame["from"] is not None:  # bob's own message comes back to him first
            frame = await bob.recv_type("message")
        assert (frame["id"], frame["from"], frame["data"]) == (
            answer["id"],
            None,
            {"text": "deploy done", "by": "alice"},
        )
        await alice.close()
        await bob.close()
        await fastapi_chat.manager.shutdown()


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
