"""The admin view in a real browser: the demo with its admin view (``wsroom demo --admin``),
real clients over sockets (one of them a reader that stopped reading, evicted), and the page
in Debian's Chromium, which must show them, follow them live, show hostile names as text
and refuse a wrong token. It must run without a console error or a CSP violation.

Screenshots are saved under tests/artifacts/ for a person to look at.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
from playwright.async_api import Dialog, Page, expect

from tests import helpers
from tests.helpers import Client, wait_for
from tests.playwright_support import ARTIFACTS, CHROMIUM, DESKTOP, PHONE, REFUSED, Pages
from wsroom import ConnectionManager
from wsroom.demo import create_manager, demo_server

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs Debian's Chromium (scripts/test.sh installs it: apt-get install chromium)",
)

TOKEN = "test-token-0123456789"
# A name that is markup: the page must show it as these characters.
HOSTILE = "<img src=x onerror=alert(1)>"


async def stuck_reader(
    manager: ConnectionManager, port: int, name: str, *, evicted: bool
) -> socket.socket:
    """Connect a reader that stops reading, alone in a room, and publish to that room until
    frames wait in its queue, or until it is evicted."""
    room = f"slow-{name}"
    stuck = await asyncio.to_thread(helpers.stuck_reader, port, f"/ws?name={name}", room)
    await wait_for(lambda: bool(manager.connections_in(room)))
    conn = manager.connections_in(room)[0]
    await helpers.fall_behind(
        manager, room, (lambda: conn.closed) if evicted else (lambda: conn.queued_frames >= 3)
    )
    assert conn.close_code == (1013 if evicted else None)
    return stuck


@contextlib.asynccontextmanager
async def traffic(manager: ConnectionManager, rate: float) -> AsyncIterator[None]:
    """Server messages to ``lobby`` at about ``rate`` per second while the block runs."""

    async def publish() -> None:
        while True:
            for _ in range(max(1, int(rate / 10))):
                await manager.broadcast("lobby", {"text": "tick"})
            await asyncio.sleep(0.1)

    task = asyncio.create_task(publish())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def total(page: Page, name: str) -> str:
    return str(await page.locator(f"#total-{name}").text_content())


@pytest.mark.timeout(120)
async def test_admin_page_shows_the_server_live(pages: Pages) -> None:
    pages.allow(*REFUSED)  # the wrong token's 403, on purpose
    manager = create_manager()
    async with demo_server("127.0.0.1", 0, manager, admin_token=TOKEN) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}"
        clients = []
        for name, room in [("alice", "lobby"), ("bob", "lobby"), (HOSTILE, "lobby")]:
            client = await Client.connect(url, f"/ws?name={quote(name)}")
            await client.join(room)
            clients.append(client)
        carol = await Client.connect(url, "/ws?name=carol")
        await carol.join("games")
        await carol.join("lobby")
        clients.append(carol)
        for text in ("hello", "hi", "how are you?"):
            ack = await clients[0].request({"type": "message", "room": "lobby", "data": text})
            assert ack["type"] == "ack", ack
        # A client that leaves on its own, and one the server evicts.
        leaving = await Client.connect(url, "/ws?name=dave")
        await leaving.close()
        await wait_for(lambda: not manager.user_connections("dave"))
        stuck = await stuck_reader(manager, port, "stuck", evicted=True)
        slow = await stuck_reader(manager, port, "slowpoke", evicted=False)

        dialogs: list[str] = []
        admin = f"http://127.0.0.1:{port}/admin/?token={TOKEN}"
        async with traffic(manager, rate=40):
            page = await pages.open(admin, viewport=DESKTOP)
            page.on("dialog", lambda dialog: _dismiss(dialog, dialogs))
            await expect(page.locator("#status")).to_have_attribute("data-state", "on")
            await expect(page.locator("#total-connections")).to_have_text("5")
            await expect(page.locator("#total-users")).to_have_text("5")
            await expect(page.locator("#total-evictions")).to_have_text("1")
            # The biggest room first, its members as text.
            rooms = page.locator("#rooms li")
            await expect(rooms.locator(".name")).to_have_text(["lobby", "games", "slow-slowpoke"])
            lobby = rooms.first.locator(".chip")
            await expect(lobby).to_have_text(["alice", "bob", HOSTILE, "carol"])
            await expect(rooms.first.locator(".figure")).to_have_text("4 members")
            assert await page.locator("main img").count() == 0
            # The eviction, apart from ordinary closes, with who and why.
            evicted = page.locator("#server-closes li").first
            await expect(evicted.locator(".name")).to_have_text("stuck")
            await expect(evicted.locator(".tag")).to_have_text("evicted")
            await expect(evicted.locator(".sub")).to_contain_text("1013")
            await expect(page.locator("#closes")).to_contain_text("dave")
            await expect(page.locator("#closes .tag").first).to_have_text("evicted")
            # The reader that fell behind, its queue against the bound.
            await expect(page.locator("#queues li .name")).to_have_text(["slowpoke"])
            await expect(page.locator("#queues li .figure")).to_contain_text(" frames · ")
            # The newest connection first; the hostile name is a text node there too.
            await expect(page.locator("#connections li .name").first).to_have_text("slowpoke")
            await expect(page.locator("#connections")).to_contain_text(HOSTILE)
            await expect(page.locator("#backplane")).to_contain_text("memory")
            # Messages per second, from the counters between two snapshots.
            await expect(page.locator("#total-rate")).not_to_have_text(
                re.compile("^(\u2013|0\\.0)$")
            )

            # Live: more clients join, the counts follow without a reload.
            more = []
            for n in range(4):
                client = await Client.connect(url, f"/ws?name=erin{n}")
                await client.join("games")
                more.append(client)
            await expect(page.locator("#total-connections")).to_have_text("9")
            await expect(rooms.first.locator(".name")).to_have_text("games")
            await expect(rooms.first.locator(".figure")).to_have_text("5 members")
            await page.wait_for_timeout(3000)  # the chart gets a few seconds of traffic
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=ARTIFACTS / "admin-1280x800.png", full_page=True)

            phone = await pages.open(admin, viewport=PHONE)
            await expect(phone.locator("#total-connections")).to_have_text("9")
            await phone.wait_for_timeout(2500)
            await phone.screenshot(path=ARTIFACTS / "admin-390x844.png")
            await phone.screenshot(path=ARTIFACTS / "admin-390x844-full.png", full_page=True)
            # Nothing is wider than the phone's screen.
            width = await phone.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], width

        assert dialogs == [] and await page.evaluate("typeof window.alert") == "function"

        # A wrong token sees nothing: neither the page nor the snapshot.
        for path in ("/admin/?token=wrong", "/admin/snapshot.json?token=wrong", "/admin/"):
            answer = await page.request.get(f"http://127.0.0.1:{port}{path}")
            assert answer.status == 403, path
            assert await answer.text() == "Forbidden\n"

        for client in [*clients, *more]:
            await client.close()
        stuck.close()
        slow.close()


@pytest.mark.timeout(60)
async def test_admin_page_says_when_it_is_refused(pages: Pages) -> None:
    """An operator whose access ends (a session that expired) is told so, and the page
    stops asking."""
    from wsroom.adapters.websockets import admin_view, serve

    pages.allow(*REFUSED)
    allowed = True
    manager = ConnectionManager()
    view = admin_view(manager, lambda request: allowed)
    async with serve(manager, "127.0.0.1", 0, process_request=view) as server:
        port = server.sockets[0].getsockname()[1]
        page = await pages.open(f"http://127.0.0.1:{port}/admin/", viewport=PHONE)
        await expect(page.locator("#status")).to_have_attribute("data-state", "on")
        await expect(page.locator("#rooms")).to_have_text("No room has members.")
        allowed = False
        await expect(page.locator("#status")).to_have_attribute("data-state", "refused")
        await expect(page.locator("#status-text")).to_have_text(
            "refused by the server (HTTP 403): check your access"
        )


def _dismiss(dialog: Dialog, seen: list[str]) -> None:
    seen.append(dialog.message)
    asyncio.ensure_future(dialog.dismiss())  # noqa: RUF006 - Playwright holds it
