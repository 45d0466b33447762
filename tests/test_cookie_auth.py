"""The cookie authentication of docs/authentication.md, over a real socket on every adapter,
with the Cookie headers real browsers send."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.helpers import Client, ServerFactory
from wsroom import ConnectionManager, Handshake

ROOT = Path(__file__).resolve().parent.parent


def _docs_example() -> dict[str, Any]:
    """The first program of docs/authentication.md, run as a module (not __main__)."""
    text = (ROOT / "docs" / "authentication.md").read_text()
    path = re.findall(r'```python\n--8<-- "([^"]+)"', text)[0]
    return runpy.run_path(str(ROOT / path), run_name="authentication_example")


# Each holds the session cookie of alice after something SimpleCookie refused.
BROWSER_HEADERS = {
    "json": '_ga={"a":1,"b":2}; consent={"ads":false, "stats":true}; session=tok-alice',
    "non-ascii": "lang=fran\u00e7ais; city=\u6771\u4eac; session=tok-alice",
    "quoted": 'theme="dark mode"; session="tok-alice"',
    "empty": "; ;empty=; session=tok-alice;",
    "duplicate": "session=tok-alice; session=tok-bob",
    "malformed-first": "no-equals; =nameless; a b c; session=tok-alice",
}


@pytest.mark.parametrize("header", BROWSER_HEADERS.values(), ids=BROWSER_HEADERS.keys())
async def test_docs_cookie_authentication_accepts_browser_cookies(
    start_server: ServerFactory, header: str
) -> None:
    example = _docs_example()
    seen: list[dict[str, str]] = []

    async def authenticate(handshake: Handshake) -> str | None:
        seen.append(handshake.cookies)
        user: str | None = await example["authenticate"](handshake)
        return user

    manager = ConnectionManager(example["AppRoom"], authenticate=authenticate)
    async with start_server(manager) as url:
        # Sent as browsers do, in UTF-8 (websockets writes header values as ISO-8859-1).
        wire = header.encode().decode("latin-1")
        client = await Client.connect(url, additional_headers={"Cookie": wire})
        assert client.welcome["user"] == "alice"
        await client.join("admin:ops")  # the roles the hook stored came with the cookie
        await client.close()
    # Every transport hands over the same text: non-ASCII decoded from UTF-8 as sent.
    assert seen == [Handshake.from_target("/ws", [("Cookie", header)]).cookies]


async def test_docs_cookie_authentication_refuses_without_session(
    start_server: ServerFactory,
) -> None:
    example = _docs_example()
    manager = ConnectionManager(example["AppRoom"], authenticate=example["authenticate"])
    async with start_server(manager) as url:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(url, additional_headers={"Cookie": '_ga={"a":1}; lang=fr'})
        assert refused.value.response.status_code == 401
