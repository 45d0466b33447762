"""The chat page of docs/browser-client.md (examples/browser_chat.html) in Debian's Chromium:
two people chat by typing, and a restart of its in-memory server brings the page back with
its notice that messages may have been missed, and nothing shown twice."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from examples import browser_chat
from playwright.async_api import Page, expect

from tests.helpers import free_port
from tests.playwright_support import CHROMIUM, PHONE, SERVER_DOWN, Pages
from wsroom import ConnectionManager
from wsroom.adapters.websockets import serve

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs Debian's Chromium (scripts/test.sh installs it: apt-get install chromium)",
)


@asynccontextmanager
async def example_server(port: int) -> AsyncIterator[None]:
    """What ``python -m examples.browser_chat PORT`` serves, on this test's loop."""
    manager = ConnectionManager(browser_chat.ChatRoom, authenticate=browser_chat.authenticate)
    async with serve(manager, "127.0.0.1", port, process_request=browser_chat.routes):
        yield


async def send(page: Page, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")
    await expect(page.locator("#text")).to_have_value("")  # cleared once the ack came


@pytest.mark.timeout(60)
async def test_two_people_chat_on_the_example_page(pages: Pages) -> None:
    port = free_port()
    async with example_server(port):
        alice = await pages.open(f"http://127.0.0.1:{port}/?user=alice", viewport=PHONE)
        await expect(alice.locator("#state")).to_have_text("open")
        await send(alice, "hello, anyone?")
        bob = await pages.open(f"http://127.0.0.1:{port}/?user=bob")
        # Bob's page shows the history, and Alice's sees Bob arrive.
        await expect(bob.locator("#log p")).to_have_text(["alice: hello, anyone?"])
        await expect(alice.locator("#members")).to_have_text("alice, bob")
        await send(bob, "hi alice")
        await expect(alice.locator("#log p")).to_have_text(
            ["alice: hello, anyone?", "bob: hi alice"]
        )
        box = await alice.locator("form button").bounding_box()
        assert box is not None and box["x"] + box["width"] <= PHONE["width"]


@pytest.mark.timeout(60)
async def test_the_example_page_comes_back_after_a_restart_and_says_what_it_missed(
    pages: Pages,
) -> None:
    pages.allow(*SERVER_DOWN)
    port = free_port()
    async with example_server(port):
        page = await pages.open(f"http://127.0.0.1:{port}/?user=alice")
        await expect(page.locator("#state")).to_have_text("open")
        await send(page, "before the restart")
    await expect(page.locator("#state")).to_have_text(re.compile(r"^reconnecting in \d+ ms$"))
    async with example_server(port):
        await expect(page.locator("#state")).to_have_text("open", timeout=20_000)
        # The restarted server kept nothing in memory: the page says so, and shows the
        # message from before once, not twice.
        await expect(page.locator("#log p.notice")).to_have_text(
            ["some messages may have been missed"]
        )
        await send(page, "after the restart")
        await expect(page.locator("#log p")).to_have_text(
            [
                "alice: before the restart",
                "some messages may have been missed",
                "alice: after the restart",
            ]
        )
