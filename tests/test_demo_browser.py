"""The demo page in a real browser: Playwright drives Debian's Chromium (never a browser of
its own), as two people would use the chat, on every transport, through server restarts,
and on small screens. Every page must run without a console error or a CSP violation.

Screenshots are saved under tests/artifacts/ for a person to look at.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.helpers import TIMEOUT, Client, demo_command
from tests.playwright_support import (
    ARTIFACTS,
    CHROMIUM,
    PHONE,
    REFUSED,
    SERVER_DOWN,
    Pages,
)
from tests.redis_support import delete_prefix, fresh_prefix, shared_redis_url
from wsroom.demo import create_manager, demo_server

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs Debian's Chromium (scripts/test.sh installs it: apt-get install chromium)",
)


async def log_in(page: Page, name: str, room: str = "lobby") -> None:
    await page.fill("#name", name)
    await page.fill("#room", room)
    await page.click("#connect")
    await expect(page.locator("#status-text")).to_have_text(f"connected as {name}")
    await expect(page.locator("#conv-sub")).to_have_text(re.compile(r"^\d+ members?$"))


async def say(page: Page, text: str) -> None:
    """Type a message and press Enter, as a person does."""
    await page.fill("#message-input", text)
    await page.press("#message-input", "Enter")


def bubbles(page: Page) -> Any:
    """The messages of the open conversation, oldest first."""
    return page.locator("#messages .bubble")


def conversation(page: Page, label: str) -> Any:
    return page.locator(".conv", has=page.get_by_text(label, exact=True))


@asynccontextmanager
async def demo(port: int = 0, **manager_options: Any) -> AsyncIterator[int]:
    """The demo on the asyncio transport in this process; yields its port."""
    manager = create_manager(**manager_options)
    async with demo_server("127.0.0.1", port, manager) as server:
        yield server.sockets[0].getsockname()[1]


@pytest.mark.timeout(90)
async def test_two_people_chat(pages: Pages) -> None:
    async with demo() as port:
        url = f"http://127.0.0.1:{port}/"
        alice = await pages.open(url)
        # The favicon is the server's own.
        assert await alice.get_attribute("link[rel=icon]", "href") == "/favicon.svg"
        favicon = await alice.request.get(f"{url}favicon.svg")
        assert favicon.ok and favicon.headers["content-type"].startswith("image/svg+xml")
        await expect(alice.locator("#name")).to_have_attribute("maxlength", "32")
        await log_in(alice, "alice")
        # One connection state in the header, and a new room says it is empty.
        await expect(alice.get_by_text(re.compile("connected"))).to_have_count(1)
        await expect(alice.locator("#empty")).to_have_text("No messages yet.")

        bob = await pages.open(url)
        await log_in(bob, "bob")
        await expect(alice.locator("#messages .line")).to_have_text(["bob joined"])
        await expect(alice.locator("#members li")).to_have_text(["alice (you)", "bob"])
        await expect(bob.locator("#members li")).to_have_text(["alice", "bob (you)"])

        # Typed and sent with Enter; the sender's copy gets its tick once stored.
        await say(alice, "hello bob")
        await expect(bubbles(bob).locator(".text")).to_have_text(["hello bob"])
        await expect(bubbles(alice)).to_have_count(1)
        mine = bubbles(alice).first
        await expect(mine).to_have_class(re.compile(r"\bmine\b"))
        await expect(mine).to_have_attribute("data-state", "delivered")
        await expect(mine.locator(".tick")).to_have_text("✓")
        await expect(alice.locator("#empty")).to_be_hidden()

        # Sent with the button; markup from others is shown as text.
        await bob.fill("#message-input", "hi <b>alice</b>")
        await bob.click("#send")
        await expect(bubbles(alice).locator(".text")).to_have_text(["hello bob", "hi <b>alice</b>"])
        assert await alice.locator("#messages b").count() == 0

        # Typing shows, and a direct message from that user ends it at once (it would
        # otherwise stay up to 3 s): the expectation's timeout is shorter than that.
        await bob.fill("#message-input", "psst, alice")
        await expect(alice.locator("#typing")).to_have_text("bob is typing…")
        await bob.fill("#message-input", "/dm alice psst")
        await bob.press("#message-input", "Enter")
        await expect(alice.locator("#typing")).to_have_text("", timeout=1500)

        # The direct message has a conversation of its own, with an unread badge; the room
        # does not show it.
        await expect(bob.locator("#conv-title")).to_have_text("@alice")
        await expect(bubbles(bob).first).to_have_attribute("data-state", "delivered")
        await expect(conversation(alice, "@bob").locator(".badge")).to_have_text("1")
        await expect(alice.locator("#conv-title")).to_have_text("#lobby")
        await expect(bubbles(alice)).to_have_count(2)
        await expect(alice.locator("#messages")).not_to_contain_text("psst")
        await expect(alice).to_have_title("(1) wsroom demo")
        await conversation(alice, "@bob").get_by_role("button", name="@bob").click()
        await expect(bubbles(alice).locator(".text")).to_have_text(["psst"])
        await expect(conversation(alice, "@bob").locator(".badge")).to_have_count(0)

        # Answered in that conversation; bob's page files it under @alice.
        await say(alice, "what is it?")
        await expect(bubbles(alice).last).to_have_attribute("data-state", "delivered")
        await expect(bubbles(bob).locator(".text")).to_have_text(["psst", "what is it?"])

        # A room message from bob also ends his typing at once.
        await conversation(bob, "#lobby").get_by_role("button", name="#lobby").click()
        await bob.fill("#message-input", "one more")
        await conversation(alice, "#lobby").get_by_role("button", name="#lobby").click()
        await expect(alice.locator("#typing")).to_have_text("bob is typing…")
        await bob.press("#message-input", "Enter")
        await expect(alice.locator("#typing")).to_have_text("", timeout=1500)

        # A member opens a direct conversation with a click.
        await alice.locator("#members").get_by_role("button", name="bob").click()
        await expect(alice.locator("#conv-title")).to_have_text("@bob")

        # Disconnected, the login card is back and the members list is not left stale.
        await alice.click("#disconnect")
        await expect(alice.locator("#login")).to_be_visible()
        await expect(alice.locator("#status-text")).to_have_text("disconnected")
        await expect(alice.locator("#members li")).to_have_count(0)
        # Back: her message from the room's history is shown as delivered.
        await log_in(alice, "alice")
        await expect(bubbles(alice).locator(".text")).to_have_text(
            ["hello bob", "hi <b>alice</b>", "one more"]
        )
        await expect(bubbles(alice).first).to_have_attribute("data-state", "delivered")
        await expect(bubbles(alice).first.locator(".tick")).to_have_text("✓")
        await expect(bubbles(alice).nth(1).locator(".tick")).to_have_count(0)

        # A direct message to someone offline is marked as not delivered, with the reason.
        await say(alice, "/dm nobody are you there?")
        await expect(alice.locator("#conv-title")).to_have_text("@nobody")
        await expect(bubbles(alice).first).to_have_attribute("data-state", "failed")
        await expect(alice.locator("#messages .line.error")).to_contain_text("error user_offline")

        await bob.context.close()
        await conversation(alice, "#lobby").get_by_role("button", name="#lobby").click()
        await expect(alice.locator("#messages .line").last).to_have_text("bob left")
        await expect(alice.locator("#members li")).to_have_text(["alice (you)"])


@pytest.mark.timeout(90)
async def test_page_recovers_what_it_missed_while_its_server_restarted_over_redis(
    pages: Pages,
) -> None:
    # WSROOM_TEST_REDIS_URL, else the machine's Redis on 6379.
    redis_url = shared_redis_url()
    if redis_url is None:
        pytest.skip("no Redis server (scripts/test.sh starts one)")
    pages.allow(*SERVER_DOWN)
    # Keys of this test's own, on a Redis that other tests and demos may share.
    prefix = fresh_prefix()
    try:
        async with AsyncExitStack() as first, demo(redis_url=redis_url, prefix=prefix) as other:
            port = await first.enter_async_context(demo(redis_url=redis_url, prefix=prefix))
            page = await pages.open(f"http://127.0.0.1:{port}/", viewport=PHONE)
            await log_in(page, "alice")
            bob = await Client.connect(f"ws://127.0.0.1:{other}", "/ws?name=bob")
            await bob.join("lobby")

            async def post(text: str) -> None:
                ack = await bob.request(
                    {"type": "message", "room": "lobby", "data": {"text": text}}
                )
                assert ack["type"] == "ack", ack

            texts = [f"message {n}" for n in range(1, 9)]
            for text in texts[:3]:
                await post(text)
            await expect(bubbles(page).locator(".text")).to_have_text(texts[:3])

            await first.aclose()  # the page's server stops
            await expect(page.locator("#status-text")).to_contain_text("reconnecting")
            for text in texts[3:]:  # posted through the other server meanwhile
                await post(text)
            async with demo(port, redis_url=redis_url, prefix=prefix):
                await expect(page.locator("#messages .line.ok")).to_have_text(
                    ["reconnected"], timeout=TIMEOUT * 4000
                )
                await expect(page.locator("#status-text")).to_have_text("connected as alice")
                # Every message exactly once, in order, and nothing said to be missing.
                await expect(bubbles(page).locator(".text")).to_have_text(texts)
                await expect(page.locator("#messages .notice")).to_have_count(0)
            await bob.close()
    finally:
        await delete_prefix(redis_url, prefix)


@pytest.mark.timeout(90)
async def test_page_says_messages_were_missed_when_its_server_restarted_in_memory(
    pages: Pages,
) -> None:
    pages.allow(*SERVER_DOWN)
    async with AsyncExitStack() as first:
        port = await first.enter_async_context(demo())
        page = await pages.open(f"http://127.0.0.1:{port}/")
        await log_in(page, "alice")
        await say(page, "before the restart")
        await expect(bubbles(page).last).to_have_attribute("data-state", "delivered")
        await first.aclose()
        await expect(page.locator("#status-text")).to_contain_text("reconnecting")
        # The members list is marked as possibly out of date while offline.
        await expect(page.locator("#members-note")).to_contain_text("out of date")
        async with demo(port):
            # A restarted process has forgotten its rooms: the page cannot know what it missed.
            await expect(page.locator("#messages .notice")).to_have_text(
                ["some messages may have been missed"], timeout=TIMEOUT * 4000
            )
            await expect(page.locator("#status-text")).to_have_text("connected as alice")
            await expect(page.locator("#members-note")).to_have_text("")
            await expect(bubbles(page).locator(".text")).to_have_text(["before the restart"])


@pytest.mark.timeout(90)
async def test_page_stays_in_its_rooms_after_reconnecting(pages: Pages) -> None:
    pages.allow(*SERVER_DOWN)
    async with AsyncExitStack() as first:
        port = await first.enter_async_context(demo())
        page = await pages.open(f"http://127.0.0.1:{port}/")
        await log_in(page, "alice")
        await first.aclose()
        await expect(page.locator("#status-text")).to_contain_text("reconnecting")
        async with demo(port):
            await expect(page.locator("#messages .line.ok")).to_have_text(
                ["reconnected"], timeout=TIMEOUT * 4000
            )
            await expect(page.locator("#messages .notice")).to_have_count(1)
            bob = await Client.connect(f"ws://127.0.0.1:{port}", "/ws?name=bob")
            await bob.join("lobby")
            await bob.send({"type": "message", "room": "lobby", "data": {"text": "still there?"}})
            await say(page, "yes")
            await expect(bubbles(page).locator(".text")).to_have_text(["still there?", "yes"])
            await expect(bubbles(page).last).to_have_attribute("data-state", "delivered")
            await bob.close()


CONTROLS = [
    "message-input",
    "send",
    "join-room",
    "join-button",
    "disconnect",
    "toggle-members",
]
SMALL_SCREENS: dict[str, dict[str, Any]] = {
    "390x844": {"viewport": PHONE},
    "320x568": {"viewport": {"width": 320, "height": 568}},
    "pixel7": {
        "viewport": {"width": 412, "height": 839},
        "device_scale_factor": 2.625,
        "is_mobile": True,
        "has_touch": True,
    },
}


async def outside_viewport(page: Page, ids: list[str]) -> list[str]:
    """The elements of ``ids`` not wholly inside the viewport (or not displayed)."""
    found: list[str] = await page.evaluate(
        """(ids) => ids.filter((id) => {
            const box = document.getElementById(id).getBoundingClientRect();
            return !(box.width > 0 && box.height > 0 && box.left >= 0 && box.top >= 0
                     && box.right <= innerWidth && box.bottom <= innerHeight);
        })""",
        ids,
    )
    return found


async def scrolls_sideways(page: Page) -> bool:
    wide: bool = await page.evaluate("document.documentElement.scrollWidth > innerWidth")
    return wide


@pytest.mark.timeout(90)
@pytest.mark.parametrize("screen", sorted(SMALL_SCREENS))
async def test_small_screens_show_every_control(pages: Pages, screen: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    async with demo() as port:
        options = SMALL_SCREENS[screen]
        width = options["viewport"]["width"]
        page = await pages.open(f"http://127.0.0.1:{port}/", **options)
        assert await outside_viewport(page, ["name", "room", "connect"]) == []
        assert not await scrolls_sideways(page)
        long_room = "a-room-with-a-very-long-name-" + "x" * 60
        await log_in(page, "someone-with-a-long-name-32-chr", long_room)
        bob = await Client.connect(f"ws://127.0.0.1:{port}", "/ws?name=bob")
        await bob.join(long_room)
        await bob.send(
            {"type": "message", "room": long_room, "data": {"text": "an unbroken " + "y" * 300}}
        )
        await say(page, "a long message of mine, " + "with many words " * 20)
        await say(page, "z" * 300)
        await expect(bubbles(page)).to_have_count(3)
        await expect(page.locator("#messages .bubble.mine[data-state=delivered]")).to_have_count(2)
        assert await outside_viewport(page, CONTROLS) == []
        assert not await scrolls_sideways(page)
        # Own messages are wholly visible, not cut at the right edge.
        for index in range(3):
            box = await bubbles(page).nth(index).bounding_box()
            assert box is not None
            assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5
        last = await bubbles(page).last.bounding_box()
        messages = await page.locator("#messages").bounding_box()
        assert last is not None and messages is not None
        assert last["y"] + last["height"] <= messages["y"] + messages["height"] + 0.5
        await page.screenshot(path=ARTIFACTS / f"demo-{screen}.png")

        # The members drawer opens over the chat; a member in it starts a conversation.
        await page.click("#toggle-members")
        await expect(page.locator("#members-panel")).to_be_visible()
        await expect(page.locator("#toggle-members")).to_have_attribute("aria-expanded", "true")
        entry = page.locator("#members").get_by_role("button", name="bob")
        assert await outside_viewport(page, ["close-members"]) == []
        await expect(page.locator("#members li")).to_have_text(
            ["bob", "someone-with-a-long-name-32-chr (you)"]
        )
        for item in await page.locator("#members li").all():
            box = await item.bounding_box()
            assert box is not None and box["x"] + box["width"] <= width + 0.5
        assert not await scrolls_sideways(page)
        await page.screenshot(path=ARTIFACTS / f"demo-{screen}-members.png")
        await entry.click()
        await expect(page.locator("#members-panel")).to_be_hidden()
        await expect(page.locator("#conv-title")).to_have_text("@bob")
        await expect(page.locator("#empty")).to_have_text("No messages yet.")
        assert await outside_viewport(page, CONTROLS) == []
        await bob.close()


@pytest.mark.timeout(60)
async def test_desktop_screenshot(pages: Pages) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    async with demo() as port:
        url = f"http://127.0.0.1:{port}/"
        login = await pages.open(url, viewport=PHONE)
        await login.screenshot(path=ARTIFACTS / "demo-390x844-login.png")
        page = await pages.open(url)
        await log_in(page, "alice")
        other = await pages.open(url)
        await log_in(other, "bob")
        await say(other, "Hi! Is anyone here?")
        await say(page, "Hello bob, welcome to the demo.")
        await say(other, "/dm alice a private word")
        await expect(conversation(page, "@bob").locator(".badge")).to_have_text("1")
        await conversation(other, "#lobby").get_by_role("button", name="#lobby").click()
        await other.fill("#message-input", "typing")
        await expect(page.locator("#typing")).to_have_text("bob is typing…")
        await page.fill("#join-room", "support")
        await page.click("#join-button")
        await expect(page.locator("#conv-sub")).to_have_text("1 member")
        await conversation(page, "#lobby").get_by_role("button", name="#lobby").click()
        assert await outside_viewport(page, CONTROLS[:-1]) == []
        assert not await scrolls_sideways(page)
        await page.screenshot(path=ARTIFACTS / "demo-1280x800.png")


@asynccontextmanager
async def demo_process(transport: str) -> AsyncIterator[int]:
    """``wsroom demo --transport TRANSPORT`` in a process of its own; yields its port, and
    checks that it stops cleanly on SIGINT."""
    async with demo_command("--transport", transport) as (port, process):
        yield port
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), TIMEOUT) == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["asyncio", "sync", "starlette"])
async def test_every_transport_serves_the_page(pages: Pages, transport: str) -> None:
    pages.allow(*SERVER_DOWN)
    async with demo_process(transport) as port:
        page = await pages.open(f"http://127.0.0.1:{port}/", viewport=PHONE)
        await log_in(page, "carol")
        await say(page, f"hello over {transport}")
        await expect(bubbles(page)).to_have_count(1)
        await expect(bubbles(page).first).to_have_attribute("data-state", "delivered")
    # The command stopped: the page says so and tries again.
    await expect(page.locator("#status-text")).to_contain_text("reconnecting")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["asyncio", "sync", "starlette"])
async def test_a_refused_name_returns_to_the_login_card(pages: Pages, transport: str) -> None:
    pages.allow(*REFUSED, re.compile(r"status of 426 \(Upgrade Required\)$"))
    async with demo_process(transport) as port:
        page = await pages.open(f"http://127.0.0.1:{port}/", viewport=PHONE)
        await page.fill("#name", "Server")
        await page.click("#connect")
        await expect(page.locator("#login-error")).to_contain_text("HTTP 403")
        await expect(page.locator("#login")).to_be_visible()
        await expect(page.locator("#status-text")).to_have_text("disconnected")
        if transport == "asyncio":
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=ARTIFACTS / "demo-390x844-refused.png")
        await log_in(page, "Serveur")
