"""Tests for rfc6455.frames (and the numbers in rfc6455.codes): byte literals in, frames out.

The examples of RFC 6455 section 5.7 are checked byte for byte, both ways; every rule a
single frame header can break is checked to raise ``RemoteProtocolError`` with its close
code as soon as the header is complete, before any payload is buffered.
"""

from __future__ import annotations

import pytest

from rfc6455 import frames
from rfc6455.codes import CloseCode, Opcode, is_sendable_close_code
from rfc6455.errors import LocalProtocolError, RemoteProtocolError
from rfc6455.frames import (
    HEADER_FIELDS,
    MAX_CONTROL_PAYLOAD,
    Frame,
    FrameParser,
    apply_mask,
    encode_frame,
)

MASK = b"\x37\xfa\x21\x3d"  # the masking key of the RFC 6455 section 5.7 examples
LARGE = 1 << 20


def server_parser(max_data_payload: int = LARGE, allowed_rsv: int = 0) -> FrameParser:
    """A parser for what a server receives: masked frames."""
    return FrameParser(
        require_mask=True, max_data_payload=max_data_payload, allowed_rsv=allowed_rsv
    )


def client_parser(max_data_payload: int = LARGE, allowed_rsv: int = 0) -> FrameParser:
    """A parser for what a client receives: unmasked frames."""
    return FrameParser(
        require_mask=False, max_data_payload=max_data_payload, allowed_rsv=allowed_rsv
    )


def parse_all(parser: FrameParser, data: bytes) -> list[Frame]:
    parser.feed(data)
    result = []
    while (frame := parser.next_frame()) is not None:
        result.append(frame)
    return result


def parse_bytewise(parser: FrameParser, data: bytes) -> list[Frame]:
    result = []
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
        while (frame := parser.next_frame()) is not None:
            result.append(frame)
    return result


def reference_mask(data: bytes, mask: bytes) -> bytes:
    """Section 5.3, literally: octet i XOR octet i modulo 4 of the key."""
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


# --- RFC 6455 section 5.7 examples ---------------------------------------------------------

BYTES_256 = bytes(range(256))
BYTES_64K = bytes(range(256)) * 256

# (name, encode_frame arguments, exact bytes)
RFC_EXAMPLES = [
    (
        "single-frame unmasked text",
        (Opcode.TEXT, b"Hello", True, None),
        b"\x81\x05\x48\x65\x6c\x6c\x6f",
    ),
    (
        "single-frame masked text",
        (Opcode.TEXT, b"Hello", True, MASK),
        b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
    ),
    (
        "fragmented unmasked text, first frame",
        (Opcode.TEXT, b"Hel", False, None),
        b"\x01\x03\x48\x65\x6c",
    ),
    (
        "fragmented unmasked text, last frame",
        (Opcode.CONTINUATION, b"lo", True, None),
        b"\x80\x02\x6c\x6f",
    ),
    (
        "unmasked ping",
        (Opcode.PING, b"Hello", True, None),
        b"\x89\x05\x48\x65\x6c\x6c\x6f",
    ),
    (
        "masked pong",
        (Opcode.PONG, b"Hello", True, MASK),
        b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
    ),
    (
        "256 bytes binary in a single unmasked frame",
        (Opcode.BINARY, BYTES_256, True, None),
        b"\x82\x7e\x01\x00" + BYTES_256,
    ),
    (
        "64 KiB binary in a single unmasked frame",
        (Opcode.BINARY, BYTES_64K, True, None),
        b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00" + BYTES_64K,
    ),
]
RFC_IDS = [name for name, _, _ in RFC_EXAMPLES]


@pytest.mark.parametrize(("name", "args", "wire"), RFC_EXAMPLES, ids=RFC_IDS)
def test_rfc_example_encodes_byte_for_byte(name: str, args: tuple, wire: bytes) -> None:
    opcode, payload, fin, mask = args
    assert encode_frame(opcode, payload, fin=fin, mask=mask) == wire


@pytest.mark.parametrize(("name", "args", "wire"), RFC_EXAMPLES, ids=RFC_IDS)
def test_rfc_example_parses(name: str, args: tuple, wire: bytes) -> None:
    opcode, payload, fin, mask = args
    parser = server_parser() if mask else client_parser()
    assert parse_all(parser, wire) == [Frame(opcode, payload, fin)]
    assert parser.buffered == 0


@pytest.mark.parametrize(("name", "args", "wire"), RFC_EXAMPLES[:7], ids=RFC_IDS[:7])
def test_rfc_example_parses_one_byte_at_a_time(name: str, args: tuple, wire: bytes) -> None:
    opcode, payload, fin, mask = args
    parser = server_parser() if mask else client_parser()
    assert parse_bytewise(parser, wire) == [Frame(opcode, payload, fin)]


def test_rfc_64k_example_parses_in_small_chunks() -> None:
    wire = RFC_EXAMPLES[7][2]
    parser = client_parser()
    result = []
    for i in range(0, len(wire), 7):
        parser.feed(wire[i : i + 7])
        while (frame := parser.next_frame()) is not None:
            result.append(frame)
    assert result == [Frame(Opcode.BINARY, BYTES_64K)]


def test_rfc_fragmented_example_parses_as_two_frames_from_one_chunk() -> None:
    parser = client_parser()
    assert parse_all(parser, b"\x01\x03\x48\x65\x6c\x80\x02\x6c\x6f") == [
        Frame(Opcode.TEXT, b"Hel", fin=False),
        Frame(Opcode.CONTINUATION, b"lo", fin=True),
    ]


def test_rfc_masked_examples_parse_at_a_server_in_one_chunk() -> None:
    text = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    pong = b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    wire = text + pong
    assert parse_all(server_parser(), wire) == [
        Frame(Opcode.TEXT, b"Hello"),
        Frame(Opcode.PONG, b"Hello"),
    ]


# --- encode_frame ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, b"\x82\x00"),
        (1, b"\x82\x01"),
        (125, b"\x82\x7d"),
        (126, b"\x82\x7e\x00\x7e"),
        (127, b"\x82\x7e\x00\x7f"),
        (65535, b"\x82\x7e\xff\xff"),
        (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
        (65537, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x01"),
    ],
)
def test_encode_uses_the_minimal_length_encoding(length: int, header: bytes) -> None:
    payload = b"\xab" * length
    assert encode_frame(Opcode.BINARY, payload) == header + payload


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (125, b"\x82\xfd"),
        (126, b"\x82\xfe\x00\x7e"),
        (65536, b"\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_encode_masked_sets_the_mask_bit_in_every_length_encoding(
    length: int, header: bytes
) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    assert encode_frame(Opcode.BINARY, payload, mask=MASK) == (
        header + MASK + reference_mask(payload, MASK)
    )


@pytest.mark.parametrize(
    ("kwargs", "first_byte"),
    [
        ({}, 0x81),
        ({"fin": False}, 0x01),
        ({"rsv1": True}, 0xC1),
        ({"rsv2": True}, 0xA1),
        ({"rsv3": True}, 0x91),
        ({"fin": False, "rsv1": True, "rsv2": True, "rsv3": True}, 0x71),
    ],
)
def test_encode_sets_fin_and_rsv_bits(kwargs: dict[str, bool], first_byte: int) -> None:
    assert encode_frame(Opcode.TEXT, b"", **kwargs) == bytes((first_byte, 0))


def test_encode_empty_close_frame() -> None:
    assert encode_frame(Opcode.CLOSE) == b"\x88\x00"
    assert encode_frame(Opcode.CLOSE, mask=MASK) == b"\x88\x80" + MASK


@pytest.mark.parametrize("mask", [b"", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"])
def test_encode_refuses_a_mask_that_is_not_4_bytes(mask: bytes) -> None:
    with pytest.raises(LocalProtocolError, match="exactly 4 bytes"):
        encode_frame(Opcode.TEXT, b"Hello", mask=mask)


def test_encode_accepts_a_bytearray_payload() -> None:
    assert encode_frame(Opcode.BINARY, bytearray(b"ab")) == b"\x82\x02ab"
    assert encode_frame(Opcode.BINARY, bytearray(b"ab"), mask=MASK) == (
        b"\x82\x82" + MASK + reference_mask(b"ab", MASK)
    )


# --- apply_mask --------------------------------------------------------------------------------


def test_apply_mask_rfc_example() -> None:
    assert apply_mask(b"Hello", MASK) == b"\x7f\x9f\x4d\x51\x58"
    assert apply_mask(b"\x7f\x9f\x4d\x51\x58", MASK) == b"Hello"


@pytest.mark.parametrize(
    "length",
    [0, 1, 2, 3, 4, 5, 7, 8, 124, 125, 126, 127, 1023, 1024, 1025, 1026, 1027, 4096, 70001],
)
def test_apply_mask_matches_the_definition_on_both_sides_of_the_lanes_threshold(
    length: int,
) -> None:
    data = bytes((i * 7 + 3) & 0xFF for i in range(length))
    mask = b"\x00\xff\x5a\xa5"
    masked = apply_mask(data, mask)
    assert masked == reference_mask(data, mask)
    assert type(masked) is bytes
    assert apply_mask(masked, mask) == data


def test_apply_mask_takes_a_bytearray() -> None:
    data = bytearray(b"\x00" * 2000)
    assert apply_mask(data, MASK) == MASK * 500
    assert apply_mask(bytearray(b"\x00" * 6), MASK) == MASK + MASK[:2]


@pytest.mark.parametrize("mask", [b"", b"\x01", b"\x01\x02\x03\x04\x05"])
def test_apply_mask_refuses_a_mask_that_is_not_4_bytes(mask: bytes) -> None:
    with pytest.raises(LocalProtocolError, match="exactly 4 bytes"):
        apply_mask(b"data", mask)


# --- FrameParser: incremental parsing ----------------------------------------------------------


def test_parser_needs_two_bytes_for_a_header() -> None:
    parser = client_parser()
    assert parser.next_frame() is None
    parser.feed(b"\x81")
    assert parser.next_frame() is None
    assert parser.buffered == 1
    parser.feed(b"\x00")
    assert parser.next_frame() == Frame(Opcode.TEXT, b"")
    assert parser.next_frame() is None
    assert parser.buffered == 0


@pytest.mark.parametrize(
    "wire",
    [
        b"\x82\x7e\x00\x7e" + b"x" * 126,
        b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00" + b"x" * 65536,
    ],
    ids=["16-bit length", "64-bit length"],
)
def test_parser_waits_for_the_extended_length(wire: bytes) -> None:
    header_size = 4 if wire[1] == 0x7E else 10
    parser = client_parser()
    for size in range(1, header_size):
        parser.feed(wire[size - 1 : size])
        assert parser.next_frame() is None
    parser.feed(wire[header_size - 1 : -1])
    assert parser.next_frame() is None
    assert parser.buffered == len(wire) - 1
    parser.feed(wire[-1:])
    assert parser.next_frame() == Frame(Opcode.BINARY, wire[header_size:])
    assert parser.buffered == 0


def test_parser_waits_for_the_masking_key() -> None:
    wire = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    parser = server_parser()
    for i in range(len(wire) - 1):
        parser.feed(wire[i : i + 1])
        assert parser.next_frame() is None
    parser.feed(wire[-1:])
    assert parser.next_frame() == Frame(Opcode.TEXT, b"Hello")


def test_parser_reports_rsv_bits_it_is_allowed_to_accept() -> None:
    parser = client_parser(allowed_rsv=0x70)
    assert parse_all(parser, b"\xc1\x00\xa2\x00\x90\x00") == [
        Frame(Opcode.TEXT, b"", rsv1=True),
        Frame(Opcode.BINARY, b"", rsv2=True),
        Frame(Opcode.CONTINUATION, b"", rsv3=True),
    ]


def test_parser_accepts_rsv1_when_permessage_deflate_allows_it() -> None:
    parser = server_parser(allowed_rsv=0x40)
    wire = encode_frame(Opcode.TEXT, b"abc", rsv1=True, mask=MASK)
    assert parse_all(parser, wire) == [Frame(Opcode.TEXT, b"abc", rsv1=True)]


def test_parser_returns_frames_from_a_buffer_holding_several() -> None:
    wire = (
        encode_frame(Opcode.TEXT, b"a" * 200)
        + encode_frame(Opcode.PING, b"p")
        + encode_frame(Opcode.BINARY, b"b" * 70000)
        + encode_frame(Opcode.CLOSE, b"\x03\xe8")
        + b"\x81"  # the start of a frame yet to arrive
    )
    parser = client_parser()
    assert parse_all(parser, wire) == [
        Frame(Opcode.TEXT, b"a" * 200),
        Frame(Opcode.PING, b"p"),
        Frame(Opcode.BINARY, b"b" * 70000),
        Frame(Opcode.CLOSE, b"\x03\xe8"),
    ]
    assert parser.buffered == 1


def test_parser_keeps_a_partial_frame_across_feeds() -> None:
    # The first chunk ends inside the second frame: what is left is kept, whatever type
    # the buffer has, and the next chunk is appended to it.
    parser = client_parser()
    parser.feed(b"\x81\x01a\x82\x03bc")
    assert parser.next_frame() == Frame(Opcode.TEXT, b"a")
    assert parser.next_frame() is None
    parser.feed(b"d\x81")
    assert parser.next_frame() == Frame(Opcode.BINARY, b"bcd")
    assert parser.next_frame() is None
    parser.feed(b"\x01")
    parser.feed(b"e")
    assert parser.next_frame() == Frame(Opcode.TEXT, b"e")
    assert parser.buffered == 0


def test_parser_feed_takes_bytearrays() -> None:
    parser = server_parser()
    wire = encode_frame(Opcode.BINARY, b"x" * 1500, mask=MASK)
    parser.feed(bytearray(wire[:700]))
    assert parser.next_frame() is None
    parser.feed(bytearray(wire[700:]))
    assert parser.next_frame() == Frame(Opcode.BINARY, b"x" * 1500)


def test_parser_does_not_keep_a_reference_to_the_callers_bytearray() -> None:
    # A reader that recv_into()s a reusable bytearray hands the same object back with new
    # contents. What the parser was fed must not change when the caller reuses its buffer,
    # and the parser must not write into the caller's object.
    wire = encode_frame(Opcode.TEXT, b"Hello") + encode_frame(Opcode.TEXT, b"World")
    chunk = bytearray(wire[:3])
    parser = client_parser()
    parser.feed(chunk)
    assert parser.next_frame() is None
    chunk[:] = b"\xff\xff\xff"  # the caller reuses its buffer
    parser.feed(wire[3:])
    assert parse_all(parser, b"") == [Frame(Opcode.TEXT, b"Hello"), Frame(Opcode.TEXT, b"World")]
    assert chunk == b"\xff\xff\xff"


def test_parser_does_not_grow_the_callers_bytearray() -> None:
    wire = encode_frame(Opcode.TEXT, b"Hello") + encode_frame(Opcode.TEXT, b"World")
    chunk = bytearray(wire[:9])
    parser = client_parser()
    parser.feed(chunk)
    assert parser.next_frame() == Frame(Opcode.TEXT, b"Hello")
    assert parser.next_frame() is None
    parser.feed(wire[9:])
    assert parser.next_frame() == Frame(Opcode.TEXT, b"World")
    assert chunk == wire[:9]


def test_buffer_and_consume_to_let_a_caller_parse_in_place() -> None:
    parser = client_parser()
    parser.feed(b"\x82\x06ab")
    assert parser.next_frame() is None  # 8 bytes needed, 4 arrived
    parser.feed(b"cdef\x81\x01x")
    buf, pos = parser.buffer()
    assert bytes(buf[pos : pos + 8]) == b"\x82\x06abcdef"
    parser.consume_to(pos + 8)  # the caller decoded the binary frame itself
    assert parser.buffered == 3
    # What the parser expected of the frame the caller took no longer applies.
    assert parser.next_frame() == Frame(Opcode.TEXT, b"x")
    assert parser.buffered == 0


def test_take_buffered_returns_and_forgets_unparsed_bytes() -> None:
    parser = client_parser()
    parser.feed(b"\x81\x01a\x82\x7e\x01")
    assert parser.next_frame() == Frame(Opcode.TEXT, b"a")
    assert parser.next_frame() is None  # waiting for a 4-byte header
    assert parser.take_buffered() == b"\x82\x7e\x01"
    assert parser.buffered == 0
    assert parser.take_buffered() == b""
    # The parser starts afresh: a 2-byte frame is enough again.
    parser.feed(b"\x8a\x00")
    assert parser.next_frame() == Frame(Opcode.PONG, b"")


def test_parser_refuses_a_frame_over_max_data_payload_lowered_between_frames() -> None:
    parser = client_parser(max_data_payload=5)
    parser.feed(b"\x82\x05abcde\x80\x03fgh")
    assert parser.next_frame() == Frame(Opcode.BINARY, b"abcde")
    parser.max_data_payload = 2
    with pytest.raises(RemoteProtocolError) as caught:
        parser.next_frame()
    assert caught.value.close_code == CloseCode.MESSAGE_TOO_BIG


def test_control_frames_are_not_bound_by_max_data_payload() -> None:
    parser = client_parser(max_data_payload=1)
    assert parse_all(parser, encode_frame(Opcode.PING, b"p" * 125)) == [
        Frame(Opcode.PING, b"p" * 125)
    ]


def test_data_frame_at_max_data_payload_is_accepted() -> None:
    parser = client_parser(max_data_payload=3)
    assert parse_all(parser, b"\x82\x03abc") == [Frame(Opcode.BINARY, b"abc")]


# --- FrameParser: violations ------------------------------------------------------------------

# (id, parser role, bytes that complete the header, close code, what the reason says)
HEADER_VIOLATIONS = [
    ("rsv1", "server", b"\xc1\x80", 1002, "reserved bits set without a negotiated extension"),
    ("rsv2", "server", b"\xa1\x80", 1002, "reserved bits set without a negotiated extension"),
    ("rsv3", "server", b"\x91\x80", 1002, "reserved bits set without a negotiated extension"),
    ("rsv1 at client", "client", b"\xc2\x00", 1002, "reserved bits set without a negotiated "
     "extension"),
    *(
        (f"opcode 0x{op:X}", "server", bytes((0x80 | op, 0x80)), 1002,
         f"reserved opcode 0x{op:X}")
        for op in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)
    ),
    ("unmasked at server", "server", b"\x81\x05", 1002, "unmasked frame from a client"),
    ("masked at client", "client", b"\x81\x85", 1002, "masked frame from a server"),
    ("ping of 126", "server", b"\x89\xfe\x00\x7e", 1002, "control frame payload over 125 bytes"),
    ("close of 65536", "client", b"\x88\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 1002,
     "control frame payload over 125 bytes"),
    ("fragmented ping", "server", b"\x09\x80", 1002, "fragmented control frame"),
    ("fragmented close", "client", b"\x08\x00", 1002, "fragmented control frame"),
    ("fragmented pong", "client", b"\x0a\x00", 1002, "fragmented control frame"),
    ("16-bit length 0", "client", b"\x82\x7e\x00\x00", 1002,
     "payload length not minimally encoded"),
    ("16-bit length 125", "server", b"\x82\xfe\x00\x7d", 1002,
     "payload length not minimally encoded"),
    ("64-bit length 0", "client", b"\x82\x7f" + bytes(8), 1002,
     "payload length not minimally encoded"),
    ("64-bit length 125", "client", b"\x82\x7f" + (125).to_bytes(8, "big"), 1002,
     "payload length not minimally encoded"),
    ("64-bit length 65535", "server", b"\x82\xff" + (65535).to_bytes(8, "big"), 1002,
     "payload length not minimally encoded"),
    ("64-bit length top bit", "server", b"\x82\xff\x80" + bytes(7), 1002,
     "64-bit payload length with its top bit set"),
    ("64-bit length all ones", "client", b"\x82\x7f" + b"\xff" * 8, 1002,
     "64-bit payload length with its top bit set"),
    ("frame over the limit", "server", b"\x82\xfe\x04\x01", 1009,
     "frame of 1025 bytes"),
    ("huge frame", "client", b"\x81\x7f\x00\x00\x01\x00\x00\x00\x00\x00", 1009,
     "frame of 1099511627776 bytes"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("role", "header", "code", "reason"),
    [case[1:] for case in HEADER_VIOLATIONS],
    ids=[case[0] for case in HEADER_VIOLATIONS],
)
def test_header_violation_raises_as_soon_as_the_header_is_complete(
    role: str, header: bytes, code: int, reason: str
) -> None:
    parser = server_parser(1024) if role == "server" else client_parser(1024)
    # One byte short of a complete header: nothing to say yet.
    parser.feed(header[:-1])
    assert parser.next_frame() is None
    # The last byte of the header, and no payload or masking key at all.
    parser.feed(header[-1:])
    with pytest.raises(RemoteProtocolError) as caught:
        parser.next_frame()
    assert caught.value.close_code == code
    assert reason in caught.value.reason
    assert str(caught.value) == caught.value.reason
    assert len(caught.value.reason.encode()) <= 123


def test_rsv2_is_refused_even_when_rsv1_is_allowed() -> None:
    parser = server_parser(allowed_rsv=0x40)
    parser.feed(b"\xe1\x80" + MASK)
    with pytest.raises(RemoteProtocolError) as caught:
        parser.next_frame()
    assert caught.value.close_code == CloseCode.PROTOCOL_ERROR


def test_violation_after_valid_frames_in_the_same_chunk() -> None:
    parser = client_parser()
    parser.feed(b"\x81\x01a\x89\x00\x83\x00\x81\x01b")
    assert parser.next_frame() == Frame(Opcode.TEXT, b"a")
    assert parser.next_frame() == Frame(Opcode.PING, b"")
    with pytest.raises(RemoteProtocolError, match="reserved opcode 0x3"):
        parser.next_frame()


def test_control_frame_of_125_bytes_is_accepted() -> None:
    wire = encode_frame(Opcode.CLOSE, b"\x03\xe8" + b"r" * 123, mask=MASK)
    assert wire[:2] == b"\x88\xfd"
    assert parse_all(server_parser(), wire) == [Frame(Opcode.CLOSE, b"\x03\xe8" + b"r" * 123)]


# --- FrameParser.peek_header and peek_payload ----------------------------------------------


def test_peek_needs_a_complete_header_and_some_payload() -> None:
    parser = server_parser()
    wire = encode_frame(Opcode.TEXT, b"Hello", mask=MASK)
    assert parser.peek_header() is None
    assert parser.peek_payload(0) == b""
    parser.feed(wire[:1])
    assert parser.peek_header() is None
    for size in range(2, 7):  # header and masking key, no payload
        parser.feed(wire[size - 1 : size])
        assert parser.peek_header() == (Opcode.TEXT, False)
        assert parser.peek_payload(0) == b""
    parser.feed(wire[6:8])
    assert parser.peek_payload(0) == b"He"
    assert parser.peek_payload(1) == b"e"
    assert parser.peek_payload(2) == b""  # nothing new after offset 2
    assert parser.buffered == 8  # peeking consumes nothing
    parser.feed(wire[8:])
    assert parser.next_frame() == Frame(Opcode.TEXT, b"Hello")


@pytest.mark.parametrize("start", range(9))
def test_peek_payload_unmasks_from_any_offset(start: int) -> None:
    payload = b"abcdefghijklmnop"
    wire = encode_frame(Opcode.TEXT, payload, fin=False, mask=MASK)
    parser = server_parser()
    parser.feed(wire[:-3])  # 13 of 16 payload bytes arrived
    assert parser.peek_header() == (Opcode.TEXT, False)
    assert parser.peek_payload(start) == payload[start:13]


@pytest.mark.parametrize("skip", [0, 1, 2, 3, 4, 5, 13, 16])
@pytest.mark.parametrize("masked", [True, False])
def test_next_frame_leaves_out_what_was_peeked(skip: int, masked: bool) -> None:
    # A text frame validated while it arrived is completed without unmasking the bytes
    # already read again: the payload returned starts at ``skip``.
    payload = b"abcdefghijklmnop"
    wire = encode_frame(Opcode.TEXT, payload, mask=MASK if masked else None)
    parser = server_parser() if masked else client_parser()
    parser.feed(wire)
    frame = parser.next_frame(skip)
    assert frame is not None
    assert bytes(frame.payload) == payload[skip:]
    assert parser.buffered == 0


@pytest.mark.parametrize(
    ("wire", "header", "data"),
    [
        (b"\x01\x05Hel", (Opcode.TEXT, False), b"Hel"),
        (b"\x80\x7e\x01\x00abc", (Opcode.CONTINUATION, False), b"abc"),
        (b"\xc1\x7f\x00\x00\x00\x00\x00\x01\x00\x00xyz", (Opcode.TEXT, True), b"xyz"),
        (b"\x89\x05pi", (Opcode.PING, False), b"pi"),
    ],
)
def test_peek_on_unmasked_frames(wire: bytes, header: tuple[Opcode, bool], data: bytes) -> None:
    parser = client_parser(allowed_rsv=0x40)
    parser.feed(wire)
    assert parser.next_frame() is None
    assert parser.peek_header() == header
    assert parser.peek_payload(0) == data
    assert parser.peek_payload(1) == data[1:]


def test_peek_payload_large_masked_prefix() -> None:
    payload = bytes(range(256)) * 20
    wire = encode_frame(Opcode.TEXT, payload, mask=MASK)
    parser = server_parser()
    parser.feed(wire[: 8 + 3000])
    assert parser.next_frame() is None
    assert parser.peek_payload(0) == payload[:3000]
    assert parser.peek_payload(1001) == payload[1001:3000]


def test_peek_header_shows_nothing_for_a_reserved_opcode() -> None:
    parser = client_parser()
    parser.feed(b"\x83\x05abc")
    assert parser.peek_header() is None


def test_peek_payload_waits_for_a_16_bit_or_64_bit_length() -> None:
    parser = client_parser()
    parser.feed(b"\x01\x7e\x01")
    assert parser.peek_payload(0) == b""
    parser.feed(b"\x00")
    assert parser.peek_payload(0) == b""
    parser.feed(b"a")
    assert parser.peek_payload(0) == b"a"
    parser = client_parser()
    parser.feed(b"\x01\x7f" + bytes(5))
    assert parser.peek_payload(0) == b""


# --- codes --------------------------------------------------------------------------------


def test_opcode_values_and_control_property() -> None:
    assert [int(op) for op in Opcode] == [0, 1, 2, 8, 9, 10]
    assert [op.is_control for op in Opcode] == [False, False, False, True, True, True]


NOT_SENDABLE = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
SENDABLE = [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3999, 4000, 4999]


@pytest.mark.parametrize("code", SENDABLE)
def test_sendable_close_codes(code: int) -> None:
    assert is_sendable_close_code(code)


@pytest.mark.parametrize("code", NOT_SENDABLE)
def test_close_codes_that_may_not_be_sent(code: int) -> None:
    assert not is_sendable_close_code(code)


def test_close_code_values() -> None:
    assert CloseCode.NORMAL_CLOSURE == 1000
    assert CloseCode.NO_STATUS_RCVD == 1005
    assert CloseCode.ABNORMAL_CLOSURE == 1006
    assert CloseCode.INVALID_FRAME_PAYLOAD_DATA == 1007
    assert CloseCode.MESSAGE_TOO_BIG == 1009
    assert CloseCode.TLS_HANDSHAKE == 1015


def test_max_control_payload() -> None:
    assert MAX_CONTROL_PAYLOAD == 125


# --- HEADER_FIELDS: the header layout as data (section 5.2) --------------------------------


def header_bit_masks() -> dict[str, tuple[int, int]]:
    """Each fixed field of the first two bytes as (byte index, bit mask), from the table."""
    masks = {}
    start = 0
    for field in HEADER_FIELDS:
        width = max(field.widths)
        byte, offset = divmod(start, 8)
        if len(field.widths) == 1 and offset + width <= 8:
            masks[field.name] = (byte, ((1 << width) - 1) << (8 - offset - width))
        start += width
    return masks


def test_header_fields_agree_with_the_bit_masks_the_code_uses() -> None:
    assert header_bit_masks() == {
        "FIN": (0, frames._FIN),  # bit 0, the most significant bit: 0x80
        "RSV1": (0, frames._RSV1),
        "RSV2": (0, frames._RSV2),
        "RSV3": (0, frames._RSV3),
        "opcode": (0, 0x0F),
        "MASK": (1, frames._MASK_BIT),
        "Payload len": (1, 0x7F),
    }
    assert frames._FIN == 0x80


def test_header_fields_agree_with_the_header_sizes_encode_frame_writes() -> None:
    fields = {field.name: field.widths for field in HEADER_FIELDS}
    assert sum(min(widths) for widths in fields.values()) == 2 * 8
    assert sum(max(widths) for widths in fields.values()) == 14 * 8
    lengths = {0: 5, 16: 126, 64: 1 << 16}  # payload sizes that need each length width
    assert set(fields["Extended payload length"]) == set(lengths)
    for extended, size in lengths.items():
        for key_bits, mask in zip(fields["Masking-key"], (None, MASK), strict=True):
            wire = encode_frame(Opcode.BINARY, bytes(size), mask=mask)
            assert 8 * (len(wire) - size) == 16 + extended + key_bits
