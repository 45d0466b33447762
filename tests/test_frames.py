"""frames.py is the protocol's one home: docs/protocol.md must say what its tables say."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from tests.helpers import SERVER_FRAME_FIELDS, SERVER_FRAME_OPTIONAL_FIELDS
from wsroom import ConnectionManager, frames
from wsroom.frames import (
    ANSWER_TYPES,
    CLIENT_TYPES,
    CUSTOM_TYPE,
    SERVER_TYPES,
    CloseCode,
    ErrorCode,
)

PROTOCOL_DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def _table(heading: str) -> list[list[str]]:
    """The rows of the first table under ``## heading`` in docs/protocol.md, as cells."""
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1]
    rows = []
    started = False
    for line in section.splitlines():
        if line.startswith("|"):
            started = True
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not set(cells[0]) <= set("-: "):
                rows.append(cells)
        elif started:
            break
    return rows[1:]  # without the header row


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_the_client_table_of_the_docs_is_the_table_of_frames_py() -> None:
    rows = {_names(row[0])[0]: row for row in _table("Client to server") if _names(row[0])}
    assert set(rows) == set(CLIENT_TYPES)
    for name, kind in CLIENT_TYPES.items():
        fields, answer = rows[name][1], rows[name][2]
        assert kind.answer in _names(answer), (
            f"{name}: the docs do not say it is answered by {kind.answer}"
        )
        room_documented = "`room` (required)" in fields
        assert room_documented == (kind.room == "required"), f"{name}: room is {kind.room}"
    others = [row for row in _table("Client to server") if not _names(row[0])]
    assert len(others) == 1 and CUSTOM_TYPE.answer in _names(others[0][2])


SAMPLES = {
    "welcome": frames.welcome("c1", "ann", None),
    "joined": frames.joined("r", 1, ["ann"], [], 0, "e", True),
    "left": frames.left("r", 1),
    "message": frames.message("r", 1, "ann", {"text": "hi"}, 0),
    "direct": frames.direct(1, "ann", None, 0),
    "presence": frames.presence("r", "join", "ann"),
    "gap": frames.gap("r", "e", 0),
    "ack": frames.ack(1, 7, {"seat": 2}),
    "pong": frames.pong(1),
    "error": frames.error("forbidden", "no", 1),
}


def test_every_server_frame_has_a_builder_and_the_fields_the_docs_list() -> None:
    assert set(SAMPLES) == SERVER_TYPES
    rows = {_names(row[0])[0]: row for row in _table("Server to client") if _names(row[0])}
    assert set(rows) == SERVER_TYPES
    for name, frame in SAMPLES.items():
        # Names in parentheses qualify a field; they are not fields.
        documented = set(_names(re.sub(r"\([^)]*\)", "", rows[name][1])))
        assert set(frame) - {"type"} == documented, name
        # The test clients' oracle agrees with both.
        assert set(frame) <= SERVER_FRAME_FIELDS[name] | SERVER_FRAME_OPTIONAL_FIELDS.get(
            name, frozenset()
        )
        assert SERVER_FRAME_FIELDS[name] <= set(frame)


def test_optional_fields_appear_only_when_they_apply() -> None:
    assert "recovered" not in frames.joined("r", None, [], [], 0, "e", None)
    assert "id" not in frames.ack(3)
    assert frames.ack(3, 0) == {"type": "ack", "ref": 3, "id": 0}
    # 'data' is the application's answer: absent for none (None), present for any other
    # value, false ones included.
    assert "data" not in frames.ack(3, 4)
    assert "data" not in frames.ack(3, None, None)
    answers: tuple[object, ...] = (0, False, "", [], {})
    for answer in answers:
        frame = frames.ack(3, None, answer)
        assert frame == {"type": "ack", "ref": 3, "data": answer}
        assert type(frame["data"]) is type(answer)
    assert "room" not in frames.event("note", 1)
    with pytest.raises(ValueError, match="frame type of the protocol"):
        frames.event("joined", None)


def test_error_and_close_codes_are_the_documented_ones() -> None:
    errors = {_names(row[0])[0] for row in _table("Error codes")}
    assert errors == {code.value for code in ErrorCode}
    closes = {int(row[0]) for row in _table("Close codes") if row[0].isdigit()}
    # The docs also list the codes a client may get from the WebSocket server itself.
    assert {code.value for code in CloseCode} <= closes


def test_answer_types_are_what_answers_client_frames() -> None:
    assert {kind.answer for kind in CLIENT_TYPES.values()} | {"error"} <= ANSWER_TYPES
    assert ANSWER_TYPES <= SERVER_TYPES
    assert "message" not in ANSWER_TYPES


def test_every_client_type_names_a_handler_of_the_dispatcher() -> None:
    dispatcher = ConnectionManager()._dispatcher
    for kind in (*CLIENT_TYPES.values(), CUSTOM_TYPE):
        handler = getattr(dispatcher, kind.handler, None)
        assert handler is not None and inspect.iscoroutinefunction(handler), kind.name


def test_reserved_names_cannot_become_application_types() -> None:
    manager = ConnectionManager()
    for name in frames.RESERVED_TYPES:
        with pytest.raises(ValueError, match="frame type of the protocol itself"):
            manager.handler(name)
