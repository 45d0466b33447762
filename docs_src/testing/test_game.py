from typing import Any

import pytest

from wsroom import Connection, ConnectionManager, Limits, Message, ProtocolError, Room
from wsroom.testing import TestClient

pytestmark = pytest.mark.asyncio  # or set asyncio_mode = "auto" in your pytest configuration


class GameRoom(Room):
    history_size = 10

    def can_join(self, conn: Connection, data: Any) -> bool:
        # "private:" rooms need the password in the join's data.
        return not self.name.startswith("private:") or data == "letmein"

    async def on_move(self, conn: Connection, message: Message) -> None:
        # A custom type: {"type": "move", "room": "...", "data": {"x": 1, "y": 2}}
        if not isinstance(message.data, dict) or not {"x", "y"} <= message.data.keys():
            raise ProtocolError("invalid_message", "a move needs x and y")
        await self.broadcast_event("moved", {"user": conn.user, **message.data}, exclude=conn)

    def on_score(self, conn: Connection, message: Message) -> dict[str, int]:
        # Answers with data: {"type": "ack", "ref": ..., "data": {"alice": 0}}
        return {user: 0 for user in sorted({c.user for c in self.connections if c.user})}


@pytest.fixture
def manager() -> ConnectionManager:
    return ConnectionManager(GameRoom)


async def test_join_and_message(manager: ConnectionManager) -> None:
    async with TestClient(manager, user="alice") as alice, TestClient(manager, user="bob") as bob:
        joined = await alice.join("table:1")
        assert joined["type"] == "joined"
        assert joined["members"] == ["alice"]

        await bob.join("table:1")
        assert await alice.receive() == {
            "type": "presence",
            "room": "table:1",
            "event": "join",
            "user": "bob",
        }

        ack = await bob.message("table:1", "hello")
        assert ack["type"] == "ack"
        frame = await alice.receive()
        assert frame["type"] == "message"
        assert (frame["id"], frame["from"], frame["data"]) == (ack["id"], "bob", "hello")


async def test_custom_type(manager: ConnectionManager) -> None:
    async with TestClient(manager, user="alice") as alice, TestClient(manager, user="bob") as bob:
        await alice.join("table:1")
        await bob.join("table:1")
        await alice.receive_type("presence")

        answer = await bob.request({"type": "move", "room": "table:1", "data": {"x": 1, "y": 2}})
        assert answer["type"] == "ack"
        assert await alice.receive() == {
            "type": "moved",
            "room": "table:1",
            "data": {"user": "bob", "x": 1, "y": 2},
        }

        error = await bob.request({"type": "move", "room": "table:1", "data": "e4"})
        assert (error["type"], error["code"]) == ("error", "invalid_message")


async def test_custom_type_answering_with_data(manager: ConnectionManager) -> None:
    async with TestClient(manager, user="alice") as alice:
        await alice.join("table:1")
        answer = await alice.request({"type": "score", "room": "table:1"})
        assert answer == {"type": "ack", "ref": answer["ref"], "data": {"alice": 0}}


async def test_private_rooms_need_the_password(manager: ConnectionManager) -> None:
    async with TestClient(manager, user="mallory") as mallory:
        refused = await mallory.join("private:vip")
        assert (refused["type"], refused["code"]) == ("error", "forbidden")
        assert manager.rooms() == []  # the refused join left nothing behind

        joined = await mallory.join("private:vip", data="letmein")
        assert joined["type"] == "joined"


async def test_a_client_that_stops_reading_is_evicted() -> None:
    manager = ConnectionManager(GameRoom, limits=Limits(max_queue=20))
    async with (
        TestClient(manager, user="stuck", reading=False) as stuck,
        TestClient(manager, user="fast") as fast,
    ):
        # A client that does not read gets no answers: send, don't request.
        await stuck.send({"type": "join", "room": "table:1"})
        await fast.join("table:1")

        for n in range(50):
            await manager.broadcast("table:1", n)

        assert stuck.connection is not None
        assert stuck.connection.close_code == 1013  # evicted
        assert manager.statistics().evictions == 1
        assert await manager.members("table:1") == ["fast"]
        # The fast client got every message, in order.
        ids = [(await fast.receive_type("message"))["id"] for _ in range(50)]
        assert ids == list(range(1, 51))
        # It never completed the closing handshake, so it was aborted (1006).
        assert await stuck.wait_closed() == 1006
