from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from tests.helpers import ADAPTERS, ServerFactory
from tests.redis_support import shared_redis_url

if TYPE_CHECKING:
    from tests.playwright_support import Pages


@pytest.fixture(params=sorted(ADAPTERS))
def start_server(request: pytest.FixtureRequest) -> ServerFactory:
    """Each adapter in turn: ``async with start_server(manager) as url``."""
    return ADAPTERS[request.param]


@pytest.fixture
def shared_url() -> str:
    """The shared Redis's URL; the test is skipped without one."""
    url = shared_redis_url()
    if url is None:
        pytest.skip("no Redis server (scripts/test.sh starts one)")
    return url


@pytest.fixture
async def pages() -> AsyncIterator[Pages]:
    """Pages in Debian's Chromium; the test fails if any of them logged a console error,
    threw, or broke its Content-Security-Policy."""
    # Imported here: only the browser tests need Playwright.
    from tests.playwright_support import open_browser

    async with open_browser() as opened:
        yield opened
