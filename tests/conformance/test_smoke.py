from __future__ import annotations

from tests.helpers import Client, ServerFactory
from wsroom import ConnectionManager


async def test_join_and_message(start_server: ServerFactory) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        joined = await client.join("lobby")
        assert joined["members"] == []
        ack = await client.request({"type": "message", "room": "lobby", "data": "hi"})
        assert ack["type"] == "ack"
        await client.close()
