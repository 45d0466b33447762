"""Test your rooms without sockets.

:class:`TestClient` connects to a :class:`~wsroom.ConnectionManager` through an in-memory
transport and speaks the protocol as a real client would: the same handshake checks, the
same frames, the same limits. Use it in your application's tests::

    async def test_only_members_can_post():
        manager = ConnectionManager(ChatRoom)
        async with TestClient(manager, user="alice") as alice:
            await alice.join("lobby")
            await alice.send({"type": "message", "room": "lobby", "data": "hi"})
            assert (await alice.receive())["data"] == "hi"
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from .connection import Connection, Transport
from .exceptions import HandshakeRejected
from .frames import ANSWER_TYPES, BATCH_SUBPROTOCOL
from .handshake import Handshake
from .manager import ConnectionManager

__all__ = ["MemoryTransport", "TestClient"]

_UNSET: Any = object()


class MemoryTransport(Transport):
    """A :class:`~wsroom.Transport` that hands frames to an in-memory client.

    With ``reading=False`` it behaves like a client that stopped reading: frames stay in the
    connection's queue until it overflows. Call :meth:`resume_reading` to read again.

    :attr:`frames` receives the WebSocket messages the server sends: one encoded frame
    each, or for a client that negotiated batched frames a JSON array of the frames that
    were waiting together. A batched connection's queue is read at the end of the event
    loop iteration that filled it, as the real adapters read it, so that frames queued
    together arrive in one batch.
    """

    def __init__(self, *, reading: bool = True) -> None:
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self.reading = reading
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.aborted = False
        self.closed = asyncio.Event()
        self._resumed = asyncio.Event()
        self._scheduled = False

    def wake(self) -> None:
        conn = self.connection
        if conn is not None and conn.batched:
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._take)
        else:
            self._take()

    def _take(self) -> None:
        self._scheduled = False
        if self.reading and self.connection is not None:
            for message in self.connection.take_messages():
                self.frames.put_nowait(message)

    def resume_reading(self) -> None:
        """Start taking frames again, as a client that read its socket would."""
        self.reading = True
        self._resumed.set()
        self._take()

    async def close(self, code: int, reason: str) -> None:
        if not self.reading:
            # A client that does not read never completes the closing handshake; the
            # manager's deadline ends this wait with abort().
            await self._resumed.wait()
        self._take()
        self.mark_closed(code, reason)

    def abort(self) -> None:
        self.aborted = True
        self.mark_closed(1006, "")

    def peer_close_code(self) -> int | None:
        """The code :meth:`TestClient.close` closed with (the first close recorded)."""
        return self.close_code

    def mark_closed(self, code: int, reason: str) -> None:
        """Record that the connection ended with ``code`` (the first call wins)."""
        if not self.closed.is_set():
            self.close_code = code
            self.close_reason = reason
            self.closed.set()


class TestClient:
    """An in-memory client of a :class:`~wsroom.ConnectionManager`, for tests.

    Args:
        manager: The manager under test.
        user: Connect as this user id, skipping the handshake checks (origin,
            subprotocol, authenticate hook); only a shutdown still refuses.
        path: The request path of the handshake (query string included), e.g.
            ``"/ws?token=abc"``; the authenticate hook sees it when ``user`` is not given.
        headers: Handshake headers, e.g. ``{"Origin": "https://example.com"}``.
        reading: ``False`` makes a client that never reads (frames pile up server-side).
        timeout: Default seconds :meth:`receive` waits.
        batch: Offer batched frames (``wsroom.v1.batch``), as wsroom.js does. When the
            manager's protocol has them, the server packs the frames waiting together into
            JSON arrays; :meth:`receive` still returns one frame at a time, and
            :meth:`receive_batch` returns the frames of one message.
        address: The client's IP address, as the per-address limits count it. By default
            each client has an address of its own (in the documentation range
            ``2001:db8::/32``), like distinct users on distinct machines; give several
            clients one address to test what they share.

    Raises:
        HandshakeRejected: on entering, when the origin or the authenticate hook refuses.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        manager: ConnectionManager,
        *,
        user: str | None = _UNSET,
        path: str = "/ws",
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        reading: bool = True,
        timeout: float = 2.0,
        address: str | None = None,
        batch: bool = False,
    ) -> None:
        self.manager = manager
        items = list(headers.items() if isinstance(headers, Mapping) else headers)
        if batch:
            items.append(("Sec-WebSocket-Protocol", BATCH_SUBPROTOCOL))
        if address is None:
            address = _next_address()
        self.handshake = Handshake.from_target(path, items, (address, 0))
        self.transport = MemoryTransport(reading=reading)
        self.timeout = timeout
        self._user = user
        self._ref = 0
        self.connection: Connection | None = None
        self.welcome: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None
        # The frames of a batch not returned yet.
        self._unread: deque[dict[str, Any]] = deque()

    async def __aenter__(self) -> TestClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> dict[str, Any]:
        """Run the handshake and return the ``welcome`` frame."""
        if self._user is _UNSET:
            user = await self.manager.authorize(self.handshake)
        else:
            if self.manager.closing:
                raise HandshakeRejected(503, "Server shutting down")
            user = self._user
            # The checks are skipped, not the subprotocol the client would be given.
            with contextlib.suppress(HandshakeRejected):
                self.handshake.subprotocol = self.manager.select_subprotocol(
                    self.handshake.subprotocols
                )
        self.connection = await self.manager.accept(self.transport, self.handshake, user)
        if not self.transport.reading:
            return {}
        self.welcome = await self.receive()
        return self.welcome

    @property
    def user(self) -> str | None:
        """The user id the server gave this client."""
        return self.connection.user if self.connection is not None else None

    @property
    def batched(self) -> bool:
        """Whether the server sends this client batched frames."""
        return self.connection is not None and self.connection.batched

    @property
    def close_code(self) -> int | None:
        """The close code the server sent, 1006 if it aborted, ``None`` while open."""
        return self.transport.close_code

    def next_ref(self) -> int:
        """A fresh ``ref`` for a request."""
        self._ref += 1
        return self._ref

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        """Send one frame: a dict is encoded with the manager's protocol, ``str`` and
        ``bytes`` go as they are (text and binary frames)."""
        if self.connection is None:
            raise RuntimeError("connect first: use 'async with TestClient(...)'")
        raw: str | bytes
        if isinstance(frame, dict):
            encoded = self.manager.encode(frame)
            raw = encoded if self.manager.protocol.binary else encoded.decode("utf-8")
        else:
            raw = frame
        await self.manager.receive(self.connection, raw)

    async def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next frame the server sent, decoded (the next one of a batch, for a batched
        client).

        Raises:
            TimeoutError: nothing arrived within ``timeout`` seconds.
        """
        if not self._unread:
            self._unread.extend(await self.receive_batch(timeout))
        return self._unread.popleft()

    async def receive_batch(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """The frames of the next message the server sent, decoded: the frames of a batch,
        or a list of one for a plain frame. Frames of a batch :meth:`receive` began
        returning come first, as one list.

        Raises:
            TimeoutError: nothing arrived within ``timeout`` seconds.
        """
        if self._unread:
            rest = list(self._unread)
            self._unread.clear()
            return rest
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            message = await self.transport.frames.get()
        return self._decode(message)

    def receive_nowait(self) -> dict[str, Any] | None:
        """The next frame if one is waiting, else ``None``."""
        if not self._unread:
            try:
                message = self.transport.frames.get_nowait()
            except asyncio.QueueEmpty:
                return None
            self._unread.extend(self._decode(message))
        return self._unread.popleft()

    def _decode(self, message: bytes) -> list[dict[str, Any]]:
        protocol = self.manager.protocol
        value = protocol.loads(message if protocol.binary else message.decode("utf-8"))
        if isinstance(value, list):
            if not self.batched or not value:
                raise AssertionError(f"a batch the client did not ask for: {message!r}")
            return value
        return [value]

    async def receive_type(self, type: str, timeout: float | None = None) -> dict[str, Any]:
        """Skip frames until one of ``type`` arrives, and return it."""
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            while True:
                frame = await self.receive(timeout=float("inf"))
                if frame.get("type") == type:
                    return frame

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send ``frame`` with a fresh ``ref`` and return the direct answer to it.

        Frames that arrive before the answer (broadcasts, presence, the sender's own echoed
        message) are discarded; use :meth:`send` and :meth:`receive` to see them.
        """
        ref = self.next_ref()
        await self.send({**frame, "ref": ref})
        async with asyncio.timeout(self.timeout):
            while True:
                answer = await self.receive(timeout=float("inf"))
                if answer.get("ref") == ref and answer.get("type") in ANSWER_TYPES:
                    return answer

    async def join(self, room: str, data: Any = None, **fields: Any) -> dict[str, Any]:
        """Join ``room`` and return the ``joined`` frame (or the ``error`` frame)."""
        frame: dict[str, Any] = {"type": "join", "room": room, **fields}
        if data is not None:
            frame["data"] = data
        return await self.request(frame)

    async def leave(self, room: str) -> dict[str, Any]:
        """Leave ``room`` and return the ``left`` (or ``error``) frame."""
        return await self.request({"type": "leave", "room": room})

    async def message(self, room: str, data: Any) -> dict[str, Any]:
        """Send a ``message`` and return its ``ack`` (or ``error``)."""
        return await self.request({"type": "message", "room": room, "data": data})

    async def close(self, code: int = 1000) -> None:
        """Disconnect, as a client closing its socket with ``code`` would."""
        if self.connection is not None:
            self.transport.mark_closed(code, "")
            await self.manager.release(self.connection)

    async def wait_closed(self, timeout: float | None = None) -> int | None:
        """Wait until the server closed or aborted this client; return the close code."""
        async with asyncio.timeout(self.timeout if timeout is None else timeout):
            await self.transport.closed.wait()
        return self.transport.close_code


_clients_made = itertools.count(1)


def _next_address() -> str:
    """A fresh address for a TestClient: one /64 of the documentation prefix per client."""
    n = next(_clients_made)
    return f"2001:db8:{(n >> 16) & 0xFFFF:x}:{n & 0xFFFF:x}::1"
