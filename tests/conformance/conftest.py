"""The conformance suite runs on every adapter, and on two nodes sharing rooms over Redis."""

from __future__ import annotations

import pytest

from tests.helpers import ADAPTERS, ServerFactory
from tests.nginx_support import nginx_websockets_server
from tests.redis_support import two_nodes_over_redis

CONFORMANCE = {**ADAPTERS, "redis": two_nodes_over_redis, "nginx": nginx_websockets_server}


@pytest.fixture(params=sorted(CONFORMANCE))
def start_server(request: pytest.FixtureRequest) -> ServerFactory:
    """Each adapter in turn, then two nodes over Redis: ``async with start_server(m) as url``."""
    return CONFORMANCE[request.param]
