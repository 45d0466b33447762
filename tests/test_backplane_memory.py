"""Recovery rules and history retention of the in-memory backplane."""

from __future__ import annotations

from typing import Any

import pytest

from wsroom import ConnectionManager, Room
from wsroom.backplane.base import recovery_snapshot
from wsroom.testing import TestClient


def _history(first: int, last: int) -> list[dict[str, Any]]:
    return [{"type": "message", "id": i} for i in range(first, last + 1)]


@pytest.mark.parametrize(
    ("since", "epoch", "recovered", "ids"),
    [
        (None, None, None, [8, 9, 10]),  # no since: newest history, no verdict
        (10, "e1", True, []),  # nothing missed
        (7, "e1", True, [8, 9, 10]),  # exactly what was missed
        (8, None, True, [9, 10]),  # no epoch: judged on ids alone
        (5, "e1", False, [8, 9, 10]),  # message 6 is gone: never a partial replay
        (7, "e0", False, [8, 9, 10]),  # another epoch: ids mean nothing
        (11, "e1", False, [8, 9, 10]),  # ahead of the room: the sequence restarted
        (11, None, False, [8, 9, 10]),
    ],
)
def test_recovery_rules(
    since: int | None, epoch: str | None, recovered: bool | None, ids: list[int]
) -> None:
    snapshot = recovery_snapshot(_history(7, 10), 10, "e1", since=since, epoch=epoch, limit=3)
    assert snapshot.recovered is recovered
    assert [frame["id"] for frame in snapshot.history] == ids
    assert (snapshot.offset, snapshot.epoch) == (10, "e1")


def test_recovery_without_history() -> None:
    assert recovery_snapshot([], 0, "e", since=0, epoch="e", limit=0).recovered is True
    assert recovery_snapshot([], 5, "e", since=4, epoch="e", limit=0).recovered is False


class Short(Room):
    history_size = 3
    history_ttl = 0.05


async def test_history_expires_after_ttl_once_the_room_is_empty() -> None:
    manager = ConnectionManager(Short)
    async with TestClient(manager, user="a") as a:
        joined = await a.join("r")
        await a.message("r", 1)
        await a.leave("r")
        # Still there right after the room emptied...
        again = await a.join("r")
        assert (again["epoch"], again["offset"]) == (joined["epoch"], 1)
        await a.leave("r")
        # ...gone once the TTL passed with nobody in the room: a new epoch, ids restart.
        backplane = manager.backplane
        for stream in backplane._streams.values():  # type: ignore[attr-defined]
            stream.expires = 0.0
        fresh = await a.join("r2")
        assert fresh["offset"] == 0
        later = await a.join("r")
        assert later["epoch"] != joined["epoch"] and later["offset"] == 0


async def test_history_of_a_room_with_members_never_expires() -> None:
    manager = ConnectionManager(Short)
    async with TestClient(manager, user="a") as a:
        joined = await a.join("r")
        await a.message("r", 1)
        for stream in manager.backplane._streams.values():  # type: ignore[attr-defined]
            stream.expires = 0.0
        await a.join("other")
        ack = await a.message("r", 2)
        assert ack["id"] == 2
        assert (await a.join("r"))["epoch"] == joined["epoch"]


async def test_history_is_bounded_and_oldest_first() -> None:
    manager = ConnectionManager(Short)
    async with TestClient(manager, user="a") as a:
        await a.join("r")
        for index in range(5):
            await a.message("r", index)
        history = (await a.join("r"))["history"]
        assert [m["data"] for m in history] == [2, 3, 4]
        assert [m["id"] for m in history] == [3, 4, 5]
