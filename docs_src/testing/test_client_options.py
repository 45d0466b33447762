import pytest

from wsroom import ConnectionManager
from wsroom.testing import TestClient

pytestmark = pytest.mark.asyncio


async def test_every_option() -> None:
    manager = ConnectionManager()
    async with TestClient(
        manager,
        # Optional: skip the handshake checks, connect as this user (None: anonymous).
        user="alice",
        # The request path, query string included (default "/ws").
        path="/ws?token=abc",
        # A mapping or (name, value) pairs (default: none).
        headers={"Origin": "https://example.com"},
        # False: a client that never reads.
        reading=True,
        # Default seconds receive() and request() wait.
        timeout=2.0,
        # True: offer wsroom.v1.batch, as wsroom.js does, and read batches.
        batch=False,
    ) as alice:
        assert alice.user == "alice"
