from __future__ import annotations

from wsroom import ConnectionManager
from wsroom.conformance._client import Client
from wsroom.conformance._server import Server


async def test_join_and_message(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        joined = await client.join("lobby")
        assert joined["members"] == []
        ack = await client.request({"type": "message", "room": "lobby", "data": "hi"})
        assert ack["type"] == "ack"
        await client.close()
