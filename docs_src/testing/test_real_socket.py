import json

import pytest
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from wsroom import ConnectionManager
from wsroom.adapters.websockets import serve

pytestmark = pytest.mark.asyncio


@pytest.fixture
def manager() -> ConnectionManager:
    return ConnectionManager()


async def test_over_a_real_socket(manager: ConnectionManager) -> None:
    async with serve(manager, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/ws"
        async with connect(url, subprotocols=[Subprotocol("wsroom.v1")]) as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(json.dumps({"type": "join", "room": "table:1", "ref": 1}))
            assert json.loads(await ws.recv())["type"] == "joined"
