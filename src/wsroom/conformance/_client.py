"""The suite's client: the wsroom protocol over a real WebSocket, and what checks frames."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from wsroom.frames import ANSWER_TYPES
from wsroom.handshake import Handshake

# One timing unit for the whole suite, scaled for slow machines (WSROOM_TEST_TIMEOUT_FACTOR).
TIMEOUT = 5.0 * float(os.environ.get("WSROOM_TEST_TIMEOUT_FACTOR", "1"))

_connections_made = 0


def _next_compression() -> str | None:
    """Every other client offers permessage-deflate, as browsers do; the others offer no
    extension. Rooms in every test thus mix compressed connections, which servers frame per
    connection, with plain ones, which get frames shared by every recipient."""
    global _connections_made
    _connections_made += 1
    return "deflate" if _connections_made % 2 else None


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
        """Connect to ``url + path`` offering ``wsroom.v1`` (or ``subprotocols``); read the
        ``welcome`` unless told not to. ``kwargs`` go to ``websockets.connect``."""
        offered = ["wsroom.v1"] if subprotocols is None else subprotocols
        kwargs.setdefault("compression", _next_compression())
        ws = await websockets.connect(
            url + path,
            # An empty list would send an empty Sec-WebSocket-Protocol header: send none.
            subprotocols=[Subprotocol(p) for p in offered] or None,
            open_timeout=TIMEOUT,
            **kwargs,
        )
        client = cls(ws)
        if welcome:
            client.welcome = await client.recv()
            assert client.welcome["type"] == "welcome", client.welcome
        return client

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        """Send a frame: a dict as JSON text, a str or bytes as they are."""
        await self.ws.send(json.dumps(frame) if isinstance(frame, dict) else frame)

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame, which must be a JSON object with a ``type`` in a text frame."""
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(raw, str), "the server must send text frames"
        frame = json.loads(raw)
        assert isinstance(frame, dict) and isinstance(frame.get("type"), str), frame
        return frame

    async def recv_type(self, type_: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame of type ``type_``; the frames before it are skipped."""
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
        """A ref this client has not used yet."""
        self._ref += 1
        return self._ref

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send with a fresh ref; return the direct answer (frames before it are skipped)."""
        ref = self.next_ref()
        await self.send({**frame, "ref": ref})
        async with asyncio.timeout(TIMEOUT):
            while True:
                answer = await self.recv()
                if answer.get("ref") == ref and answer["type"] in ANSWER_TYPES:
                    return answer

    async def join(self, room: str, **fields: Any) -> dict[str, Any]:
        """Join ``room``; the ``joined`` answer."""
        answer = await self.request({"type": "join", "room": room, **fields})
        assert answer["type"] == "joined", answer
        return answer

    async def close(self) -> None:
        """Close the connection (code 1000)."""
        await self.ws.close()

    async def wait_closed(self, timeout: float = TIMEOUT) -> int | None:
        """Read until the server closes; return the close code it sent."""
        async with asyncio.timeout(timeout):
            try:
                while True:
                    await self.ws.recv()
            except websockets.ConnectionClosed:
                pass
        rcvd = self.ws.protocol.close_rcvd
        return rcvd.code if rcvd is not None else None

    async def recv_answer(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Skip broadcasts and events; return the next direct answer (joined, left, ack, ...)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout=timeout)
                if frame["type"] in ANSWER_TYPES:
                    return frame

    async def expect_close(self, timeout: float = TIMEOUT) -> int | None:
        """Assert the server closes before sending any other frame; return its close code."""
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed:
            rcvd = self.ws.protocol.close_rcvd
            return rcvd.code if rcvd is not None else None
        raise AssertionError(f"expected the server to close, got the frame {raw!r}")


async def wait_for(
    predicate: Callable[[], bool], timeout: float = TIMEOUT, interval: float = 0.01
) -> None:
    """Poll a condition that has no event to await (server-side state seen from a test)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - server state has no event to await
            await asyncio.sleep(interval)


def user_from_query(handshake: Handshake) -> str | None:
    """An ``authenticate`` hook: the user id is the ``user`` query parameter (none: HTTP 401)."""
    return handshake.query.get("user") or None


async def connect_as(url: str, user: str, **kwargs: Any) -> Client:
    """Connect as ``user`` to a manager whose ``authenticate`` is :func:`user_from_query`."""
    return await Client.connect(url, f"/ws?user={user}", **kwargs)


async def connect_raw(url: str, path: str = "/ws", **kwargs: Any) -> ClientConnection:
    """A plain ``websockets`` client: no subprotocol offered unless given, welcome not read."""
    return await websockets.connect(url + path, open_timeout=TIMEOUT, **kwargs)
