from __future__ import annotations

import pytest

from tests.helpers import ADAPTERS, ServerFactory


@pytest.fixture(params=sorted(ADAPTERS))
def start_server(request: pytest.FixtureRequest) -> ServerFactory:
    """Each adapter in turn: ``async with start_server(manager) as url``."""
    return ADAPTERS[request.param]
