"""Fuzzing chatd: Hypothesis properties of its two parsers of untrusted input, and a
bounded network fuzzer against a real ``python -m chatd`` process (tests/fuzz_chatd.py).

The parsers are where every byte an attacker sends is first judged, so each must give one
of its documented answers for *any* input, never an exception the caller does not expect:

* ``rfc6455.http`` (and the handshake checks behind it): a request, "need more bytes", or
  ``InvalidHandshake`` carrying a status to answer with; whatever parses serializes back
  to the same fields, and no prefix of it is refused early;
* ``chatd.protocol.parse_client_message``: a message class whose fields respect the
  documented limits, or ``ProtocolError`` with a documented code and the client's ``id``.

test_http.py and test_properties.py already feed random bytes and round-trip *valid*
heads; here the inputs are valid ones mutated (deleted, inserted, flipped bytes, oversized
lines, many headers, NUL, bare CR/LF, non-ASCII) so they stay close to the branches.

The network fuzzer asks what only a running server can answer: after thousands of broken
connections, is chatd alive, healthy, within memory, and still chatting for others?
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from fuzz_chatd import ERROR_CODES, FuzzRun, generate_case
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_http import field_values, targets, tokens

from chatd.protocol import (
    MAX_HISTORY,
    MAX_ID,
    MAX_SEQ,
    MAX_TEXT,
    ClientMessage,
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
    is_valid_name,
    is_valid_room,
    parse_client_message,
)
from rfc6455.errors import InvalidHandshake
from rfc6455.handshake import (
    parse_extensions,
    parse_subprotocols,
    validate_request,
)
from rfc6455.http import (
    DEFAULT_LIMITS,
    Request,
    parse_request_head,
    request_body_length,
    serialize_request,
)

PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- the HTTP request parser ----------------------------------------------------------------

#: What parse_request_head may refuse a head with (rfc6455/http.py's docstring).
PARSE_STATUSES = {400, 414, 431, 505}
#: What the checks after it may answer: validate_request (405 wrong method, 426 not a
#: WebSocket version we speak), request_body_length (411 chunked), the negotiation headers.
HANDSHAKE_STATUSES = {400, 405, 426}
BODY_STATUSES = {400, 411}

UPGRADE_HEADERS = [
    ("Host", "chat.example"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]
negotiation_headers = st.tuples(
    st.sampled_from(["Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions"]),
    st.sampled_from(["chat", "a, b", "@", "", "permessage-deflate; x=1", 'x; a="b', ",,"]),
)


@st.composite
def valid_heads(draw: st.DrawFn) -> bytes:
    """A request head that parses: often a WebSocket upgrade, in any header order."""
    method = draw(st.sampled_from(["GET", "GET", "POST", "HEAD"]) | tokens)
    target = draw(st.sampled_from(["/ws?name=alice", "/", "/health"]) | targets)
    headers = draw(st.lists(st.tuples(tokens, field_values), max_size=6))
    if draw(st.booleans()):
        headers += UPGRADE_HEADERS + draw(st.lists(negotiation_headers, max_size=2))
    headers = draw(st.permutations(headers))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.9"]))
    head = serialize_request(method, target, headers)
    return head.replace(b" HTTP/1.1\r\n", f" {version}\r\n".encode(), 1)


#: Bytes that make a head interesting to a parser.
SPECIAL_BYTES = [b"\x00", b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"\x7f", b"\x80", b"\xff"]


@st.composite
def mutated_heads(draw: st.DrawFn) -> bytes:
    """A valid head after 1-4 mutations of the kinds that broke real HTTP parsers."""
    data = bytearray(draw(valid_heads()))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        operation = draw(
            st.sampled_from(
                ["delete", "insert", "flip", "oversize", "many-headers", "non-ascii", "truncate"]
            )
        )
        if operation == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        elif operation == "insert":
            data[position:position] = draw(st.sampled_from(SPECIAL_BYTES) | st.binary(max_size=4))
        elif operation == "flip" and position < len(data):
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "oversize":
            size = draw(st.sampled_from([8189, 8190, 8191, 8193]))
            data[position:position] = b"x" * size
        elif operation == "many-headers":
            count = draw(st.sampled_from([63, 64, 65]))
            line_end = data.find(b"\r\n")
            end = line_end + 2 if line_end >= 0 else len(data)
            data[end:end] = b"".join(b"X-%d: v\r\n" % i for i in range(count))
        elif operation == "non-ascii":
            data[position:position] = draw(st.text(min_size=1, max_size=3)).encode()
        elif operation == "truncate":
            del data[position:]
    return bytes(data)


any_request_bytes = st.one_of(st.binary(max_size=400), mutated_heads(), valid_heads())


def check_request(request: Request) -> None:
    """Every check the server runs on a parsed request answers or refuses with a status."""
    assert re.fullmatch(r"HTTP/[0-9]\.[0-9]", request.version)
    checks = [
        (lambda: request_body_length(request.headers), BODY_STATUSES),
        (lambda: validate_request(request), HANDSHAKE_STATUSES),
        (lambda: parse_subprotocols(request.headers.get_all("Sec-WebSocket-Protocol")), {400}),
        (lambda: parse_extensions(request.headers.get_all("Sec-WebSocket-Extensions")), {400}),
    ]
    for check, statuses in checks:
        try:
            check()
        except InvalidHandshake as error:
            assert error.status in statuses, error
            assert error.reason


@PROPERTY
@given(data=any_request_bytes)
@example(data=b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n")
@example(data=b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n")
@example(data=b"GET / HTTP/1.1\nHost: x\n\n")
@example(data=b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\n\r\n")
def test_request_parser_answers_or_refuses_with_a_status(data: bytes) -> None:
    try:
        result = parse_request_head(data)
    except InvalidHandshake as error:
        assert error.status in PARSE_STATUSES, error
        assert error.reason
        return
    if result is None:
        # Incomplete, never more than the limit allows to wait for.
        assert len(data) < DEFAULT_LIMITS.max_head_size
        return
    request, used = result
    assert 0 < used <= min(len(data), DEFAULT_LIMITS.max_head_size)
    assert data[used - 4 : used] == b"\r\n\r\n"
    assert len(request.headers) <= DEFAULT_LIMITS.max_headers
    check_request(request)


@PROPERTY
@given(data=st.one_of(mutated_heads(), valid_heads()), rest=st.binary(max_size=20))
def test_a_parsed_request_serializes_back_to_the_same_fields(data: bytes, rest: bytes) -> None:
    try:
        result = parse_request_head(data)
    except InvalidHandshake:
        return
    if result is None:
        return
    request, used = result
    # What follows the head (a body, the first frames) changes nothing.
    assert parse_request_head(data[:used] + rest) == (request, used)
    # Whatever the parser accepted, the serializer can write: no field it cannot encode.
    again = serialize_request(request.method, request.target, request.headers.items())
    reparsed = parse_request_head(again)
    assert reparsed is not None
    assert reparsed[1] == len(again)
    assert reparsed[0] == Request(request.method, request.target, "HTTP/1.1", request.headers)
    assert reparsed[0].headers.items() == request.headers.items()


@PROPERTY
@given(data=st.one_of(mutated_heads(), valid_heads()), cuts=st.lists(st.integers(0, 10**6)))
def test_no_prefix_of_a_valid_head_is_refused(data: bytes, cuts: list[int]) -> None:
    # The early refusal of garbage (before any line ending) must never hit a client that
    # is merely slow: every prefix of a head that parses is "need more bytes".
    try:
        result = parse_request_head(data)
    except InvalidHandshake:
        return
    if result is None:
        return
    used = result[1]
    for cut in {0, 1, used - 1, *(cut % used for cut in cuts)}:
        assert parse_request_head(data[:cut]) is None, cut


# --- the chat message validator ---------------------------------------------------------------

#: What parse_client_message itself may answer with; the others come from the hub.
PARSE_ERROR_CODES = {"bad_json", "bad_message", "unknown_type", "too_long", "bad_name", "bad_room"}
MESSAGE_CLASSES = (Join, Leave, RoomMessage, DirectMessage, Typing, History, Resume, Receipt, Ping)
MESSAGE_TYPES = ["join", "leave", "message", "dm", "typing", "history", "resume", "receipt", "ping"]

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 1, MAX_SEQ, MAX_SEQ + 1, 2**64, MAX_HISTORY, MAX_HISTORY + 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, 2.0, -0.0, 1e308]),
    st.text(max_size=20),
    st.sampled_from([*MESSAGE_TYPES, "lobby", "delivered", "seen", " ", "x" * (MAX_TEXT + 1)]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=8) | st.sampled_from(["type", "id"]), children, max_size=4
        )
    ),
    max_leaves=12,
)
rooms = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
names = st.from_regex(r"[A-Za-z0-9._-]{1,50}", fullmatch=True)
ids = st.text(min_size=1, max_size=MAX_ID)
seqs = st.integers(0, MAX_SEQ)
texts = st.text(min_size=1, max_size=MAX_TEXT).filter(str.strip)


@st.composite
def valid_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A message of any type, with every field valid (docs/protocol.md, "Client → server")."""
    kind = draw(st.sampled_from(MESSAGE_TYPES))
    message: dict[str, Any] = {"type": kind}
    if draw(st.booleans()):
        message["id"] = draw(ids)
    if kind in ("join", "leave", "message", "typing", "history", "receipt"):
        message["room"] = draw(rooms)
    if kind in ("message", "dm"):
        message["text"] = draw(texts)
    if kind == "dm":
        message["to"] = draw(names)
    elif kind == "typing" and draw(st.booleans()):
        message["active"] = draw(st.booleans())
    elif kind == "history":
        if draw(st.booleans()):
            message["before"] = draw(seqs | st.none())
        if draw(st.booleans()):
            message["limit"] = draw(st.integers(1, MAX_HISTORY))
    elif kind == "resume":
        message["rooms"] = draw(st.dictionaries(rooms, seqs, max_size=5))
        if draw(st.booleans()):
            message["dm"] = draw(seqs)
    elif kind == "receipt":
        message["seq"] = draw(seqs)
        message["status"] = draw(st.sampled_from(["delivered", "seen"]))
    return message


FIELDS = ["type", "id", "room", "text", "to", "active", "before", "limit", "rooms", "dm", "seq"]


@st.composite
def mutated_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message with fields deleted, retyped, oversized or added."""
    message = draw(valid_messages())
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from([*FIELDS, *sorted(message)]))
        operation = draw(st.sampled_from(["delete", "retype", "huge", "boundary", "type"]))
        if operation == "delete":
            message.pop(key, None)
        elif operation == "retype":
            message[key] = draw(json_values)
        elif operation == "huge":
            message[key] = draw(st.sampled_from(["x", " ", "é", "😀"])) * draw(
                st.sampled_from([MAX_ID, MAX_ID + 1, MAX_TEXT, MAX_TEXT + 1, 101])
            )
        elif operation == "boundary":
            message[key] = draw(
                st.sampled_from([-1, 0, MAX_SEQ, MAX_SEQ + 1, True, 2.0, {}, [], "1", 201])
            )
        else:
            message["type"] = draw(st.sampled_from(MESSAGE_TYPES) | json_values)
    if message.get("type") == "resume" and draw(st.booleans()):
        message["rooms"] = {str(i): i for i in range(draw(st.sampled_from([100, 101])))}
    return message


def is_seq(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_SEQ


def check_limits(message: ClientMessage) -> None:
    """A message the hub receives is within every documented limit."""
    assert message.id is None or (isinstance(message.id, str) and 1 <= len(message.id) <= MAX_ID)
    if isinstance(message, Join | Leave | RoomMessage | Typing | History | Receipt):
        assert isinstance(message.room, str) and is_valid_room(message.room)
    if isinstance(message, RoomMessage | DirectMessage):
        assert isinstance(message.text, str) and 1 <= len(message.text) <= MAX_TEXT
        assert message.text.strip()
    if isinstance(message, DirectMessage):
        assert isinstance(message.to, str) and is_valid_name(message.to)
    if isinstance(message, Typing):
        assert type(message.active) is bool
    if isinstance(message, History):
        assert message.before is None or is_seq(message.before)
        assert type(message.limit) is int and 1 <= message.limit <= MAX_HISTORY
    if isinstance(message, Resume):
        assert len(message.rooms) <= 100
        assert all(is_valid_room(room) and is_seq(seq) for room, seq in message.rooms.items())
        assert message.dm is None or is_seq(message.dm)
    if isinstance(message, Receipt):
        assert is_seq(message.seq) and message.status in ("delivered", "seen")


def outcome(text: str) -> ClientMessage | ProtocolError:
    """Parse ``text``: a message within the limits, or a documented refusal; never else."""
    try:
        message = parse_client_message(text)
    except ProtocolError as error:
        assert error.code in PARSE_ERROR_CODES, error.code
        assert error.code in ERROR_CODES, f"{error.code} is not in docs/protocol.md"
        assert error.message
        json.dumps(error.to_wire())  # it can be sent
        return error
    assert isinstance(message, MESSAGE_CLASSES)
    check_limits(message)
    return message


def check_id_is_kept(value: Any, result: ClientMessage | ProtocolError) -> None:
    """An answer carries the client's id whenever that id was valid (docs: common rules)."""
    if not isinstance(value, dict):
        assert isinstance(result, ProtocolError) and result.code == "bad_json"
        return
    given_id = value.get("id")
    valid_id = isinstance(given_id, str) and 1 <= len(given_id) <= MAX_ID
    found = result.message_id if isinstance(result, ProtocolError) else result.id
    assert found == (given_id if valid_id else None)


@PROPERTY
@given(value=json_values)
@example(value={"type": "resume"})
@example(value={"type": "history", "room": "a", "limit": True})
@example(value={"type": "receipt", "room": "a", "seq": 1.0, "status": "seen"})
def test_any_json_value_is_a_message_or_a_documented_error(value: Any) -> None:
    result = outcome(json.dumps(value))
    check_id_is_kept(value, result)


@PROPERTY
@given(message=valid_messages())
def test_every_valid_message_is_accepted(message: dict[str, Any]) -> None:
    result = outcome(json.dumps(message, ensure_ascii=False))
    assert isinstance(result, MESSAGE_CLASSES), result
    check_id_is_kept(message, result)


@PROPERTY
@given(message=mutated_messages(), ensure_ascii=st.booleans())
def test_a_mutated_message_is_a_message_or_a_documented_error(
    message: dict[str, Any], ensure_ascii: bool
) -> None:
    result = outcome(json.dumps(message, ensure_ascii=ensure_ascii))
    check_id_is_kept(message, result)


json_fragments = st.lists(
    st.sampled_from(['{"type":', '"ping"', '"message"', ",", "}", "{", "[", "]", ":", '"id"'])
    | st.sampled_from(["NaN", "Infinity", "-", "1e999", "1" * 5000, '"\\u', "\\", '"', "\ufeff"])
    | st.text(max_size=3),
    max_size=20,
).map("".join)


@PROPERTY
@given(text=st.one_of(st.text(), json_fragments))
@example(text="[" * 100_000)
@example(text='{"type": "ping", "id": NaN}')
@example(text='{"type": "history", "room": "a", "before": ' + "9" * 5000 + "}")
def test_any_text_is_a_message_or_a_documented_error(text: str) -> None:
    outcome(text)


def all_strings(message: ClientMessage) -> list[str]:
    """Every string in a parsed message, dictionary keys included."""
    values = [getattr(message, field.name) for field in dataclasses.fields(message)]
    strings = [value for value in values if isinstance(value, str)]
    if isinstance(message, Resume):
        strings += list(message.rooms)
    return strings


lone_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)


@PROPERTY
@given(message=valid_messages(), surrogate=lone_surrogates)
@example(message={"type": "ping", "id": "x"}, surrogate="\ud800")
def test_every_string_a_message_carries_can_be_sent_and_stored(
    message: dict[str, Any], surrogate: str
) -> None:
    # JSON may spell a lone surrogate ("\ud800"); Python decodes it into a str that has no
    # UTF-8 encoding, so neither the WebSocket nor SQLite could take it. Found by the
    # network fuzzer: a ping's id dropped the connection with a traceback, a message's text
    # made every later storage commit fail.
    for key in ("id", "text"):
        if key in message:
            message[key] = message[key][:-1] + surrogate
    result = outcome(json.dumps(message))
    if isinstance(result, MESSAGE_CLASSES):
        for text in all_strings(result):
            text.encode("utf-8")


# --- the network fuzzer --------------------------------------------------------------------------

#: ``make test`` runs this many cases (about 10 s); ``make fuzz`` many more.
NETWORK_CASES = 2000
NETWORK_SEED = int(os.environ.get("CHATD_FUZZ_SEED", "20250611"))


def test_chatd_survives_the_network_fuzzer(tmp_path: Path) -> None:
    run = FuzzRun(NETWORK_SEED, tmp_path, check_every=50)
    stats = run.run(range(NETWORK_CASES))
    print(stats.summary())
    assert stats.cases == NETWORK_CASES
    assert stats.checks == NETWORK_CASES // 50
    # The cases reached every layer: handshakes, the hub, and the frame checks.
    assert stats.answers["101"] > NETWORK_CASES // 5
    assert stats.seen["error:bad_json"] and stats.seen["error:bad_message"]
    assert stats.seen["close:1002"] and stats.seen["ack"]


def test_cases_are_a_function_of_seed_and_index() -> None:
    first = [generate_case(7, index, 8080).data for index in range(50)]
    assert first == [generate_case(7, index, 8080).data for index in range(50)]
    assert first != [generate_case(8, index, 8080).data for index in range(50)]


#: Cases of the network fuzzer that found a bug (now fixed), replayed with every check.
FOUND = [
    # A malformed Sec-WebSocket-Protocol made Connection.accept raise outside
    # ServerConnection._on_request's try: a traceback, and no 400 for the client.
    pytest.param(1, 4, id="bad-subprotocol-refused-with-400"),
    # A ping whose id is the JSON escape "\udd**": a str with no UTF-8 form, a traceback
    # when the pong was encoded.
    pytest.param(1, 85, id="lone-surrogate-refused"),
]


@pytest.mark.parametrize(("seed", "index"), FOUND)
def test_the_cases_that_found_bugs(tmp_path: Path, seed: int, index: int) -> None:
    FuzzRun(seed, tmp_path, check_every=1).run([index])
