"""A minimal wsroom adapter for a websockets server: one writer task per connection."""

import asyncio
import weakref
from collections.abc import Sequence
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from wsroom import ConnectionManager, Handshake, HandshakeRejected, Transport


class TaskTransport(Transport):
    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.ready = asyncio.Event()
        self.closing = False
        self.writer = asyncio.create_task(self.write_loop())

    def wake(self) -> None:  # must not block: signal the writer task
        self.ready.set()

    async def write_loop(self) -> None:
        await self.ready.wait()  # the first wake() comes after bind()
        conn = self.connection
        assert conn is not None
        while True:
            self.ready.clear()
            while messages := conn.take_messages():  # wsroom.v1.batch: arrays of frames
                for message in messages:
                    try:
                        async with asyncio.timeout(conn.manager.limits.write_timeout):
                            await self.ws.send(message.decode())  # JSON goes in text frames
                    except TimeoutError:
                        conn.manager.evict(conn, "client too slow")  # the core aborts us
                        return
                    except ConnectionClosed:
                        return
            if self.closing:
                return
            await self.ready.wait()

    async def close(self, code: int, reason: str) -> None:
        self.closing = True
        self.ready.set()
        await self.writer  # may hang on a stuck peer: the core's deadline calls abort()
        await self.ws.close(code, reason)

    def abort(self) -> None:
        self.writer.cancel()
        if self.ws.transport is not None:
            self.ws.transport.abort()


class TaskAdapter:
    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        # Handshakes that passed process_request, until their handler runs.
        self.accepted: weakref.WeakKeyDictionary[ServerConnection, tuple[Handshake, str | None]]
        self.accepted = weakref.WeakKeyDictionary()

    async def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        host, port = ws.remote_address[:2]
        handshake = Handshake.from_target(request.path, request.headers.raw_items(), (host, port))
        try:
            # Shutdown (503), handshakes per address (429), Origin (403), subprotocols
            # (400), then the authenticate hook and the user id it returns.
            user = await self.manager.authorize(handshake)
        except HandshakeRejected as exc:  # refused before the upgrade
            response = ws.respond(HTTPStatus(exc.status), exc.reason + "\n")
            if exc.status == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="wsroom"'
            for name, value in exc.headers.items():  # Retry-After on a 429
                response.headers[name] = value
            return response
        self.accepted[ws] = (handshake, user)
        return None

    def select_subprotocol(
        self, ws: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | None:
        chosen = self.manager.select_subprotocol(offered)  # authorize() refused the others
        return None if chosen is None else Subprotocol(chosen)

    async def handler(self, ws: ServerConnection) -> None:
        handshake, user = self.accepted.pop(ws)

        async def receive() -> str | bytes | None:
            try:
                return await ws.recv()
            except ConnectionClosed:
                return None

        transport = TaskTransport(ws)
        try:
            await self.manager.serve(transport, handshake, user, receive)
        finally:
            transport.writer.cancel()
