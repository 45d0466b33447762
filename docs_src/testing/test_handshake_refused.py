import pytest

from wsroom import ConnectionManager, Handshake, HandshakeRejected
from wsroom.testing import TestClient

pytestmark = pytest.mark.asyncio


def authenticate(handshake: Handshake) -> str | None:
    return "alice" if handshake.query.get("token") == "s3cret" else None


@pytest.fixture
def manager() -> ConnectionManager:
    return ConnectionManager(authenticate=authenticate)


async def test_no_token_no_entry(manager: ConnectionManager) -> None:
    with pytest.raises(HandshakeRejected) as refused:
        async with TestClient(manager, path="/ws?token=wrong"):
            pass
    assert refused.value.status == 401
