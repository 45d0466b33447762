"""The plain ASGI adapter's own doors, under uvicorn over real sockets: refusals with and
without the denial-response extension, the answers to plain HTTP, the routing of
``WSRoomApp`` in front of another application, and the lifespan protocol (the protocol
itself is the conformance suite's, which runs on this adapter too)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets

import wsroom.browser
from tests.helpers import TIMEOUT, Client, free_port, http_request, user_from_query, uvicorn_server
from wsroom import ConnectionManager, HandshakeRejected, Limits
from wsroom.adapters.asgi import Receive, Scope, Send, WSRoomApp, client_app

pytest.importorskip("uvicorn")


def port_of(server: Any) -> int:
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return port


@asynccontextmanager
async def serving(manager: ConnectionManager, app: Any, **options: Any) -> AsyncIterator[int]:
    async with uvicorn_server(manager, app, **options) as server:
        yield port_of(server)


async def refused(port: int, path: str, **kwargs: Any) -> websockets.InvalidStatus:
    with pytest.raises(websockets.InvalidStatus) as refusal:
        await Client.connect(f"ws://127.0.0.1:{port}", path, **kwargs)
    return refusal.value


class Other:
    """A stand-in for the application WSRoomApp is in front of: it answers HTTP with its
    own page, accepts WebSockets to echo them, and records its lifespan."""

    def __init__(self, *, lifespan: bool = True) -> None:
        self.lifespan = lifespan
        self.events: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            if not self.lifespan:
                raise ValueError("no lifespan here")  # as Django's application does
            while True:
                message = await receive()
                self.events.append(message["type"])
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        elif scope["type"] == "http":
            body = f"other {scope['path']}".encode()
            length = [(b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": length})
            await send({"type": "http.response.body", "body": body})
        else:
            await receive()
            await send({"type": "websocket.accept"})
            message = await receive()
            await send({"type": "websocket.send", "text": "echo " + message["text"]})
            await send({"type": "websocket.close", "code": 1000})


@pytest.mark.timeout(30)
async def test_refusals_carry_their_status_and_headers() -> None:
    limits = Limits(handshake_rate=0.001, handshake_burst=3)
    manager = ConnectionManager(authenticate=user_from_query, limits=limits)
    async with serving(manager, WSRoomApp(manager)) as port:
        unauthorized = await refused(port, "/ws")
        assert unauthorized.response.status_code == 401
        assert unauthorized.response.headers["WWW-Authenticate"] == 'Bearer realm="wsroom"'
        assert unauthorized.response.body == b"Unauthorized\n"
        other = await refused(port, "/ws?user=ann", subprotocols=["chat.v2"])
        assert other.response.status_code == 400
        origin = await refused(port, "/ws?user=ann", origin="https://evil.example")
        assert origin.response.status_code == 403
        limited = await refused(port, "/ws?user=ann")
        assert limited.response.status_code == 429
        assert int(limited.response.headers["Retry-After"]) >= 1


@pytest.mark.timeout(30)
async def test_without_the_denial_extension_a_refusal_is_a_close_the_server_makes_403() -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    rooms = WSRoomApp(manager)

    async def no_denial_responses(scope: Scope, receive: Receive, send: Send) -> None:
        extensions = dict(scope.get("extensions") or {})
        extensions.pop("websocket.http.response", None)
        await rooms({**scope, "extensions": extensions}, receive, send)

    async with serving(manager, no_denial_responses) as port:
        assert (await refused(port, "/ws")).response.status_code == 403
        client = await Client.connect(f"ws://127.0.0.1:{port}", "/ws?user=ann")
        await client.join("lobby")
        await client.close()


@pytest.mark.timeout(30)
async def test_plain_http_gets_426_or_the_refusal() -> None:
    manager = ConnectionManager(authenticate=user_from_query)
    async with serving(manager, WSRoomApp(manager)) as port:
        status, headers, body = await http_request(port, "/ws?user=ann")
        assert status == 426 and headers["upgrade"] == "websocket"
        assert b"WebSocket endpoint" in body
        status, headers, body = await http_request(port, "/ws?user=ann", method="HEAD")
        assert (status, body) == (426, b"")
        assert int(headers["content-length"]) > 0
        status, headers, _ = await http_request(port, "/ws")
        assert status == 401 and headers["www-authenticate"] == 'Bearer realm="wsroom"'
        status, headers, _ = await http_request(port, "/ws?user=ann", method="POST")
        assert status == 405 and headers["allow"] == "GET, HEAD"


@pytest.mark.timeout(30)
async def test_in_front_of_another_application() -> None:
    manager = ConnectionManager()
    other = Other()
    app = WSRoomApp(manager, path="/ws", app=other, client_path="/wsroom.js")
    async with serving(manager, app) as port:
        url = f"ws://127.0.0.1:{port}"
        client = await Client.connect(url, "/ws")
        await client.join("lobby")
        status, _, body = await http_request(port, "/page")
        assert (status, body) == (200, b"other /page")
        assert (await http_request(port, "/ws"))[0] == 426
        async with websockets.connect(f"{url}/echo", open_timeout=TIMEOUT) as echo:
            await echo.send("hi")
            assert await asyncio.wait_for(echo.recv(), TIMEOUT) == "echo hi"
        status, headers, script = await http_request(port, "/wsroom.js")
        assert status == 200 and script == wsroom.browser.script()
        etag = headers["etag"]
        current = await http_request(port, "/wsroom.js", headers=f"If-None-Match: {etag}\r\n")
        assert current[0] == 304 and current[2] == b""
        await client.close()


@pytest.mark.timeout(30)
async def test_alone_other_paths_are_not_found() -> None:
    manager = ConnectionManager()
    async with serving(manager, WSRoomApp(manager, path="/ws")) as port:
        assert (await http_request(port, "/elsewhere"))[0] == 404
        assert (await refused(port, "/elsewhere")).response.status_code == 404
        client = await Client.connect(f"ws://127.0.0.1:{port}", "/ws")
        await client.close()


@pytest.mark.timeout(30)
async def test_client_app_serves_the_script() -> None:
    manager = ConnectionManager()
    async with serving(manager, client_app()) as port:
        status, headers, body = await http_request(port, "/anything")
        assert status == 200 and body == wsroom.browser.script()
        assert headers["content-type"] == "text/javascript; charset=utf-8"
        status, headers, body = await http_request(port, "/anything", method="HEAD")
        assert (status, body) == (200, b"")
        assert headers["content-length"] == str(len(wsroom.browser.script()))
        assert (await http_request(port, "/anything", method="POST"))[0] == 405


# The lifespan protocol: uvicorn runs it ("on"), the test drives its shutdown.


@pytest.mark.timeout(30)
@pytest.mark.parametrize("inner", [None, "with lifespan", "without lifespan"])
async def test_lifespan_starts_and_stops_the_manager(inner: str | None) -> None:
    manager = ConnectionManager()
    other = Other(lifespan=inner == "with lifespan") if inner else None
    app = WSRoomApp(manager, path="/ws" if other else None, app=other)
    async with uvicorn_server(manager, app, lifespan="on") as server:
        # Started by the lifespan, before any client.
        assert manager.loop is asyncio.get_running_loop()
        assert not server.lifespan.startup_failed
        if other is not None and other.lifespan:
            assert other.events == ["lifespan.startup"]
        client = await Client.connect(f"ws://127.0.0.1:{port_of(server)}")
        await client.join("lobby")
        closing = asyncio.create_task(client.wait_closed())
        await asyncio.wait_for(server.lifespan.shutdown(), TIMEOUT)
        assert await closing == 1001
        assert manager.closing
        if other is not None and other.lifespan:
            assert other.events == ["lifespan.startup", "lifespan.shutdown"]


@pytest.mark.timeout(30)
async def test_lifespan_reports_a_manager_that_cannot_start() -> None:
    import uvicorn
    from uvicorn.lifespan.on import LifespanOn

    from wsroom.backplane.redis import RedisBackplane

    # Nothing listens there: the backplane cannot start.
    manager = ConnectionManager(backplane=RedisBackplane(f"redis://127.0.0.1:{free_port()}/0"))
    # uvicorn's own lifespan driver, as its Server runs it at startup.
    lifespan = LifespanOn(uvicorn.Config(WSRoomApp(manager), lifespan="on", log_level="error"))
    await asyncio.wait_for(lifespan.startup(), TIMEOUT)
    # uvicorn logs the message ("wsroom: cannot reach Redis at ...") and does not serve.
    assert lifespan.startup_failed and lifespan.should_exit


@pytest.mark.timeout(30)
async def test_serve_from_an_endpoint_that_authenticated_the_client() -> None:
    from wsroom.adapters.asgi import serve

    manager = ConnectionManager(authenticate=lambda handshake: None)  # never called here

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        user = "ann" if scope["path"] == "/ws/ann" else None
        if user is None:
            await send({"type": "websocket.close", "code": 1008})
            return
        await serve(scope, receive, send, manager, user=user)

    async with serving(manager, endpoint) as port:
        client = await Client.connect(f"ws://127.0.0.1:{port}", "/ws/ann")
        assert client.welcome["user"] == "ann"
        await client.close()
        assert (await refused(port, "/ws/bob")).response.status_code == 403


@pytest.mark.timeout(30)
async def test_refusal_headers_cannot_split_the_response() -> None:
    def authenticate(handshake: Any) -> str:
        # An application that echoes client input into a header.
        raise HandshakeRejected(403, "no", headers={"X-Why": handshake.query["why"]})

    manager = ConnectionManager(authenticate=authenticate)
    async with serving(manager, WSRoomApp(manager)) as port:
        refusal = await refused(port, "/ws?why=a%0D%0ASet-Cookie:%20x=1")
        assert refusal.response.status_code == 403
        assert "Set-Cookie" not in refusal.response.headers
        assert refusal.response.headers["X-Why"] == "aSet-Cookie: x=1"


@pytest.mark.timeout(30)
async def test_an_applications_own_challenge_is_kept() -> None:
    def authenticate(handshake: Any) -> str:
        raise HandshakeRejected(401, "log in", headers={"WWW-Authenticate": 'Basic realm="x"'})

    manager = ConnectionManager(authenticate=authenticate)
    async with serving(manager, WSRoomApp(manager)) as port:
        refusal = await refused(port, "/ws")
        assert refusal.response.status_code == 401
        assert refusal.response.headers.get_all("WWW-Authenticate") == ['Basic realm="x"']
