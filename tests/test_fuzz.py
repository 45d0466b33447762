"""Property tests: hostile client input is accepted or refused with a documented error.

The oracle (reliability anchors, scenario 23): every frame either decodes to a
``Message`` or is refused with a ``ProtocolError`` whose code is an ``ErrorCode``; nothing
else escapes, and through a real ``ConnectionManager`` every frame gets only the answers
PROTOCOL.md allows while the connection stays open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from wsroom import (
    ConnectionManager,
    ErrorCode,
    Limits,
    Message,
    MessageProtocol,
    ProtocolError,
    is_valid_room_name,
)
from wsroom.testing import TestClient

ERROR_CODES = {code.value for code in ErrorCode}
SERVER_FRAME_TYPES = {
    "welcome",
    "joined",
    "left",
    "message",
    "direct",
    "presence",
    "ack",
    "pong",
    "error",
}
USER = "fuzzer"
SENTINEL = '{"type":"ping","ref":"sentinel"}'
TIMEOUT = 5.0


def is_valid_ref(ref: object) -> bool:
    if isinstance(ref, str):
        return len(ref) <= 64
    return type(ref) is int and len(str(ref)) <= 64


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json(raw: bytes) -> Any:
    """Parse a server frame as a browser would: UTF-8, no NaN or Infinity."""
    text = raw.decode("utf-8")  # strict: invalid UTF-8 raises
    return json.loads(text, parse_constant=_no_constants)


def check_decode(protocol: MessageProtocol, frame: str | bytes) -> Message | ProtocolError:
    """Decode ``frame``; the result must be a Message or a documented ProtocolError."""
    error: ProtocolError | None = None
    try:
        message = protocol.decode(frame)
    except ProtocolError as exc:
        error = exc
    if error is not None:
        assert error.code in ERROR_CODES, error.code
        assert isinstance(error.message, str)
        assert error.message
        assert error.ref is None or is_valid_ref(error.ref)
        return error
    assert isinstance(message, Message)
    assert isinstance(message.type, str)
    assert message.room is None or is_valid_room_name(message.room)
    assert message.ref is None or is_valid_ref(message.ref)
    assert isinstance(message.fields, dict)
    # What a client sent can always be relayed as strict JSON in valid UTF-8.
    assert strict_json(protocol.dumps(message.fields)) == message.fields
    return message


# Strategies.

_PLACEHOLDER = re.compile(r'"\\u0000(BIG|DEEP):(-?\d+)"')


def _big_int(negative: bool, digits: int) -> str:
    return f"\x00BIG:{'-' if negative else ''}{'1' + '0' * (digits - 1)}"


def _expand(match: re.Match[str]) -> str:
    kind, number = match.group(1), match.group(2)
    if kind == "BIG":
        return number
    depth = int(number)
    return "[" * depth + "]" * depth


def serialize(value: Any, *, allow_nan: bool, ensure_ascii: bool) -> str:
    """json.dumps, then expand placeholders for what json.dumps cannot produce itself:
    integers above Python's digit limit and nesting deeper than its recursion limit."""
    try:
        text = json.dumps(value, allow_nan=allow_nan, ensure_ascii=ensure_ascii)
    except ValueError:
        text = json.dumps(value, allow_nan=True, ensure_ascii=ensure_ascii)
    return _PLACEHOLDER.sub(_expand, text)


characters = st.one_of(st.characters(), st.characters(categories=["Cs"]))
json_strings = st.one_of(
    st.text(characters, max_size=16),
    st.sampled_from(["", "lobby", "\ud800", "\udfff", "a\x00b", "\uff41", "İ", "../x", "x" * 129]),
)
huge_ints = st.builds(_big_int, st.booleans(), st.integers(min_value=4200, max_value=5200))
deep_nesting = st.integers(min_value=20, max_value=3000).map(lambda depth: f"\x00DEEP:{depth}")
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**80), max_value=10**80),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    json_strings,
    deep_nesting,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(json_strings, children, max_size=4),
    ),
    max_leaves=16,
)

clean_json = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(characters, max_size=16),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(characters, max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)

TYPES = [
    "join",
    "leave",
    "message",
    "direct",
    "ping",
    "typing",
    "Custom_1",
    "welcome",
    "joined",
    "error",
    "pong",
    "_private",
    "__init__",
    "1a",
    "x" * 65,
    "",
]
BUILTIN_TYPES = st.sampled_from(["join", "leave", "message", "direct", "ping"])


def mostly(valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
    """Valid values three times in four, so frames get past validation and get served."""
    return st.one_of(valid, valid, valid, hostile)


types = st.one_of(BUILTIN_TYPES, BUILTIN_TYPES, BUILTIN_TYPES, st.sampled_from(TYPES), json_values)
rooms = mostly(
    st.one_of(st.just("lobby"), st.sampled_from(["lobby", "a", "x" * 128, "../x", "a:b@c/d"])),
    st.one_of(st.sampled_from(["x" * 129, "a b", "", "\uff41", "a\n"]), json_values),
)
refs = mostly(
    st.one_of(st.integers(min_value=-(10**12), max_value=10**12), st.text(characters, max_size=64)),
    st.one_of(
        st.sampled_from(["r" * 65, True, False, 1.5, 10**63, 10**64, -(10**63)]), json_values
    ),
)
sinces = mostly(
    st.integers(min_value=0, max_value=50),
    st.one_of(st.sampled_from([-1, True, 1.0, 10**30]), json_values),
)
epochs = mostly(st.text(characters, max_size=64), st.one_of(st.just("e" * 65), json_values))
tos = mostly(
    st.just(USER), st.one_of(st.sampled_from(["bob", "", "u" * 256, "u" * 257]), json_values)
)
datas = mostly(clean_json, json_values)
optional_fields = {
    "room": rooms,
    "ref": refs,
    "data": datas,
    "since": sinces,
    "epoch": epochs,
    "to": tos,
    "extra": datas,
}
any_frames = st.one_of(
    st.fixed_dictionaries({"type": types}, optional=optional_fields),
    st.fixed_dictionaries({}, optional={"type": types, **optional_fields}),
)


def _frame(type_: str, required: dict[str, Any], optional: dict[str, Any]) -> Any:
    return st.fixed_dictionaries(
        {"type": st.just(type_), **required},
        optional={"ref": refs, "extra": datas, **optional},
    )


# One of each client frame type, with its required fields present (mostly valid), so the
# manager serves many of them instead of refusing them all at validation.
shaped_frames = st.one_of(
    _frame("join", {"room": rooms}, {"data": datas, "since": sinces, "epoch": epochs}),
    _frame("leave", {"room": rooms}, {}),
    _frame("message", {"room": rooms, "data": datas}, {}),
    _frame("message", {"room": rooms, "data": datas}, {}),
    _frame("direct", {"to": tos}, {"data": datas, "room": rooms}),
    _frame("ping", {}, {"data": datas}),
    st.sampled_from(TYPES).flatmap(lambda t: _frame(t, {}, {"room": rooms, "data": datas})),
)
frame_dicts = st.one_of(shaped_frames, shaped_frames, any_frames)


@st.composite
def serialized(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> str:
    value = draw(values)
    text = serialize(value, allow_nan=draw(st.booleans()), ensure_ascii=draw(st.booleans()))
    if draw(st.integers(min_value=0, max_value=9)) == 0 and text.startswith("{") and len(text) > 2:
        # A duplicate key in front: the later one wins.
        text = '{"type":"join",' + text[1:]
    return text


json_like_texts = st.one_of(
    serialized(frame_dicts),
    serialized(json_values),
)


# a. Arbitrary text and bytes straight into decode.


@settings(max_examples=2000, deadline=None)
@given(st.text())
def test_decode_arbitrary_text(text: str) -> None:
    check_decode(MessageProtocol(), text)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet='{}[]":,0123456789.eE+-ntrufalsNIiy\\ u', max_size=60))
def test_decode_json_alphabet_text(text: str) -> None:
    check_decode(MessageProtocol(), text)


@settings(max_examples=1000, deadline=None)
@given(st.binary())
def test_decode_arbitrary_bytes(data: bytes) -> None:
    result = check_decode(MessageProtocol(), data)
    assert isinstance(result, ProtocolError)
    assert result.code == ErrorCode.INVALID_MESSAGE


# b. JSON-shaped input.


@settings(max_examples=1500, deadline=None)
@given(json_like_texts)
def test_decode_json_values_and_frames(text: str) -> None:
    check_decode(MessageProtocol(), text)


@settings(max_examples=500, deadline=None)
@given(frame_dicts)
def test_validate_never_raises_anything_else(value: dict[str, Any]) -> None:
    # validate() on values no JSON parser would produce (huge ints, NaN) still obeys.
    try:
        message = MessageProtocol().validate(value)
    except ProtocolError as exc:
        code = exc.code
    else:
        assert isinstance(message.type, str)
        return
    assert code in ERROR_CODES


# c. Through a ConnectionManager and the in-memory client.


def _parse_for_oracle(raw: str | bytes) -> Any:
    """What a lenient parser sees in ``raw`` (None when it cannot tell)."""
    if isinstance(raw, bytes):
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


async def _answers(client: TestClient) -> list[dict[str, Any]]:
    """Every frame the server sent up to the sentinel pong."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            raw = await client.transport.frames.get()
            frame = strict_json(raw)
            assert isinstance(frame, dict), frame
            assert frame.get("type") in SERVER_FRAME_TYPES, frame
            if frame == {"type": "pong", "ref": "sentinel"}:
                return frames
            frames.append(frame)


def _check_answers(raw: str | bytes, answers: list[dict[str, Any]]) -> None:
    for answer in answers:
        if answer["type"] == "error":
            assert answer["code"] in ERROR_CODES, answer
            assert isinstance(answer["message"], str), answer
            assert "Traceback" not in answer["message"]
            assert answer["code"] != ErrorCode.INTERNAL_ERROR, answer
    errors = [a for a in answers if a["type"] == "error"]
    parsed = _parse_for_oracle(raw)
    expected_ref = parsed.get("ref") if isinstance(parsed, dict) else None
    if not is_valid_ref(expected_ref):
        expected_ref = None
    if errors:
        assert len(answers) == 1, answers
        error = errors[0]
        if error["code"] == ErrorCode.INVALID_JSON or isinstance(raw, bytes):
            assert error["ref"] is None, error
        elif parsed is not None:
            assert error["ref"] == expected_ref, (raw, error)
        return
    # Accepted: the frame was a JSON object with a string type.
    assert isinstance(parsed, dict), (raw, answers)
    type_ = parsed["type"]
    ref = parsed.get("ref")
    if type_ == "ping":
        assert answers == [{"type": "pong", "ref": ref}]
    elif type_ == "join":
        assert len(answers) == 1, answers
        joined = answers[0]
        assert joined["type"] == "joined"
        assert (joined["room"], joined["ref"]) == (parsed["room"], ref)
        assert isinstance(joined["members"], list)
        assert USER in joined["members"]
        assert isinstance(joined["history"], list)
        assert type(joined["offset"]) is int
        assert isinstance(joined["epoch"], str)
        assert ("recovered" in joined) == (parsed.get("since") is not None), joined
    elif type_ == "leave":
        assert answers == [{"type": "left", "room": parsed["room"], "ref": ref}]
    elif type_ == "message":
        assert len(answers) == (2 if ref is not None else 1), answers
        relayed = answers[0]
        assert relayed["type"] == "message"
        assert (relayed["room"], relayed["from"]) == (parsed["room"], USER)
        assert relayed["data"] == parsed.get("data")
        if ref is not None:
            assert answers[1] == {"type": "ack", "ref": ref, "id": relayed["id"]}
    elif type_ == "direct":
        assert parsed["to"] == USER, answers
        assert len(answers) == (2 if ref is not None else 1), answers
        delivered = answers[0]
        assert delivered["type"] == "direct"
        assert (delivered["from"], delivered["data"]) == (USER, parsed.get("data"))
        if ref is not None:
            assert answers[1] == {"type": "ack", "ref": ref, "id": delivered["id"]}
    else:
        raise AssertionError(f"a custom type was served with no handler: {raw!r} -> {answers}")


async def _exchange(frames: list[str | bytes]) -> None:
    manager = ConnectionManager(limits=Limits.without_rate_limits(max_frame_size=1 << 22))
    try:
        async with TestClient(manager, user=USER, timeout=TIMEOUT) as client:
            for raw in frames:
                await client.send(raw)
                await client.send(SENTINEL)
                answers = await _answers(client)
                _check_answers(raw, answers)
                assert client.close_code is None, (raw, client.close_code)
                assert client.connection is not None
                assert not client.connection.closed
    finally:
        await manager.shutdown(timeout=TIMEOUT)


JOIN_LOBBY = '{"type":"join","room":"lobby"}'
wire_frames = st.one_of(
    serialized(frame_dicts),
    serialized(frame_dicts),
    serialized(frame_dicts),
    serialized(frame_dicts),
    serialized(json_values),
    st.text(max_size=40),
    st.binary(max_size=40),
)


def _wsroom_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name.startswith("wsroom") and record.levelno >= logging.ERROR
    ]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.sampled_from([True, True, True, False]), st.lists(wire_frames, min_size=1, max_size=8))
def test_manager_answers_fuzzed_frames(
    caplog: pytest.LogCaptureFixture, join_first: bool, frames: list[str | bytes]
) -> None:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="wsroom"):
        asyncio.run(_exchange([JOIN_LOBBY, *frames] if join_first else frames))
    assert _wsroom_errors(caplog) == []


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"type":"message","room":"lobby","ref":"d","data":' + "[" * 1000 + "]" * 1000 + "}",
        '{"type":"ping","ref":"big","data":' + "9" * 5000 + "}",
        '{"type":"message","room":"lobby","data":NaN}',
        '{"type":"message","room":"lobby","data":-Infinity}',
        '{"type":"message","room":"lobby","data":1e999}',
        '{"type":"message","room":"lobby","ref":"s","data":"\\ud800"}',
        '{"type":"join","room":"lobby","ref":"j","since":0,"epoch":"\\udfff"}',
        '{"type":"direct","to":"fuzzer","ref":"d","data":"\\udc00x"}',
        '{"type":"typing","room":"lobby","ref":"t"}',
        '{"type":"typing","ref":"t"}',
        b'{"type":"ping"}',
        "",
        "null",
    ],
)
def test_manager_answers_hostile_corpus(caplog: pytest.LogCaptureFixture, raw: str | bytes) -> None:
    with caplog.at_level(logging.ERROR, logger="wsroom"):
        asyncio.run(_exchange([JOIN_LOBBY, raw]))
    assert _wsroom_errors(caplog) == []
