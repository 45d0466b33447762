"""PROTOCOL.md, "Recovery": `join` with `since` and `epoch`, `recovered`, epochs."""

from __future__ import annotations

from typing import Any

import pytest

from wsroom import ConnectionManager, Room
from wsroom.conformance._client import Client, wait_for
from wsroom.conformance._frames import check_frame
from wsroom.conformance._server import Server


class Small(Room):
    history_size = 3


async def post(client: Client, room: str, data: Any) -> dict[str, Any]:
    """Send a message; return its echo, after its ack."""
    ref = client.next_ref()
    await client.send({"type": "message", "room": room, "data": data, "ref": ref})
    echo = check_frame(await client.recv(), "message")
    assert await client.recv() == {"type": "ack", "ref": ref, "id": echo["id"]}
    return echo


async def rejoin(url: str, room: str, **fields: Any) -> dict[str, Any]:
    client = await Client.connect(url)
    joined = check_frame(await client.join(room, **fields), "joined")
    await client.close()
    return joined


async def test_recovery_replays_exactly_the_missed_messages(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        alice = await Client.connect(url)
        bob = await Client.connect(url)
        epoch = (await alice.join("r"))["epoch"]
        await bob.join("r")
        for i in range(3):
            await post(alice, "r", i)
            check_frame(await bob.recv(), "message")
        await alice.close()
        missed = [await post(bob, "r", i) for i in (3, 4)]

        alice = await Client.connect(url)
        joined = check_frame(await alice.join("r", since=3, epoch=epoch), "joined")
        assert joined["recovered"] is True
        assert joined["history"] == missed
        assert [m["id"] for m in joined["history"]] == [4, 5]
        assert joined["offset"] == 5
        assert joined["epoch"] == epoch
        await alice.close()
        await bob.close()


async def test_recovery_with_nothing_missed(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        epoch = (await client.join("r"))["epoch"]
        for i in range(3):
            await post(client, "r", i)
        joined = await rejoin(url, "r", since=3, epoch=epoch)
        assert joined["recovered"] is True
        assert joined["history"] == []
        assert joined["offset"] == 3
        await client.close()


async def test_recovery_from_zero(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        epoch = (await client.join("r"))["epoch"]
        sent = [await post(client, "r", i) for i in range(3)]
        joined = await rejoin(url, "r", since=0, epoch=epoch)
        assert joined["recovered"] is True
        assert joined["history"] == sent
        await client.close()


@pytest.mark.parametrize("since", [0, 1, 2])
async def test_since_older_than_the_history(start_server: Server, since: int) -> None:
    manager = ConnectionManager(Small)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        epoch = (await client.join("r"))["epoch"]
        sent = [await post(client, "r", i) for i in range(6)]
        # Messages after `since` start at since + 1 <= 3, but only 4, 5, 6 are kept:
        # never a partial replay called recovered.
        joined = await rejoin(url, "r", since=since, epoch=epoch)
        assert joined["recovered"] is False
        assert joined["history"] == sent[-3:]
        assert joined["offset"] == 6
        assert joined["epoch"] == epoch
        await client.close()


async def test_since_at_the_oldest_kept_boundary_recovers(start_server: Server) -> None:
    manager = ConnectionManager(Small)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        epoch = (await client.join("r"))["epoch"]
        sent = [await post(client, "r", i) for i in range(6)]
        joined = await rejoin(url, "r", since=3, epoch=epoch)
        assert joined["recovered"] is True
        assert joined["history"] == sent[3:]
        joined = await rejoin(url, "r", since=5, epoch=epoch)
        assert joined["recovered"] is True
        assert joined["history"] == sent[5:]
        await client.close()


async def test_a_different_epoch_is_not_recovered(start_server: Server) -> None:
    manager = ConnectionManager(Small)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        epoch = (await client.join("r"))["epoch"]
        sent = [await post(client, "r", i) for i in range(5)]
        other = "not-" + epoch
        joined = await rejoin(url, "r", since=4, epoch=other)
        assert joined["recovered"] is False
        assert joined["history"] == sent[-3:]
        assert joined["epoch"] == epoch
        assert joined["offset"] == 5
        await client.close()


async def test_since_without_epoch_is_judged_on_ids(start_server: Server) -> None:
    manager = ConnectionManager(Small)
    async with start_server(manager) as url:
        client = await Client.connect(url)
        await client.join("r")
        sent = [await post(client, "r", i) for i in range(5)]
        joined = await rejoin(url, "r", since=3)
        assert joined["recovered"] is True
        assert joined["history"] == sent[3:]
        joined = await rejoin(url, "r", since=5)
        assert joined["recovered"] is True
        assert joined["history"] == []
        joined = await rejoin(url, "r", since=1)
        assert joined["recovered"] is False
        assert joined["history"] == sent[-3:]
        # An id the room never reached cannot be recovered either.
        joined = await rejoin(url, "r", since=9)
        assert joined["recovered"] is False
        assert joined["history"] == sent[-3:]
        await client.close()


async def test_since_beyond_the_offset_is_not_recovered(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        epoch = (await client.join("r"))["epoch"]
        sent = [await post(client, "r", i) for i in range(2)]
        joined = await rejoin(url, "r", since=7, epoch=epoch)
        assert joined["recovered"] is False
        assert joined["history"] == sent
        await client.close()


async def test_recovered_is_absent_without_since(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        joined = await client.join("r")
        assert "recovered" not in joined
        epoch = joined["epoch"]
        await post(client, "r", 1)
        # An epoch alone does not ask for recovery.
        joined = await rejoin(url, "r", epoch=epoch)
        assert "recovered" not in joined
        assert len(joined["history"]) == 1
        await client.close()


async def test_epoch_changes_after_a_restart(start_server: Server) -> None:
    first = ConnectionManager()
    async with start_server(first) as url:
        client = await Client.connect(url)
        old_epoch = (await client.join("r"))["epoch"]
        for i in range(3):
            await post(client, "r", f"old {i}")
        await client.close()

    second = ConnectionManager()
    async with start_server(second) as url:
        client = await Client.connect(url)
        fresh = await client.join("r")
        assert fresh["epoch"] != old_epoch
        assert fresh["offset"] == 0
        sent = [await post(client, "r", f"new {i}") for i in range(5)]
        assert [m["id"] for m in sent] == [1, 2, 3, 4, 5]
        # Ids 4 and 5 of the new run are not what a client of the old run missed.
        joined = await rejoin(url, "r", since=3, epoch=old_epoch)
        assert joined["recovered"] is False
        assert joined["epoch"] == fresh["epoch"]
        assert joined["history"] == sent
        await client.close()


async def test_history_survives_the_room_emptying(start_server: Server) -> None:
    manager = ConnectionManager()
    async with start_server(manager) as url:
        client = await Client.connect(url)
        epoch = (await client.join("r"))["epoch"]
        sent = [await post(client, "r", i) for i in range(2)]
        await client.request({"type": "leave", "room": "r"})
        assert "r" not in manager.rooms()

        joined = check_frame(await client.join("r", since=2, epoch=epoch), "joined")
        assert joined["recovered"] is True
        assert joined["history"] == []
        assert joined["epoch"] == epoch
        assert joined["offset"] == 2

        # Emptied by a disconnect, then written to by the server meanwhile.
        connection_id = client.welcome["connection"]
        await client.close()
        await wait_for(lambda: manager.connection(connection_id) is None)
        assert "r" not in manager.rooms()
        server_id = await manager.broadcast("r", "while you were away")
        assert server_id == 3

        joined = await rejoin(url, "r", since=2, epoch=epoch)
        assert joined["recovered"] is True
        assert joined["epoch"] == epoch
        assert [m["id"] for m in joined["history"]] == [3]
        assert joined["history"][0]["data"] == "while you were away"

        joined = await rejoin(url, "r")
        assert joined["history"][:2] == sent


async def test_a_fresh_join_gets_joined_whatever_the_history_holds(
    start_server: Server,
) -> None:
    # 17 messages of 64,000 bytes, each within every limit, hold more than a connection's
    # queue (1 MiB). The replay is cut to the newest messages that fit, so every later
    # join still gets its 'joined' instead of being evicted with 1013 before it.
    manager = ConnectionManager()
    async with start_server(manager) as url:
        poster = await Client.connect(url)
        epoch = (await poster.join("r"))["epoch"]
        big = "x" * 64_000
        for _ in range(17):
            await post(poster, "r", big)
        for offset in (17, 18):  # the first joiner changes nothing for the next
            fresh = await Client.connect(url)
            joined = check_frame(await fresh.join("r"), "joined")
            history = [message["id"] for message in joined["history"]]
            assert joined["offset"] == offset
            assert 0 < len(history) < offset
            assert history == list(range(offset + 1 - len(history), offset + 1)), "the newest"
            assert "recovered" not in joined
            # It is a member like any other: it gets what is posted next.
            echo = await post(poster, "r", "small")
            assert await fresh.recv() == echo
            await fresh.close()

        # A recovery that does not fit whole is never called recovered.
        joined = await rejoin(url, "r", since=0, epoch=epoch)
        assert joined["recovered"] is False
        assert 0 < len(joined["history"]) < 19
        assert joined["history"][-1]["id"] == 19
        # One that fits is served exactly.
        joined = await rejoin(url, "r", since=17, epoch=epoch)
        assert joined["recovered"] is True
        assert [message["data"] for message in joined["history"]] == ["small", "small"]
        await poster.close()
