"""The chatd wire protocol, version 1: validation in, JSON out (docs/protocol.md).

Every client frame is parsed into one of the frozen message classes below or refused
with a ``ProtocolError`` that carries the machine-readable ``code`` the client gets back
in an ``error``. Nothing here touches a socket or the hub's state.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

__all__ = [
    "HISTORY_PAGE",
    "MAX_HISTORY",
    "MAX_ID",
    "MAX_NAME",
    "MAX_ROOM",
    "MAX_SEQ",
    "MAX_TEXT",
    "PROTOCOL_VERSION",
    "ClientMessage",
    "DirectMessage",
    "History",
    "Join",
    "Leave",
    "Ping",
    "ProtocolError",
    "Receipt",
    "Resume",
    "RoomMessage",
    "Typing",
    "encode",
    "is_valid_name",
    "is_valid_room",
    "parse_client_message",
]

PROTOCOL_VERSION = 1
#: DESIGN.md defaults: chat text up to 4,000 characters, user names 1-50 characters.
MAX_TEXT = 4000
MAX_NAME = 50
MAX_ROOM = 64
MAX_ID = 64
#: Messages in ``joined`` and the default ``history`` page; the largest page asked for.
HISTORY_PAGE = 50
MAX_HISTORY = 200
#: How many messages one ``resume`` returns per room at most.
MAX_RESUME = 1000
#: The largest ``seq`` a client may name: JavaScript's ``Number.MAX_SAFE_INTEGER``, the
#: largest integer a browser reads exactly (and well inside SQLite's 64-bit INTEGER, which
#: would otherwise refuse the query with ``OverflowError``).
MAX_SEQ = 2**53 - 1

_NAME_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_NAME}}}")
_ROOM_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_ROOM}}}")


def is_valid_name(name: str) -> bool:
    """A user name: 1-50 letters, digits, ``-``, ``_`` or ``.``."""
    return _NAME_RE.fullmatch(name) is not None


def is_valid_room(room: str) -> bool:
    """A room name: 1-64 letters, digits, ``-``, ``_`` or ``.``."""
    return _ROOM_RE.fullmatch(room) is not None


class ProtocolError(Exception):
    """A client message the server refuses; answered with an ``error``."""

    def __init__(self, code: str, message: str, message_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.message_id = message_id

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` message that answers it."""
        return {"type": "error", "code": self.code, "message": self.message, "id": self.message_id}


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Leave:
    room: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class RoomMessage:
    room: str
    text: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class DirectMessage:
    to: str
    text: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Typing:
    room: str
    active: bool = True
    id: str | None = None


@dataclass(frozen=True, slots=True)
class History:
    room: str
    before: int | None = None
    limit: int = HISTORY_PAGE
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Resume:
    rooms: dict[str, int]
    id: str | None = None
    #: The newest DM id the client has; None when it asks for no DMs.
    dm: int | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    room: str
    seq: int
    status: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: str | None = None


ClientMessage = (
    Join | Leave | RoomMessage | DirectMessage | Typing | History | Resume | Receipt | Ping
)


def encode(message: dict[str, Any]) -> str:
    """Serialize a server message: compact JSON, UTF-8 kept as is."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def parse_client_message(text: str) -> ClientMessage:
    """Parse and validate one client frame (docs/protocol.md, "Client → server")."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_json", "not a JSON document") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", "a message is a JSON object")
    if "\\u" in text and not _is_unicode_text(data):
        # JSON may spell a lone surrogate ("\\ud800"): a str with no UTF-8 form, which
        # neither a WebSocket text frame nor SQLite can carry.
        raise ProtocolError("bad_message", "a string holds a lone surrogate, not text")
    message_id = _message_id(data)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "missing string field 'type'", message_id)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:32]!r}", message_id)
    return parser(data, message_id)


def _is_unicode_text(data: Any) -> bool:
    """Whether every string in ``data`` can be encoded as UTF-8 (no lone surrogates)."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _message_id(data: dict[str, Any]) -> str | None:
    value = data.get("id")
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID:
        raise ProtocolError("bad_message", f"'id' must be a string of 1-{MAX_ID} characters")
    return value


def _room(data: dict[str, Any], message_id: str | None) -> str:
    room = data.get("room")
    if not isinstance(room, str):
        raise ProtocolError("bad_message", "missing string field 'room'", message_id)
    if not is_valid_room(room):
        raise ProtocolError(
            "bad_room", "a room name is 1-64 letters, digits, '-', '_' or '.'", message_id
        )
    return room


def _text(data: dict[str, Any], message_id: str | None) -> str:
    text = data.get("text")
    if not isinstance(text, str):
        raise ProtocolError("bad_message", "missing string field 'text'", message_id)
    if not text.strip():
        raise ProtocolError("bad_message", "empty text", message_id)
    if len(text) > MAX_TEXT:
        raise ProtocolError("too_long", f"text over {MAX_TEXT} characters", message_id)
    return text


def _int(data: dict[str, Any], field: str, message_id: str | None, *, required: bool) -> int | None:
    value = data.get(field)
    if value is None and not required:
        return None
    if not _is_seq(value):
        raise ProtocolError(
            "bad_message", f"'{field}' must be an integer from 0 to {MAX_SEQ}", message_id
        )
    return value


def _is_seq(value: object) -> TypeGuard[int]:
    """A non-negative JSON integer within ``MAX_SEQ`` (``True`` is not an integer here)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ


def _parse_join(data: dict[str, Any], message_id: str | None) -> Join:
    return Join(_room(data, message_id), message_id)


def _parse_leave(data: dict[str, Any], message_id: str | None) -> Leave:
    return Leave(_room(data, message_id), message_id)


def _parse_message(data: dict[str, Any], message_id: str | None) -> RoomMessage:
    return RoomMessage(_room(data, message_id), _text(data, message_id), message_id)


def _parse_dm(data: dict[str, Any], message_id: str | None) -> DirectMessage:
    to = data.get("to")
    if not isinstance(to, str):
        raise ProtocolError("bad_message", "missing string field 'to'", message_id)
    if not is_valid_name(to):
        raise ProtocolError("bad_name", "not a valid user name", message_id)
    return DirectMessage(to, _text(data, message_id), message_id)


def _parse_typing(data: dict[str, Any], message_id: str | None) -> Typing:
    active = data.get("active", True)
    if not isinstance(active, bool):
        raise ProtocolError("bad_message", "'active' must be true or false", message_id)
    return Typing(_room(data, message_id), active, message_id)


def _parse_history(data: dict[str, Any], message_id: str | None) -> History:
    room = _room(data, message_id)
    before = _int(data, "before", message_id, required=False)
    limit = _int(data, "limit", message_id, required=False)
    if limit is None:
        limit = HISTORY_PAGE
    if not 1 <= limit <= MAX_HISTORY:
        raise ProtocolError("bad_message", f"'limit' must be 1-{MAX_HISTORY}", message_id)
    return History(room, before, limit, message_id)


def _parse_resume(data: dict[str, Any], message_id: str | None) -> Resume:
    if "rooms" not in data and "dm" not in data:
        raise ProtocolError("bad_message", "resume needs 'rooms', 'dm' or both", message_id)
    rooms = data.get("rooms", {})
    if not isinstance(rooms, dict) or len(rooms) > 100:
        raise ProtocolError(
            "bad_message", "'rooms' must be an object of at most 100 rooms", message_id
        )
    result: dict[str, int] = {}
    for room, seq in rooms.items():
        if not is_valid_room(room):
            raise ProtocolError("bad_room", f"not a valid room name: {room[:64]!r}", message_id)
        if not _is_seq(seq):
            raise ProtocolError(
                "bad_message", f"a resume seq is an integer from 0 to {MAX_SEQ}", message_id
            )
        result[room] = seq
    dm = data.get("dm")
    if dm is not None and not _is_seq(dm):
        raise ProtocolError("bad_message", f"'dm' is an integer from 0 to {MAX_SEQ}", message_id)
    return Resume(result, message_id, dm)


def _parse_receipt(data: dict[str, Any], message_id: str | None) -> Receipt:
    room = _room(data, message_id)
    seq = _int(data, "seq", message_id, required=True)
    assert seq is not None
    status = data.get("status")
    if status not in ("delivered", "seen"):
        raise ProtocolError("bad_message", "'status' is 'delivered' or 'seen'", message_id)
    return Receipt(room, seq, status, message_id)


def _parse_ping(data: dict[str, Any], message_id: str | None) -> Ping:
    return Ping(message_id)


_PARSERS: dict[str, Callable[[dict[str, Any], str | None], ClientMessage]] = {
    "join": _parse_join,
    "leave": _parse_leave,
    "message": _parse_message,
    "dm": _parse_dm,
    "typing": _parse_typing,
    "history": _parse_history,
    "resume": _parse_resume,
    "receipt": _parse_receipt,
    "ping": _parse_ping,
}
