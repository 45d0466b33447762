"""Drive headless Chromium over the DevTools protocol, to test pages as a person uses them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import websockets

from tests.helpers import TIMEOUT


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Page:
    """One browser tab."""

    def __init__(self, cdp: websockets.ClientConnection) -> None:
        self._cdp = cdp
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        await self._cdp.send(json.dumps({"id": message_id, "method": method, "params": params}))
        async with asyncio.timeout(TIMEOUT):
            while True:
                message = json.loads(await self._cdp.recv())
                if message.get("id") == message_id:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message.get("result", {})
                    return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_until(self, expression: str, timeout: float = TIMEOUT) -> Any:
        """Poll a JavaScript condition until it is truthy (the page has no event to await)."""
        async with asyncio.timeout(timeout):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await asyncio.sleep(0.05)

    async def goto(self, url: str) -> None:
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)
        await self.wait_until("document.readyState === 'complete'")


@asynccontextmanager
async def browser_page(executable: str) -> AsyncIterator[Page]:
    """A headless Chromium with one blank tab, stopped on exit."""
    # Chromium's helper processes may still write to the profile as it is removed.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(  # noqa: ASYNC220 - started once; its output is read in a thread
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: stop its helpers with it
        )
        try:
            assert process.stderr is not None
            endpoint = await asyncio.wait_for(
                asyncio.to_thread(_devtools_endpoint, process.stderr), TIMEOUT * 2
            )
            port = endpoint.split(":")[2].split("/")[0]
            tabs = await asyncio.to_thread(_json, f"http://127.0.0.1:{port}/json")
            page = next(tab for tab in tabs if tab["type"] == "page")
            async with websockets.connect(page["webSocketDebuggerUrl"], max_size=None) as cdp:
                yield Page(cdp)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            if process.stderr is not None:
                process.stderr.close()


def _devtools_endpoint(stderr: Any) -> str:
    for line in stderr:
        if line.startswith("DevTools listening on "):
            return str(line.split(" ", 3)[3].strip())
    raise RuntimeError("Chromium exited before opening its DevTools endpoint")


def _json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return json.load(response)
