from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from tests.helpers import ADAPTERS, ServerFactory
from tests.nginx_support import nginx_websockets_server
from tests.redis_support import shared_redis_url
from wsroom.conformance import ABORT, Server, over_redis

if TYPE_CHECKING:
    from tests.playwright_support import Pages

# The conformance suite (wsroom.conformance, collected from src/ through testpaths) runs
# here as an adapter's author runs it: this plugin, and the servers named below.
pytest_plugins = ["wsroom.conformance.plugin"]

# The adapters whose Transport.abort() cuts the TCP connection; the suite runs the others
# as lacking ABORT (an ASGI application cannot reach its socket).
CUTS_TCP = {"websockets", "websockets_sync", "aiohttp"}


def conformance_servers() -> dict[str, Server]:
    """Every adapter of ADAPTERS on one node, and on two nodes of that adapter sharing rooms
    through Redis (skipped without a Redis server). A server to add to the suite (another
    front end, a proxy in front of an adapter) is one more entry here."""
    redis_url = shared_redis_url()
    # scripts/test.sh runs the two-node and nginx servers on its first interpreter only:
    # what they add (the backplane, a proxy) is the same Python code on every interpreter,
    # whose other tests cover it, and they double the suite's time.
    one_node_only = os.environ.get("WSROOM_CONFORMANCE_ONE_NODE") == "1"
    servers = {}
    for name, factory in ADAPTERS.items():
        one = Server(factory, lacks=set() if name in CUTS_TCP else {ABORT})
        servers[name] = one
        if not one_node_only:
            servers[f"{name}+redis"] = over_redis(one, redis_url)
    if not one_node_only:
        # The deployment recipe's nginx (docs/operating.md) in front of the websockets
        # adapter.
        servers["websockets+nginx"] = Server(nginx_websockets_server, lacks={ABORT})
    return servers


def pytest_wsroom_servers(config: pytest.Config) -> dict[str, Server]:
    """The servers the conformance suite runs against: :func:`conformance_servers`."""
    return conformance_servers()


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
