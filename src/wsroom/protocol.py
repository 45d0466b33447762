"""The wire protocol: decoding, validating and encoding frames (PROTOCOL.md, version 1).

:class:`MessageProtocol` is the only place that turns client bytes into Python objects and
Python objects into frames. It never lets an exception other than
:class:`~wsroom.exceptions.ProtocolError` escape :meth:`MessageProtocol.decode`, whatever the
input, and it never produces a frame a browser's ``JSON.parse`` would reject.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from itertools import chain
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any, cast

from .exceptions import EncodeError, ProtocolError
from .frames import (
    BATCH_SUBPROTOCOL,
    CLIENT_TYPES,
    CUSTOM_TYPE,
    MAX_REF_LENGTH,
    MAX_TYPE_LENGTH,
    SERVER_TYPES,
    SUBPROTOCOL,
    CloseCode,
    ErrorCode,
    error as error_frame,
    message as message_frame,
)

if TYPE_CHECKING:
    from .connection import Connection

__all__ = [
    "BATCH_SUBPROTOCOL",
    "SUBPROTOCOL",
    "CloseCode",
    "ErrorCode",
    "Message",
    "MessageProtocol",
    "is_valid_room_name",
]

_CONTAINERS = (dict, list)
_ROOM_NAME = re.compile(r"[A-Za-z0-9_\-.:@/]{1,128}")
# Custom types become method names (``on_<type>``), so they must be identifiers; the
# leading letter keeps ``__dunder__`` and private helpers out of reach of clients.
_CUSTOM_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def is_valid_room_name(name: object) -> bool:
    """Tell whether ``name`` is a valid room name.

    A room name is 1 to 128 ASCII letters, digits and ``_ - . : @ /``.
    """
    return isinstance(name, str) and _ROOM_NAME.fullmatch(name) is not None


def require_room_name(name: object) -> None:
    """Raise ``ValueError`` unless ``name`` is a valid room name (for server-side calls)."""
    if not is_valid_room_name(name):
        raise ValueError(
            f"invalid room name {name!r}: use 1 to 128 letters, digits and _ - . : @ /"
        )


@dataclass(slots=True, eq=False)
class Message:
    """One frame received from a client, decoded and validated.

    Hooks receive it: ``Room.on_message(conn, message)``, ``Room.on_<type>(conn, message)``.
    Pass it to :meth:`Room.broadcast` to store and relay it as the sender's message.
    """

    type: str
    """The frame's ``type``."""
    room: str | None = None
    """The ``room`` field, validated, or ``None`` when the frame has none."""
    data: Any = None
    """The ``data`` field (any JSON value), ``None`` when absent."""
    ref: str | int | None = None
    """The client's ``ref``; answers to this frame echo it."""
    fields: dict[str, Any] = field(default_factory=dict)
    """The whole decoded frame, including fields wsroom does not know."""
    connection: Connection | None = None
    """The connection that sent the frame (``None`` for frames built by the server)."""
    id: int | None = None
    """Set by :meth:`Room.broadcast` to the id of the stored message."""

    @property
    def user(self) -> str | None:
        """The sender's user id, or ``None`` for an anonymous connection or the server."""
        return self.connection.user if self.connection is not None else None


class MessageProtocol:
    """Decode, validate and encode the frames of the wsroom protocol, version 1.

    The default codec is JSON in text frames. Subclass it to change the codec (override
    :meth:`loads`, :meth:`dumps` and set :attr:`binary`), to validate custom message types
    (override :meth:`validate_custom`), or to lower the limits below.
    """

    subprotocol: str = SUBPROTOCOL
    """The WebSocket subprotocol accepted when a client offers it."""
    batch_subprotocol: str | None = BATCH_SUBPROTOCOL
    """The subprotocol of batched frames, accepted (and preferred) when a client offers it;
    ``None``: never batch. A batch is a JSON array of encoded frames, so batching belongs to
    JSON in text frames: a subclass that changes :attr:`subprotocol`, :attr:`binary`,
    :meth:`loads` or :meth:`dumps` has it set to ``None`` unless it sets it itself (a JSON
    codec of its own under a subprotocol of its own may name a batch subprotocol)."""
    binary: bool = False
    """Whether encoded frames travel in binary frames (``False``: text frames)."""
    max_depth: int = 32
    """Deepest nesting of arrays and objects accepted in a client frame."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Batches are JSON arrays: a subclass with another encoding or another name does not
        # inherit them by accident; it sets batch_subprotocol itself to keep them.
        own = vars(cls)
        if "batch_subprotocol" not in own and any(
            name in own for name in ("subprotocol", "binary", "loads", "dumps")
        ):
            cls.batch_subprotocol = None

    def __init__(self) -> None:
        self._decoder = json.JSONDecoder(
            parse_constant=_reject_constant, parse_float=_parse_finite_float
        )
        self._encode_utf8 = json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode
        self._encode_ascii = json.JSONEncoder(
            ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode

    # Codec: override these three to change the encoding.

    def loads(self, frame: str | bytes) -> Any:
        """Parse one frame into a Python value.

        Raises:
            ProtocolError: ``invalid_json`` when the frame cannot be parsed, or
                ``invalid_message`` when it is a binary frame and the codec is text.
        """
        if not isinstance(frame, str):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                "binary frames are not accepted: send JSON in text frames "
                "(a binary codec must be configured on the server for binary frames)",
            )
        try:
            return self._decoder.decode(frame)
        except RecursionError:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, f"nesting deeper than {self.max_depth} levels"
            ) from None
        except ValueError as exc:
            # JSONDecodeError, rejected constants and floats, and integers longer than
            # Python's int_max_str_digits all arrive here.
            raise ProtocolError(ErrorCode.INVALID_JSON, _json_error_text(exc)) from None

    def dumps(self, obj: Any) -> bytes:
        """Encode one frame. The result is sent as is to every recipient.

        Raises:
            EncodeError: ``obj`` holds values that have no JSON representation.
        """
        try:
            text = self._encode_utf8(obj)
        except (TypeError, ValueError) as exc:
            raise EncodeError(f"cannot encode as JSON: {exc}", obj) from None
        except RecursionError:
            raise EncodeError("cannot encode as JSON: nested too deeply", obj) from None
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (legal in a JSON escape, illegal in UTF-8): escape everything
            # so the frame stays valid UTF-8 and still parses to the same string.
            return self._encode_ascii(obj).encode("ascii")

    def encode_message(self, room: str, id: int, envelope: bytes) -> bytes:
        """Encode a stored message's ``message`` frame from its envelope.

        ``envelope`` is :meth:`dumps` of ``{"from", "data", "ts"}``; the result is the same
        bytes as :meth:`dumps` of the whole frame (``frames.message(...)``). The JSON codec
        builds it around the envelope without decoding it, which saves a message's second
        encoding on every node; a subclass with a codec of its own decodes and encodes.
        """
        if type(self).dumps is MessageProtocol.dumps and envelope[:8] == b'{"from":':
            return b'{"type":"message","room":%b,"id":%d,%b' % (
                encode_basestring_ascii(room).encode("ascii"),
                id,
                envelope[1:],
            )
        body = self.loads(envelope if self.binary else envelope.decode("utf-8"))
        return self.dumps(message_frame(room, id, body["from"], body["data"], body["ts"]))

    # Validation.

    def decode(self, frame: str | bytes, connection: Connection | None = None) -> Message:
        """Turn a client frame into a validated :class:`Message`.

        Raises:
            ProtocolError: with the error code of PROTOCOL.md; nothing else escapes.
        """
        value = self.loads(frame)
        # Counting brackets is cheap and bounds the depth from above, so the full walk
        # runs only for frames that could be too deep.
        if isinstance(frame, str):
            openings = frame.count("[") + frame.count("{")
        else:
            openings = frame.count(b"[") + frame.count(b"{")
        if openings > self.max_depth:
            self._check_depth(value)
        return self.validate(value, connection)

    def validate(self, value: Any, connection: Connection | None = None) -> Message:
        """Check a parsed frame against the protocol and build the :class:`Message`."""
        if not isinstance(value, dict):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "a frame must be a JSON object")
        ref = value.get("ref")
        if ref is not None and not _is_valid_ref(ref):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"'ref' must be a string or an integer of at most {MAX_REF_LENGTH} characters",
            )
        type_ = value.get("type")
        if not isinstance(type_, str):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, "a frame needs a string field 'type'", ref
            )
        kind = CLIENT_TYPES.get(type_, CUSTOM_TYPE)
        room = value.get("room")
        if kind.room == "none":
            # This type has no room: the field is an unknown extra, ignored.
            room = None
        elif room is not None or kind.room == "required":
            if room is None:
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE, f"a '{type_}' frame needs a 'room'", ref
                )
            if not is_valid_room_name(room):
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE,
                    "'room' must be 1 to 128 characters from letters, digits and _ - . : @ /",
                    ref,
                )
        message = Message(type_, room, value.get("data"), ref, value, connection)
        if kind is CUSTOM_TYPE:
            try:
                self.validate_custom(message)
            except ProtocolError as exc:
                if exc.ref is None:
                    exc.ref = ref
                raise
        elif kind.check is not None:
            kind.check(value, ref)
        return message

    def validate_custom(self, message: Message) -> None:
        """Validate a frame of an application-defined type; raise :class:`ProtocolError`.

        The default accepts any frame whose ``type`` can name a handler.
        """
        if _CUSTOM_TYPE.fullmatch(message.type) is None or message.type in SERVER_TYPES:
            raise ProtocolError(
                ErrorCode.UNKNOWN_TYPE, _unknown_type_text(message.type), message.ref
            )

    def _check_depth(self, value: Any) -> None:
        # Level by level, and only containers are carried from one level to the next: a
        # max-size frame of 20,000 empty objects is checked in a few milliseconds, where a
        # walk of every node took over 20. Iterative, so hostile input cannot exhaust the
        # stack here either. Any value inside a container at the deepest allowed level,
        # scalar or not, is one level too deep.
        level = [value] if isinstance(value, _CONTAINERS) else []
        depth = 1
        while level:
            if depth > self.max_depth or (depth == self.max_depth and any(level)):
                ref = value.get("ref") if isinstance(value, dict) else None
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE,
                    f"nesting deeper than {self.max_depth} levels",
                    ref if _is_valid_ref(ref) else None,
                )
            children = chain.from_iterable(
                [node.values() if isinstance(node, dict) else node for node in level]
            )
            level = [child for child in children if isinstance(child, _CONTAINERS)]
            depth += 1

    def peek_ref(self, frame: str | bytes) -> str | int | None:
        """The ``ref`` of a frame that will not be processed (a rate-limited one), so that
        its error can still echo it; ``None`` when there is none to be found."""
        try:
            value = self.loads(frame)
        except Exception:
            return None
        if isinstance(value, dict):
            ref = value.get("ref")
            if _is_valid_ref(ref):
                return cast(str | int, ref)
        return None

    # Frames sent by the server.

    def error_frame(self, code: str, message: str, ref: str | int | None) -> dict[str, Any]:
        """Build an ``error`` frame."""
        return error_frame(code, message, ref)


def _is_valid_ref(ref: object) -> bool:
    if isinstance(ref, str):
        return len(ref) <= MAX_REF_LENGTH
    # bool is an int subclass; true/false are not references.
    return type(ref) is int and len(str(ref)) <= MAX_REF_LENGTH


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError(f"number out of range: {text[:32]}")
    return number


def _json_error_text(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg} at position {exc.pos}"
    text = str(exc)
    if "is not valid JSON" in text or "out of range" in text:
        return f"invalid JSON: {text}"
    return "invalid JSON: number too large"


def _unknown_type_text(type_: str) -> str:
    shown = type_ if len(type_) <= MAX_TYPE_LENGTH else type_[:MAX_TYPE_LENGTH] + "..."
    return f"no handler for message type {shown!r}"
