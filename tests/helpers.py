"""Shared test helpers: a protocol-speaking WebSocket client and servers under test."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from wsroom import ConnectionManager

# One timing unit for the whole suite, scaled for slow machines (WSROOM_TEST_TIMEOUT_FACTOR).
TIMEOUT = 5.0 * float(os.environ.get("WSROOM_TEST_TIMEOUT_FACTOR", "1"))

ServerFactory = Callable[[ConnectionManager], AbstractAsyncContextManager[str]]
"""Starts a real server for a manager on 127.0.0.1 (port 0) and yields its ws:// URL."""


@asynccontextmanager
async def websockets_asyncio_server(manager: ConnectionManager) -> AsyncIterator[str]:
    from wsroom.adapters.websockets import serve

    async with serve(manager, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


ADAPTERS: dict[str, ServerFactory] = {"websockets": websockets_asyncio_server}


class Client:
    """A test client speaking the wsroom protocol over a real WebSocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ref = 0
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def connect(
        cls,
        url: str,
        path: str = "/ws",
        *,
        subprotocols: list[str] | None = None,
        welcome: bool = True,
        **kwargs: Any,
    ) -> Client:
        ws = await websockets.connect(
            url + path,
            subprotocols=subprotocols if subprotocols is not None else ["wsroom.v1"],  # type: ignore[arg-type]
            open_timeout=TIMEOUT,
            **kwargs,
        )
        client = cls(ws)
        if welcome:
            client.welcome = await client.recv()
            assert client.welcome["type"] == "welcome", client.welcome
        return client

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), "the server must send text frames"
        frame = json.loads(raw)
        assert isinstance(frame, dict) and isinstance(frame.get("type"), str), frame
        return frame

    async def recv_type(self, type_: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout=timeout)
                if frame["type"] == type_:
                    return frame

    async def expect_nothing(self, wait: float = 0.2) -> None:
        """Assert no frame arrives: a ping round trip proves everything before it was sent."""
        ref = f"quiet-{self.next_ref()}"
        await self.send({"type": "ping", "ref": ref})
        frame = await self.recv()
        assert frame == {"type": "pong", "ref": ref}, f"unexpected frame {frame}"

    def next_ref(self) -> int:
        self._ref += 1
        return self._ref

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send with a fresh ref; return the direct answer (frames before it are skipped)."""
        ref = self.next_ref()
        await self.send({**frame, "ref": ref})
        async with asyncio.timeout(TIMEOUT):
            while True:
                answer = await self.recv()
                if answer.get("ref") == ref and answer["type"] in ("joined", "left", "ack", "pong", "error"):
                    return answer

    async def join(self, room: str, **fields: Any) -> dict[str, Any]:
        answer = await self.request({"type": "join", "room": room, **fields})
        assert answer["type"] == "joined", answer
        return answer

    async def close(self) -> None:
        await self.ws.close()

    async def wait_closed(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server closes; return the close code it sent."""
        async with asyncio.timeout(timeout):
            try:
                while True:
                    await self.ws.recv()
            except websockets.ConnectionClosed:
                pass
        rcvd = self.ws.close_rcvd
        return rcvd.code if rcvd is not None else None


async def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT, interval: float = 0.01) -> None:
    """Poll a condition that has no event to await (server-side state seen from a test)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)
