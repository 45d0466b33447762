"""Pages in Debian's Chromium through Playwright (never a browser of Playwright's own), and
what none of them may do: log a console error, throw, or break the Content-Security-Policy.

Tests take the ``pages`` fixture (tests/conftest.py); screenshots go to ``ARTIFACTS``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from tests.helpers import TIMEOUT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

ARTIFACTS = Path(__file__).parent / "artifacts"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# Waits for what the page shows: Playwright polls until it is so, or fails after this.
expect.set_options(timeout=TIMEOUT * 1000)

# What Chromium logs by itself when a server is down or refuses the handshake. Only the tests
# that stop or refuse a server on purpose allow these; nothing else may reach the console.
SERVER_DOWN = (
    re.compile(r"^WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws[^']*' failed: "),
    re.compile(r"^Failed to load resource: net::ERR_CONNECTION_REFUSED$"),
)
# The part of SERVER_DOWN every test may cause: its server stopped at its end.
CONNECTION_REFUSED = (
    re.compile(
        r"^WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws[^']*' failed: "
        r"Error in connection establishment: net::ERR_CONNECTION_REFUSED$"
    ),
    SERVER_DOWN[1],
)
REFUSED = (
    re.compile(
        r"^WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws[^']*' failed: "
        r"Error during WebSocket handshake: Unexpected response code: 403$"
    ),
    re.compile(r"^Failed to load resource: the server responded with a status of 403"),
)

# Reports every CSP violation to the test, whatever the console says about it.
CSP_PROBE = """
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolation(`${event.violatedDirective} blocked ${event.blockedURI || "inline"}`);
}, true);
"""


class Pages:
    """Opens pages in a browser and records what none of them may do: log an error to the
    console, throw, or break the Content-Security-Policy."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.problems: list[str] = []
        # Chromium logs a failed connection by itself whenever a server stops, which every
        # test does at its end while its pages are still open and about to reconnect: what
        # the page shows is asserted instead.
        self.allowed: tuple[re.Pattern[str], ...] = CONNECTION_REFUSED

    def allow(self, *patterns: re.Pattern[str]) -> None:
        """Console errors this test causes on purpose (a server it stops, a name refused)."""
        self.allowed += patterns

    async def open(self, url: str, **options: Any) -> Page:
        """A page in a context of its own (its own storage: another person)."""
        options.setdefault("viewport", DESKTOP)
        context = await self.browser.new_context(**options)
        context.set_default_timeout(TIMEOUT * 1000)
        await context.expose_function("__cspViolation", self._csp)
        await context.add_init_script(CSP_PROBE)
        page = await context.new_page()
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))
        await page.goto(url)
        return page

    def _console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        if not any(pattern.search(message.text) for pattern in self.allowed):
            self.problems.append(f"console error: {message.text}")

    def _csp(self, violation: str) -> None:
        self.problems.append(f"CSP violation: {violation}")

    def check(self) -> None:
        assert not self.problems, "\n".join(self.problems)


@asynccontextmanager
async def open_browser() -> AsyncIterator[Pages]:
    """Debian's Chromium under Playwright; on exit, fails the test if a page misbehaved."""
    assert CHROMIUM is not None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            opened = Pages(browser)
            yield opened
            opened.check()
        finally:
            await browser.close()
