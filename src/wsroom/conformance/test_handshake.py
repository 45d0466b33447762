"""PROTOCOL.md: the subprotocol, and authentication refused at the handshake (401, 403)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.exceptions import InvalidStatus

from wsroom import Authenticate, ConnectionManager, Handshake, HandshakeRejected
from wsroom.conformance._client import Client, connect_raw
from wsroom.conformance._frames import check_frame
from wsroom.conformance._server import HTTP_REFUSAL, Server, needs

# A handshake ends before any room: a second node cannot change its outcome.
pytestmark = pytest.mark.one_node("handshakes end on the node of the connection")

TOKENS = {"token-alice": "alice", "token-bob": "bob"}


def bearer(handshake: Handshake) -> str | None:
    scheme, _, token = handshake.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    if token == "token-mallory":
        raise HandshakeRejected(403, "Forbidden")
    return TOKENS.get(token)


async def bearer_async(handshake: Handshake) -> str | None:
    await asyncio.sleep(0)
    return bearer(handshake)


def same_origin(url: str) -> str:
    parts = urlsplit(url)
    return f"http://{parts.hostname}:{parts.port}"


async def refused_status(server: Server, url: str, **kwargs: Any) -> int:
    """The HTTP status a handshake was refused with (the test skips for an adapter that
    cannot refuse before the upgrade)."""
    needs(server, HTTP_REFUSAL, "expects a refusal with an HTTP status")
    with pytest.raises(InvalidStatus) as refused:
        await Client.connect(url, welcome=False, **kwargs)
    return refused.value.response.status_code


# Subprotocol


async def test_wsroom_v1_is_accepted(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url, subprotocols=["wsroom.v1"])
        assert client.ws.subprotocol == "wsroom.v1"
        check_frame(client.welcome, "welcome")
        await client.close()


async def test_wsroom_v1_is_chosen_among_others(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url, subprotocols=["chat", "wsroom.v1", "wsroom.v2"])
        assert client.ws.subprotocol == "wsroom.v1"
        await client.close()


async def test_no_subprotocol_is_served(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        ws = await connect_raw(url)
        assert ws.subprotocol is None
        client = Client(ws)
        welcome = check_frame(await client.recv(), "welcome")
        assert welcome["protocol"] == 1
        joined = await client.join("r")
        assert joined["room"] == "r"
        await client.close()


@pytest.mark.parametrize("offered", [["chat"], ["wsroom.v2", "mqtt"], ["wsroom"]])
async def test_only_unknown_subprotocols_are_refused(
    start_server: Server, offered: list[str]
) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        assert await refused_status(start_server, url, subprotocols=offered) == 400
        assert manager.connections == []


# Authentication


@pytest.mark.parametrize("hook", [bearer, bearer_async], ids=["def", "async def"])
async def test_authenticated_user(start_server: Server, hook: Authenticate) -> None:
    manager = ConnectionManager(authenticate=hook)
    async with start_server(manager) as url:
        client = await Client.connect(
            url, additional_headers={"Authorization": "Bearer token-alice"}
        )
        assert client.welcome["user"] == "alice"
        await client.close()


@pytest.mark.parametrize("hook", [bearer, bearer_async], ids=["def", "async def"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}])
async def test_401_without_valid_credentials(
    start_server: Server, hook: Authenticate, headers: dict[str, str]
) -> None:
    manager = ConnectionManager(authenticate=hook)
    async with start_server(manager) as url:
        assert await refused_status(start_server, url, additional_headers=headers) == 401
        assert manager.connections == []


async def test_403_when_the_hook_denies_access(start_server: Server) -> None:
    manager = ConnectionManager(authenticate=bearer)
    async with start_server(manager) as url:
        headers = {"Authorization": "Bearer token-mallory"}
        assert await refused_status(start_server, url, additional_headers=headers) == 403
        assert manager.connections == []


async def test_hook_sees_path_query_and_headers(start_server: Server) -> None:
    seen: list[Handshake] = []

    def authenticate(handshake: Handshake) -> str:
        seen.append(handshake)
        return "someone"

    manager = ConnectionManager(authenticate=authenticate)
    async with start_server(manager) as url:
        client = await Client.connect(
            url, "/chat/ws?token=abc&x=1", additional_headers={"X-Custom": "yes"}
        )
        [handshake] = seen
        assert handshake.path == "/chat/ws"
        assert handshake.query == {"token": "abc", "x": "1"}
        assert handshake.headers["x-custom"] == "yes"
        assert "wsroom.v1" in handshake.subprotocols
        await client.close()


# Origin


async def test_origin_default_is_same_origin(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url, origin=same_origin(url))
        check_frame(client.welcome, "welcome")
        await client.close()
        for origin in ("https://evil.example", "http://127.0.0.1:1", "http://localhost"):
            assert await refused_status(start_server, url, origin=origin) == 403, origin
        assert await refused_status(start_server, url, origin="null") == 403


async def test_origin_missing_is_accepted(start_server: Server) -> None:
    for allowed in (None, ["https://app.example.com"]):
        manager = ConnectionManager(allowed_origins=allowed)
        async with start_server(manager) as url:
            client = await Client.connect(url)
            check_frame(client.welcome, "welcome")
            await client.close()


async def test_origin_allowed_list(start_server: Server) -> None:
    manager = ConnectionManager(allowed_origins=["https://app.example.com"])
    async with start_server(manager) as url:
        for origin in ("https://app.example.com", "https://APP.example.com:443"):
            client = await Client.connect(url, origin=origin)
            check_frame(client.welcome, "welcome")
            await client.close()
        for origin in (
            "https://evil.example.com",
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.example",
        ):
            assert await refused_status(start_server, url, origin=origin) == 403, origin


async def test_origin_any(start_server: Server) -> None:
    manager = ConnectionManager(allowed_origins="*")
    async with start_server(manager) as url:
        client = await Client.connect(url, origin="https://anywhere.example")
        check_frame(client.welcome, "welcome")
        await client.close()


async def test_refused_origin_is_refused_before_authentication(
    start_server: Server,
) -> None:
    calls: list[str] = []

    def authenticate(handshake: Handshake) -> str:
        calls.append(handshake.path)
        return "alice"

    manager = ConnectionManager(authenticate=authenticate)
    async with start_server(manager) as url:
        assert await refused_status(start_server, url, origin="https://evil.example") == 403
        assert calls == []
