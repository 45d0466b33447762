"""The demo page in a real browser: connect, chat, presence, typing, direct messages."""

from __future__ import annotations

import pytest

from tests.browser import browser_page, chromium_path
from tests.helpers import Client
from wsroom.demo import demo_server

CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs Chromium (scripts/test.sh installs it: apt-get install chromium)",
)


async def test_chat_page_end_to_end() -> None:
    assert CHROMIUM is not None
    async with demo_server("127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with browser_page(CHROMIUM) as page:
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.evaluate("document.querySelector('#name').value = 'alice'")
            await page.evaluate("document.querySelector('#connect').click()")
            await page.wait_until("document.querySelector('#me').textContent.includes('alice')")

            bob = await Client.connect(f"ws://127.0.0.1:{port}", "/ws?name=bob")
            joined = await bob.join("lobby")
            assert "alice" in joined["members"]
            await page.wait_until("document.querySelector('#members').textContent.includes('bob')")

            # Text from others is shown as text, never as markup.
            await bob.send(
                {"type": "message", "room": "lobby", "data": {"text": "hi <b>alice</b>"}}
            )
            await page.wait_until(
                "document.querySelector('#messages').textContent.includes('hi <b>alice</b>')"
            )
            assert await page.evaluate("document.querySelectorAll('#messages b').length") == 0

            await bob.send({"type": "typing", "room": "lobby"})
            await page.wait_until("document.querySelector('#typing').textContent.includes('bob')")

            await page.evaluate("document.querySelector('#message-input').value = 'hello bob'")
            await page.evaluate("document.querySelector('#send').click()")
            message = await bob.recv_type("message")
            while message["from"] == "bob":  # bob's own messages come back to him first
                message = await bob.recv_type("message")
            assert (message["from"], message["data"]) == ("alice", {"text": "hello bob"})

            await page.evaluate("document.querySelector('#message-input').value = '/dm bob psst'")
            await page.evaluate("document.querySelector('#send').click()")
            direct = await bob.recv_type("direct")
            assert (direct["from"], direct["data"]) == ("alice", {"text": "psst"})

            await bob.close()
            await page.wait_until("!document.querySelector('#members').textContent.includes('bob')")
