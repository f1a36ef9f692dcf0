"""Tests for chatd.protocol: parsing and validating client frames (docs/protocol.md).

The parser needs no socket and no storage: each test feeds one frame's text and checks
the message class it becomes, or the ``error`` code (and ``id``) it is refused with.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from chatd.protocol import (
    HISTORY_PAGE,
    MAX_HISTORY,
    MAX_ID,
    MAX_NAME,
    MAX_ROOM,
    MAX_SEQ,
    MAX_TEXT,
    PROTOCOL_VERSION,
    DirectMessage,
    History,
    Join,
    Leave,
    Ping,
    ProtocolError,
    Receipt,
    Resume,
    RoomMessage,
    Typing,
    encode,
    is_valid_name,
    is_valid_room,
    parse_client_message,
)


def parse(message: dict[str, Any]) -> object:
    return parse_client_message(json.dumps(message))


def refused(text: str) -> ProtocolError:
    """The ProtocolError that ``text`` is refused with."""
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(text)
    return caught.value


def refused_message(message: dict[str, Any]) -> ProtocolError:
    return refused(json.dumps(message))


# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "alice", "Alice_2", "a.b-c", "0", "x" * MAX_NAME, "..", "-"])
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "x" * (MAX_NAME + 1), "al ice", "alice\n", "\nalice", "al/ice", "ålice", "a@b", "a\0"],
)
def test_invalid_names(name: str) -> None:
    assert not is_valid_name(name)


@pytest.mark.parametrize("room", ["lobby", "r", "room-1.b_c", "x" * MAX_ROOM])
def test_valid_rooms(room: str) -> None:
    assert is_valid_room(room)


@pytest.mark.parametrize(
    "room", ["", "x" * (MAX_ROOM + 1), "a b", "lobby\n", "a/b", "#general", "réunion"]
)
def test_invalid_rooms(room: str) -> None:
    assert not is_valid_room(room)


def test_limits_are_the_documented_ones() -> None:
    assert PROTOCOL_VERSION == 1
    assert (MAX_TEXT, MAX_NAME, MAX_ROOM, MAX_ID) == (4000, 50, 64, 64)
    assert (HISTORY_PAGE, MAX_HISTORY) == (50, 200)


# --- every client message type ----------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"type": "join", "room": "dev"}, Join("dev")),
        ({"type": "join", "room": "dev", "id": "j1"}, Join("dev", "j1")),
        ({"type": "leave", "room": "dev", "id": "l"}, Leave("dev", "l")),
        (
            {"type": "message", "room": "lobby", "text": "hi", "id": "m1"},
            RoomMessage("lobby", "hi", "m1"),
        ),
        ({"type": "message", "room": "lobby", "text": " x "}, RoomMessage("lobby", " x ")),
        ({"type": "dm", "to": "bob", "text": "psst", "id": "d"}, DirectMessage("bob", "psst", "d")),
        ({"type": "typing", "room": "lobby"}, Typing("lobby", True)),
        ({"type": "typing", "room": "lobby", "active": False}, Typing("lobby", False)),
        ({"type": "history", "room": "lobby"}, History("lobby", None, HISTORY_PAGE)),
        (
            {"type": "history", "room": "lobby", "before": 71, "limit": 20, "id": "h"},
            History("lobby", 71, 20, "h"),
        ),
        ({"type": "history", "room": "lobby", "before": None}, History("lobby")),
        ({"type": "history", "room": "lobby", "limit": 1}, History("lobby", None, 1)),
        ({"type": "history", "room": "lobby", "limit": 200}, History("lobby", None, 200)),
        ({"type": "resume", "rooms": {}}, Resume({})),
        ({"type": "resume", "dm": 7}, Resume({}, None, 7)),
        ({"type": "resume", "rooms": {"lobby": 1}, "dm": 0}, Resume({"lobby": 1}, None, 0)),
        (
            {"type": "resume", "rooms": {"lobby": 3, "dev": 0}, "id": "r"},
            Resume({"lobby": 3, "dev": 0}, "r"),
        ),
        (
            {"type": "receipt", "room": "lobby", "seq": 4, "status": "seen"},
            Receipt("lobby", 4, "seen"),
        ),
        (
            {"type": "receipt", "room": "lobby", "seq": 0, "status": "delivered"},
            Receipt("lobby", 0, "delivered"),
        ),
        ({"type": "ping"}, Ping()),
        ({"type": "ping", "id": "p1"}, Ping("p1")),
    ],
)
def test_parses_every_message_type(message: dict[str, Any], expected: object) -> None:
    assert parse(message) == expected


def test_unknown_fields_are_ignored() -> None:
    message = {"type": "join", "room": "dev", "colour": "blue", "extra": {"nested": [1]}}
    assert parse(message) == Join("dev")


def test_text_limits_count_characters_not_bytes() -> None:
    text = "ü" * MAX_TEXT  # 8,000 bytes of UTF-8, 4,000 characters
    assert parse({"type": "message", "room": "lobby", "text": text}) == RoomMessage("lobby", text)
    emoji = "😀" * MAX_TEXT
    assert parse({"type": "dm", "to": "bob", "text": emoji}) == DirectMessage("bob", emoji)


def test_id_of_64_characters_is_kept() -> None:
    message_id = "i" * MAX_ID
    assert parse({"type": "ping", "id": message_id}) == Ping(message_id)


def test_messages_are_frozen_values() -> None:
    message = parse({"type": "join", "room": "dev"})
    with pytest.raises(AttributeError):
        message.room = "other"  # type: ignore[attr-defined]
    assert "dev" in repr(message)


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "{", "not json", "{'type': 'ping'}", '{"type": "ping"', "[" * 100_000, "1" * 5000],
)
def test_invalid_json_is_bad_json(text: str) -> None:
    error = refused(text)
    assert error.code == "bad_json"
    assert error.message_id is None


@pytest.mark.parametrize("text", ["[]", '[{"type": "ping"}]', '"ping"', "42", "null", "true"])
def test_a_message_is_an_object(text: str) -> None:
    assert refused(text).code == "bad_json"


@pytest.mark.parametrize(
    "message",
    [{}, {"type": None}, {"type": 1}, {"type": ["ping"]}, {"id": "x"}],
)
def test_missing_or_non_string_type_is_bad_message(message: dict[str, Any]) -> None:
    assert refused_message(message).code == "bad_message"


def test_unknown_type_keeps_the_id_and_a_short_name() -> None:
    error = refused_message({"type": "x" * 1000, "id": "u1"})
    assert error.code == "unknown_type"
    assert error.message_id == "u1"
    assert len(error.message) < 100
    assert refused_message({"type": "Join", "room": "dev"}).code == "unknown_type"


@pytest.mark.parametrize("message_id", [1, 1.5, True, [], {}, "", "i" * (MAX_ID + 1)])
def test_bad_ids_are_bad_message(message_id: object) -> None:
    error = refused_message({"type": "ping", "id": message_id})
    assert error.code == "bad_message"
    assert error.message_id is None  # the id itself is what is wrong


@pytest.mark.parametrize(
    ("message", "code"),
    [
        # rooms
        ({"type": "join"}, "bad_message"),
        ({"type": "join", "room": 5}, "bad_message"),
        ({"type": "join", "room": None}, "bad_message"),
        ({"type": "join", "room": ""}, "bad_room"),
        ({"type": "join", "room": "no spaces"}, "bad_room"),
        ({"type": "join", "room": "x" * (MAX_ROOM + 1)}, "bad_room"),
        ({"type": "leave", "room": "../etc"}, "bad_room"),
        # text
        ({"type": "message", "room": "lobby"}, "bad_message"),
        ({"type": "message", "room": "lobby", "text": 42}, "bad_message"),
        ({"type": "message", "room": "lobby", "text": ""}, "bad_message"),
        ({"type": "message", "room": "lobby", "text": " \n\t "}, "bad_message"),
        ({"type": "message", "room": "lobby", "text": "x" * (MAX_TEXT + 1)}, "too_long"),
        ({"type": "message", "text": "hi"}, "bad_message"),
        ({"type": "message", "room": "a b", "text": "hi"}, "bad_room"),
        # DMs
        ({"type": "dm", "text": "hi"}, "bad_message"),
        ({"type": "dm", "to": ["bob"], "text": "hi"}, "bad_message"),
        ({"type": "dm", "to": "bob smith", "text": "hi"}, "bad_name"),
        ({"type": "dm", "to": "b" * (MAX_NAME + 1), "text": "hi"}, "bad_name"),
        ({"type": "dm", "to": "bob"}, "bad_message"),
        ({"type": "dm", "to": "bob", "text": "x" * (MAX_TEXT + 1)}, "too_long"),
        # typing
        ({"type": "typing", "room": "lobby", "active": 1}, "bad_message"),
        ({"type": "typing", "room": "lobby", "active": "true"}, "bad_message"),
        ({"type": "typing", "room": "lobby", "active": None}, "bad_message"),
        ({"type": "typing"}, "bad_message"),
        # history
        ({"type": "history"}, "bad_message"),
        ({"type": "history", "room": "lobby", "before": -1}, "bad_message"),
        ({"type": "history", "room": "lobby", "before": "10"}, "bad_message"),
        ({"type": "history", "room": "lobby", "before": 1.5}, "bad_message"),
        ({"type": "history", "room": "lobby", "before": True}, "bad_message"),
        ({"type": "history", "room": "lobby", "before": MAX_SEQ + 1}, "bad_message"),
        ({"type": "history", "room": "lobby", "limit": 0}, "bad_message"),
        ({"type": "history", "room": "lobby", "limit": MAX_HISTORY + 1}, "bad_message"),
        ({"type": "history", "room": "lobby", "limit": "50"}, "bad_message"),
        ({"type": "history", "room": "lobby", "limit": False}, "bad_message"),
        # resume
        ({"type": "resume"}, "bad_message"),
        ({"type": "resume", "rooms": [["lobby", 1]]}, "bad_message"),
        ({"type": "resume", "rooms": {f"r{i}": 0 for i in range(101)}}, "bad_message"),
        ({"type": "resume", "rooms": {"a b": 1}}, "bad_room"),
        ({"type": "resume", "rooms": {"lobby": -1}}, "bad_message"),
        ({"type": "resume", "rooms": {"lobby": "3"}}, "bad_message"),
        ({"type": "resume", "rooms": {"lobby": None}}, "bad_message"),
        ({"type": "resume", "rooms": {"lobby": True}}, "bad_message"),
        ({"type": "resume", "dm": "3"}, "bad_message"),
        ({"type": "resume", "dm": True}, "bad_message"),
        ({"type": "resume", "rooms": {"lobby": 10**30}}, "bad_message"),
        # receipts
        ({"type": "receipt", "room": "lobby", "status": "seen"}, "bad_message"),
        ({"type": "receipt", "room": "lobby", "seq": None, "status": "seen"}, "bad_message"),
        ({"type": "receipt", "room": "lobby", "seq": -2, "status": "seen"}, "bad_message"),
        ({"type": "receipt", "room": "lobby", "seq": 10**30, "status": "seen"}, "bad_message"),
        ({"type": "receipt", "room": "lobby", "seq": 1}, "bad_message"),
        ({"type": "receipt", "room": "lobby", "seq": 1, "status": "read"}, "bad_message"),
        ({"type": "receipt", "room": "lobby", "seq": 1, "status": ["seen"]}, "bad_message"),
        ({"type": "receipt", "seq": 1, "status": "seen"}, "bad_message"),
    ],
)
def test_invalid_fields_get_the_right_code_and_keep_the_id(
    message: dict[str, Any], code: str
) -> None:
    error = refused_message({**message, "id": "bad-1"})
    assert error.code == code
    assert error.message_id == "bad-1"
    assert error.message
    assert str(error) == error.message


def test_large_integers_within_the_bound_are_accepted() -> None:
    assert parse({"type": "history", "room": "lobby", "before": MAX_SEQ}) == History(
        "lobby", MAX_SEQ
    )
    assert parse({"type": "resume", "rooms": {"lobby": MAX_SEQ}}) == Resume({"lobby": MAX_SEQ})


def test_resume_of_100_rooms_is_accepted() -> None:
    rooms = {f"r{i}": i for i in range(100)}
    assert parse({"type": "resume", "rooms": rooms}) == Resume(rooms)


def test_a_bad_room_name_in_resume_is_not_echoed_at_length() -> None:
    error = refused_message({"type": "resume", "rooms": {"x" * 5000: 1}})
    assert error.code == "bad_room"
    assert len(error.message) < 200


# --- the wire format of answers ---------------------------------------------------------


def test_error_to_wire() -> None:
    error = ProtocolError("too_long", "text over 4000 characters", "m7")
    assert error.to_wire() == {
        "type": "error",
        "code": "too_long",
        "message": "text over 4000 characters",
        "id": "m7",
    }
    assert ProtocolError("bad_json", "nope").to_wire()["id"] is None


def test_encode_is_compact_and_keeps_unicode() -> None:
    text = encode({"type": "message", "text": "¯\\_(ツ)_/¯ ü", "id": None})
    assert text == '{"type":"message","text":"¯\\\\_(ツ)_/¯ ü","id":null}'
    assert json.loads(text)["text"] == "¯\\_(ツ)_/¯ ü"
