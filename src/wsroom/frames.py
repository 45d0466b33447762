"""Every frame of the wire protocol (PROTOCOL.md, version 1), in one place.

This module is the protocol's vocabulary: the table of client frame types (what each needs,
which handler serves it, what answers it), the builders of every frame the server sends,
and the error and close codes. Nothing else in wsroom writes a frame as a dict literal.

Adding a built-in client type is one :class:`ClientType` entry in :data:`CLIENT_TYPES`
plus its handler (a method of the session that dispatches frames, named by
:attr:`ClientType.handler`); a new server frame is one builder here. The test suite checks
``docs/protocol.md`` against these tables.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any, Final, Literal, TypeAlias

from .exceptions import ProtocolError

__all__ = [
    "ANSWER_TYPES",
    "CLIENT_TYPES",
    "CUSTOM_TYPE",
    "PROTOCOL_VERSION",
    "SERVER_TYPES",
    "SUBPROTOCOL",
    "ClientType",
    "CloseCode",
    "ErrorCode",
    "Frame",
    "Ref",
]

Frame: TypeAlias = dict[str, Any]
"""One decoded frame: a JSON object."""
Ref: TypeAlias = str | int | None
"""A client's ``ref``, echoed by every direct answer."""

SUBPROTOCOL: Final = "wsroom.v1"
"""The WebSocket subprotocol name of protocol version 1."""
BATCH_SUBPROTOCOL: Final = "wsroom.v1.batch"
"""The subprotocol of version 1 with batched frames (server frames packed in JSON arrays)."""
PROTOCOL_VERSION: Final = 1

MAX_REF_LENGTH: Final = 64
MAX_USER_ID_LENGTH: Final = 128

# Characters that reorder the text around them (bidirectional overrides and isolates): a
# user id holding one can make another name, or the page's own labels, look like it.
_BIDI_CONTROLS: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
MAX_EPOCH_LENGTH: Final = 64
MAX_TYPE_LENGTH: Final = 64


class ErrorCode(StrEnum):
    """The ``code`` of an ``error`` frame. The connection stays open after each of them."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    NOT_JOINED = "not_joined"
    FORBIDDEN = "forbidden"
    ROOM_FULL = "room_full"
    USER_OFFLINE = "user_offline"
    RATE_LIMITED = "rate_limited"
    INTERNAL_ERROR = "internal_error"


class CloseCode(IntEnum):
    """WebSocket close codes used by wsroom (PROTOCOL.md, "Close codes")."""

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


# Client frames.

FieldCheck: TypeAlias = Callable[[Frame, Ref], None]
"""Checks a frame's own fields beyond ``type``, ``ref`` and ``room``; raises ProtocolError."""


@dataclass(frozen=True, slots=True)
class ClientType:
    """One type of client frame: what it needs, who serves it, what answers it."""

    name: str
    """The frame's ``type``."""
    room: Literal["required", "optional", "none"]
    """Whether the frame names a room: ``"none"`` ignores a ``room`` field (an unknown
    extra), ``"optional"`` checks it when present."""
    answer: str
    """The server frame that answers it when it succeeds (``error`` when it fails)."""
    handler: str
    """The method of the frame dispatcher that serves it."""
    check: FieldCheck | None = None
    """Checks the type's own fields."""
    summary: str = ""
    """What the frame does, in a few words (the docs' protocol table says the same)."""


def _check_join(frame: Frame, ref: Ref) -> None:
    since = frame.get("since")
    if since is not None and (type(since) is not int or since < 0):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, "'since' must be a non-negative integer", ref
        )
    epoch = frame.get("epoch")
    if epoch is not None and (not isinstance(epoch, str) or len(epoch) > MAX_EPOCH_LENGTH):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"'epoch' must be a string of at most {MAX_EPOCH_LENGTH} characters",
            ref,
        )


def user_id_problem(user: object) -> str | None:
    """Why ``user`` is not a valid user id (PROTOCOL.md, "User ids"); ``None`` when it is.

    A user id is a string of 1 to :data:`MAX_USER_ID_LENGTH` characters without control
    characters (Unicode category Cc), bidirectional override or isolate characters
    (U+202A to U+202E, U+2066 to U+2069), lone surrogates (they cannot be sent as UTF-8),
    or leading or trailing whitespace.
    """
    if not isinstance(user, str):
        return f"a user id must be a string, not {type(user).__name__}"
    if not 0 < len(user) <= MAX_USER_ID_LENGTH:
        return f"a user id must have 1 to {MAX_USER_ID_LENGTH} characters, not {len(user)}"
    if user.strip() != user:
        return "a user id must not start or end with whitespace"
    for char in user:
        # Cheap tests first: most ids are printable ASCII and skip the category lookup.
        if " " <= char <= "~":
            continue
        if char in _BIDI_CONTROLS:
            return f"a user id must not hold the bidirectional control U+{ord(char):04X}"
        category = unicodedata.category(char)
        if category == "Cc":
            return f"a user id must not hold the control character U+{ord(char):04X}"
        if category == "Cs":
            return f"a user id must not hold the lone surrogate U+{ord(char):04X}"
    return None


def is_valid_user_id(user: object) -> bool:
    """Whether ``user`` may be a user id (PROTOCOL.md, "User ids").

    1 to 128 characters; no control characters, no bidirectional override or isolate
    characters, no lone surrogates, no leading or trailing whitespace. An ``authenticate``
    hook that returns anything else gets its client refused with HTTP 403.
    """
    return user_id_problem(user) is None


def _check_direct(frame: Frame, ref: Ref) -> None:
    problem = user_id_problem(frame.get("to"))
    if problem is not None:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"'to': {problem}", ref)


CLIENT_TYPES: Final[Mapping[str, ClientType]] = MappingProxyType(
    {
        entry.name: entry
        for entry in (
            ClientType("join", "required", "joined", "join", _check_join, "join a room"),
            ClientType("leave", "required", "left", "leave", None, "leave a room"),
            ClientType("message", "required", "ack", "message", None, "broadcast to the room"),
            ClientType("direct", "none", "ack", "direct", _check_direct, "send to a user"),
            ClientType("ping", "none", "pong", "ping", None, "check the connection"),
        )
    }
)
"""The built-in client frame types, by name."""

CUSTOM_TYPE: Final = ClientType(
    "*", "optional", "ack", "custom", None, "dispatched to the application's handler"
)
"""How a frame of any other type is served: by the application's handler for it."""


# Server frames. Each builder returns a new dict, ready to encode.


def welcome(connection: str, user: str | None, heartbeat: float | None) -> Frame:
    """The first frame after the handshake."""
    return {
        "type": "welcome",
        "connection": connection,
        "user": user,
        "protocol": PROTOCOL_VERSION,
        "heartbeat": heartbeat,
    }


def joined(
    room: str,
    ref: Ref,
    members: list[str],
    history: list[Frame],
    offset: int,
    epoch: str,
    recovered: bool | None,
) -> Frame:
    """The answer to a successful ``join``; ``recovered`` only when the join asked ``since``."""
    frame: Frame = {
        "type": "joined",
        "room": room,
        "ref": ref,
        "members": members,
        "history": history,
        "offset": offset,
        "epoch": epoch,
    }
    if recovered is not None:
        frame["recovered"] = recovered
    return frame


def left(room: str, ref: Ref) -> Frame:
    """The answer to a successful ``leave``."""
    return {"type": "left", "room": room, "ref": ref}


def message(room: str, id: int, sender: str | None, data: Any, ts: int) -> Frame:
    """A stored room message."""
    return {"type": "message", "room": room, "id": id, "from": sender, "data": data, "ts": ts}


def direct(id: int, sender: str | None, data: Any, ts: int) -> Frame:
    """A direct message to a user."""
    return {"type": "direct", "id": id, "from": sender, "data": data, "ts": ts}


def presence(room: str, event: Literal["join", "leave"], user: str) -> Frame:
    """A user's first connection joined a room, or its last one left it."""
    return {"type": "presence", "room": room, "event": event, "user": user}


def gap(room: str, epoch: str, offset: int) -> Frame:
    """Messages of ``room`` may have been lost; delivery goes on after id ``offset``."""
    return {"type": "gap", "room": room, "epoch": epoch, "offset": offset}


def ack(ref: Ref, id: int | None = None, data: Any = None) -> Frame:
    """The answer to a frame that carried a ``ref``; ``id`` of the stored message, if any,
    and ``data`` the application's handler answered with, if any (``None``: none)."""
    frame: Frame = {"type": "ack", "ref": ref}
    if id is not None:
        frame["id"] = id
    if data is not None:
        frame["data"] = data
    return frame


def pong(ref: Ref) -> Frame:
    """The answer to ``ping``."""
    return {"type": "pong", "ref": ref}


def error(code: str, message: str, ref: Ref) -> Frame:
    """A frame that could not be served."""
    return {"type": "error", "code": code, "message": message, "ref": ref}


def event(type: str, data: Any, room: str | None = None) -> Frame:
    """An application event (unstored), ``{"type", "data"}`` plus ``room`` when given.

    Raises:
        ValueError: ``type`` is one of the protocol's own frame types.
    """
    check_event_type(type)
    frame: Frame = {"type": type, "data": data}
    if room is not None:
        frame["room"] = room
    return frame


SERVER_TYPES: Final = frozenset(
    {"welcome", "joined", "left", "message", "direct", "presence", "gap", "ack", "pong", "error"}
)
"""The types of the frames the protocol itself sends; application events use other names."""

ANSWER_TYPES: Final = frozenset(
    {entry.answer for entry in (*CLIENT_TYPES.values(), CUSTOM_TYPE)} | {"error"}
)
"""The server frames that answer a client frame directly, echoing its ``ref``."""

RESERVED_TYPES: Final = SERVER_TYPES | CLIENT_TYPES.keys()
"""Names an application may not give its own frame types or events."""


def now_ms() -> int:
    """The time in Unix milliseconds, as the ``ts`` of frames carries it."""
    return int(time.time() * 1000)


def check_event_type(type: str) -> None:
    """Raise ``ValueError`` when ``type`` is one of the protocol's own frame types."""
    if type in SERVER_TYPES:
        raise ValueError(
            f"{type!r} is a frame type of the protocol itself; choose another event name"
        )
