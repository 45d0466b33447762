"""What the suite checks in every frame: the exact fields PROTOCOL.md gives each type."""

from __future__ import annotations

from typing import Any

# The exact fields of each server frame type (PROTOCOL.md, "Server to client").
SERVER_FRAME_FIELDS: dict[str, frozenset[str]] = {
    "welcome": frozenset({"type", "connection", "user", "protocol", "heartbeat"}),
    "joined": frozenset({"type", "room", "ref", "members", "history", "offset", "epoch"}),
    "left": frozenset({"type", "room", "ref"}),
    "message": frozenset({"type", "room", "id", "from", "data", "ts"}),
    "direct": frozenset({"type", "id", "from", "data", "ts"}),
    "presence": frozenset({"type", "room", "event", "user"}),
    "gap": frozenset({"type", "room", "epoch", "offset"}),
    "ack": frozenset({"type", "ref"}),
    "pong": frozenset({"type", "ref"}),
    "error": frozenset({"type", "code", "message", "ref"}),
}
SERVER_FRAME_OPTIONAL_FIELDS: dict[str, frozenset[str]] = {
    "joined": frozenset({"recovered"}),
    "ack": frozenset({"id", "data"}),
}
ERROR_CODES = frozenset(
    {
        "invalid_json",
        "invalid_message",
        "unknown_type",
        "not_joined",
        "forbidden",
        "room_full",
        "user_offline",
        "rate_limited",
        "internal_error",
    }
)


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_ref(value: object) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= 64) or _is_int(value)


def check_frame(frame: dict[str, Any], type_: str | None = None) -> dict[str, Any]:
    """Assert a server frame has exactly the fields PROTOCOL.md gives its type; return it."""
    kind = frame["type"]
    if type_ is not None:
        assert kind == type_, frame
    assert kind in SERVER_FRAME_FIELDS, f"not a protocol frame: {frame}"
    required = SERVER_FRAME_FIELDS[kind]
    optional = SERVER_FRAME_OPTIONAL_FIELDS.get(kind, frozenset())
    keys = set(frame)
    assert required <= keys, f"{kind} misses {sorted(required - keys)}: {frame}"
    assert keys <= required | optional, f"{kind} has extra {sorted(keys - required - optional)}"
    if "ref" in frame:
        assert _is_ref(frame["ref"]), frame
    if kind == "welcome":
        assert isinstance(frame["connection"], str), frame
        assert frame["connection"], frame
        assert frame["user"] is None or isinstance(frame["user"], str), frame
        assert _is_int(frame["protocol"]), frame
        heartbeat = frame["heartbeat"]
        assert heartbeat is None or isinstance(heartbeat, int | float), frame
    elif kind == "joined":
        assert isinstance(frame["room"], str), frame
        assert isinstance(frame["members"], list), frame
        assert all(isinstance(user, str) for user in frame["members"]), frame
        assert isinstance(frame["history"], list), frame
        for message in frame["history"]:
            check_frame(message, "message")
            assert message["room"] == frame["room"], frame
        ids = [message["id"] for message in frame["history"]]
        assert ids == sorted(set(ids)), f"history not oldest first: {ids}"
        assert _is_int(frame["offset"]), frame
        assert frame["offset"] >= 0, frame
        assert not ids or ids[-1] <= frame["offset"], frame
        assert isinstance(frame["epoch"], str), frame
        assert frame["epoch"], frame
        if "recovered" in frame:
            assert isinstance(frame["recovered"], bool), frame
    elif kind in ("message", "direct"):
        assert _is_int(frame["id"]), frame
        assert frame["id"] >= 1, frame
        assert frame["from"] is None or isinstance(frame["from"], str), frame
        assert _is_int(frame["ts"]), frame
        if kind == "message":
            assert isinstance(frame["room"], str), frame
    elif kind == "presence":
        assert isinstance(frame["room"], str), frame
        assert frame["event"] in ("join", "leave"), frame
        assert isinstance(frame["user"], str), frame
    elif kind == "ack":
        if "id" in frame:
            assert _is_int(frame["id"]), frame
        if "data" in frame:
            # Only an application's answer: a handler that answered nothing sends no data.
            assert frame["data"] is not None, frame
    elif kind == "error":
        assert frame["code"] in ERROR_CODES, frame
        assert isinstance(frame["message"], str), frame
        assert frame["message"], frame
    return frame


def check_error(frame: dict[str, Any], code: str, ref: str | int | None = None) -> dict[str, Any]:
    """Assert ``frame`` is an ``error`` with ``code`` echoing ``ref``; return it."""
    check_frame(frame, "error")
    assert frame["code"] == code, frame
    assert frame["ref"] == ref, frame
    assert type(frame["ref"]) is type(ref), frame
    return frame
