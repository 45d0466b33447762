"""Unit tests of MessageProtocol: decoding hostile input, validation rules, encoding."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

import wsroom
from wsroom import (
    ConnectionManager,
    EncodeError,
    ErrorCode,
    Limits,
    Message,
    MessageProtocol,
    ProtocolError,
    frames,
    is_valid_room_name,
)
from wsroom.testing import TestClient

SERVER_TYPES = ("welcome", "joined", "left", "presence", "ack", "pong", "error")


@pytest.fixture
def protocol() -> MessageProtocol:
    return MessageProtocol()


def decode_error(protocol: MessageProtocol, frame: str | bytes) -> ProtocolError:
    """Decode a frame that must be refused; return the ProtocolError."""
    with pytest.raises(ProtocolError) as info:
        protocol.decode(frame)
    error = info.value
    assert error.code in set(ErrorCode)
    assert isinstance(error.message, str)
    assert error.message
    return error


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def nested_list(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_object(depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


# Hostile JSON (reliability anchors, section 0 item 6, scenario 23).


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deep_array_nesting_is_invalid_message(protocol: MessageProtocol, depth: int) -> None:
    error = decode_error(protocol, nested_list(depth))
    assert error.code == ErrorCode.INVALID_MESSAGE
    assert "nesting" in error.message


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deep_object_nesting_is_invalid_message(protocol: MessageProtocol, depth: int) -> None:
    error = decode_error(protocol, nested_object(depth))
    assert error.code == ErrorCode.INVALID_MESSAGE


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deep_nesting_inside_a_valid_frame_is_invalid_message(
    protocol: MessageProtocol, depth: int
) -> None:
    text = '{"type":"message","room":"lobby","ref":"r1","data":' + nested_list(depth) + "}"
    error = decode_error(protocol, text)
    assert error.code == ErrorCode.INVALID_MESSAGE


def test_depth_limit_counts_the_frame_itself(protocol: MessageProtocol) -> None:
    # The frame object is level 1, so data may nest 31 more levels.
    ok = '{"type":"x","data":' + nested_list(31) + "}"
    assert protocol.decode(ok).type == "x"
    too_deep = '{"type":"x","ref":"deep","data":' + nested_list(32) + "}"
    error = decode_error(protocol, too_deep)
    assert error.code == ErrorCode.INVALID_MESSAGE
    assert error.ref == "deep"


def test_many_brackets_inside_strings_are_not_nesting(protocol: MessageProtocol) -> None:
    text = frame(type="message", room="lobby", data="[" * 5000 + "{" * 5000)
    message = protocol.decode(text)
    assert message.data == "[" * 5000 + "{" * 5000


def test_five_thousand_digit_integer_is_invalid_json(protocol: MessageProtocol) -> None:
    for text in ("1" * 5000, '{"type":"ping","data":' + "9" * 5000 + "}"):
        error = decode_error(protocol, text)
        assert error.code == ErrorCode.INVALID_JSON


def test_long_but_acceptable_integer_is_decoded(protocol: MessageProtocol) -> None:
    digits = "7" * 4000
    message = protocol.decode('{"type":"ping","data":' + digits + "}")
    assert message.data == int(digits)


@pytest.mark.parametrize("constant", ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_invalid_json(protocol: MessageProtocol, constant: str) -> None:
    assert decode_error(protocol, constant).code == ErrorCode.INVALID_JSON
    text = '{"type":"message","room":"lobby","data":' + constant + "}"
    assert decode_error(protocol, text).code == ErrorCode.INVALID_JSON
    nested = '{"type":"message","room":"lobby","data":{"x":[1,' + constant + "]}}"
    assert decode_error(protocol, nested).code == ErrorCode.INVALID_JSON


def test_finite_floats_are_accepted(protocol: MessageProtocol) -> None:
    message = protocol.decode('{"type":"ping","data":[1.5,-0.0,1e308,5e-324]}')
    assert message.data == [1.5, -0.0, 1e308, 5e-324]
    assert all(math.isfinite(x) for x in message.data)


def test_duplicate_keys_last_wins(protocol: MessageProtocol) -> None:
    message = protocol.decode('{"type":"ping","type":"custom","data":1,"data":2}')
    assert message.type == "custom"
    assert message.data == 2


def test_lone_surrogate_is_accepted_and_reencoded_as_valid_utf8(
    protocol: MessageProtocol,
) -> None:
    message = protocol.decode('{"type":"message","room":"lobby","data":"a\\ud800b"}')
    assert message.data == "a\ud800b"
    encoded = protocol.dumps({"type": "message", "data": message.data, "text": "é"})
    assert isinstance(encoded, bytes)
    text = encoded.decode("utf-8")  # strict: raises on invalid UTF-8
    assert json.loads(text) == {"type": "message", "data": "a\ud800b", "text": "é"}


def test_surrogate_pair_escape_is_one_character(protocol: MessageProtocol) -> None:
    message = protocol.decode('{"type":"ping","data":"\\ud83d\\ude00"}')
    assert message.data == "\U0001f600"
    assert protocol.dumps({"d": message.data}) == '{"d":"\U0001f600"}'.encode()


@pytest.mark.parametrize("text", ["", " ", "\n", "{", '{"type":"ping"', "nul", "{'type': 'x'}"])
def test_broken_json_is_invalid_json(protocol: MessageProtocol, text: str) -> None:
    assert decode_error(protocol, text).code == ErrorCode.INVALID_JSON


@pytest.mark.parametrize(
    "text", ["null", "[]", "[1,2]", '[{"type":"ping"}]', "1", "-3.5", '"ping"', "true", "false"]
)
def test_top_level_non_objects_are_invalid_message(protocol: MessageProtocol, text: str) -> None:
    assert decode_error(protocol, text).code == ErrorCode.INVALID_MESSAGE


def test_sixty_kib_string_and_ten_thousand_keys(protocol: MessageProtocol) -> None:
    big = protocol.decode(frame(type="message", room="lobby", data="x" * 60 * 1024))
    assert len(big.data) == 60 * 1024
    many = {f"k{i}": i for i in range(10_000)}
    message = protocol.decode(json.dumps({"type": "ping", **many}))
    assert len(message.fields) == 10_001


# Binary frames.


@pytest.mark.parametrize("data", [b"", b'{"type":"ping"}', b"\xff\xfe\x00", bytes(range(256))])
def test_binary_frames_are_invalid_message(protocol: MessageProtocol, data: bytes) -> None:
    error = decode_error(protocol, data)
    assert error.code == ErrorCode.INVALID_MESSAGE
    assert "binary" in error.message


# Fields: type, ref.


@pytest.mark.parametrize(
    "value",
    [{}, {"room": "lobby"}, {"type": None}, {"type": 1}, {"type": True}, {"type": ["ping"]}],
)
def test_missing_or_non_string_type_is_invalid_message(
    protocol: MessageProtocol, value: dict[str, Any]
) -> None:
    error = decode_error(protocol, json.dumps({**value, "ref": "r"}))
    assert error.code == ErrorCode.INVALID_MESSAGE
    assert error.ref == "r"


def test_extra_fields_are_ignored_and_kept(protocol: MessageProtocol) -> None:
    message = protocol.decode(frame(type="ping", ref=7, extra={"a": [1]}, other=None))
    assert message.type == "ping"
    assert message.ref == 7
    assert message.fields["extra"] == {"a": [1]}
    assert "other" in message.fields


def test_message_fields(protocol: MessageProtocol) -> None:
    message = protocol.decode(frame(type="message", room="lobby", data={"t": "hi"}, ref="a"))
    assert isinstance(message, Message)
    assert (message.type, message.room, message.data, message.ref) == (
        "message",
        "lobby",
        {"t": "hi"},
        "a",
    )
    assert message.connection is None
    assert message.user is None
    assert message.id is None


@pytest.mark.parametrize(
    "ref",
    ["", "a", "r" * 64, "é" * 64, 0, -1, 10**63, -(10**62), 2**63, "\ud800"],
)
def test_valid_refs_are_echoed(protocol: MessageProtocol, ref: str | int) -> None:
    message = protocol.decode(frame(type="ping", ref=ref))
    assert message.ref == ref
    assert type(message.ref) is type(ref)
    # Errors for a later problem echo the ref too.
    error = decode_error(protocol, frame(type="join", ref=ref))
    assert error.ref == ref


@pytest.mark.parametrize(
    "ref",
    ["r" * 65, 10**64, -(10**63), True, False, 1.5, 1.0, 0.0, [], ["a"], {"a": 1}],
)
def test_invalid_refs_are_invalid_message(protocol: MessageProtocol, ref: Any) -> None:
    error = decode_error(protocol, frame(type="ping", ref=ref))
    assert error.code == ErrorCode.INVALID_MESSAGE
    assert error.ref is None
    assert "ref" in error.message


def test_null_ref_means_no_ref(protocol: MessageProtocol) -> None:
    assert protocol.decode(frame(type="ping", ref=None)).ref is None


def test_float_ref_written_in_exponent_form_is_refused(protocol: MessageProtocol) -> None:
    error = decode_error(protocol, '{"type":"ping","ref":1e2}')
    assert error.code == ErrorCode.INVALID_MESSAGE


# Room names.

VALID_ROOMS = [
    "a",
    "lobby",
    "Room_1",
    "a-b.c:d@e/f",
    "a:b",
    "../x",
    "/",
    "...",
    "user@example.com",
    "x" * 128,
    "0",
]

INVALID_ROOMS: list[Any] = [
    "",
    "x" * 129,
    "a b",
    "a\x00b",
    "a\n",
    "\na",
    "a\tb",
    "\uff41",  # fullwidth letter
    "İ",  # case-folds to two characters
    "é",
    "\u0661",  # Arabic-Indic digit one
    "*",
    "room?",
    "[ab]",
    "$priv",
    "#user",
    "a,b",
    "a\\b",
    "a'b",
    'a"b',
    "a\ud800",
    1,
    0,
    1.5,
    True,
    False,
    ["lobby"],
    {"name": "lobby"},
]


@pytest.mark.parametrize("name", VALID_ROOMS)
def test_valid_room_names(protocol: MessageProtocol, name: str) -> None:
    assert is_valid_room_name(name)
    for type_ in ("join", "leave", "message", "custom"):
        message = protocol.decode(frame(type=type_, room=name, data=None))
        assert message.room == name


@pytest.mark.parametrize("name", INVALID_ROOMS)
def test_invalid_room_names(protocol: MessageProtocol, name: Any) -> None:
    assert not is_valid_room_name(name)
    for type_ in ("join", "leave", "message", "custom"):
        error = decode_error(protocol, frame(type=type_, room=name, to="bob", ref="r"))
        assert error.code == ErrorCode.INVALID_MESSAGE, (type_, name)
        assert error.ref == "r"
    # ping and direct have no room: the field is an unknown extra, ignored.
    for type_ in ("ping", "direct"):
        message = protocol.decode(frame(type=type_, room=name, to="bob", ref="r"))
        assert message.room is None


def test_room_name_rule_is_ascii_only() -> None:
    assert not is_valid_room_name(None)
    assert not is_valid_room_name(b"lobby")
    for codepoint in range(128, 0x3000):
        assert not is_valid_room_name(chr(codepoint)), hex(codepoint)


@pytest.mark.parametrize("type_", ["join", "leave", "message"])
def test_room_is_required(protocol: MessageProtocol, type_: str) -> None:
    for text in (frame(type=type_, ref=3), frame(type=type_, room=None, ref=3)):
        error = decode_error(protocol, text)
        assert error.code == ErrorCode.INVALID_MESSAGE
        assert error.ref == 3


def test_room_is_optional_for_ping_direct_and_custom(protocol: MessageProtocol) -> None:
    assert protocol.decode(frame(type="ping")).room is None
    assert protocol.decode(frame(type="direct", to="bob")).room is None
    assert protocol.decode(frame(type="typing")).room is None


# join: since and epoch.


@pytest.mark.parametrize("since", [0, 1, 10**20])
def test_join_since_accepted(protocol: MessageProtocol, since: int) -> None:
    message = protocol.decode(frame(type="join", room="r", since=since))
    assert message.fields["since"] == since


@pytest.mark.parametrize("since", [-1, True, False, 1.0, 1.5, "1", [], {}])
def test_join_since_refused(protocol: MessageProtocol, since: Any) -> None:
    error = decode_error(protocol, frame(type="join", room="r", since=since, ref="j"))
    assert error.code == ErrorCode.INVALID_MESSAGE
    assert "since" in error.message
    assert error.ref == "j"


@pytest.mark.parametrize("epoch", ["", "e", "e" * 64, "ép\u043ech"])
def test_join_epoch_accepted(protocol: MessageProtocol, epoch: str) -> None:
    message = protocol.decode(frame(type="join", room="r", since=3, epoch=epoch))
    assert message.fields["epoch"] == epoch


@pytest.mark.parametrize("epoch", ["e" * 65, 1, True, [], {"a": "b"}, 1.5])
def test_join_epoch_refused(protocol: MessageProtocol, epoch: Any) -> None:
    error = decode_error(protocol, frame(type="join", room="r", epoch=epoch, ref="j"))
    assert error.code == ErrorCode.INVALID_MESSAGE
    assert "epoch" in error.message
    assert error.ref == "j"


def test_since_and_epoch_are_ignored_outside_join(protocol: MessageProtocol) -> None:
    message = protocol.decode(frame(type="message", room="r", since=-5, epoch=1))
    assert message.type == "message"


# direct.


@pytest.mark.parametrize("to", ["bob", "b", "u" * 128, "ü", "a b"])
def test_direct_to_accepted(protocol: MessageProtocol, to: str) -> None:
    message = protocol.decode(frame(type="direct", to=to, data={"x": 1}))
    assert message.fields["to"] == to
    assert message.data == {"x": 1}


@pytest.mark.parametrize(
    "to", [None, "", "u" * 129, "bob\u202e", " bob", "\x1b", 1, True, ["bob"], {"id": "bob"}]
)
def test_direct_to_refused(protocol: MessageProtocol, to: Any) -> None:
    error = decode_error(protocol, frame(type="direct", to=to, ref=9))
    assert error.code == ErrorCode.INVALID_MESSAGE
    assert error.ref == 9


def test_direct_without_to_is_invalid_message(protocol: MessageProtocol) -> None:
    assert decode_error(protocol, frame(type="direct", data=1)).code == ErrorCode.INVALID_MESSAGE


# Custom types.


@pytest.mark.parametrize("type_", ["typing", "a", "A", "x1", "set_topic", "t" * 64, "Z_9"])
def test_custom_types_accepted(protocol: MessageProtocol, type_: str) -> None:
    message = protocol.decode(frame(type=type_, room="lobby", data=[1]))
    assert message.type == type_
    assert message.data == [1]


@pytest.mark.parametrize(
    "type_",
    [
        "",
        "_private",
        "__init__",
        "1abc",
        "a-b",
        "a.b",
        "a b",
        "a\n",
        "t" * 65,
        "\uff41",
        "İ",
        "é",
        "welcome",
        "joined",
        "left",
        "presence",
        "ack",
        "pong",
        "error",
    ],
)
def test_custom_types_refused_with_unknown_type(protocol: MessageProtocol, type_: str) -> None:
    error = decode_error(protocol, frame(type=type_, ref="c"))
    assert error.code == ErrorCode.UNKNOWN_TYPE
    assert error.ref == "c"


def test_unknown_type_message_does_not_echo_a_huge_type(protocol: MessageProtocol) -> None:
    error = decode_error(protocol, frame(type="x" * 10_000))
    assert error.code == ErrorCode.UNKNOWN_TYPE
    assert len(error.message) < 200


# Encoding.


@pytest.mark.parametrize(
    "value",
    [
        {1, 2},
        object(),
        float("nan"),
        float("inf"),
        -float("inf"),
        {"data": float("nan")},
        {"data": [1, {2, 3}]},
        {("a", "b"): 1},
        b"bytes",
    ],
)
def test_dumps_refuses_non_json_values(protocol: MessageProtocol, value: Any) -> None:
    with pytest.raises(EncodeError):
        protocol.dumps(value)


def test_dumps_refuses_circular_structures(protocol: MessageProtocol) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EncodeError):
        protocol.dumps({"data": loop})


def test_dumps_refuses_too_deep_values_with_encode_error(protocol: MessageProtocol) -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(EncodeError):
        protocol.dumps({"data": deep})


def test_encode_error_is_a_value_error(protocol: MessageProtocol) -> None:
    with pytest.raises(ValueError, match="JSON"):
        protocol.dumps({"s": {1}})


def test_dumps_is_compact_utf8_json(protocol: MessageProtocol) -> None:
    value = {"type": "message", "room": "lobby", "data": {"text": "héllo ✓ 😀", "n": [1, 2.5]}}
    encoded = protocol.dumps(value)
    assert isinstance(encoded, bytes)
    assert (
        encoded
        == ('{"type":"message","room":"lobby","data":{"text":"héllo ✓ 😀","n":[1,2.5]}}').encode()
    )
    assert json.loads(encoded) == value
    assert b" " not in protocol.dumps({"a": [1, 2], "b": {"c": None}})


def test_dumps_escapes_control_characters(protocol: MessageProtocol) -> None:
    encoded = protocol.dumps({"d": "a\x00b\n\u2028"})
    assert b"\x00" not in encoded
    assert b"\n" not in encoded
    assert json.loads(encoded) == {"d": "a\x00b\n\u2028"}


def test_error_frame_shape(protocol: MessageProtocol) -> None:
    frame_ = protocol.error_frame(ErrorCode.NOT_JOINED, "join first", "r")
    assert frame_ == {"type": "error", "code": "not_joined", "message": "join first", "ref": "r"}
    assert json.loads(protocol.dumps(frame_)) == frame_


def test_protocol_error_codes_match_the_protocol_document() -> None:
    assert {code.value for code in ErrorCode} == {
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
    assert wsroom.SUBPROTOCOL == "wsroom.v1"
    assert MessageProtocol.subprotocol == "wsroom.v1"
    assert MessageProtocol.binary is False


# Subclassing: a binary codec, custom validation.


class BinaryJSONProtocol(MessageProtocol):
    """A tiny binary codec: a version byte, then the JSON text in UTF-8."""

    subprotocol = "wsroom.test-binary"
    binary = True

    def loads(self, frame: str | bytes) -> Any:
        if isinstance(frame, str):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "text frames are not accepted")
        if frame[:1] != b"\x01":
            raise ProtocolError(ErrorCode.INVALID_JSON, "unknown codec version")
        try:
            text = frame[1:].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(ErrorCode.INVALID_JSON, "not UTF-8") from None
        return super().loads(text)

    def dumps(self, obj: Any) -> bytes:
        return b"\x01" + super().dumps(obj)


def test_binary_codec_subclass_decodes_and_encodes() -> None:
    protocol = BinaryJSONProtocol()
    message = protocol.decode(b'\x01{"type":"message","room":"lobby","data":"hi","ref":1}')
    assert (message.type, message.room, message.data, message.ref) == ("message", "lobby", "hi", 1)
    assert protocol.dumps({"type": "pong", "ref": 1}) == b'\x01{"type":"pong","ref":1}'
    assert decode_error(protocol, '{"type":"ping"}').code == ErrorCode.INVALID_MESSAGE
    assert decode_error(protocol, b"\x02{}").code == ErrorCode.INVALID_JSON
    assert decode_error(protocol, b"\x01\xff").code == ErrorCode.INVALID_JSON
    # Validation still applies to what the codec produced.
    assert decode_error(protocol, b'\x01{"type":"join","room":"a b"}').code == (
        ErrorCode.INVALID_MESSAGE
    )


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_binary_codec_subclass_still_enforces_max_depth(depth: int) -> None:
    protocol = BinaryJSONProtocol()
    payload = ('{"type":"x","data":' + nested_list(depth) + "}").encode()
    error = decode_error(protocol, b"\x01" + payload)
    assert error.code == ErrorCode.INVALID_MESSAGE


async def test_binary_codec_subclass_through_a_manager() -> None:
    manager = ConnectionManager(protocol=BinaryJSONProtocol(), limits=Limits.without_rate_limits())
    assert manager.select_subprotocol(["wsroom.v1", "wsroom.test-binary"]) == "wsroom.test-binary"
    async with TestClient(manager, user="alice") as alice:
        assert alice.welcome is not None
        assert alice.welcome["type"] == "welcome"
        joined = await alice.join("lobby")
        assert joined["type"] == "joined"
        await alice.send({"type": "message", "room": "lobby", "data": {"text": "hi"}, "ref": 2})
        received = await alice.receive()
        assert (received["type"], received["data"]) == ("message", {"text": "hi"})
        ack = await alice.receive()
        assert ack == {"type": "ack", "ref": 2, "id": received["id"]}
        assert alice.transport.frames.empty()
        await alice.send('{"type":"ping","ref":"t"}')
        error = await alice.receive()
        assert (error["type"], error["code"]) == ("error", "invalid_message")
        assert alice.close_code is None
    await manager.shutdown()


class StrictProtocol(MessageProtocol):
    """Adds validation of a custom ``typing`` frame: a room and a boolean ``data``."""

    def validate_custom(self, message: Message) -> None:
        if message.type == "typing":
            if message.room is None or not isinstance(message.data, bool):
                raise ProtocolError(
                    ErrorCode.INVALID_MESSAGE,
                    "'typing' needs a room and a boolean data",
                    message.ref,
                )
            return
        super().validate_custom(message)


def test_validate_custom_subclass() -> None:
    protocol = StrictProtocol()
    message = protocol.decode(frame(type="typing", room="lobby", data=True))
    assert message.data is True
    error = decode_error(protocol, frame(type="typing", room="lobby", data="yes", ref="t"))
    assert (error.code, error.ref) == (ErrorCode.INVALID_MESSAGE, "t")
    assert decode_error(protocol, frame(type="typing", data=True)).code == (
        ErrorCode.INVALID_MESSAGE
    )
    # Other custom types keep the default rule; built-in types never reach the hook.
    assert protocol.decode(frame(type="wave")).type == "wave"
    assert decode_error(protocol, frame(type="_x")).code == ErrorCode.UNKNOWN_TYPE
    assert protocol.decode(frame(type="ping", data="anything")).type == "ping"


class RejectingProtocol(MessageProtocol):
    """A validate_custom that raises without passing the ref."""

    def validate_custom(self, message: Message) -> None:
        if message.type == "vote" and message.data not in ("yes", "no"):
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "a vote is 'yes' or 'no'")
        super().validate_custom(message)


async def test_validate_custom_errors_reach_the_client_with_the_ref() -> None:
    manager = ConnectionManager(protocol=StrictProtocol(), limits=Limits.without_rate_limits())
    async with TestClient(manager, user="alice") as alice:
        answer = await alice.request({"type": "typing", "room": "lobby", "data": 3})
        assert answer["type"] == "error"
        assert answer["code"] == "invalid_message"
        assert answer["message"] == "'typing' needs a room and a boolean data"
        assert alice.close_code is None
    await manager.shutdown()


async def test_validate_custom_error_without_ref_is_answered_with_the_frame_ref() -> None:
    # ProtocolError's ref is "filled in by the server when omitted".
    manager = ConnectionManager(protocol=RejectingProtocol(), limits=Limits.without_rate_limits())
    async with TestClient(manager, user="alice") as alice:
        await alice.send({"type": "vote", "data": "maybe", "ref": "v1"})
        answer = await alice.receive()
        assert answer["type"] == "error"
        assert answer["code"] == "invalid_message"
        assert answer["ref"] == "v1"
    await manager.shutdown()


def test_protocol_limits_can_be_lowered_by_subclassing() -> None:
    class Shallow(MessageProtocol):
        max_depth = 3

    protocol = Shallow()
    assert protocol.decode('{"type":"x","data":[[1]]}').data == [[1]]
    assert decode_error(protocol, '{"type":"x","data":[[[1]]]}').code == ErrorCode.INVALID_MESSAGE


def test_validate_accepts_a_parsed_value() -> None:
    # validate() checks a value that was parsed elsewhere; without a connection, no user.
    protocol = MessageProtocol()
    message = protocol.validate({"type": "ping", "ref": "p"})
    assert message.connection is None
    assert message.user is None
    assert message.ref == "p"


def test_server_frame_types_are_not_client_types(protocol: MessageProtocol) -> None:
    for type_ in SERVER_TYPES:
        assert decode_error(protocol, frame(type=type_)).code == ErrorCode.UNKNOWN_TYPE


class BinaryJSON(MessageProtocol):
    """A protocol with a codec of its own (here: JSON in binary frames)."""

    binary = True

    def loads(self, frame: str | bytes) -> Any:
        return super().loads(frame.decode("utf-8") if isinstance(frame, bytes) else frame)

    def dumps(self, obj: Any) -> bytes:
        return super().dumps(obj)


@settings(max_examples=300, deadline=None)
@given(
    data=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.text()
        | st.floats(allow_nan=False, allow_infinity=False),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=8,
    ),
    sender=st.none() | st.text(min_size=1),
    id_=st.integers(min_value=1, max_value=2**53),
)
def test_encode_message_is_the_frame_encoded_whole(data: Any, sender: str | None, id_: int) -> None:
    for protocol in (MessageProtocol(), BinaryJSON()):
        envelope = protocol.dumps({"from": sender, "data": data, "ts": 1767225600000})
        whole = protocol.dumps(frames.message("room/1", id_, sender, data, 1767225600000))
        assert protocol.encode_message("room/1", id_, envelope) == whole


def test_encode_message_with_a_lone_surrogate_stays_valid_utf8() -> None:
    protocol = MessageProtocol()
    envelope = protocol.dumps({"from": None, "data": "\ud800", "ts": 1})
    frame = protocol.encode_message("r", 3, envelope)
    assert frame == protocol.dumps(frames.message("r", 3, None, "\ud800", 1))
    assert json.loads(frame.decode("utf-8"))["data"] == "\ud800"
