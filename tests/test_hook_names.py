"""A Room subclass with a method named like a misspelt hook gets a warning at its creation;
custom types with names of their own get none."""

from __future__ import annotations

import re
import warnings
from typing import Any

import pytest

from wsroom import Connection, ConnectionManager, Message, Room
from wsroom._hooknames import likely_hook
from wsroom.testing import TestClient


def _method(self: Room, conn: Connection, message: Message) -> None:
    return None


def make_room(name: str, **methods: Any) -> type[Room]:
    """``class name(Room)`` with ``methods``, as a class statement would create it."""
    return type(name, (Room,), dict(methods))


MISSPELT = [
    ("on_mesage", "on_message"),
    ("on_messsage", "on_message"),
    ("on_mesages", "on_message"),
    ("on_massage", "on_message"),
    ("on_messages", "on_message"),
    ("on_messgae", "on_message"),
    ("onMessage", "on_message"),
    ("on_Message", "on_message"),
    ("on__message", "on_message"),
    ("on_jion", "on_join"),
    ("on_joins", "on_join"),
    ("on_joined", "on_join"),
    ("on_leav", "on_leave"),
    ("on_laeve", "on_leave"),
    ("on_leaves", "on_leave"),
    ("onLeave", "on_leave"),
    ("can_jion", "can_join"),
    ("canJoin", "can_join"),
    ("can_joins", "can_join"),
    ("on_conect", "on_connect"),
    ("on_connected", "on_connect"),
    ("on_disconect", "on_disconnect"),
    ("on_disconnected", "on_disconnect"),
    ("onDisconnect", "on_disconnect"),
]


@pytest.mark.parametrize(("name", "hook"), MISSPELT)
def test_a_misspelt_hook_warns_naming_the_hook(name: str, hook: str) -> None:
    with pytest.warns(UserWarning, match="looks like a misspelling") as caught:
        make_room("ChatRoom", **{name: _method})
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"ChatRoom.{name} looks like a misspelling of the hook {hook}")
    if hook in ("on_connect", "on_disconnect"):  # the manager's hooks, not a room's
        assert ", which is the ConnectionManager's, not a Room's: " in message
        assert f"Pass the function as ConnectionManager(..., {hook}=...)" in message
    else:
        assert f"{hook}: wsroom never calls it" in message
        assert f"Rename it to {hook}," in message
    # It points at the code that created the class, not at wsroom.
    assert caught[0].filename == __file__


CUSTOM = [
    "on_typing",
    "on_set_topic",
    "on_move",
    "on_poke",
    "on_quit",
    "on_save",
    "on_coin",
    "on_image",
    "on_mention",
    "on_message_edit",
    "on_join_game",
    "on_leave_queue",
    "on_collect",
    "on_passage",
    "one",
    "once",
    "online_users",
    "cancel",
    "can_direct",
    "candidates",
]


@pytest.mark.parametrize("name", CUSTOM)
def test_a_custom_type_or_other_method_gets_no_warning(name: str) -> None:
    # pytest turns any warning into an error (filterwarnings = error).
    room_class = make_room("ChatRoom", **{name: _method})
    assert getattr(room_class, name) is _method


def test_the_hooks_themselves_get_no_warning() -> None:
    hooks = ("can_join", "on_join", "on_leave", "on_message")
    make_room("ChatRoom", **dict.fromkeys(hooks, _method))


@pytest.mark.parametrize("hook", ["on_connect", "on_disconnect"])
def test_a_room_method_named_like_a_manager_hook_warns(hook: str) -> None:
    """on_connect and on_disconnect are ConnectionManager parameters: as a Room method, the
    name only handles a custom frame type."""
    with pytest.warns(
        UserWarning, match=f"^ChatRoom\\.{hook} looks like the hook {hook},"
    ) as caught:
        make_room("ChatRoom", **{hook: _method})
    message = str(caught[0].message)
    assert "which is the ConnectionManager's, not a Room's" in message
    assert f"it would handle client frames of the type {hook[3:]!r}" in message
    assert f"ConnectionManager(..., {hook}=...)" in message


def test_settings_and_private_names_are_not_checked() -> None:
    make_room("ChatRoom", on_mesage_count=3, _on_mesage=_method, on_mesage_limit=None)


def test_a_class_statement_warns_at_its_line() -> None:
    with pytest.warns(UserWarning, match=r"\.GameRoom\.on_jion looks like") as caught:

        class GameRoom(Room):
            def on_jion(self, conn: Connection) -> None:
                pass

    assert caught[0].filename == __file__
    assert caught[0].lineno == test_a_class_statement_warns_at_its_line.__code__.co_firstlineno + 3


def test_a_subclass_is_checked_for_its_own_names_only() -> None:
    with pytest.warns(UserWarning, match=r"^Parent\.on_mesage "):
        parent = make_room("Parent", on_mesage=_method)
    type("Child", (parent,), {"on_typing": _method})  # no second warning for on_mesage


def test_the_filter_the_warning_suggests_silences_it() -> None:
    with pytest.warns(UserWarning, match=r"^ChatRoom\.on_reconnect ") as caught:
        make_room("ChatRoom", on_reconnect=_method)
    suggested = re.search(r"message=r'(.*)'\)$", str(caught[0].message))
    assert suggested is not None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=suggested.group(1))
        make_room("ChatRoom", on_reconnect=_method)
        with pytest.warns(UserWarning, match=r"^ChatRoom\.on_mesage "):  # others still warn
            make_room("ChatRoom", on_mesage=_method)


async def test_the_misspelt_method_is_not_the_hook_it_resembles() -> None:
    """What the warning is about: the default hook runs, the misspelt one never does."""
    called: list[str] = []
    with pytest.warns(UserWarning, match="on_mesage"):

        class ChatRoom(Room):
            def on_mesage(self, conn: Connection, message: Message) -> None:
                called.append("on_mesage")

    manager = ConnectionManager(ChatRoom)
    async with TestClient(manager, user="alice") as alice, TestClient(manager, user="bob") as bob:
        await alice.join("lobby")
        await bob.join("lobby")
        assert (await alice.message("lobby", "hi"))["type"] == "ack"
        assert (await bob.receive_type("message"))["data"] == "hi"  # the default broadcast
    assert called == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("on_mesage", "on_message"),
        ("on_typing", None),
        ("on_message", None),
        ("_on_mesage", None),
        ("ON_MESSAGE", "on_message"),
        ("can_joni", "can_join"),
        ("on_join", None),
    ],
)
def test_likely_hook(name: str, expected: str | None) -> None:
    hooks = {"on_message", "on_join", "on_leave", "can_join"}
    assert likely_hook(name, hooks) == expected
