import pytest

from wsroom import Connection, ConnectionManager, Message, Room
from wsroom.testing import TestClient

pytestmark = pytest.mark.asyncio


class ScoreRoom(Room):
    def on_scores(self, conn: Connection, message: Message) -> None:
        # Three frames queued at once: they wait together in the queue.
        for user in ("alice", "bob", "carol"):
            conn.send_event("score", {"user": user, "points": 0}, room=self.name)


async def test_frames_queued_together_arrive_in_one_batch() -> None:
    manager = ConnectionManager(ScoreRoom)
    async with TestClient(manager, user="alice", batch=True) as alice:
        assert alice.batched  # the server selected wsroom.v1.batch
        await alice.join("game")
        await alice.send({"type": "scores", "room": "game"})
        batch = await alice.receive_batch()  # the frames of one WebSocket message
        assert [frame["data"]["user"] for frame in batch] == ["alice", "bob", "carol"]
        # A frame alone leaves at once, as a plain object: a list of one here.
        ref = alice.next_ref()
        await alice.send({"type": "ping", "ref": ref})
        assert await alice.receive_batch() == [{"type": "pong", "ref": ref}]


async def test_receive_reads_a_batch_frame_by_frame() -> None:
    manager = ConnectionManager(ScoreRoom)
    async with TestClient(manager, user="bob", batch=True) as bob:
        await bob.join("game")
        await bob.send({"type": "scores", "room": "game"})
        assert (await bob.receive())["data"]["user"] == "alice"
        assert (await bob.receive())["data"]["user"] == "bob"
        assert (await bob.receive())["data"]["user"] == "carol"
        pong = await bob.request({"type": "ping"})
        assert pong == {"type": "pong", "ref": 2}
