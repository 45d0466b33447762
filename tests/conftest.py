from __future__ import annotations

import pytest

from tests.helpers import ADAPTERS, ServerFactory
from tests.redis_support import shared_redis_url


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
