"""The examples run: the FastAPI one under uvicorn, over real sockets."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets

from tests.helpers import TIMEOUT, Client, wait_for
from wsroom import ConnectionManager
from wsroom.adapters import uvicorn as wsroom_uvicorn


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
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['starlette'] = None  # as if Starlette were not installed\n"
        "try:\n"
        "    import wsroom.adapters.starlette\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=True
    )
    assert "pip install 'wsroom[starlette]'" in output.stdout
