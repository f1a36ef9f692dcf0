"""Tests for rfc6455.connection: byte literals in, exact events and exact bytes out.

A server connection receives masked frames (key 37 fa 21 3d, the key of the RFC 6455
section 5.7 examples) and writes unmasked ones; a client connection receives unmasked
frames and masks what it writes with that same key, from a deterministic
``mask_source``. Every protocol violation is checked as the exact close frame queued in
``data_to_send()``, the ``failure`` recorded and the CLOSED state.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest
import wsproto
import wsproto.events
from websockets.client import ClientProtocol
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode as WsOpcode
from websockets.protocol import Protocol, Side
from websockets.protocol import State as WsState
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from rfc6455 import connection, frames
from rfc6455.codes import CloseCode, Opcode
from rfc6455.connection import Connection, Role, State
from rfc6455.deflate import DeflateOptions, PerMessageDeflate
from rfc6455.errors import InvalidHandshake, LocalProtocolError, RemoteProtocolError
from rfc6455.events import (
    Accepted,
    BinaryMessage,
    CloseReceived,
    Event,
    Ping,
    Pong,
    Rejected,
    RequestReceived,
    TextMessage,
)
from rfc6455.frames import Frame, FrameParser, encode_frame
from rfc6455.handshake import accept_key, build_accept_response, build_request
from rfc6455.http import parse_request_head

MASK = b"\x37\xfa\x21\x3d"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3


def fixed_mask(size: int) -> bytes:
    assert size == 4
    return MASK


def server(**kwargs: object) -> Connection:
    return Connection(Role.SERVER, state=State.OPEN, **kwargs)  # type: ignore[arg-type]


def client(**kwargs: object) -> Connection:
    return Connection(
        Role.CLIENT,
        state=State.OPEN,
        mask_source=fixed_mask,
        **kwargs,  # type: ignore[arg-type]
    )


def masked(opcode: Opcode, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A frame as a client sends it."""
    return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=MASK)


def unmasked(
    opcode: Opcode, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False
) -> bytes:
    """A frame as a server sends it."""
    return encode_frame(opcode, payload, fin=fin, rsv1=rsv1)


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


def frame_for(conn: Connection, opcode: Opcode, payload: bytes = b"") -> bytes:
    """What ``conn`` writes: unmasked from a server, masked with MASK from a client."""
    return encode_frame(opcode, payload, mask=MASK if conn.role is Role.CLIENT else None)


def frame_to(conn: Connection, opcode: Opcode, payload: bytes = b"", **kwargs: bool) -> bytes:
    """What ``conn`` receives: masked at a server, unmasked at a client."""
    mask = MASK if conn.role is Role.SERVER else None
    return encode_frame(opcode, payload, mask=mask, **kwargs)


def assert_failed(conn: Connection, code: int, reason: str = "") -> None:
    """``conn`` failed with ``code``: its close frame is queued, exactly, and it is CLOSED.

    ``reason`` is a fragment of the failure's reason that names the rule broken; the
    close frame must carry the whole reason.
    """
    assert conn.state is State.CLOSED
    assert isinstance(conn.failure, RemoteProtocolError)
    assert conn.failure.close_code == code
    assert reason in conn.failure.reason
    reason = conn.failure.reason
    assert 0 < len(reason.encode()) <= 123
    assert conn.close_code == code
    assert conn.close_reason == reason
    assert conn.close_sent
    assert conn.should_close_transport
    assert conn.data_to_send() == frame_for(conn, Opcode.CLOSE, close_payload(code, reason))
    # Section 7.1.7: nothing more is processed, nothing more is sent.
    assert conn.receive_data(frame_to(conn, Opcode.PING, b"x")) == []
    assert conn.data_to_send() == b""


def assert_open(conn: Connection) -> None:
    assert conn.state is State.OPEN
    assert conn.failure is None
    assert conn.data_to_send() == b""


def extension(is_server: bool) -> PerMessageDeflate:
    return PerMessageDeflate(
        is_server=is_server,
        local_no_context_takeover=False,
        remote_no_context_takeover=False,
        local_max_window_bits=15,
        remote_max_window_bits=15,
        options=DeflateOptions(),
        max_message_size=1 << 20,
    )


# --- RFC 6455 section 5.7 examples through a Connection ------------------------------------

BYTES_256 = bytes(range(256))
BYTES_64K = bytes(range(256)) * 256


def test_rfc_single_frame_unmasked_text_at_a_client() -> None:
    conn = client()
    assert conn.receive_data(b"\x81\x05\x48\x65\x6c\x6c\x6f") == [TextMessage("Hello")]
    assert_open(conn)


def test_rfc_single_frame_masked_text_at_a_server() -> None:
    conn = server()
    assert conn.receive_data(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58") == [
        TextMessage("Hello")
    ]
    assert_open(conn)


def test_rfc_fragmented_unmasked_text_at_a_client() -> None:
    conn = client()
    assert conn.receive_data(b"\x01\x03\x48\x65\x6c") == []
    assert conn.receive_data(b"\x80\x02\x6c\x6f") == [TextMessage("Hello")]
    assert_open(conn)


def test_rfc_fragmented_text_masked_at_a_server() -> None:
    conn = server()
    assert conn.receive_data(masked(Opcode.TEXT, b"Hel", fin=False)) == []
    assert conn.receive_data(masked(Opcode.CONTINUATION, b"lo")) == [TextMessage("Hello")]
    assert_open(conn)


def test_rfc_unmasked_ping_at_a_client_is_answered_with_the_rfc_masked_pong() -> None:
    conn = client()
    assert conn.receive_data(b"\x89\x05\x48\x65\x6c\x6c\x6f") == [Ping(b"Hello")]
    # The reply is the RFC's "masked Pong response" example, byte for byte.
    assert conn.data_to_send() == b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    assert conn.state is State.OPEN


def test_rfc_masked_pong_at_a_server() -> None:
    conn = server()
    assert conn.receive_data(b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58") == [Pong(b"Hello")]
    assert_open(conn)


def test_rfc_256_bytes_binary_at_a_client() -> None:
    conn = client()
    assert conn.receive_data(b"\x82\x7e\x01\x00" + BYTES_256) == [BinaryMessage(BYTES_256)]
    assert_open(conn)


def test_rfc_64k_binary_at_a_client() -> None:
    conn = client()
    wire = b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00" + BYTES_64K
    assert conn.receive_data(wire) == [BinaryMessage(BYTES_64K)]
    assert_open(conn)


def test_rfc_64k_binary_masked_at_a_server_in_tcp_sized_chunks() -> None:
    conn = server()
    wire = masked(Opcode.BINARY, BYTES_64K)
    assert wire[:10] == b"\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00"
    events: list[Event] = []
    for i in range(0, len(wire), 1460):
        events += conn.receive_data(wire[i : i + 1460])
    assert events == [BinaryMessage(BYTES_64K)]
    assert_open(conn)


def test_rfc_examples_sent_by_a_server() -> None:
    conn = server()
    assert conn.send_text("Hello") == b"\x81\x05\x48\x65\x6c\x6c\x6f"
    assert conn.ping(b"Hello") == b"\x89\x05\x48\x65\x6c\x6c\x6f"
    assert conn.send_binary(BYTES_256) == b"\x82\x7e\x01\x00" + BYTES_256
    assert conn.send_binary(BYTES_64K) == (b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00" + BYTES_64K)
    assert conn.data_to_send() == b""


def test_rfc_examples_sent_by_a_client() -> None:
    conn = client()
    assert conn.send_text("Hello") == b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    assert conn.pong(b"Hello") == b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"


def test_rfc_fragmented_example_sent_with_fragment_size() -> None:
    conn = server(fragment_size=3)
    assert conn.send_text("Hello") == b"\x01\x03\x48\x65\x6c\x80\x02\x6c\x6f"


# --- every violation, with its close code -------------------------------------------------

# (id, role, bytes received, close code, reason). Frames are masked for a server and
# unmasked for a client unless the violation is about masking.
_REASON_RSV = "reserved bits set without a negotiated extension"
VIOLATIONS = [
    ("rsv1", "server", masked(Opcode.TEXT, b"a", rsv1=True), 1002, _REASON_RSV),
    ("rsv2", "server", b"\xa1\x81" + MASK + b"V", 1002, _REASON_RSV),
    ("rsv3", "server", b"\x92\x80" + MASK, 1002, _REASON_RSV),
    ("rsv1 ping", "server", b"\xc9\x80" + MASK, 1002, _REASON_RSV),
    ("rsv1 at a client", "client", b"\xc1\x01a", 1002, _REASON_RSV),
    *(
        (f"opcode 0x{op:X}", "server", bytes((0x80 | op, 0x80)) + MASK, 1002,
         f"reserved opcode 0x{op:X}")
        for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)
    ),
    ("opcode 0x3 at a client", "client", b"\x83\x00", 1002, "reserved opcode 0x3"),
    ("unmasked at a server", "server", b"\x81\x05Hello", 1002, "unmasked frame from a client"),
    ("unmasked ping at a server", "server", b"\x89\x00", 1002, "unmasked frame from a client"),
    ("masked at a client", "client", masked(Opcode.TEXT, b"Hello"), 1002,
     "masked frame from a server"),
    ("masked close at a client", "client", masked(Opcode.CLOSE), 1002,
     "masked frame from a server"),
    ("ping of 126 bytes", "server", masked(Opcode.PING, b"p" * 126), 1002,
     "control frame payload over 125 bytes"),
    ("pong of 126 bytes", "client", unmasked(Opcode.PONG, b"p" * 126), 1002,
     "control frame payload over 125 bytes"),
    ("close of 126 bytes", "server", masked(Opcode.CLOSE, b"\x03\xe8" + b"r" * 124), 1002,
     "control frame payload over 125 bytes"),
    ("fragmented ping", "server", masked(Opcode.PING, b"p", fin=False), 1002,
     "fragmented control frame"),
    ("fragmented close", "client", unmasked(Opcode.CLOSE, fin=False), 1002,
     "fragmented control frame"),
    ("continuation without a start", "server", masked(Opcode.CONTINUATION, b"a"), 1002,
     "continuation frame without a message to continue"),
    ("final continuation without a start", "client", unmasked(Opcode.CONTINUATION), 1002,
     "continuation frame without a message to continue"),
    ("text inside a fragmented text", "server",
     masked(Opcode.TEXT, b"a", fin=False) + masked(Opcode.TEXT, b"b"), 1002,
     "new data frame inside a fragmented message"),
    ("binary inside a fragmented text", "server",
     masked(Opcode.TEXT, b"a", fin=False) + masked(Opcode.BINARY, b"b", fin=False), 1002,
     "new data frame inside a fragmented message"),
    ("text inside a fragmented binary", "client",
     unmasked(Opcode.BINARY, b"a", fin=False) + unmasked(Opcode.CONTINUATION, b"b", fin=False)
     + unmasked(Opcode.TEXT, b"c"), 1002, "new data frame inside a fragmented message"),
    ("close payload of 1 byte", "server", masked(Opcode.CLOSE, b"\x03"), 1002,
     "close frame with a 1-byte payload"),
    *(
        (f"close code {code}", "server", masked(Opcode.CLOSE, close_payload(code, "r")), 1002,
         f"close code {code} is not allowed on the wire")
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)
    ),
    ("close code 1005 at a client", "client", unmasked(Opcode.CLOSE, b"\x03\xed"), 1002,
     "close code 1005 is not allowed on the wire"),
    ("64-bit length top bit", "server", b"\x82\xff\x80" + bytes(7), 1002,
     "64-bit payload length with its top bit set"),
    ("64-bit length all ones", "client", b"\x82\x7f" + b"\xff" * 8, 1002,
     "64-bit payload length with its top bit set"),
    ("16-bit length 5", "server", b"\x81\xfe\x00\x05" + MASK + b"Hello", 1002,
     "payload length not minimally encoded"),
    ("16-bit length 125", "client", b"\x82\x7e\x00\x7d" + b"x" * 125, 1002,
     "payload length not minimally encoded"),
    ("64-bit length 5", "client", b"\x81\x7f" + (5).to_bytes(8, "big") + b"Hello", 1002,
     "payload length not minimally encoded"),
    ("64-bit length 65535", "server", b"\x82\xff" + (65535).to_bytes(8, "big"), 1002,
     "payload length not minimally encoded"),
    ("invalid UTF-8 text", "server", masked(Opcode.TEXT, b"\xff"), 1007,
     "invalid UTF-8 in a text message"),
    ("invalid UTF-8 text at a client", "client", unmasked(Opcode.TEXT, b"\xc0\xaf"), 1007,
     "invalid UTF-8 in a text message"),
    ("invalid UTF-8 close reason", "server", masked(Opcode.CLOSE, b"\x03\xe8\xff"), 1007,
     "invalid UTF-8 in a close reason"),
    ("truncated UTF-8 close reason", "client", unmasked(Opcode.CLOSE, b"\x03\xe8a\xe2\x82"),
     1007, "invalid UTF-8 in a close reason"),
    ("surrogate in a close reason", "server", masked(Opcode.CLOSE, b"\x03\xe8\xed\xa0\x80"),
     1007, "invalid UTF-8 in a close reason"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("role", "data", "code", "reason"),
    [case[1:] for case in VIOLATIONS],
    ids=[case[0] for case in VIOLATIONS],
)
def test_violation_queues_a_close_frame_with_its_code(
    role: str, data: bytes, code: int, reason: str
) -> None:
    conn = server() if role == "server" else client()
    assert conn.receive_data(data) == []
    assert_failed(conn, code, reason)


@pytest.mark.parametrize(
    ("role", "data", "code", "reason"),
    [case[1:] for case in VIOLATIONS],
    ids=[case[0] for case in VIOLATIONS],
)
def test_violation_fed_one_byte_at_a_time(role: str, data: bytes, code: int, reason: str) -> None:
    conn = server() if role == "server" else client()
    for i in range(len(data)):
        assert conn.receive_data(data[i : i + 1]) == []
    assert_failed(conn, code, reason)


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3999, 4000, 4999]
)
def test_close_codes_that_may_be_sent_are_accepted_and_echoed(code: int) -> None:
    conn = server()
    assert conn.receive_data(masked(Opcode.CLOSE, close_payload(code, "r"))) == [
        CloseReceived(code, "r")
    ]
    assert conn.data_to_send() == b"\x88\x02" + code.to_bytes(2, "big")
    assert conn.failure is None
    assert conn.state is State.CLOSED
    assert (conn.close_code, conn.close_reason) == (code, "r")


def test_rsv1_with_permessage_deflate_on_a_control_frame() -> None:
    conn = server(extension=extension(is_server=True))
    assert conn.receive_data(b"\xc9\x80" + MASK) == []
    assert_failed(conn, 1002, "RSV1 set on a control frame")


def test_rsv1_with_permessage_deflate_on_a_continuation_frame() -> None:
    conn = client(extension=extension(is_server=False))
    data = unmasked(Opcode.TEXT, b"a", fin=False) + unmasked(Opcode.CONTINUATION, rsv1=True)
    assert conn.receive_data(data) == []
    assert_failed(conn, 1002, "RSV1 set on a continuation frame")


def test_rsv2_with_permessage_deflate_is_still_refused() -> None:
    conn = server(extension=extension(is_server=True))
    assert conn.receive_data(b"\xe1\x80" + MASK) == []
    assert_failed(conn, 1002, _REASON_RSV)


def test_header_violation_fails_before_the_payload_arrives() -> None:
    # An unmasked 64 KiB frame at a server: the 10 header bytes are enough.
    conn = server()
    assert conn.receive_data(b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00") == []
    assert_failed(conn, 1002, "unmasked frame from a client")


# --- 1009: size limits judged from declared lengths ----------------------------------------


def test_frame_over_max_frame_size_fails_on_its_header() -> None:
    conn = server(max_frame_size=1024)
    assert conn.receive_data(b"\x82\xfe\x04\x01") == []  # 1025 bytes declared, none sent
    assert_failed(conn, 1009, "frame of 1025 bytes")


def test_huge_frame_fails_on_its_header() -> None:
    conn = server()
    assert conn.receive_data(b"\x82\xff\x00\x00\x01\x00\x00\x00\x00\x00") == []
    assert_failed(conn, 1009, "frame of 1099511627776 bytes")


def test_small_frame_over_a_small_max_frame_size() -> None:
    conn = server(max_frame_size=10)
    assert conn.receive_data(masked(Opcode.TEXT, b"x" * 10)) == [TextMessage("x" * 10)]
    assert conn.receive_data(masked(Opcode.TEXT, b"x" * 11)[:2]) == []
    assert_failed(conn, 1009, "frame of 11 bytes")


def test_frame_over_max_frame_size_at_a_client() -> None:
    conn = client(max_frame_size=5)
    assert conn.receive_data(b"\x82\x06") == []
    assert_failed(conn, 1009, "frame of 6 bytes")


def test_max_frame_size_is_capped_by_max_message_size() -> None:
    conn = server(max_message_size=10, max_frame_size=100)
    assert conn.receive_data(b"\x82\x8b") == []
    assert_failed(conn, 1009, "frame of 11 bytes")


def test_fragmented_message_over_max_message_size_fails_on_the_header() -> None:
    conn = server(max_message_size=10)
    assert conn.receive_data(masked(Opcode.BINARY, b"x" * 6, fin=False)) == []
    assert conn.receive_data(masked(Opcode.PING, b"p")) == [Ping(b"p")]
    assert conn.data_to_send() == b"\x8a\x01p"
    # 6 + 5 > 10: refused from the continuation's header alone.
    assert conn.receive_data(b"\x80\x85") == []
    assert_failed(conn, 1009, "frame of 5 bytes")


def test_fragmented_text_over_max_message_size_at_a_client() -> None:
    conn = client(max_message_size=10, max_frame_size=4)
    data = unmasked(Opcode.TEXT, b"abcd", fin=False) + unmasked(
        Opcode.CONTINUATION, b"efgh", fin=False
    )
    assert conn.receive_data(data) == []
    assert conn.receive_data(b"\x80\x03") == []
    assert_failed(conn, 1009, "frame of 3 bytes")


def test_fragmented_message_of_exactly_max_message_size() -> None:
    conn = server(max_message_size=10)
    data = masked(Opcode.BINARY, b"x" * 6, fin=False) + masked(
        Opcode.CONTINUATION, b"y" * 4, fin=False
    )
    data += masked(Opcode.CONTINUATION)
    assert conn.receive_data(data) == [BinaryMessage(b"x" * 6 + b"y" * 4)]
    # The limit is back to the whole message for the next one.
    assert conn.receive_data(masked(Opcode.BINARY, b"z" * 10)) == [BinaryMessage(b"z" * 10)]
    assert_open(conn)


def test_many_frames_within_max_frame_size_make_a_larger_message() -> None:
    conn = client(max_message_size=20, max_frame_size=5)
    data = unmasked(Opcode.TEXT, b"aaaaa", fin=False)
    data += unmasked(Opcode.CONTINUATION, b"bbbbb", fin=False)
    data += unmasked(Opcode.CONTINUATION, b"ccccc")
    assert conn.receive_data(data) == [TextMessage("aaaaabbbbbccccc")]
    assert_open(conn)


# --- events before a violation are kept, nothing after it ----------------------------------


def test_events_before_a_violation_in_the_same_chunk_are_returned() -> None:
    conn = server(pause_before_closing=True)
    data = (
        masked(Opcode.TEXT, b"a")
        + masked(Opcode.PING, b"p")
        + masked(Opcode.BINARY, b"b" * 200)
        + masked(Opcode.TEXT, b"fr", fin=False)
        + masked(Opcode.CONTINUATION, b"ag")
        + bytes((0x83, 0x80))
        + MASK
        + masked(Opcode.TEXT, b"after")
        + masked(Opcode.PING, b"after")
    )
    assert conn.receive_data(data) == [
        TextMessage("a"),
        Ping(b"p"),
        BinaryMessage(b"b" * 200),
        TextMessage("frag"),
    ]
    # The messages are the application's to answer first: the failure waits for the
    # next call, and it is announced.
    assert conn.state is State.OPEN
    assert conn.failure_pending
    assert conn.data_to_send() == b"\x8a\x01p"
    assert conn.receive_data(masked(Opcode.TEXT, b"later")) == []
    assert not conn.failure_pending
    assert_failed(conn, 1002, "reserved opcode 0x3")


def test_pending_failure_takes_effect_on_receive_data_of_nothing() -> None:
    conn = server(pause_before_closing=True)
    data = masked(Opcode.TEXT, b"echo me") + masked(Opcode.CONTINUATION, b"x")
    assert conn.receive_data(data) == [TextMessage("echo me")]
    assert conn.failure_pending
    assert conn.send_text("echo me") == b"\x81\x07echo me"  # the answer goes out first
    assert conn.receive_data(b"") == []
    assert_failed(conn, 1002, "continuation frame without a message to continue")


def test_pending_failure_takes_effect_on_eof() -> None:
    conn = client(pause_before_closing=True)
    assert conn.receive_data(unmasked(Opcode.TEXT, b"a") + b"\x83\x00") == [TextMessage("a")]
    assert conn.failure_pending
    conn.receive_eof()
    assert conn.state is State.CLOSED
    assert isinstance(conn.failure, RemoteProtocolError)
    assert (conn.close_code, conn.close_reason) == (1002, "reserved opcode 0x3")
    assert conn.data_to_send() == masked(Opcode.CLOSE, close_payload(1002, "reserved opcode 0x3"))


def test_pending_failure_after_the_application_closed() -> None:
    conn = server(pause_before_closing=True)
    assert conn.receive_data(masked(Opcode.TEXT, b"a") + b"\x81\x01b") == [TextMessage("a")]
    assert conn.close(1000) == b"\x88\x02\x03\xe8"
    assert conn.receive_data(b"") == []
    assert conn.state is State.CLOSED
    assert isinstance(conn.failure, RemoteProtocolError)
    assert conn.data_to_send() == b""  # our close is already out; no second one


def test_events_before_invalid_utf8_in_the_same_chunk_are_returned() -> None:
    conn = client(pause_before_closing=True)
    data = (
        unmasked(Opcode.TEXT, b"ok")
        + unmasked(Opcode.BINARY, b"\xff")
        + unmasked(Opcode.TEXT, b"bad \xff")
        + unmasked(Opcode.TEXT, b"never")
    )
    assert conn.receive_data(data) == [TextMessage("ok"), BinaryMessage(b"\xff")]
    assert conn.failure_pending
    assert conn.receive_data(b"") == []
    assert_failed(conn, 1007, "invalid UTF-8 in a text message")


def test_events_before_a_close_in_the_same_chunk_and_nothing_after() -> None:
    conn = server(pause_before_closing=True)
    data = (
        masked(Opcode.TEXT, b"a")
        + masked(Opcode.CLOSE, close_payload(1001, "bye"))
        + masked(Opcode.TEXT, b"after")
        + masked(Opcode.PING, b"after")
        + b"\xff\xff garbage"
    )
    # The close waits until the application could answer "a" (section 5.5.1 lets an
    # endpoint finish its current message before its close frame).
    assert conn.receive_data(data) == [TextMessage("a")]
    assert conn.paused
    assert conn.state is State.OPEN
    assert conn.send_text("echo: a") == b"\x81\x07echo: a"
    assert conn.data_to_send() == b""
    assert conn.receive_data(b"") == [CloseReceived(1001, "bye")]
    assert not conn.paused
    assert conn.data_to_send() == b"\x88\x02\x03\xe9"
    assert conn.failure is None
    assert conn.state is State.CLOSED
    assert conn.receive_data(masked(Opcode.TEXT, b"later")) == []


def test_a_paused_close_is_handled_on_eof() -> None:
    conn = server(pause_before_closing=True)
    data = masked(Opcode.TEXT, b"a") + masked(Opcode.CLOSE, close_payload(1000, ""))
    assert conn.receive_data(data) == [TextMessage("a")]
    conn.receive_eof()
    assert (conn.close_code, conn.state) == (1000, State.CLOSED)


def test_a_paused_invalid_close_fails_when_resumed() -> None:
    conn = server(pause_before_closing=True)
    data = masked(Opcode.TEXT, b"a") + masked(Opcode.CLOSE, b"\x03")
    assert conn.receive_data(data) == [TextMessage("a")]
    assert conn.paused and not conn.failure_pending
    assert conn.receive_data(b"") == []
    assert conn.failure is not None and conn.failure.close_code == 1002
    assert conn.data_to_send()[2:4] == b"\x03\xea"


# --- UTF-8 ---------------------------------------------------------------------------------

VALID_TEXTS = [
    "a\u00e9b",  # 2 bytes: C3 A9
    "\u0080\u07ff",  # the 2-byte range
    "\u20ac",  # 3 bytes: E2 82 AC
    "\u0800\ud7ff\ue000\uffff",  # around the surrogates: ED 9F BF and EE 80 80
    "\U0001f600",  # 4 bytes: F0 9F 98 80
    "\U00010000\U0010ffff",  # the 4-byte range, up to F4 8F BF BF
    "\u03ba\u1f79\u03c3\u03bc\u03b5",  # "kosme", the Autobahn test string
]

# (id, invalid sequence, index of its first bad byte; None when only the end of the
# message makes it invalid)
INVALID_SEQUENCES = [
    ("C0 AF overlong /", b"\xc0\xaf", 0),
    ("C1 BF overlong", b"\xc1\xbf", 0),
    ("E0 80 AF overlong /", b"\xe0\x80\xaf", 1),
    ("E0 9F BF overlong", b"\xe0\x9f\xbf", 1),
    ("F0 80 80 AF overlong /", b"\xf0\x80\x80\xaf", 1),
    ("F0 8F BF BF overlong", b"\xf0\x8f\xbf\xbf", 1),
    ("ED A0 80 surrogate D800", b"\xed\xa0\x80", 1),
    ("ED BF BF surrogate DFFF", b"\xed\xbf\xbf", 1),
    ("F4 90 80 80 above U+10FFFF", b"\xf4\x90\x80\x80", 1),
    ("F5 80 80 80", b"\xf5\x80\x80\x80", 0),
    ("FF", b"\xff", 0),
    ("FE", b"\xfe", 0),
    ("lone continuation 80", b"\x80", 0),
    ("C3 28 missing continuation", b"\xc3\x28", 1),
    ("E2 82 28 missing continuation", b"\xe2\x82\x28", 2),
    ("F0 9F 98 28 missing continuation", b"\xf0\x9f\x98\x28", 3),
    ("truncated C3", b"\xc3", None),
    ("truncated E2 82", b"\xe2\x82", None),
    ("truncated F0 9F 98", b"\xf0\x9f\x98", None),
    ("truncated ED 9F", b"\xed\x9f", None),
]


def invalid_message(sequence: bytes, first_bad: int | None) -> tuple[bytes, int]:
    """Embed ``sequence`` in valid text; return the message and its first bad byte."""
    if first_bad is None:  # truncated: the end of the message is the error
        message = "\u03ba\u1f79".encode() + b"ab" + sequence
        return message, len(message)
    message = "\u03ba\u1f79".encode() + b"ab" + sequence + "cd\u20ac".encode()
    return message, 7 + first_bad


@pytest.mark.parametrize("text", VALID_TEXTS)
@pytest.mark.parametrize("role", ["server", "client"])
def test_valid_utf8_in_one_frame(text: str, role: str) -> None:
    conn = server() if role == "server" else client()
    assert conn.receive_data(frame_to(conn, Opcode.TEXT, text.encode())) == [TextMessage(text)]
    assert_open(conn)


@pytest.mark.parametrize("text", VALID_TEXTS)
@pytest.mark.parametrize("role", ["server", "client"])
def test_valid_utf8_fragmented_at_every_byte(text: str, role: str) -> None:
    data = ("<" + text + ">").encode()
    for split in range(len(data) + 1):
        conn = server() if role == "server" else client()
        first = frame_to(conn, Opcode.TEXT, data[:split], fin=False)
        second = frame_to(conn, Opcode.CONTINUATION, data[split:])
        assert conn.receive_data(first) == []
        assert conn.receive_data(second) == [TextMessage("<" + text + ">")]
        assert_open(conn)


@pytest.mark.parametrize("text", VALID_TEXTS)
@pytest.mark.parametrize("role", ["server", "client"])
def test_valid_utf8_in_one_frame_split_at_every_byte(text: str, role: str) -> None:
    data = ("<" + text + ">").encode()
    for split in range(1, len(data) + (6 if role == "server" else 2)):
        conn = server() if role == "server" else client()
        wire = frame_to(conn, Opcode.TEXT, data)
        assert conn.receive_data(wire[:split]) == []
        assert conn.receive_data(wire[split:]) == [TextMessage("<" + text + ">")]
        assert_open(conn)


@pytest.mark.parametrize("text", VALID_TEXTS)
def test_valid_utf8_in_three_fragments_split_everywhere(text: str) -> None:
    data = text.encode()
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            conn = client()
            wire = (
                unmasked(Opcode.TEXT, data[:i], fin=False)
                + unmasked(Opcode.CONTINUATION, data[i:j], fin=False)
                + unmasked(Opcode.CONTINUATION, data[j:])
            )
            assert conn.receive_data(wire) == [TextMessage(text)]


@pytest.mark.parametrize(
    ("sequence", "first_bad"),
    [case[1:] for case in INVALID_SEQUENCES],
    ids=[case[0] for case in INVALID_SEQUENCES],
)
@pytest.mark.parametrize("role", ["server", "client"])
def test_invalid_utf8_in_one_frame(sequence: bytes, first_bad: int | None, role: str) -> None:
    message, _ = invalid_message(sequence, first_bad)
    conn = server() if role == "server" else client()
    assert conn.receive_data(frame_to(conn, Opcode.TEXT, message)) == []
    assert_failed(conn, 1007, "invalid UTF-8 in a text message")


@pytest.mark.parametrize(
    ("sequence", "first_bad"),
    [case[1:] for case in INVALID_SEQUENCES],
    ids=[case[0] for case in INVALID_SEQUENCES],
)
@pytest.mark.parametrize("role", ["server", "client"])
def test_invalid_utf8_fragmented_fails_by_the_frame_holding_the_first_bad_byte(
    sequence: bytes, first_bad: int | None, role: str
) -> None:
    message, bad = invalid_message(sequence, first_bad)
    for split in range(len(message) + 1):
        conn = server() if role == "server" else client()
        first = frame_to(conn, Opcode.TEXT, message[:split], fin=False)
        second = frame_to(conn, Opcode.CONTINUATION, message[split:])
        assert conn.receive_data(first) == [], f"split at {split}"
        if split > bad:
            # The first frame holds the first bad byte: the close is already queued.
            assert conn.state is State.CLOSED, f"split at {split}: no close after frame 1"
            assert_failed(conn, 1007)
            continue
        assert_open(conn)
        assert conn.receive_data(second) == []
        assert_failed(conn, 1007)


@pytest.mark.parametrize(
    ("sequence", "first_bad"),
    [case[1:] for case in INVALID_SEQUENCES],
    ids=[case[0] for case in INVALID_SEQUENCES],
)
@pytest.mark.parametrize("role", ["server", "client"])
def test_invalid_utf8_in_a_frame_still_arriving_fails_at_the_first_bad_byte(
    sequence: bytes, first_bad: int | None, role: str
) -> None:
    message, bad = invalid_message(sequence, first_bad)
    message += b"z" * 200  # a frame that is far from complete when the bad byte arrives
    for split in range(1, len(message) + 8):
        conn = server() if role == "server" else client()
        wire = frame_to(conn, Opcode.TEXT, message)
        header_size = len(wire) - len(message)
        assert conn.receive_data(wire[:split]) == []
        if split > header_size + bad:
            assert conn.state is State.CLOSED, f"split at {split}: bad byte arrived, no close"
            assert_failed(conn, 1007)
            continue
        assert_open(conn)
        assert conn.receive_data(wire[split:]) == []
        assert_failed(conn, 1007)


@pytest.mark.parametrize(
    ("sequence", "first_bad"),
    [case[1:] for case in INVALID_SEQUENCES if case[2] is not None],
    ids=[case[0] for case in INVALID_SEQUENCES if case[2] is not None],
)
def test_invalid_utf8_in_a_continuation_still_arriving(sequence: bytes, first_bad: int) -> None:
    # The first fragment is complete and valid; the continuation's header and its first
    # bytes up to and including the first bad byte are all that arrived.
    message, bad = invalid_message(sequence, first_bad)
    conn = server()
    assert conn.receive_data(masked(Opcode.TEXT, message[:3], fin=False)) == []
    continuation = masked(Opcode.CONTINUATION, message[3:] + b"z" * 1000)
    header_size = 8  # 16-bit length and masking key
    assert conn.receive_data(continuation[: header_size + bad - 3 + 1]) == []
    assert_failed(conn, 1007)


def test_close_is_queued_with_only_the_header_and_the_first_bad_byte() -> None:
    # A 1000-byte text frame of which only the header and one byte (0xFF) arrived.
    conn = server()
    wire = masked(Opcode.TEXT, b"\xff" + b"a" * 999)
    assert conn.receive_data(wire[:9]) == []
    assert_failed(conn, 1007)


def test_invalid_utf8_after_a_valid_start_of_a_large_frame() -> None:
    conn = client()
    wire = unmasked(Opcode.TEXT, b"a" * 5000 + b"\xff" + b"b" * 5000)
    assert conn.receive_data(wire[:3000]) == []
    assert_open(conn)
    assert conn.receive_data(wire[3000:5004]) == []  # 4 header bytes, 5000 "a"
    assert_open(conn)
    assert conn.receive_data(wire[5004:5005]) == []  # the 0xFF
    assert_failed(conn, 1007)


def test_partial_validation_does_not_change_the_message() -> None:
    # The peek-ahead validation decodes the start of a frame; the completed frame must
    # still give the whole text, once, for text split inside a multi-byte character.
    text = "\u20ac" * 400 + "\U0001f600" * 300
    data = text.encode()
    conn = server()
    wire = masked(Opcode.TEXT, data[:1001], fin=False) + masked(Opcode.CONTINUATION, data[1001:])
    events: list[Event] = []
    for i in range(0, len(wire), 333):
        events += conn.receive_data(wire[i : i + 333])
    assert events == [TextMessage(text)]
    assert_open(conn)


def test_partial_validation_is_not_applied_to_binary_or_compressed_frames() -> None:
    conn = client(extension=extension(is_server=False))
    assert conn.receive_data(unmasked(Opcode.BINARY, b"\xff" * 300)[:100]) == []
    assert_open(conn)
    conn = client(extension=extension(is_server=False))
    assert conn.receive_data(b"\xc1\x7e\x01\x00\xff\xff") == []  # compressed, RSV1
    assert_open(conn)
    conn = client()
    assert conn.receive_data(unmasked(Opcode.PING, b"\xff" * 50)[:20]) == []
    assert_open(conn)


def test_binary_frame_arriving_in_chunks_is_unmasked_in_linear_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A 64 KiB binary frame arriving in 1 KiB chunks must not be unmasked again from its
    # first byte at every chunk (quadratic: a peer dribbling a 1 MiB frame would cost
    # gigabytes of XOR). Count the bytes the unmasking does.
    unmasked_bytes = 0
    original = frames._unmask

    def counting_unmask(buf: bytes | bytearray, start: int, end: int, mask: bytes) -> bytes:
        nonlocal unmasked_bytes
        unmasked_bytes += end - start
        return original(buf, start, end, mask)

    monkeypatch.setattr(frames, "_unmask", counting_unmask)
    conn = server()
    wire = masked(Opcode.BINARY, BYTES_64K)
    unmasked_bytes = 0
    events: list[Event] = []
    for i in range(0, len(wire), 1024):
        events += conn.receive_data(wire[i : i + 1024])
    assert events == [BinaryMessage(BYTES_64K)]
    assert unmasked_bytes <= 2 * len(BYTES_64K), f"{unmasked_bytes} bytes unmasked for 64 KiB"


# --- closing handshake -----------------------------------------------------------------------


def test_received_close_is_answered_with_its_code() -> None:
    conn = server()
    assert conn.receive_data(masked(Opcode.CLOSE, close_payload(1000, "bye"))) == [
        CloseReceived(1000, "bye")
    ]
    assert conn.data_to_send() == b"\x88\x02\x03\xe8"
    assert conn.state is State.CLOSED
    assert (conn.close_code, conn.close_reason) == (1000, "bye")
    assert conn.close_received
    assert conn.close_sent
    assert conn.failure is None
    assert conn.should_close_transport


def test_received_close_at_a_client_is_answered_masked() -> None:
    conn = client()
    assert conn.receive_data(unmasked(Opcode.CLOSE, close_payload(4001, "\u00e9"))) == [
        CloseReceived(4001, "\u00e9")
    ]
    assert conn.data_to_send() == masked(Opcode.CLOSE, b"\x0f\xa1")
    assert conn.state is State.CLOSED


def test_empty_close_is_answered_with_an_empty_close() -> None:
    conn = server()
    assert conn.receive_data(masked(Opcode.CLOSE)) == [CloseReceived(1005, "")]
    assert conn.data_to_send() == b"\x88\x00"
    assert (conn.close_code, conn.close_reason) == (1005, "")
    assert conn.state is State.CLOSED


def test_close_with_a_reason_of_123_bytes() -> None:
    conn = server()
    reason = "\u00e9" * 61 + "a"
    assert conn.receive_data(masked(Opcode.CLOSE, close_payload(1000, reason))) == [
        CloseReceived(1000, reason)
    ]


def test_received_close_discards_a_message_in_progress() -> None:
    conn = server()
    data = masked(Opcode.TEXT, b"abc", fin=False) + masked(Opcode.CLOSE, b"\x03\xe8")
    assert conn.receive_data(data) == [CloseReceived(1000, "")]
    assert conn.data_to_send() == b"\x88\x02\x03\xe8"


def test_a_ping_after_our_close_is_still_answered() -> None:
    # Section 5.5.2: a pong is owed "unless it already received a Close frame"; only the
    # peer's close excuses it, ours does not. A pong is a control frame, not data.
    conn = server()
    conn.close(1000)
    data = masked(Opcode.TEXT, b"late") + masked(Opcode.PING, b"p")
    assert conn.receive_data(data) == [Ping(b"p")]
    assert conn.data_to_send() == b"\x8a\x01p"
    assert conn.state is State.CLOSING
    assert conn.receive_data(masked(Opcode.CLOSE, close_payload(1000))) == [CloseReceived(1000, "")]
    # Once the peer's close is in, a ping is not answered (nothing is read after it).
    assert conn.data_to_send() == b""


def test_close_handshake_started_by_us() -> None:
    conn = server()
    assert conn.close(1001, "going") == b"\x88\x07\x03\xe9going"
    assert conn.state is State.CLOSING
    assert conn.close_sent
    assert not conn.close_received
    assert not conn.should_close_transport
    # Section 5.5.1: data frames and pongs that cross our close are dropped: no events.
    data = (
        masked(Opcode.TEXT, b"late")
        + masked(Opcode.BINARY, b"x" * 300)
        + masked(Opcode.TEXT, b"frag", fin=False)
        + masked(Opcode.CONTINUATION, b"ment")
        + masked(Opcode.PONG, b"q")
    )
    assert conn.receive_data(data) == []
    assert conn.data_to_send() == b""
    assert conn.state is State.CLOSING
    # The peer's close completes the handshake; it is not answered.
    assert conn.receive_data(masked(Opcode.CLOSE, close_payload(1000, "ok"))) == [
        CloseReceived(1000, "ok")
    ]
    assert conn.data_to_send() == b""
    assert conn.state is State.CLOSED
    assert (conn.close_code, conn.close_reason) == (1000, "ok")
    assert conn.close_received
    assert conn.failure is None


def test_close_handshake_started_by_a_client() -> None:
    conn = client()
    assert conn.close() == masked(Opcode.CLOSE, b"\x03\xe8")
    assert conn.receive_data(unmasked(Opcode.PING, b"p") + unmasked(Opcode.CLOSE)) == [
        Ping(b"p"),
        CloseReceived(1005, ""),
    ]
    # The ping came before the server's close: its pong (masked, from a client) is owed.
    assert conn.data_to_send() == masked(Opcode.PONG, b"p")
    assert conn.state is State.CLOSED
    assert conn.close_code == 1005


def test_close_in_the_middle_of_a_received_fragmented_message() -> None:
    conn = server()
    assert conn.receive_data(masked(Opcode.TEXT, b"abc", fin=False)) == []
    assert conn.close() == b"\x88\x02\x03\xe8"
    data = masked(Opcode.CONTINUATION, b"def") + masked(Opcode.CLOSE, b"\x03\xe8")
    assert conn.receive_data(data) == [CloseReceived(1000, "")]
    assert conn.state is State.CLOSED


def test_frames_crossing_our_close_are_not_judged_by_a_stale_message_limit() -> None:
    # We close while the peer is in the middle of a fragmented message that has used 8
    # of its 10 bytes. The peer, not yet aware, ends that message and sends a new 5-byte
    # one before its close: both are discarded (section 5.5.1), and its close completes
    # the handshake. The 2 bytes left for the abandoned message no longer apply.
    conn = server(max_message_size=10)
    assert conn.receive_data(masked(Opcode.TEXT, b"12345678", fin=False)) == []
    assert conn.close() == b"\x88\x02\x03\xe8"
    data = (
        masked(Opcode.CONTINUATION, b"9")
        + masked(Opcode.BINARY, b"abcde")
        + masked(Opcode.CLOSE, b"\x03\xe8")
    )
    assert conn.receive_data(data) == [CloseReceived(1000, "")]
    assert conn.failure is None
    assert conn.state is State.CLOSED


def test_close_without_a_code() -> None:
    conn = server()
    assert conn.close(None) == b"\x88\x00"
    assert conn.close_code == 1005
    assert conn.state is State.CLOSING


def test_close_reply_after_a_received_close_returns_nothing() -> None:
    conn = server()
    conn.receive_data(masked(Opcode.CLOSE))
    assert conn.close() == b""
    assert conn.close(1001) == b""
    assert conn.state is State.CLOSED


def test_closing_twice_is_harmless() -> None:
    conn = client()
    assert conn.close(4000) == masked(Opcode.CLOSE, b"\x0f\xa0")
    assert conn.close(4001) == b""
    assert conn.close_code == 4000


@pytest.mark.parametrize("code", [1005, 1006, 1015, 0, 999, 1004, 1016, 2999, 5000, 65535])
def test_close_refuses_codes_that_may_not_be_sent(code: int) -> None:
    conn = server()
    with pytest.raises(LocalProtocolError, match=f"close code {code} may not be sent"):
        conn.close(code)
    assert conn.state is State.OPEN
    assert not conn.close_sent


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3999, 4000, 4999]
)
def test_close_sends_codes_that_may_be_sent(code: int) -> None:
    conn = server()
    assert conn.close(code, "r") == b"\x88\x03" + code.to_bytes(2, "big") + b"r"


def test_close_reason_of_123_bytes_is_accepted_124_refused() -> None:
    assert server().close(1000, "a" * 123) == b"\x88\x7d\x03\xe8" + b"a" * 123
    assert server().close(1000, "\u00e9" * 61 + "a")[:2] == b"\x88\x7d"
    for reason in ("a" * 124, "\u00e9" * 62, "\U0001f600" * 31):
        conn = server()
        with pytest.raises(LocalProtocolError, match="at most 123 bytes"):
            conn.close(1000, reason)
        assert conn.state is State.OPEN


def test_close_reason_without_a_code_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="needs a close code"):
        server().close(None, "why")


def test_close_before_the_handshake_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        Connection(Role.SERVER).close()


def test_failure_reason_is_truncated_to_fit_a_close_frame() -> None:
    conn = server()
    conn._fail(RemoteProtocolError("\u00e9" * 100, CloseCode.POLICY_VIOLATION))
    assert conn.close_reason == "\u00e9" * 61
    assert conn.data_to_send() == b"\x88\x7c\x03\xf0" + ("\u00e9" * 61).encode()
    assert conn.state is State.CLOSED


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("short", "short"),
        ("a" * 123, "a" * 123),
        ("a" * 124, "a" * 123),
        ("a" * 122 + "\u00e9", "a" * 122),
        ("a" * 121 + "\u20ac", "a" * 121),
        ("\U0001f600" * 40, "\U0001f600" * 30),
    ],
)
def test_truncate_reason(reason: str, expected: str) -> None:
    assert connection._truncate_reason(reason) == expected


def test_violation_while_closing_closes_without_a_second_close_frame() -> None:
    conn = server()
    conn.close()
    assert conn.receive_data(b"\x81\x05Hello") == []  # unmasked
    assert conn.state is State.CLOSED
    assert isinstance(conn.failure, RemoteProtocolError)
    assert conn.failure.close_code == 1002
    assert conn.data_to_send() == b""


def test_invalid_close_while_closing() -> None:
    conn = server()
    conn.close()
    assert conn.receive_data(masked(Opcode.CLOSE, b"\x03")) == []
    assert conn.state is State.CLOSED
    assert conn.failure is not None
    assert conn.data_to_send() == b""


def test_eof_without_a_close_is_abnormal_closure() -> None:
    conn = server()
    conn.receive_eof()
    assert conn.state is State.CLOSED
    assert (conn.close_code, conn.close_reason) == (1006, "")
    assert conn.data_to_send() == b""
    assert conn.receive_data(masked(Opcode.TEXT, b"x")) == []


def test_eof_during_the_handshake_is_abnormal_closure() -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\n")
    conn.receive_eof()
    assert conn.state is State.CLOSED
    assert conn.close_code == 1006


def test_eof_after_the_close_handshake_changes_nothing() -> None:
    conn = server()
    conn.receive_data(masked(Opcode.CLOSE, close_payload(1000, "bye")))
    conn.receive_eof()
    assert (conn.close_code, conn.close_reason) == (1000, "bye")
    conn = server()
    conn.receive_data(b"\x83\x80" + MASK)
    conn.receive_eof()
    assert conn.close_code == 1002


def test_eof_after_sending_close_is_abnormal_closure() -> None:
    # Section 7.1.5: "If _The WebSocket Connection is Closed_ and no Close control frame
    # was received by the endpoint [...], _The WebSocket Connection Close Code_ is
    # considered to be 1006." Our own close frame is not the peer's.
    conn = server()
    conn.close(1001, "going away")
    conn.receive_eof()
    assert conn.state is State.CLOSED
    assert (conn.close_code, conn.close_reason) == (1006, "")


# --- ping and pong ---------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"Hello", b"\x00\xff" * 62 + b"!"])
def test_ping_is_answered_with_its_payload(payload: bytes) -> None:
    conn = server()
    assert conn.receive_data(masked(Opcode.PING, payload)) == [Ping(payload)]
    assert conn.data_to_send() == unmasked(Opcode.PONG, payload)
    conn = client()
    assert conn.receive_data(unmasked(Opcode.PING, payload)) == [Ping(payload)]
    assert conn.data_to_send() == masked(Opcode.PONG, payload)


def test_pings_interleaved_in_a_fragmented_message_are_answered_in_order() -> None:
    conn = server()
    data = (
        masked(Opcode.BINARY, b"a", fin=False)
        + masked(Opcode.PING, b"1")
        + masked(Opcode.CONTINUATION, b"b", fin=False)
        + masked(Opcode.PONG, b"x")
        + masked(Opcode.PING, b"2")
        + masked(Opcode.CONTINUATION, b"c")
    )
    assert conn.receive_data(data) == [Ping(b"1"), Pong(b"x"), Ping(b"2"), BinaryMessage(b"abc")]
    assert conn.data_to_send() == b"\x8a\x011\x8a\x012"


def test_data_to_send_is_emptied() -> None:
    conn = server()
    conn.receive_data(masked(Opcode.PING, b"1"))
    assert conn.data_to_send() == b"\x8a\x011"
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("method", ["ping", "pong"])
def test_ping_and_pong_payloads_over_125_bytes_are_refused(method: str) -> None:
    conn = server()
    assert getattr(conn, method)(b"x" * 125)[:2] == (
        b"\x89\x7d" if method == "ping" else b"\x8a\x7d"
    )
    with pytest.raises(LocalProtocolError, match="at most 125 bytes"):
        getattr(conn, method)(b"x" * 126)
    assert conn.state is State.OPEN


def test_ping_and_pong_take_bytes_like_payloads() -> None:
    conn = server()
    assert conn.ping(bytearray(b"ab")) == b"\x89\x02ab"
    assert conn.pong(memoryview(b"cd")) == b"\x8a\x02cd"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "send",
    [
        lambda conn: conn.send_text("x"),
        lambda conn: conn.send_binary(b"x"),
        lambda conn: conn.ping(),
        lambda conn: conn.pong(),
        lambda conn: conn.send_message(Opcode.TEXT, b"x"),
    ],
    ids=["send_text", "send_binary", "ping", "pong", "send_message"],
)
def test_sending_when_not_open_is_refused(send: Callable[[Connection], bytes]) -> None:
    closing = server()
    closing.close()
    closed = server()
    closed.receive_data(masked(Opcode.CLOSE))
    failed = client()
    failed.receive_data(b"\x83\x00")
    connecting = Connection(Role.CLIENT)
    for conn, state in [
        (closing, State.CLOSING),
        (closed, State.CLOSED),
        (failed, State.CLOSED),
        (connecting, State.CONNECTING),
    ]:
        assert conn.state is state
        with pytest.raises(LocalProtocolError, match=f"in state {state.value}"):
            send(conn)


def test_send_message_refuses_control_opcodes() -> None:
    for opcode in (Opcode.PING, Opcode.CLOSE, Opcode.CONTINUATION):
        with pytest.raises(LocalProtocolError, match="TEXT or BINARY"):
            server().send_message(opcode, b"")


# --- sending and fragmentation ---------------------------------------------------------------


def test_server_frames_are_never_masked() -> None:
    conn = server(fragment_size=2)
    out = conn.send_text("abc") + conn.send_binary(b"xyz") + conn.ping(b"p") + conn.pong()
    out += conn.close(1000)
    parser = FrameParser(require_mask=False, max_data_payload=100)
    parser.feed(out)
    parsed = []
    while (frame := parser.next_frame()) is not None:
        parsed.append(frame)
    assert len(parsed) == 7  # a masked frame would have raised
    assert parser.buffered == 0


@pytest.mark.parametrize(
    ("size", "text", "expected"),
    [
        (2, "Hello", b"\x01\x02He\x00\x02ll\x80\x01o"),
        (2, "Hell", b"\x01\x02He\x80\x02ll"),
        (1, "abc", b"\x01\x01a\x00\x01b\x80\x01c"),
        (5, "Hello", b"\x81\x05Hello"),
        (6, "Hello", b"\x81\x05Hello"),
        (3, "", b"\x81\x00"),
        (4, "\u20ac\u20ac", b"\x01\x04\xe2\x82\xac\xe2\x80\x02\x82\xac"),
    ],
)
def test_server_fragments_text_at_fragment_size(size: int, text: str, expected: bytes) -> None:
    assert server(fragment_size=size).send_text(text) == expected


def test_server_fragments_binary_at_fragment_size() -> None:
    data = bytes(range(200))
    expected = b"\x02\x7e\x00\x80" + data[:128] + b"\x80\x48" + data[128:]
    assert server(fragment_size=128).send_binary(data) == expected


def test_client_fragments_are_masked_with_a_fresh_key_each() -> None:
    keys = [b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", b"\x09\x0a\x0b\x0c", b"\xff" * 4]
    requests: list[int] = []

    def mask_source(size: int) -> bytes:
        requests.append(size)
        return keys[len(requests) - 1]

    conn = Connection(Role.CLIENT, state=State.OPEN, fragment_size=2, mask_source=mask_source)
    assert conn.send_text("Hello") == (
        encode_frame(Opcode.TEXT, b"He", fin=False, mask=keys[0])
        + encode_frame(Opcode.CONTINUATION, b"ll", fin=False, mask=keys[1])
        + encode_frame(Opcode.CONTINUATION, b"o", mask=keys[2])
    )
    assert requests == [4, 4, 4]
    assert conn.ping(b"p") == encode_frame(Opcode.PING, b"p", mask=keys[3])


def test_client_masks_with_os_urandom_by_default() -> None:
    conn = Connection(Role.CLIENT, state=State.OPEN)
    first = conn.send_binary(b"\x00" * 8)
    second = conn.send_binary(b"\x00" * 8)
    assert first[:2] == second[:2] == b"\x82\x88"
    # The payload of zeros shows the key twice; two random 32-bit keys differ.
    assert first[2:6] * 2 == first[6:]
    assert first[2:6] != second[2:6]


def test_send_binary_takes_bytes_like_objects() -> None:
    conn = server()
    assert conn.send_binary(bytearray(b"ab")) == b"\x82\x02ab"
    assert conn.send_binary(memoryview(b"cd")) == b"\x82\x02cd"


def test_fragmented_message_round_trip_between_connections() -> None:
    sender = client(fragment_size=7)
    receiver = server()
    text = "fragmented \u20ac message " * 20
    assert receiver.receive_data(sender.send_text(text)) == [TextMessage(text)]
    assert receiver.receive_data(sender.send_binary(b"\x00" * 100)) == [
        BinaryMessage(b"\x00" * 100)
    ]


# --- one stream, every chunking --------------------------------------------------------------


def stream_for(role: Role) -> tuple[bytes, list[Event], bytes]:
    """Several messages, as the peer of ``role`` sends them; the events; our replies."""
    frame = masked if role is Role.SERVER else unmasked
    kosme = "\u03ba\u1f79\u03c3\u03bc\u03b5".encode()
    data = (
        frame(Opcode.TEXT, b"Hello")
        + frame(Opcode.BINARY, bytes(range(256)) + b"tail")
        + frame(Opcode.TEXT, b"Hel", fin=False)
        + frame(Opcode.PING, b"ping 1")
        + frame(Opcode.CONTINUATION, b"lo", fin=False)
        + frame(Opcode.CONTINUATION, b"", fin=True)
        + frame(Opcode.TEXT, kosme[:3], fin=False)
        + frame(Opcode.CONTINUATION, kosme[3:7], fin=False)
        + frame(Opcode.PONG, b"unsolicited")
        + frame(Opcode.CONTINUATION, kosme[7:])
        + frame(Opcode.BINARY, b"\x00" * 130, fin=False)
        + frame(Opcode.CONTINUATION, b"\x01" * 2)
        + frame(Opcode.TEXT, b"")
        + frame(Opcode.BINARY, b"")
        + frame(Opcode.TEXT, "\u20ac".encode() * 50)
        + frame(Opcode.PING, b"")
        + frame(Opcode.CLOSE, close_payload(1000, "done"))
    )
    events: list[Event] = [
        TextMessage("Hello"),
        BinaryMessage(bytes(range(256)) + b"tail"),
        Ping(b"ping 1"),
        TextMessage("Hello"),
        Pong(b"unsolicited"),
        TextMessage(kosme.decode()),
        BinaryMessage(b"\x00" * 130 + b"\x01" * 2),
        TextMessage(""),
        BinaryMessage(b""),
        TextMessage("\u20ac" * 50),
        Ping(b""),
        CloseReceived(1000, "done"),
    ]
    reply = masked if role is Role.CLIENT else unmasked
    replies = reply(Opcode.PONG, b"ping 1") + reply(Opcode.PONG) + reply(Opcode.CLOSE, b"\x03\xe8")
    return data, events, replies


def new(role: Role) -> Connection:
    return server() if role is Role.SERVER else client()


def feed_chunks(
    conn: Connection, chunks: Iterator[bytes] | list[bytes] | list[bytearray]
) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events += conn.receive_data(chunk)
    assert_immutable_values(events)
    return events


def assert_immutable_values(events: list[Event]) -> None:
    """Events are values: their payloads are bytes, never the parser's bytearrays."""
    for event in events:
        if isinstance(event, BinaryMessage):
            assert type(event.data) is bytes
        elif isinstance(event, Ping | Pong):
            assert type(event.payload) is bytes
        elif isinstance(event, TextMessage):
            assert type(event.data) is str


@pytest.mark.parametrize("role", [Role.SERVER, Role.CLIENT])
def test_stream_fed_whole(role: Role) -> None:
    data, events, replies = stream_for(role)
    conn = new(role)
    received = conn.receive_data(data)
    assert received == events
    assert_immutable_values(received)
    assert conn.data_to_send() == replies
    assert conn.state is State.CLOSED
    assert conn.failure is None


@pytest.mark.parametrize("role", [Role.SERVER, Role.CLIENT])
def test_stream_fed_one_byte_at_a_time(role: Role) -> None:
    data, events, replies = stream_for(role)
    conn = new(role)
    assert feed_chunks(conn, (data[i : i + 1] for i in range(len(data)))) == events
    assert conn.data_to_send() == replies
    assert conn.state is State.CLOSED


@pytest.mark.parametrize("role", [Role.SERVER, Role.CLIENT])
def test_stream_split_in_two_at_every_position(role: Role) -> None:
    data, events, replies = stream_for(role)
    for split in range(len(data) + 1):
        conn = new(role)
        assert feed_chunks(conn, [data[:split], data[split:]]) == events, f"split at {split}"
        assert conn.data_to_send() == replies
        assert conn.state is State.CLOSED


@pytest.mark.parametrize("role", [Role.SERVER, Role.CLIENT])
def test_stream_in_bytearray_chunks(role: Role) -> None:
    data, events, replies = stream_for(role)
    conn = new(role)
    rng = random.Random(6455)
    chunks = []
    position = 0
    while position < len(data):
        size = rng.randint(1, 40)
        chunks.append(bytearray(data[position : position + size]))
        position += size
    assert feed_chunks(conn, chunks) == events
    assert conn.data_to_send() == replies


def test_small_message_completed_in_place_does_not_hide_the_next_frame() -> None:
    # The first chunk holds only the header of a 6-byte message; the second completes it
    # and carries a whole 11-byte close frame, shorter than the first frame was.
    conn = server()
    data = masked(Opcode.BINARY, b"\x00" * 6) + masked(Opcode.CLOSE, b"\x03\xe8bye")
    assert conn.receive_data(data[:2]) == []
    assert conn.receive_data(data[2:]) == [BinaryMessage(b"\x00" * 6), CloseReceived(1000, "bye")]
    assert conn.data_to_send() == b"\x88\x02\x03\xe8"
    assert conn.state is State.CLOSED


def test_small_text_completed_in_place_then_a_ping_at_a_client() -> None:
    conn = client()
    data = unmasked(Opcode.TEXT, b"0123456789") + unmasked(Opcode.PING, b"p")
    assert conn.receive_data(data[:2]) == []
    assert conn.receive_data(data[2:]) == [TextMessage("0123456789"), Ping(b"p")]
    assert conn.data_to_send() == masked(Opcode.PONG, b"p")


@pytest.mark.parametrize("role", ["server", "client"])
def test_runs_of_16_bit_length_messages_split_everywhere(role: str) -> None:
    # The in-place path takes 7-bit and 16-bit lengths alike: sizes around each edge
    # (125/126, the lanes threshold of the unmasking, the largest 16-bit length, and a
    # 64-bit length beyond the in-place path), text and binary, fed whole and cut at
    # arbitrary points.
    conn = server() if role == "server" else client()
    sizes = [125, 126, 127, 1023, 1024, 1025, 4099, 65535, 70000]
    data = b""
    expected: list[Event] = []
    rng = random.Random(6455)
    for size in sizes:
        text = "".join(rng.choice("abé€") for _ in range(size))[:size]
        raw = text.encode()[:size]
        while True:  # cut on a character boundary, so the frame is valid UTF-8
            try:
                text = raw.decode()
                break
            except UnicodeDecodeError:
                raw = raw[:-1]
        data += frame_to(conn, Opcode.TEXT, raw)
        expected.append(TextMessage(text))
        blob = rng.randbytes(size)
        data += frame_to(conn, Opcode.BINARY, blob)
        expected.append(BinaryMessage(blob))
    assert conn.receive_data(data) == expected
    fresh = server() if role == "server" else client()
    received: list[Event] = []
    position = 0
    while position < len(data):
        step = rng.randrange(1, 9000)
        received += fresh.receive_data(data[position : position + step])
        position += step
    assert received == expected
    assert all(type(event.data) is bytes for event in received if isinstance(event, BinaryMessage))
    assert_open(fresh)


def test_16_bit_length_not_minimally_encoded_fails() -> None:
    conn = server()
    frame = b"\x81\xfe\x00\x7d" + MASK + frames.apply_mask(b"x" * 125, MASK)
    assert conn.receive_data(masked(Opcode.TEXT, b"ok") + frame) == [TextMessage("ok")]
    assert_failed(conn, 1002, "not minimally encoded")


def test_16_bit_length_over_max_frame_size_fails_after_the_messages_before() -> None:
    conn = server(max_frame_size=300)
    data = masked(Opcode.BINARY, b"\x01" * 300) + masked(Opcode.BINARY, b"\x02" * 301)
    assert conn.receive_data(data) == [BinaryMessage(b"\x01" * 300)]
    assert_failed(conn, 1009, "frame of 301 bytes")


def test_invalid_utf8_in_a_16_bit_length_text_fails() -> None:
    conn = server()
    assert conn.receive_data(masked(Opcode.TEXT, b"a" * 200 + b"\xff")) == []
    assert_failed(conn, 1007, "UTF-8")


def test_stream_through_a_reused_bytearray() -> None:
    # A reader that appends to one bytearray, hands it over and clears it for the next
    # read: the connection must not keep (or write into) the caller's object.
    data, events, replies = stream_for(Role.SERVER)
    conn = server()
    buffer = bytearray()
    received: list[Event] = []
    for i in range(0, len(data), 25):
        buffer += data[i : i + 25]
        received += conn.receive_data(buffer)
        buffer.clear()
    assert received == events
    assert conn.data_to_send() == replies


def test_empty_chunks_are_harmless() -> None:
    conn = server()
    assert conn.receive_data(b"") == []
    assert conn.receive_data(masked(Opcode.TEXT, b"Hello")[:3]) == []
    assert conn.receive_data(b"") == []
    assert conn.receive_data(masked(Opcode.TEXT, b"Hello")[3:]) == [TextMessage("Hello")]
    assert_open(conn)


# --- constructor and small API -----------------------------------------------------------------


def test_constructor_validation() -> None:
    with pytest.raises(LocalProtocolError, match="CONNECTING or OPEN"):
        Connection(Role.SERVER, state=State.CLOSING)
    with pytest.raises(LocalProtocolError, match="CONNECTING or OPEN"):
        Connection(Role.SERVER, state=State.CLOSED)
    with pytest.raises(LocalProtocolError, match="max_message_size"):
        Connection(Role.SERVER, max_message_size=0)
    with pytest.raises(LocalProtocolError, match="fragment_size"):
        Connection(Role.SERVER, fragment_size=0)


def test_transitions_table() -> None:
    # Every (state, trigger) pair the table lacks is the caller's error, never a crash.
    triggers = list(connection._Trigger)
    for state in State:
        for trigger in triggers:
            conn = server()
            conn._state = state
            expected = connection.TRANSITIONS.get((state, trigger))
            if expected is None:
                with pytest.raises(LocalProtocolError, match=f"cannot {trigger.value} in state"):
                    conn._transition(trigger)
                assert conn.state is state
            else:
                conn._transition(trigger)
                assert conn.state is expected
    assert all(target is not State.CONNECTING for target in connection.TRANSITIONS.values())
    assert {state for state, _ in connection.TRANSITIONS} == {
        State.CONNECTING,
        State.OPEN,
        State.CLOSING,
    }


def test_repr_and_initial_state() -> None:
    conn = Connection(Role.CLIENT)
    assert repr(conn) == "<Connection client CONNECTING>"
    assert conn.state is State.CONNECTING
    assert conn.close_code is None
    assert conn.failure is None
    assert conn.extension is None
    assert conn.subprotocol is None
    assert not conn.should_close_transport
    assert repr(server()) == "<Connection server OPEN>"


def test_error_reprs() -> None:
    assert repr(RemoteProtocolError("bad", CloseCode.MESSAGE_TOO_BIG)) == (
        "RemoteProtocolError('bad', close_code=<CloseCode.MESSAGE_TOO_BIG: 1009>)"
    )
    assert repr(InvalidHandshake("nope", 426)) == "InvalidHandshake('nope', status=426)"


# --- opening handshake through Connection ----------------------------------------------------


def handshake_pair(
    server_kwargs: dict[str, object] | None = None,
    client_kwargs: dict[str, object] | None = None,
) -> tuple[Connection, Connection, list[Event]]:
    """Run the opening handshake between a client and a server Connection."""
    srv = Connection(Role.SERVER, **(server_kwargs or {}))  # type: ignore[arg-type]
    cli = Connection(Role.CLIENT, mask_source=fixed_mask, **(client_kwargs or {}))  # type: ignore[arg-type]
    request = cli.initiate("chat.example:8080", "/ws?room=lobby", origin="http://chat.example")
    events = srv.receive_data(request)
    assert len(events) == 1
    assert isinstance(events[0], RequestReceived)
    response = srv.accept()
    assert srv.state is State.OPEN
    client_events = cli.receive_data(response)
    assert cli.state is State.OPEN
    return srv, cli, client_events


def test_server_receives_a_real_request() -> None:
    request = build_request(
        "chat.example", "/ws?room=lobby", KEY, origin="http://chat.example",
        subprotocols=["chat.v2"],
    )  # fmt: skip
    conn = Connection(Role.SERVER)
    events = conn.receive_data(request)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, RequestReceived)
    assert event.request is conn.request
    assert (event.request.method, event.request.target) == ("GET", "/ws?room=lobby")
    assert event.request.path == "/ws"
    assert event.request.headers.get("Host") == "chat.example"
    assert event.request.headers.get("Sec-WebSocket-Key") == KEY
    assert event.request.headers.get("Origin") == "http://chat.example"
    assert conn.state is State.CONNECTING
    assert conn.data_to_send() == b""


def test_server_accepts_with_a_101() -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(build_request("chat.example", "/", KEY))
    response = conn.accept(extra_headers=[("Server", "chatd")])
    assert response == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Server: chatd\r\n"
        b"\r\n"
    )
    assert conn.state is State.OPEN
    assert conn.send_text("hi") == b"\x81\x02hi"


def test_request_fed_one_byte_at_a_time() -> None:
    request = build_request("chat.example", "/", KEY)
    conn = Connection(Role.SERVER)
    events: list[Event] = []
    for i in range(len(request)):
        events += conn.receive_data(request[i : i + 1])
    assert [type(event) for event in events] == [RequestReceived]
    conn.accept()
    assert conn.state is State.OPEN


def test_client_accepts_the_101_and_the_frames_in_the_same_chunk() -> None:
    srv = Connection(Role.SERVER)
    cli = Connection(Role.CLIENT, mask_source=fixed_mask)
    srv.receive_data(cli.initiate("chat.example", "/ws"))
    response = srv.accept()
    chunk = response + srv.send_text("welcome") + srv.ping(b"p") + srv.send_binary(b"\x01")
    events = cli.receive_data(chunk)
    assert len(events) == 4
    accepted = events[0]
    assert isinstance(accepted, Accepted)
    assert accepted.response.status == 101
    assert (accepted.subprotocol, accepted.extensions) == (None, None)
    assert events[1:] == [TextMessage("welcome"), Ping(b"p"), BinaryMessage(b"\x01")]
    assert cli.state is State.OPEN
    assert cli.data_to_send() == masked(Opcode.PONG, b"p")


def test_client_accepts_a_101_split_at_every_position() -> None:
    length = None
    split = 0
    while length is None or split <= length:
        srv = Connection(Role.SERVER)
        cli = Connection(Role.CLIENT)
        srv.receive_data(cli.initiate("chat.example", "/ws"))
        data = srv.accept() + srv.send_text("welcome")
        length = len(data)
        events = cli.receive_data(data[:split]) + cli.receive_data(data[split:])
        assert [type(event) for event in events] == [Accepted, TextMessage], f"split {split}"
        assert events[1] == TextMessage("welcome")
        split += 1


def test_server_keeps_frames_that_follow_the_request_until_accept() -> None:
    srv = Connection(Role.SERVER)
    cli = Connection(Role.CLIENT, state=State.OPEN, mask_source=fixed_mask)
    request = build_request("chat.example", "/", KEY)
    frame = cli.send_text("early")
    assert [type(e) for e in srv.receive_data(request + frame[:3])] == [RequestReceived]
    assert srv.receive_data(frame[3:]) == []  # still CONNECTING: nothing parsed
    srv.accept()
    assert srv.receive_data(b"") == [TextMessage("early")]


def test_take_unparsed_returns_a_plain_http_body() -> None:
    srv = Connection(Role.SERVER)
    head = b"POST /api/auth/login HTTP/1.1\r\nHost: chat.example\r\nContent-Length: 14\r\n\r\n"
    events = srv.receive_data(head + b'{"user":')
    assert [type(e) for e in events] == [RequestReceived]
    assert srv.request is not None
    assert srv.request.method == "POST"
    srv.receive_data(b'"x"}')
    assert srv.take_unparsed() == b'{"user":"x"}'
    assert srv.take_unparsed() == b""


def test_server_rejects_a_request_that_is_not_an_upgrade() -> None:
    srv = Connection(Role.SERVER)
    srv.receive_data(b"GET / HTTP/1.1\r\nHost: chat.example\r\n\r\n")
    with pytest.raises(InvalidHandshake) as caught:
        srv.accept()
    assert caught.value.status == 426
    response = srv.reject(caught.value)
    assert response.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in response
    assert srv.state is State.CLOSED
    assert srv.failure is caught.value
    assert srv.should_close_transport


def test_server_rejects_an_unsupported_version_with_426() -> None:
    request = build_request("chat.example", "/", KEY).replace(
        b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"
    )
    srv = Connection(Role.SERVER)
    srv.receive_data(request)
    with pytest.raises(InvalidHandshake) as caught:
        srv.accept()
    response = srv.reject(caught.value, extra_headers=[("X-Why", "version")])
    assert response.startswith(b"HTTP/1.1 426 ")
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in response
    assert b"\r\nX-Why: version\r\n" in response


def test_server_can_reject_a_valid_request() -> None:
    srv = Connection(Role.SERVER)
    srv.receive_data(build_request("chat.example", "/", KEY))
    response = srv.reject(InvalidHandshake("origin not allowed", 403))
    assert response.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert response.endswith(b"\r\n\r\norigin not allowed\n")
    assert srv.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        srv.accept()


def test_malformed_request_gives_rejected_and_a_400() -> None:
    srv = Connection(Role.SERVER)
    events = srv.receive_data(b"GET / HTTP/1.1\r\nHost chat.example\r\n\r\n")
    assert len(events) == 1
    assert isinstance(events[0], Rejected)
    assert events[0].response is None
    assert events[0].reason
    out = srv.data_to_send()
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert out.endswith(events[0].reason.encode() + b"\n")
    assert srv.state is State.CLOSED
    assert isinstance(srv.failure, InvalidHandshake)
    assert srv.failure.status == 400
    assert srv.receive_data(b"more") == []


def test_oversized_request_head_is_rejected() -> None:
    srv = Connection(Role.SERVER)
    events = srv.receive_data(b"GET / HTTP/1.1\r\nX: " + b"a" * 20000)
    assert [type(e) for e in events] == [Rejected]
    assert srv.data_to_send().startswith(b"HTTP/1.1 431 ")


def test_subprotocol_negotiation_server_preference() -> None:
    srv, cli, events = handshake_pair(
        {"subprotocols": ["chat.v2", "chat.v1"]}, {"subprotocols": ["chat.v1", "chat.v2"]}
    )
    assert isinstance(events[0], Accepted)
    assert events[0].subprotocol == "chat.v2"
    assert srv.subprotocol == cli.subprotocol == "chat.v2"


def test_subprotocol_negotiation_without_a_common_one() -> None:
    srv, cli, events = handshake_pair({"subprotocols": ["a"]}, {"subprotocols": ["b"]})
    assert isinstance(events[0], Accepted)
    assert srv.subprotocol is cli.subprotocol is None


def test_subprotocol_chosen_explicitly_by_the_server() -> None:
    srv = Connection(Role.SERVER, subprotocols=["x"])
    srv.receive_data(build_request("h", "/", KEY, subprotocols=["a", "b"]))
    response = srv.accept(subprotocol="b")
    assert b"\r\nSec-WebSocket-Protocol: b\r\n" in response
    assert srv.subprotocol == "b"


def test_client_rejects_a_subprotocol_it_did_not_offer() -> None:
    cli = Connection(Role.CLIENT, subprotocols=["a"])
    request = cli.initiate("h")
    parsed = parse_request_head(request)
    assert parsed is not None
    key = parsed[0].headers.get("Sec-WebSocket-Key")
    assert key is not None
    events = cli.receive_data(build_accept_response(key, subprotocol="b"))
    assert len(events) == 1
    assert isinstance(events[0], Rejected)
    assert events[0].response is not None
    assert events[0].response.status == 101
    assert cli.state is State.CLOSED
    assert isinstance(cli.failure, InvalidHandshake)


def test_client_rejects_a_wrong_accept_key() -> None:
    cli = Connection(Role.CLIENT)
    cli.initiate("h")
    events = cli.receive_data(build_accept_response(KEY))  # answers another key
    assert [type(e) for e in events] == [Rejected]
    assert cli.state is State.CLOSED


def test_client_sees_a_refusal() -> None:
    cli = Connection(Role.CLIENT)
    cli.initiate("h")
    events = cli.receive_data(
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n" + b"\x81\x02hi"
    )
    assert len(events) == 1
    assert isinstance(events[0], Rejected)
    assert events[0].response is not None
    assert events[0].response.status == 403
    assert "403" in events[0].reason
    assert cli.state is State.CLOSED
    assert isinstance(cli.failure, InvalidHandshake)
    assert cli.failure.status == 403
    assert cli.receive_data(b"\x81\x02hi") == []


def test_client_sees_a_malformed_response() -> None:
    cli = Connection(Role.CLIENT)
    cli.initiate("h")
    events = cli.receive_data(b"HTTP/1.1 abc\r\n\r\n")
    assert len(events) == 1
    assert isinstance(events[0], Rejected)
    assert events[0].response is None
    assert cli.state is State.CLOSED
    assert cli.data_to_send() == b""


def test_client_refuses_a_response_before_initiate() -> None:
    cli = Connection(Role.CLIENT)
    events = cli.receive_data(build_accept_response(KEY))
    assert events == [Rejected(None, "response before initiate()")]
    assert cli.state is State.CLOSED


def test_client_refuses_an_extension_it_did_not_offer() -> None:
    cli = Connection(Role.CLIENT)
    request = cli.initiate("h")
    key = parse_request_head(request)[0].headers.get("Sec-WebSocket-Key")  # type: ignore[index]
    assert key is not None
    events = cli.receive_data(build_accept_response(key, extensions="permessage-deflate"))
    assert len(events) == 1
    assert isinstance(events[0], Rejected)
    assert "not offered" in events[0].reason
    assert cli.state is State.CLOSED


def test_client_refuses_permessage_deflate_twice() -> None:
    cli = Connection(Role.CLIENT, deflate_options=DeflateOptions())
    request = cli.initiate("h")
    key = parse_request_head(request)[0].headers.get("Sec-WebSocket-Key")  # type: ignore[index]
    assert key is not None
    response = build_accept_response(key, extensions="permessage-deflate, permessage-deflate")
    events = cli.receive_data(response)
    assert len(events) == 1
    assert isinstance(events[0], Rejected)
    assert "twice" in events[0].reason


def test_handshake_api_misuse() -> None:
    cli = Connection(Role.CLIENT)
    cli.initiate("h")
    with pytest.raises(LocalProtocolError):
        cli.initiate("h")
    with pytest.raises(LocalProtocolError):
        cli.accept()
    with pytest.raises(LocalProtocolError):
        cli.reject(InvalidHandshake("no"))
    srv = Connection(Role.SERVER)
    with pytest.raises(LocalProtocolError):
        srv.initiate("h")
    with pytest.raises(LocalProtocolError):
        srv.accept()  # no request yet
    srv.receive_data(build_request("h", "/", KEY))
    srv.accept()
    with pytest.raises(LocalProtocolError):
        srv.accept()
    with pytest.raises(LocalProtocolError):
        srv.reject(InvalidHandshake("no"))
    with pytest.raises(LocalProtocolError):
        server().initiate("h")


def test_initiate_builds_the_request() -> None:
    cli = Connection(Role.CLIENT, subprotocols=["chat"], deflate_options=DeflateOptions())
    request = cli.initiate(
        "chat.example", "/ws", origin="http://o.example", extra_headers=[("Cookie", "a=b")]
    )
    parsed = parse_request_head(request)
    assert parsed is not None
    head, used = parsed
    assert used == len(request)
    assert (head.method, head.target) == ("GET", "/ws")
    headers = head.headers
    assert headers.get("Host") == "chat.example"
    assert headers.get("Origin") == "http://o.example"
    assert headers.get("Sec-WebSocket-Protocol") == "chat"
    assert headers.get("Sec-WebSocket-Version") == "13"
    assert headers.get("Cookie") == "a=b"
    assert headers.get("Sec-WebSocket-Extensions", "").startswith("permessage-deflate")


def test_full_handshake_then_messages_both_ways() -> None:
    srv, cli, events = handshake_pair()
    assert [type(e) for e in events] == [Accepted]
    assert srv.receive_data(cli.send_text("hello server")) == [TextMessage("hello server")]
    assert cli.receive_data(srv.send_text("hello client")) == [TextMessage("hello client")]
    assert srv.request is not None
    assert srv.request.query == {"room": "lobby"}
    assert srv.receive_data(cli.close(1000, "bye")) == [CloseReceived(1000, "bye")]
    assert cli.receive_data(srv.data_to_send()) == [CloseReceived(1000, "")]
    assert srv.state is cli.state is State.CLOSED


# --- permessage-deflate end to end ----------------------------------------------------------


def first_bytes_of_frames(wire: bytes, *, masked_frames: bool) -> list[Frame]:
    parser = FrameParser(require_mask=masked_frames, max_data_payload=1 << 20, allowed_rsv=0x40)
    parser.feed(wire)
    result = []
    while (frame := parser.next_frame()) is not None:
        result.append(frame)
    assert parser.buffered == 0
    return result


def test_permessage_deflate_negotiated_end_to_end() -> None:
    options = DeflateOptions()
    srv, cli, events = handshake_pair({"deflate_options": options}, {"deflate_options": options})
    accepted = events[0]
    assert isinstance(accepted, Accepted)
    assert accepted.extensions is not None
    assert accepted.extensions.startswith("permessage-deflate")
    assert isinstance(srv.extension, PerMessageDeflate)
    assert isinstance(cli.extension, PerMessageDeflate)

    text = "chat message " * 100
    wire = cli.send_text(text)
    assert wire[0] == 0xC1  # FIN, RSV1, TEXT
    assert len(wire) < len(text) // 4
    assert srv.receive_data(wire) == [TextMessage(text)]
    # Context takeover: the same message again compresses even better, and still decodes.
    again = cli.send_text(text)
    assert len(again) <= len(wire)
    assert srv.receive_data(again) == [TextMessage(text)]

    wire = srv.send_binary(b"\x00" * 10000)
    assert wire[0] == 0xC2
    assert cli.receive_data(wire) == [BinaryMessage(b"\x00" * 10000)]

    # Below min_size: sent as is, RSV1 clear.
    assert srv.send_text("hi") == b"\x81\x02hi"
    assert srv.receive_data(cli.send_text("hi")) == [TextMessage("hi")]
    assert_open(srv)
    assert cli.data_to_send() == b""


def test_permessage_deflate_fragmented_sets_rsv1_on_the_first_frame_only() -> None:
    options = DeflateOptions()
    srv, cli, _ = handshake_pair(
        {"deflate_options": options, "fragment_size": 200},
        {"deflate_options": options, "fragment_size": 100},
    )
    data = random.Random(1).randbytes(1000)  # incompressible: several frames
    wire = cli.send_binary(data)
    sent = first_bytes_of_frames(wire, masked_frames=True)
    assert len(sent) > 3
    assert [(f.opcode, f.fin, f.rsv1) for f in sent] == [(Opcode.BINARY, False, True)] + [
        (Opcode.CONTINUATION, False, False)
    ] * (len(sent) - 2) + [(Opcode.CONTINUATION, True, False)]
    assert all(len(f.payload) == 100 for f in sent[:-1])
    assert srv.receive_data(wire) == [BinaryMessage(data)]

    rng = random.Random(2)
    text = "".join(chr(0x400 + rng.randrange(200)) for _ in range(2000))
    wire = srv.send_text(text)
    sent = first_bytes_of_frames(wire, masked_frames=False)
    assert len(sent) > 1
    assert [f.rsv1 for f in sent] == [True] + [False] * (len(sent) - 1)
    # Fed in small chunks, so that the peek-ahead UTF-8 check meets compressed frames.
    assert feed_chunks(cli, [wire[i : i + 50] for i in range(0, len(wire), 50)]) == [
        TextMessage(text)
    ]


def test_permessage_deflate_not_negotiated_when_the_server_does_not_want_it() -> None:
    srv, cli, events = handshake_pair({}, {"deflate_options": DeflateOptions()})
    assert isinstance(events[0], Accepted)
    assert events[0].extensions is None
    assert srv.extension is cli.extension is None
    wire = cli.send_text("x" * 1000)
    assert wire[0] == 0x81
    assert srv.receive_data(wire) == [TextMessage("x" * 1000)]


def test_permessage_deflate_not_offered_by_the_client() -> None:
    srv, cli, events = handshake_pair({"deflate_options": DeflateOptions()}, {})
    assert isinstance(events[0], Accepted)
    assert events[0].extensions is None
    assert srv.extension is cli.extension is None
    wire = srv.send_text("y" * 1000)
    assert wire[0] == 0x81
    assert cli.receive_data(wire) == [TextMessage("y" * 1000)]


def test_compressed_message_over_max_message_size_is_1009() -> None:
    options = DeflateOptions()
    srv, cli, _ = handshake_pair(
        {"deflate_options": options, "max_message_size": 1000}, {"deflate_options": options}
    )
    wire = cli.send_text("a" * 5000)
    assert len(wire) < 1000
    assert srv.receive_data(wire) == []
    assert_failed(srv, 1009)


def test_corrupt_compressed_message_is_1007() -> None:
    conn = client(extension=extension(is_server=False))
    assert conn.receive_data(unmasked(Opcode.BINARY, b"\xff\xff\xff\xff", rsv1=True)) == []
    assert_failed(conn, 1007)


# --- interoperability ---------------------------------------------------------------------


def test_websockets_server_parses_our_client_frames() -> None:
    ours = Connection(Role.CLIENT, state=State.OPEN, fragment_size=1000)
    theirs = Protocol(Side.SERVER, state=WsState.OPEN)
    big = bytes(range(256)) * 20
    data = (
        ours.send_text("Hello, \u03ba\u1f79\u03c3\u03bc\u03b5")
        + ours.send_binary(big)
        + ours.ping(b"are you there")
        + ours.send_binary(b"")
    )
    theirs.receive_data(data)
    assert ours.receive_data(b"".join(theirs.data_to_send())) == [Pong(b"are you there")]
    theirs.receive_data(ours.close(1001, "bye"))
    received = [(f.opcode, f.data, f.fin) for f in theirs.events_received()]
    assert received == [
        (WsOpcode.TEXT, "Hello, \u03ba\u1f79\u03c3\u03bc\u03b5".encode(), True),
        (WsOpcode.BINARY, big[:1000], False),
        (WsOpcode.CONT, big[1000:2000], False),
        (WsOpcode.CONT, big[2000:3000], False),
        (WsOpcode.CONT, big[3000:4000], False),
        (WsOpcode.CONT, big[4000:5000], False),
        (WsOpcode.CONT, big[5000:], True),
        (WsOpcode.PING, b"are you there", True),
        (WsOpcode.BINARY, b"", True),
        (WsOpcode.CLOSE, b"\x03\xe9bye", True),
    ]
    assert theirs.close_rcvd is not None
    assert (theirs.close_rcvd.code, theirs.close_rcvd.reason) == (1001, "bye")
    assert ours.receive_data(b"".join(theirs.data_to_send())) == [CloseReceived(1001, "bye")]
    assert ours.state is State.CLOSED
    assert ours.failure is None


def test_our_server_parses_websockets_client_frames() -> None:
    theirs = Protocol(Side.CLIENT, state=WsState.OPEN)
    theirs.send_text("Hello, \u03ba\u1f79\u03c3\u03bc\u03b5".encode())
    theirs.send_binary(b"\x00\xff" * 40000)
    theirs.send_text(b"frag", fin=False)
    theirs.send_ping(b"ping")
    theirs.send_continuation("ment \u20ac".encode(), fin=True)
    theirs.send_close(1000, "done")
    ours = Connection(Role.SERVER, state=State.OPEN)
    data = b"".join(theirs.data_to_send())
    assert ours.receive_data(data) == [
        TextMessage("Hello, \u03ba\u1f79\u03c3\u03bc\u03b5"),
        BinaryMessage(b"\x00\xff" * 40000),
        Ping(b"ping"),
        TextMessage("fragment \u20ac"),
        CloseReceived(1000, "done"),
    ]
    assert ours.failure is None
    theirs.receive_data(ours.data_to_send())
    received = [(f.opcode, f.data) for f in theirs.events_received()]
    assert received == [(WsOpcode.PONG, b"ping"), (WsOpcode.CLOSE, b"\x03\xe8")]
    theirs.receive_eof()  # a client waits for the server to close TCP (section 7.1.1)
    assert theirs.state is WsState.CLOSED
    assert theirs.close_code == 1000


def test_websockets_client_frames_fed_one_byte_at_a_time() -> None:
    theirs = Protocol(Side.CLIENT, state=WsState.OPEN)
    theirs.send_text("\U0001f600 \u20ac \u00e9".encode() * 10)
    ours = Connection(Role.SERVER, state=State.OPEN)
    data = b"".join(theirs.data_to_send())
    events = feed_chunks(ours, [data[i : i + 1] for i in range(len(data))])
    assert events == [TextMessage("\U0001f600 \u20ac \u00e9" * 10)]


def test_websockets_fails_our_connection_for_the_same_violation() -> None:
    # Both implementations answer an invalid UTF-8 text message with 1007.
    theirs = Protocol(Side.CLIENT, state=WsState.OPEN)
    theirs.send_frame(WsFrame(WsOpcode.TEXT, b"\xff"))
    ours = Connection(Role.SERVER, state=State.OPEN)
    assert ours.receive_data(b"".join(theirs.data_to_send())) == []
    theirs.receive_data(ours.data_to_send())
    theirs.receive_eof()
    assert theirs.close_code == 1007


def test_handshake_with_a_websockets_server() -> None:
    ours = Connection(Role.CLIENT, subprotocols=["chat"])
    theirs = ServerProtocol(subprotocols=["chat"])  # type: ignore[list-item]
    theirs.receive_data(ours.initiate("localhost:8080", "/ws"))
    [request] = theirs.events_received()
    response = theirs.accept(request)  # type: ignore[arg-type]
    theirs.send_response(response)
    theirs.send_text(b"welcome")
    events = ours.receive_data(b"".join(theirs.data_to_send()))
    assert len(events) == 2
    assert isinstance(events[0], Accepted)
    assert events[0].subprotocol == "chat"
    assert events[1] == TextMessage("welcome")


def test_handshake_with_a_websockets_client() -> None:
    theirs = ClientProtocol(parse_uri("ws://localhost:8080/ws"), subprotocols=["chat"])  # type: ignore[list-item]
    theirs.send_request(theirs.connect())
    ours = Connection(Role.SERVER, subprotocols=["chat"])
    events = ours.receive_data(b"".join(theirs.data_to_send()))
    assert [type(e) for e in events] == [RequestReceived]
    theirs.receive_data(ours.accept() + ours.send_text("welcome"))
    assert theirs.state is WsState.OPEN
    assert theirs.subprotocol == "chat"
    [response, frame] = theirs.events_received()
    assert response.status_code == 101  # type: ignore[union-attr]
    assert frame.data == b"welcome"  # type: ignore[union-attr]
    assert response.headers["Sec-WebSocket-Accept"] == accept_key(  # type: ignore[union-attr]
        ours.request.headers.get("Sec-WebSocket-Key") or ""  # type: ignore[union-attr]
    )


def test_wsproto_server_parses_our_client_frames() -> None:
    ours = Connection(Role.CLIENT, state=State.OPEN, fragment_size=50)
    theirs = wsproto.Connection(wsproto.ConnectionType.SERVER)
    theirs.receive_data(
        ours.send_text("\u20ac" * 40) + ours.send_binary(b"\x00" * 70000) + ours.ping(b"x")
    )
    received = []
    for event in theirs.events():
        if isinstance(event, wsproto.events.Message):
            received.append((type(event).__name__, event.data, event.message_finished))
        else:
            received.append((type(event).__name__, event.payload, True))  # type: ignore[attr-defined]
    text = "".join(d for kind, d, _ in received if kind == "TextMessage")
    binary = b"".join(d for kind, d, _ in received if kind == "BytesMessage")
    assert text == "\u20ac" * 40
    assert binary == b"\x00" * 70000
    assert received[-1] == ("Ping", b"x", True)
    assert ours.receive_data(theirs.send(wsproto.events.Pong(b"x"))) == [Pong(b"x")]


def test_our_server_parses_wsproto_client_frames() -> None:
    theirs = wsproto.Connection(wsproto.ConnectionType.CLIENT)
    data = theirs.send(wsproto.events.TextMessage("\u03ba\u1f79\u03c3\u03bc\u03b5"))
    data += theirs.send(wsproto.events.BytesMessage(b"\x01" * 300))
    data += theirs.send(wsproto.events.TextMessage("part ", message_finished=False))
    data += theirs.send(wsproto.events.TextMessage("two"))
    data += theirs.send(wsproto.events.Ping(b"p"))
    data += theirs.send(wsproto.events.CloseConnection(4000, "app"))
    ours = Connection(Role.SERVER, state=State.OPEN)
    assert ours.receive_data(data) == [
        TextMessage("\u03ba\u1f79\u03c3\u03bc\u03b5"),
        BinaryMessage(b"\x01" * 300),
        TextMessage("part two"),
        Ping(b"p"),
        CloseReceived(4000, "app"),
    ]
    theirs.receive_data(ours.data_to_send())
    events = list(theirs.events())
    assert isinstance(events[0], wsproto.events.Pong)
    assert isinstance(events[1], wsproto.events.CloseConnection)
    assert events[1].code == 4000


def test_without_pausing_a_close_after_messages_is_handled_at_once() -> None:
    # The default: receive_data handles everything it was given.
    conn = server()
    data = masked(Opcode.TEXT, b"a") + masked(Opcode.CLOSE, close_payload(1000, ""))
    assert conn.receive_data(data) == [TextMessage("a"), CloseReceived(1000, "")]
    assert not conn.paused
    assert conn.state is State.CLOSED
    assert conn.data_to_send() == b"\x88\x02\x03\xe8"


# --- the size limit of compressed messages ----------------------------------------------------


def _stored_deflate(data: bytes, block: int) -> bytes:
    """Raw deflate made only of stored blocks of ``block`` bytes: incompressible data
    framed the way a compressor with a small memLevel does it, 5 bytes per block, then the
    sync-flush marker removed (RFC 7692 section 7.2.1).
    """
    out = bytearray()
    for offset in range(0, len(data), block):
        chunk = data[offset : offset + block]
        out += (
            b"\x00" + len(chunk).to_bytes(2, "little") + (len(chunk) ^ 0xFFFF).to_bytes(2, "little")
        )
        out += chunk
    return bytes(out)  # ends on a stored block, as a sync flush would (marker stripped)


def test_a_compressed_message_may_be_larger_on_the_wire_than_the_limit() -> None:
    # The limit is on the message; deflate can make incompressible data larger.
    limit = 4096
    message = random.Random(7).randbytes(limit)
    wire = _stored_deflate(message, 128)
    assert len(wire) > limit
    conn = server(extension=extension(is_server=True), max_message_size=limit)
    assert conn.receive_data(masked(Opcode.BINARY, wire, rsv1=True)) == [BinaryMessage(message)]
    assert conn.failure is None


def test_a_fragmented_compressed_message_may_be_larger_on_the_wire_than_the_limit() -> None:
    limit = 4096
    message = random.Random(8).randbytes(limit)
    wire = _stored_deflate(message, 128)
    half = len(wire) // 2
    conn = server(extension=extension(is_server=True), max_message_size=limit)
    data = masked(Opcode.BINARY, wire[:half], fin=False, rsv1=True) + masked(
        Opcode.CONTINUATION, wire[half:]
    )
    assert conn.receive_data(data) == [BinaryMessage(message)]


def test_a_compressed_frame_beyond_deflate_worst_case_is_refused_from_its_header() -> None:
    limit = 4096
    conn = server(extension=extension(is_server=True), max_message_size=limit)
    bound = limit + (limit >> 3) + (limit >> 6) + 64
    header = bytes((0xC2, 0xFE)) + (bound + 1).to_bytes(2, "big") + MASK
    assert conn.receive_data(header) == []
    assert_failed(conn, 1009)


def test_an_uncompressed_frame_gets_no_deflate_allowance() -> None:
    limit = 4096
    conn = server(extension=extension(is_server=True), max_message_size=limit)
    header = bytes((0x82, 0xFE)) + (limit + 1).to_bytes(2, "big") + MASK
    assert conn.receive_data(header) == []
    assert_failed(conn, 1009)
