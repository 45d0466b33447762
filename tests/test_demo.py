"""The demo chat: its page, its WebSocket, and its command line with graceful shutdown."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import signal
from importlib.resources import files

import pytest
import websockets
from websockets.exceptions import InvalidStatus

import wsroom.browser
from tests.helpers import TIMEOUT, Client, demo_command, http_request
from wsroom.demo import MAX_NAME_LENGTH, demo_server, security_headers

# The page speaks the protocol only through the browser client that the server serves.
PAGE_IMPORT = b'import { connect } from "/wsroom.js";'


async def check_page_and_doors(port: int) -> None:
    """What every demo transport must do besides chatting: a page that cannot be framed or
    run other scripts, 426 (not 404) for a plain GET of the WebSocket's path, and names
    that could pass for the page's own labels, or hide control characters, refused."""
    status, headers, body = await http_request(port, "/")
    assert status == 200 and PAGE_IMPORT in body
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    # The page's own module and /wsroom.js, nothing else.
    assert "script-src 'self' 'sha256-" in policy and "unsafe-inline" not in policy
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    status, headers, body = await http_request(port, "/wsroom.js")
    assert status == 200 and body == wsroom.browser.script()
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert headers["x-content-type-options"] == "nosniff"
    etag = headers["etag"]
    status, headers, body = await http_request(
        port, "/wsroom.js", headers=f"If-None-Match: {etag}\r\n"
    )
    assert (status, body, headers["etag"]) == (304, b"", etag)
    status, headers, _ = await http_request(port, "/favicon.svg")
    assert status == 200 and headers["content-type"].startswith("image/svg+xml")
    status, headers, _ = await http_request(port, "/ws")
    assert status == 426
    assert headers["upgrade"].lower() == "websocket"
    url = f"ws://127.0.0.1:{port}"
    for name in ("server", "Server", "bob%20(you)", "%E2%80%AEbob", "%1B%5B31mred", "a%00b"):
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(f"{url}/ws?name={name}", open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 403, name


def _sha256(block: bytes) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(block).digest()).decode() + "'"


def test_page_policy_allows_exactly_its_inline_blocks() -> None:
    page = files("wsroom.demo").joinpath("index.html").read_bytes()
    scripts = re.findall(rb"<script\b([^>]*)>(.*?)</script>", page, re.DOTALL)
    styles = re.findall(rb"<style\b[^>]*>(.*?)</style>", page, re.DOTALL)
    assert [attributes for attributes, _ in scripts] == [b' type="module"']
    assert len(styles) == 1
    policy = dict(security_headers(page))["Content-Security-Policy"]
    directives = {name: sources for name, *sources in (part.split() for part in policy.split("; "))}
    assert directives["script-src"] == ["'self'", _sha256(scripts[0][1])]
    assert directives["style-src"] == [_sha256(styles[0])]
    # Nothing the policy would block: no inline handlers, style attributes or other origins.
    assert not re.search(rb"\son[a-z]+\s*=", page)
    assert not re.search(rb"\sstyle\s*=", page)
    assert not re.search(rb"(src|href)=\"(?!/)", page)
    assert PAGE_IMPORT in scripts[0][1]
    assert b'<link rel="icon" href="/favicon.svg"' in page
    # The name field allows what the server keeps, no more.
    assert f'id="name" maxlength="{MAX_NAME_LENGTH}"'.encode() in page


async def test_demo_serves_page_and_chat() -> None:
    async with demo_server("127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        status, _, body = await http_request(port, "/")
        assert status == 200
        assert b"<title>" in body and PAGE_IMPORT in body
        assert (await http_request(port, "/missing"))[0] == 404

        url = f"ws://127.0.0.1:{port}"
        alice = await Client.connect(url, "/ws?name=alice")
        guest = await Client.connect(url, "/ws")
        assert alice.welcome["user"] == "alice"
        assert guest.welcome["user"].startswith("guest-")
        await alice.join("lobby")
        await guest.join("lobby")
        await guest.send({"type": "typing", "room": "lobby"})
        assert (await alice.recv_type("typing"))["data"] == {"user": guest.welcome["user"]}
        await guest.close()
        await alice.close()


@pytest.mark.parametrize("transport", ["asyncio", "sync", "starlette", "asgi", "aiohttp"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_demo_command_serves_and_shuts_down_gracefully(transport: str, signum: int) -> None:
    async with demo_command("--transport", transport) as (port, process):
        await check_page_and_doors(port)
        client = await Client.connect(f"ws://127.0.0.1:{port}", "/ws?name=bob")
        assert client.welcome["user"] == "bob"
        await client.join("lobby")
        await client.send({"type": "message", "room": "lobby", "data": "hi"})
        assert (await client.recv_type("message"))["data"] == "hi"
        process.send_signal(signum)
        assert await client.wait_closed() == 1001
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0


async def test_two_demo_processes_serve_one_chat_through_redis() -> None:
    from tests.redis_support import private_redis

    with private_redis() as redis:
        async with (
            demo_command("--redis", redis.url) as (first, _),
            demo_command("--redis", redis.url) as (second, _),
        ):
            alice = await Client.connect(f"ws://127.0.0.1:{first}", "/ws?name=alice")
            bob = await Client.connect(f"ws://127.0.0.1:{second}", "/ws?name=bob")
            await alice.join("lobby")
            assert (await bob.join("lobby"))["members"] == ["alice", "bob"]
            await alice.send({"type": "message", "room": "lobby", "data": {"text": "across"}})
            assert (await bob.recv_type("message"))["data"] == {"text": "across"}
            await alice.close()
            await bob.close()
