import asyncio
import json

from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

WSROOM = [Subprotocol("wsroom.v1")]


async def main() -> None:
    async with (
        connect("ws://127.0.0.1:8001/ws?user=alice", subprotocols=WSROOM) as alice,
        connect("ws://127.0.0.1:8002/ws?user=bob", subprotocols=WSROOM) as bob,
    ):
        for ws in (alice, bob):
            await ws.recv()  # welcome
            await ws.send(json.dumps({"type": "join", "room": "lobby"}))
            print(json.loads(await ws.recv())["members"])  # ['alice'], then ['alice', 'bob']
        print(json.loads(await alice.recv()))  # presence: bob joined, through node 8002
        await bob.send(json.dumps({"type": "message", "room": "lobby", "data": "hi"}))
        print(json.loads(await alice.recv()))  # the message from bob (id 1 in a new room)


if __name__ == "__main__":
    asyncio.run(main())
