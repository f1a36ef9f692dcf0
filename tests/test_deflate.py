"""Tests for rfc6455.deflate: permessage-deflate (RFC 7692)."""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.extensions import permessage_deflate as ws_deflate
from websockets.frames import Frame, Opcode

from rfc6455.codes import CloseCode
from rfc6455.deflate import (
    EXTENSION_NAME,
    CompressorSettings,
    DeflateOptions,
    ExtensionParameters,
    PerMessageDeflate,
    client_accept,
    client_offer,
    compress_once,
    server_negotiate,
)
from rfc6455.errors import InvalidHandshake, LocalProtocolError, RemoteProtocolError

MAX = 1 << 20  # max_message_size used throughout
TAIL = b"\x00\x00\xff\xff"
HELLO = b"Hello"


# --- helpers -------------------------------------------------------------------------------


def parse_element(element: str) -> tuple[str, list[tuple[str, str | None]]]:
    """A minimal parser for the elements this module writes (no quoting, no commas)."""
    name, *raw_params = (part.strip() for part in element.split(";"))
    params: list[tuple[str, str | None]] = []
    for raw in raw_params:
        key, equals, value = raw.partition("=")
        params.append((key, value if equals else None))
    return name, params


def negotiate(
    client_options: DeflateOptions | None = None,
    server_options: DeflateOptions | None = None,
) -> tuple[PerMessageDeflate, PerMessageDeflate, str]:
    """Run a whole negotiation; return the client's codec, the server's, and the response."""
    client_options = client_options or DeflateOptions()
    server_options = server_options or DeflateOptions()
    negotiated = server_negotiate(
        [parse_element(client_offer(client_options))], server_options, max_message_size=MAX
    )
    assert negotiated is not None
    response, server = negotiated
    name, params = parse_element(response)
    assert name == EXTENSION_NAME
    client = client_accept(params, client_options, max_message_size=MAX)
    return client, server, response


def make_deflate(
    *,
    is_server: bool = True,
    local_no_context_takeover: bool = False,
    remote_no_context_takeover: bool = False,
    local_max_window_bits: int = 15,
    remote_max_window_bits: int = 15,
    options: DeflateOptions | None = None,
    max_message_size: int = MAX,
) -> PerMessageDeflate:
    return PerMessageDeflate(
        is_server=is_server,
        local_no_context_takeover=local_no_context_takeover,
        remote_no_context_takeover=remote_no_context_takeover,
        local_max_window_bits=local_max_window_bits,
        remote_max_window_bits=remote_max_window_bits,
        options=options or DeflateOptions(min_size=0),
        max_message_size=max_message_size,
    )


def offer_params(element: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Offers as the handshake parser delivers them, from a comma-separated header."""
    return [parse_element(offer) for offer in element.split(",")]


def accept_offer(
    header: str, options: DeflateOptions | None = None
) -> tuple[str, PerMessageDeflate] | None:
    return server_negotiate(offer_params(header), options or DeflateOptions(), max_message_size=MAX)


def response_element(header: str, options: DeflateOptions | None = None) -> str | None:
    negotiated = accept_offer(header, options)
    return None if negotiated is None else negotiated[0]


class BitWriter:
    """Writes a DEFLATE stream by hand (RFC 1951), to make what zlib cannot: 8-bit windows."""

    # RFC 1951 section 3.2.5: base distance and extra bits of distance codes 0-29.
    DISTANCE_BASES = (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513)
    DISTANCE_EXTRA = (0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8)

    def __init__(self) -> None:
        self.bits: list[int] = []

    def value(self, value: int, count: int) -> None:
        """Header fields and extra bits: least significant bit first."""
        self.bits.extend((value >> i) & 1 for i in range(count))

    def code(self, code: int, count: int) -> None:
        """Huffman codes: most significant bit first."""
        self.bits.extend((code >> i) & 1 for i in reversed(range(count)))

    def literal(self, byte: int) -> None:
        # RFC 1951 section 3.2.6, the fixed literal/length code.
        if byte < 144:
            self.code(0x30 + byte, 8)
        else:
            self.code(0x190 + byte - 144, 9)

    def match(self, length: int, distance: int) -> None:
        assert 3 <= length <= 10  # length symbols 257-264 have no extra bits
        self.code(length - 3 + 1, 7)  # symbols 256-279 are 7-bit codes 0-23
        code = max(i for i, base in enumerate(self.DISTANCE_BASES) if base <= distance)
        self.code(code, 5)
        self.value(distance - self.DISTANCE_BASES[code], self.DISTANCE_EXTRA[code])

    def message(self) -> bytes:
        """End the fixed block, sync-flush, strip the tail: a permessage-deflate payload."""
        self.code(0, 7)  # end of block (symbol 256)
        self.value(0, 1)  # BFINAL 0
        self.value(0, 2)  # BTYPE 00: stored, then LEN/NLEN on a byte boundary...
        self.bits.extend([0] * (-len(self.bits) % 8))
        # ... which are 0x00 0x00 0xff 0xff, removed by section 7.2.1.
        return bytes(
            sum(bit << i for i, bit in enumerate(self.bits[start : start + 8]))
            for start in range(0, len(self.bits), 8)
        )


def fixed_block(literals: bytes = b"", match: tuple[int, int] | None = None) -> bytes:
    writer = BitWriter()
    writer.value(0, 1)  # BFINAL 0
    writer.value(1, 2)  # BTYPE 01: fixed Huffman codes
    for byte in literals:
        writer.literal(byte)
    if match is not None:
        writer.match(*match)
    return writer.message()


# --- what zlib does with 8-bit windows -----------------------------------------------------


def test_zlib_refuses_to_raw_deflate_with_8_bit_window() -> None:
    with pytest.raises(ValueError, match="Invalid initialization option"):
        zlib.compressobj(6, zlib.DEFLATED, -8)
    # With the zlib wrapper it silently uses 9 bits: CINFO in the header says 512 bytes.
    header = zlib.compressobj(6, zlib.DEFLATED, 8).compress(b"x")
    assert header[0] >> 4 == 9 - 8


def test_hand_made_stream_is_what_we_think() -> None:
    literals = bytes(range(256)) + b"0123456789"
    payload = fixed_block(literals, (4, 256))
    assert zlib.decompressobj(-15).decompress(payload + TAIL) == literals + literals[-256:][:4]


def test_zlib_inflates_8_bit_windows_and_a_larger_window_reads_them() -> None:
    """Across messages, only the window holds the past; a 9-bit window reads 8-bit streams."""
    first = bytes(range(256)) + b"0123456789"  # longer than 256 bytes
    within_8_bits = fixed_block(match=(3, 256))  # references bytes of the first message
    beyond_8_bits = fixed_block(match=(3, 257))

    for window_bits in (8, 9):
        inflater = zlib.decompressobj(-window_bits)
        assert inflater.decompress(fixed_block(first) + TAIL) == first
        assert inflater.decompress(within_8_bits + TAIL) == first[-256:][:3]

    inflater = zlib.decompressobj(-8)
    inflater.decompress(fixed_block(first) + TAIL)
    with pytest.raises(zlib.error, match="invalid distance too far back"):
        inflater.decompress(beyond_8_bits + TAIL)

    # Our codec: a peer that compresses with 8 bits is inflated with 9.
    deflate = make_deflate(remote_max_window_bits=8)
    assert deflate.decompress(fixed_block(first), True, MAX) == first
    second = deflate.decompress(within_8_bits, True, MAX)
    assert second == first[-256:][:3]
    assert deflate.decompress(beyond_8_bits, True, MAX) == (first + second)[-257:][:3]


# --- RFC 7692 section 7.2.3 examples, byte for byte ----------------------------------------


def test_rfc_7_2_3_1_one_compressed_block() -> None:
    client, server, _ = negotiate()
    assert client.compress(HELLO) == bytes.fromhex("f248cdc9c90700")
    assert server.decompress(bytes.fromhex("f248cdc9c90700"), True, MAX) == HELLO


@pytest.mark.parametrize("window_bits", [9, 12, 15])
def test_rfc_7_2_3_2_sharing_lz77_sliding_window(window_bits: int) -> None:
    deflate = make_deflate(options=DeflateOptions(window_bits=window_bits, min_size=0))
    assert deflate.compress(HELLO) == bytes.fromhex("f248cdc9c90700")
    assert deflate.compress(HELLO) == bytes.fromhex("f200110000")
    assert deflate.decompress(bytes.fromhex("f248cdc9c90700"), True, MAX) == HELLO
    assert deflate.decompress(bytes.fromhex("f200110000"), True, MAX) == HELLO


def test_rfc_7_2_3_3_block_with_no_compression() -> None:
    deflate = make_deflate()
    assert deflate.decompress(bytes.fromhex("000500faff48656c6c6f00"), True, MAX) == HELLO


def test_rfc_7_2_3_4_block_with_bfinal_set() -> None:
    deflate = make_deflate()
    assert deflate.decompress(bytes.fromhex("f348cdc9c9070000"), True, MAX) == HELLO
    # The stream ended: the next message starts a fresh one.
    assert deflate.decompress(bytes.fromhex("f248cdc9c90700"), True, MAX) == HELLO


def test_bfinal_block_in_a_non_final_frame_ignores_the_rest_of_the_message() -> None:
    deflate = make_deflate()
    assert deflate.decompress(bytes.fromhex("f348cdc9c90700"), False, MAX) == HELLO
    assert deflate.decompress(b"ignored, like anything after a final block", False, MAX) == b""
    assert deflate.decompress(b"ignored too", True, MAX) == b""
    # The next message starts afresh, even an empty one.
    assert deflate.decompress(b"", True, MAX) == b""
    assert deflate.decompress(bytes.fromhex("f248cdc9c90700"), True, MAX) == HELLO


def test_rfc_7_2_3_5_two_deflate_blocks_in_one_message() -> None:
    payload = bytes.fromhex("f248050000" + "00ffff" + "cac9c90700")
    assert make_deflate().decompress(payload, True, MAX) == HELLO


def test_rfc_7_2_3_6_empty_final_fragment() -> None:
    deflate = make_deflate()
    assert deflate.decompress(bytes.fromhex("f248cdc9c90700") + TAIL, False, MAX) == HELLO
    assert deflate.decompress(b"\x00", True, MAX) == b""


def test_message_split_in_two_frames() -> None:
    deflate = make_deflate()
    assert deflate.decompress(bytes.fromhex("f248cd"), False, MAX) == b"He"
    assert deflate.decompress(bytes.fromhex("c9c90700"), True, MAX) == b"llo"
    assert deflate.decompress(bytes.fromhex("f200110000"), True, MAX) == HELLO


def test_message_split_with_empty_final_frame() -> None:
    deflate = make_deflate()
    assert deflate.decompress(bytes.fromhex("f248cdc9c90700"), False, MAX) == HELLO
    assert deflate.decompress(b"", True, MAX) == b""
    assert deflate.decompress(bytes.fromhex("f200110000"), True, MAX) == HELLO


def test_empty_message() -> None:
    deflate = make_deflate()
    assert deflate.compress(b"") == b"\x00"
    assert deflate.decompress(b"\x00", True, MAX) == b""
    # An empty payload is tolerated and does not upset the context.
    assert deflate.decompress(b"", False, MAX) == b""
    assert deflate.decompress(b"", True, MAX) == b""
    assert deflate.decompress(bytes.fromhex("f248cdc9c90700"), True, MAX) == HELLO


def test_buffers_other_than_bytes() -> None:
    payload = bytes.fromhex("f248cdc9c90700")
    assert make_deflate().compress(bytearray(HELLO)) == payload
    assert make_deflate().compress(memoryview(HELLO)) == payload
    receiver = make_deflate()
    assert receiver.decompress(memoryview(payload), True, MAX) == HELLO
    first = receiver.decompress(bytearray.fromhex("f200"), False, MAX)
    assert first + receiver.decompress(memoryview(bytes.fromhex("110000")), True, MAX) == HELLO


# --- round trips and context takeover ------------------------------------------------------

MESSAGES = [
    b'{"type": "message", "room": "general", "text": "hello, world"}',
    b'{"type": "message", "room": "general", "text": "hello, world"}',
    b'{"type": "typing", "room": "general", "user": "alice"}',
    bytes(range(256)) * 20,
    b"",
    b"x",
    "h\u00e9llo w\u00f6rld \u2603".encode() * 100,
]


def directions(
    client: PerMessageDeflate, server: PerMessageDeflate
) -> Iterator[tuple[PerMessageDeflate, PerMessageDeflate]]:
    yield client, server
    yield server, client


@pytest.mark.parametrize(
    ("client_options", "server_options"),
    [
        (DeflateOptions(), DeflateOptions()),
        (DeflateOptions(client_no_context_takeover=True), DeflateOptions()),
        (DeflateOptions(), DeflateOptions(server_no_context_takeover=True)),
        (
            DeflateOptions(server_no_context_takeover=True, client_no_context_takeover=True),
            DeflateOptions(),
        ),
        (DeflateOptions(server_max_window_bits=9, client_max_window_bits=10), DeflateOptions()),
        (DeflateOptions(window_bits=15), DeflateOptions(window_bits=15, mem_level=9)),
        (DeflateOptions(compress_level=0), DeflateOptions(compress_level=9, mem_level=1)),
    ],
)
def test_round_trips_both_directions(
    client_options: DeflateOptions, server_options: DeflateOptions
) -> None:
    client, server, _ = negotiate(client_options, server_options)
    for sender, receiver in directions(client, server):
        for _ in range(3):
            for message in MESSAGES:
                assert receiver.decompress(sender.compress(message), True, MAX) == message


def test_context_takeover_shrinks_a_repeated_message() -> None:
    client, server, _ = negotiate()
    assert not client.local_no_context_takeover
    assert not server.local_no_context_takeover
    message = MESSAGES[0]
    for sender, receiver in directions(client, server):
        first = sender.compress(message)
        second = sender.compress(message)
        assert len(second) < len(first) // 4
        assert receiver.decompress(first, True, MAX) == message
        assert receiver.decompress(second, True, MAX) == message


def test_no_context_takeover_compresses_every_message_identically() -> None:
    options = DeflateOptions(server_no_context_takeover=True, client_no_context_takeover=True)
    client, server, _ = negotiate(options)
    assert client.local_no_context_takeover
    assert client.remote_no_context_takeover
    assert server.local_no_context_takeover
    assert server.remote_no_context_takeover
    message = MESSAGES[0]
    for sender, receiver in directions(client, server):
        payloads = [sender.compress(message) for _ in range(5)]
        assert len(set(payloads)) == 1
        for payload in payloads:
            assert receiver.decompress(payload, True, MAX) == message


def test_no_context_takeover_receiver_rejects_references_to_earlier_messages() -> None:
    """The reset is real: a peer that took over context anyway is caught."""
    sender = make_deflate()  # keeps its context
    receiver = make_deflate(remote_no_context_takeover=True)
    message = bytes(range(200))
    assert receiver.decompress(sender.compress(message), True, MAX) == message
    with pytest.raises(RemoteProtocolError) as info:
        receiver.decompress(sender.compress(message), True, MAX)
    assert info.value.close_code == CloseCode.INVALID_FRAME_PAYLOAD_DATA


def test_fragmented_compressed_message_decompresses_frame_by_frame() -> None:
    client, server, _ = negotiate()
    message = b"".join(b"line %d of a long log message\n" % i for i in range(2000))
    for _ in range(2):
        payload = client.compress(message)
        chunks = [payload[i : i + 100] for i in range(0, len(payload), 100)]
        output = b""
        for index, chunk in enumerate(chunks):
            output += server.decompress(chunk, index == len(chunks) - 1, MAX - len(output))
        assert output == message


# --- compress once (broadcast) -------------------------------------------------------------


def test_compress_once_matches_compress_without_context_takeover() -> None:
    client, server, _ = negotiate(server_options=DeflateOptions(server_no_context_takeover=True))
    settings = server.broadcast_settings
    assert settings == CompressorSettings(level=6, window_bits=12, mem_level=5)
    payload = compress_once(MESSAGES[0], settings)
    assert payload == server.compress(MESSAGES[0]) == server.compress(MESSAGES[0])
    assert client.decompress(payload, True, MAX) == MESSAGES[0]
    assert client.decompress(payload, True, MAX) == MESSAGES[0]
    # A client with a different window needs its own payload: the key differs.
    _, other, _ = negotiate(
        DeflateOptions(server_max_window_bits=10),
        DeflateOptions(server_no_context_takeover=True),
    )
    assert other.broadcast_settings == CompressorSettings(level=6, window_bits=10, mem_level=5)
    assert {settings, other.broadcast_settings} == {settings, other.broadcast_settings}


def test_no_broadcast_settings_with_context_takeover() -> None:
    _, server, _ = negotiate()
    assert server.broadcast_settings is None


# --- sizes and the compression bomb --------------------------------------------------------


def test_should_compress_threshold() -> None:
    deflate = make_deflate(options=DeflateOptions(min_size=64))
    assert not deflate.should_compress(0)
    assert not deflate.should_compress(63)
    assert deflate.should_compress(64)


def bomb(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return (compressor.compress(bytes(size)) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def test_compression_bomb_is_refused_without_inflating_it() -> None:
    payload = bomb(1 << 20)  # 1 MiB of zeros in about 1 KiB
    assert len(payload) < 1100
    deflate = make_deflate()
    with pytest.raises(RemoteProtocolError) as info:
        deflate.decompress(payload, True, 64 * 1024)
    assert info.value.close_code == CloseCode.MESSAGE_TOO_BIG


def test_huge_bomb_returns() -> None:
    # 1 GiB of zeros would be a 1 MiB payload; 100 MiB (about 100 KiB) makes the point.
    payload = bomb(100 << 20)
    with pytest.raises(RemoteProtocolError) as info:
        make_deflate().decompress(payload, True, MAX)
    assert info.value.close_code == CloseCode.MESSAGE_TOO_BIG


def test_bomb_over_several_frames_with_shrinking_budget() -> None:
    payload = bomb(1 << 20)
    deflate = make_deflate()
    budget = 300_000
    chunks = [payload[i : i + 100] for i in range(0, len(payload), 100)]
    with pytest.raises(RemoteProtocolError) as info:
        for index, chunk in enumerate(chunks):
            budget -= len(deflate.decompress(chunk, index == len(chunks) - 1, budget))
            assert budget >= 0
    assert info.value.close_code == CloseCode.MESSAGE_TOO_BIG


def test_exact_budget_is_allowed_one_more_byte_is_not() -> None:
    message = bytes(1000)
    payload = make_deflate().compress(message)
    assert make_deflate().decompress(payload, True, 1000) == message
    with pytest.raises(RemoteProtocolError):
        make_deflate().decompress(payload, True, 999)
    assert make_deflate().decompress(make_deflate().compress(b""), True, 0) == b""


def test_max_message_size_caps_the_budget() -> None:
    payload = make_deflate().compress(bytes(1000))
    with pytest.raises(RemoteProtocolError) as info:
        make_deflate(max_message_size=999).decompress(payload, True, MAX)
    assert info.value.close_code == CloseCode.MESSAGE_TOO_BIG


def test_unlimited_sizes() -> None:
    deflate = make_deflate(max_message_size=sys.maxsize)
    assert deflate.decompress(bytes.fromhex("f248cdc9c90700"), True, sys.maxsize) == HELLO


def test_negative_budget_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="max_size"):
        make_deflate().decompress(b"\x00", True, -1)


@pytest.mark.parametrize(
    "payload",
    [
        bytes.fromhex("ff"),  # BTYPE 11 is reserved
        bytes.fromhex("000500faee48656c6c6f"),  # LEN and NLEN disagree
        fixed_block(match=(3, 1)),  # a match before any data
    ],
)
def test_corrupt_data_is_1007(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        make_deflate().decompress(payload, True, MAX)
    assert info.value.close_code == CloseCode.INVALID_FRAME_PAYLOAD_DATA
    assert info.value.reason.startswith("invalid compressed data: ")
    assert len(info.value.reason.encode()) <= 123


# --- the codec object ----------------------------------------------------------------------


def test_properties_and_repr() -> None:
    client, server, _ = negotiate(DeflateOptions(server_max_window_bits=10))
    assert server.is_server
    assert not client.is_server
    assert (server.local_max_window_bits, server.remote_max_window_bits) == (10, 12)
    assert (client.local_max_window_bits, client.remote_max_window_bits) == (12, 10)
    assert repr(server) == (
        "<PerMessageDeflate server local_no_context_takeover=False local_max_window_bits=10"
        " remote_no_context_takeover=False remote_max_window_bits=12"
        " compressor=(level=6 window_bits=10 mem_level=5) min_size=64"
        f" max_message_size={MAX}>"
    )
    assert repr(make_deflate(is_server=False, local_max_window_bits=8)).startswith(
        "<PerMessageDeflate client local_no_context_takeover=False local_max_window_bits=8"
    )
    assert "compressor=(off)" in repr(make_deflate(local_max_window_bits=8))


def test_local_window_of_8_bits_means_never_compress() -> None:
    deflate = make_deflate(local_max_window_bits=8, local_no_context_takeover=True)
    assert not deflate.should_compress(1 << 20)
    assert deflate.broadcast_settings is None
    with pytest.raises(LocalProtocolError):
        deflate.compress(HELLO)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("local_max_window_bits", 7),
        ("local_max_window_bits", 16),
        ("remote_max_window_bits", 7),
        ("remote_max_window_bits", True),
        ("max_message_size", -1),
        ("max_message_size", 1.5),
    ],
)
def test_codec_rejects_bad_parameters(field: str, value: object) -> None:
    arguments: dict[str, object] = {
        "is_server": True,
        "local_no_context_takeover": False,
        "remote_no_context_takeover": False,
        "local_max_window_bits": 15,
        "remote_max_window_bits": 15,
        "options": DeflateOptions(),
        "max_message_size": MAX,
        field: value,
    }
    with pytest.raises(ValueError, match=field):
        PerMessageDeflate(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"server_no_context_takeover": 1},
        {"client_no_context_takeover": None},
        {"server_max_window_bits": 8},
        {"server_max_window_bits": 16},
        {"client_max_window_bits": 8},
        {"client_max_window_bits": True},
        {"window_bits": 8},
        {"window_bits": 16},
        {"compress_level": 10},
        {"compress_level": -2},
        {"mem_level": 0},
        {"mem_level": 10},
        {"min_size": -1},
        {"min_size": 1.0},
    ],
)
def test_options_validation(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        DeflateOptions(**changes)  # type: ignore[arg-type]


def test_options_accept_the_whole_ranges() -> None:
    DeflateOptions(
        server_max_window_bits=9,
        client_max_window_bits=15,
        window_bits=9,
        compress_level=-1,
        mem_level=9,
        min_size=0,
    )
    DeflateOptions(compress_level=0, mem_level=1, window_bits=15)


# --- negotiation: the client's offer -------------------------------------------------------


def test_default_offer() -> None:
    assert client_offer(DeflateOptions()) == "permessage-deflate; client_max_window_bits"


def test_offer_with_every_parameter() -> None:
    options = DeflateOptions(
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        server_max_window_bits=10,
        client_max_window_bits=11,
    )
    assert client_offer(options) == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover;"
        " server_max_window_bits=10; client_max_window_bits=11"
    )


# --- negotiation: the server ---------------------------------------------------------------


def test_server_accepts_default_offer_with_small_windows() -> None:
    negotiated = accept_offer("permessage-deflate; client_max_window_bits")
    assert negotiated is not None
    response, deflate = negotiated
    assert response == ("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12")
    assert deflate.is_server
    assert (deflate.local_max_window_bits, deflate.remote_max_window_bits) == (12, 12)
    assert not deflate.local_no_context_takeover
    assert not deflate.remote_no_context_takeover


@pytest.mark.parametrize(
    ("offer", "response"),
    [
        # Without client_max_window_bits the response MUST NOT have it (section 7.1.2.2).
        ("permessage-deflate", "permessage-deflate; server_max_window_bits=12"),
        (
            "permessage-deflate; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
        ),
        (
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=12",
        ),
        (
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=10",
        ),
        (
            "permessage-deflate; server_max_window_bits=15",
            "permessage-deflate; server_max_window_bits=12",
        ),
        (
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=10",
        ),
        (
            "permessage-deflate; client_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=8",
        ),
        (
            "permessage-deflate; client_max_window_bits=15",
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
        ),
        # Quoted values reach us unquoted (section 7: the quoted-string form is allowed).
        (
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover;"
            " client_max_window_bits; server_max_window_bits=9",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover;"
            " server_max_window_bits=9; client_max_window_bits=12",
        ),
    ],
)
def test_server_accepts_each_parameter(offer: str, response: str) -> None:
    assert response_element(offer) == response


def test_server_window_settings_follow_the_offer() -> None:
    negotiated = accept_offer(
        "permessage-deflate; server_max_window_bits=10; client_max_window_bits=8"
    )
    assert negotiated is not None
    _, deflate = negotiated
    assert deflate.local_max_window_bits == 10
    assert deflate.broadcast_settings is None
    assert deflate.remote_max_window_bits == 8


def test_server_applies_its_own_options() -> None:
    options = DeflateOptions(
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        server_max_window_bits=11,
        client_max_window_bits=9,
        window_bits=15,
    )
    negotiated = accept_offer("permessage-deflate; client_max_window_bits", options)
    assert negotiated is not None
    response, deflate = negotiated
    assert response == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover;"
        " server_max_window_bits=11; client_max_window_bits=9"
    )
    assert deflate.local_no_context_takeover
    assert deflate.remote_no_context_takeover
    assert deflate.broadcast_settings == CompressorSettings(level=6, window_bits=11, mem_level=5)
    # An offer without client_max_window_bits: the client's window cannot be limited.
    negotiated = accept_offer("permessage-deflate", options)
    assert negotiated is not None
    assert negotiated[0] == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover;"
        " server_max_window_bits=11"
    )
    assert negotiated[1].remote_max_window_bits == 15


def test_server_with_full_windows_announces_nothing() -> None:
    options = DeflateOptions(window_bits=15, client_max_window_bits=15)
    assert response_element("permessage-deflate", options) == "permessage-deflate"
    assert response_element("permessage-deflate; client_max_window_bits", options) == (
        "permessage-deflate; client_max_window_bits=15"
    )
    # Offered, server_max_window_bits must be answered even when it changes nothing.
    assert response_element("permessage-deflate; server_max_window_bits=15", options) == (
        "permessage-deflate; server_max_window_bits=15"
    )


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; unknown_parameter",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; client_max_window_bits=09",
        "permessage-deflate; client_max_window_bits=",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_no_context_takeover=value",
        "permessage-deflate; client_no_context_takeover=",
        # zlib cannot compress with an 8-bit window.
        "permessage-deflate; server_max_window_bits=8",
        "x-webkit-deflate-frame",
    ],
)
def test_server_declines(offer: str) -> None:
    assert accept_offer(offer) is None


def test_server_declines_8_bits_even_when_its_options_would_allow_more() -> None:
    options = DeflateOptions(server_max_window_bits=9)
    assert accept_offer("permessage-deflate; server_max_window_bits=8", options) is None


def test_server_falls_back_to_the_next_offer() -> None:
    header = (
        "x-webkit-deflate-frame,"
        " permessage-deflate; server_max_window_bits=8,"
        " permessage-deflate; mystery=1,"
        " permessage-deflate; server_no_context_takeover"
    )
    assert response_element(header) == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    )


def test_server_without_offers() -> None:
    assert server_negotiate([], DeflateOptions(), max_message_size=MAX) is None


def test_server_passes_max_message_size() -> None:
    negotiated = server_negotiate([(EXTENSION_NAME, [])], DeflateOptions(), max_message_size=1234)
    assert negotiated is not None
    assert negotiated[1].max_message_size == 1234


# --- negotiation: the client checks the response -------------------------------------------


def accept_response(
    params: ExtensionParameters, options: DeflateOptions | None = None
) -> PerMessageDeflate:
    return client_accept(params, options or DeflateOptions(), max_message_size=MAX)


def test_client_accepts_plain_response() -> None:
    deflate = accept_response([])
    assert not deflate.is_server
    assert (deflate.local_max_window_bits, deflate.remote_max_window_bits) == (15, 15)
    assert not deflate.local_no_context_takeover
    assert not deflate.remote_no_context_takeover
    assert deflate.max_message_size == MAX


def test_client_accepts_full_response() -> None:
    deflate = accept_response(
        [
            ("server_no_context_takeover", None),
            ("client_no_context_takeover", None),
            ("server_max_window_bits", "9"),
            ("client_max_window_bits", "10"),
        ]
    )
    assert deflate.local_no_context_takeover
    assert deflate.remote_no_context_takeover
    assert (deflate.local_max_window_bits, deflate.remote_max_window_bits) == (10, 9)
    assert deflate.broadcast_settings == CompressorSettings(level=6, window_bits=10, mem_level=5)


def test_client_keeps_its_own_promises() -> None:
    options = DeflateOptions(client_no_context_takeover=True, client_max_window_bits=11)
    deflate = accept_response([], options)
    assert deflate.local_no_context_takeover
    assert deflate.local_max_window_bits == 11
    assert deflate.broadcast_settings == CompressorSettings(level=6, window_bits=11, mem_level=5)


def test_client_accepts_what_it_asked_for() -> None:
    options = DeflateOptions(
        server_no_context_takeover=True, server_max_window_bits=10, client_max_window_bits=10
    )
    deflate = accept_response(
        [
            ("server_no_context_takeover", None),
            ("server_max_window_bits", "10"),
            ("client_max_window_bits", "9"),
        ],
        options,
    )
    assert deflate.remote_no_context_takeover
    assert (deflate.local_max_window_bits, deflate.remote_max_window_bits) == (9, 10)


def test_client_with_8_bit_window_keeps_the_extension_without_compressing() -> None:
    deflate = accept_response([("client_max_window_bits", "8"), ("server_max_window_bits", "8")])
    assert deflate.local_max_window_bits == 8
    assert not deflate.should_compress(1000)
    assert deflate.decompress(bytes.fromhex("f248cdc9c90700"), True, MAX) == HELLO


@pytest.mark.parametrize(
    ("params", "options", "reason"),
    [
        ([("mystery", None)], DeflateOptions(), "unknown parameter mystery"),
        (
            [("server_no_context_takeover", None), ("server_no_context_takeover", None)],
            DeflateOptions(),
            "duplicate parameter server_no_context_takeover",
        ),
        ([("server_no_context_takeover", "1")], DeflateOptions(), "takes no value"),
        ([("client_no_context_takeover", "")], DeflateOptions(), "takes no value"),
        ([("server_max_window_bits", "16")], DeflateOptions(), "invalid value"),
        ([("server_max_window_bits", None)], DeflateOptions(), "invalid value"),
        ([("client_max_window_bits", None)], DeflateOptions(), "invalid value"),
        ([("client_max_window_bits", "7")], DeflateOptions(), "invalid value"),
        ([("client_max_window_bits", "abc")], DeflateOptions(), "invalid value"),
        ([], DeflateOptions(server_no_context_takeover=True), "not accepted"),
        ([], DeflateOptions(server_max_window_bits=10), "not accepted"),
        (
            [("server_max_window_bits", "11")],
            DeflateOptions(server_max_window_bits=10),
            "exceeds the offered 10",
        ),
        (
            [("client_max_window_bits", "11")],
            DeflateOptions(client_max_window_bits=10),
            "exceeds the offered 10",
        ),
    ],
)
def test_client_fails_on_bad_response(
    params: ExtensionParameters, options: DeflateOptions, reason: str
) -> None:
    with pytest.raises(InvalidHandshake, match=reason) as info:
        accept_response(params, options)
    assert info.value.status == 101


def test_end_to_end_negotiation() -> None:
    client, server, response = negotiate(
        DeflateOptions(client_no_context_takeover=True, server_max_window_bits=11),
        DeflateOptions(server_no_context_takeover=True),
    )
    assert response == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover;"
        " server_max_window_bits=11; client_max_window_bits=12"
    )
    assert (client.local_max_window_bits, client.remote_max_window_bits) == (12, 11)
    assert (server.local_max_window_bits, server.remote_max_window_bits) == (11, 12)


# --- interop: raw zlib ----------------------------------------------------------------------


def test_interop_with_raw_zlib() -> None:
    """Raw zlib plays the client; a plain 15-bit inflater and deflater interoperate."""
    _, server, _ = negotiate(DeflateOptions(window_bits=15), DeflateOptions(window_bits=15))
    inflater = zlib.decompressobj(-15)
    deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    for message in MESSAGES:
        assert inflater.decompress(server.compress(message) + TAIL) == message
        payload = deflater.compress(message) + deflater.flush(zlib.Z_SYNC_FLUSH)
        assert payload.endswith(TAIL)
        assert server.decompress(payload[:-4], True, MAX) == message


# --- interop: the websockets library ---------------------------------------------------------


def websockets_pair(
    client_options: DeflateOptions, server_factory: ws_deflate.ServerPerMessageDeflateFactory
) -> tuple[PerMessageDeflate, ws_deflate.PerMessageDeflate]:
    """Our client negotiates with a websockets server."""
    _, offer = parse_element(client_offer(client_options))
    params, theirs = server_factory.process_request_params(offer, [])
    ours = client_accept(params, client_options, max_message_size=MAX)
    return ours, theirs


def test_interop_websockets_server() -> None:
    factories = [
        ws_deflate.ServerPerMessageDeflateFactory(),
        ws_deflate.ServerPerMessageDeflateFactory(
            server_no_context_takeover=True,
            client_no_context_takeover=True,
            server_max_window_bits=10,
            client_max_window_bits=9,
            compress_settings={"memLevel": 5},
        ),
    ]
    for factory in factories:
        ours, theirs = websockets_pair(DeflateOptions(), factory)
        for message in MESSAGES * 2:
            frame = theirs.encode(Frame(Opcode.BINARY, message))
            assert frame.rsv1
            assert ours.decompress(bytes(frame.data), True, MAX) == message
            sent = Frame(Opcode.BINARY, ours.compress(message), rsv1=True)
            assert theirs.decode(sent, max_size=MAX).data == message


def test_interop_websockets_server_limiting_our_window_to_8_bits() -> None:
    factory = ws_deflate.ServerPerMessageDeflateFactory(client_max_window_bits=8)
    ours, theirs = websockets_pair(DeflateOptions(), factory)
    assert not ours.should_compress(1000)
    frame = theirs.encode(Frame(Opcode.TEXT, MESSAGES[0]))
    assert ours.decompress(bytes(frame.data), True, MAX) == MESSAGES[0]


@pytest.mark.parametrize(
    "factory",
    [
        ws_deflate.ClientPerMessageDeflateFactory(),
        ws_deflate.ClientPerMessageDeflateFactory(compress_settings={"memLevel": 5}),
        ws_deflate.ClientPerMessageDeflateFactory(
            server_no_context_takeover=True,
            client_no_context_takeover=True,
            server_max_window_bits=9,
            client_max_window_bits=11,
        ),
        ws_deflate.ClientPerMessageDeflateFactory(client_max_window_bits=None),
    ],
)
def test_interop_websockets_client(factory: ws_deflate.ClientPerMessageDeflateFactory) -> None:
    offer = list(factory.get_request_params())
    negotiated = server_negotiate([(EXTENSION_NAME, offer)], DeflateOptions(), max_message_size=MAX)
    assert negotiated is not None
    response, ours = negotiated
    _, params = parse_element(response)
    theirs = factory.process_response_params(params, [])
    for message in MESSAGES * 2:
        frame = theirs.encode(Frame(Opcode.TEXT, message))
        assert ours.decompress(bytes(frame.data), True, MAX) == message
        sent = Frame(Opcode.TEXT, ours.compress(message), rsv1=True)
        assert theirs.decode(sent, max_size=MAX).data == message


def test_interop_websockets_fragmented() -> None:
    ours, theirs = websockets_pair(DeflateOptions(), ws_deflate.ServerPerMessageDeflateFactory())
    message = MESSAGES[3]
    first = theirs.encode(Frame(Opcode.BINARY, message[:1000], fin=False))
    last = theirs.encode(Frame(Opcode.CONT, message[1000:]))
    output = ours.decompress(bytes(first.data), False, MAX)
    output += ours.decompress(bytes(last.data), True, MAX - len(output))
    assert output == message


# --- property-based ------------------------------------------------------------------------

option_sets = st.builds(
    DeflateOptions,
    server_no_context_takeover=st.booleans(),
    client_no_context_takeover=st.booleans(),
    server_max_window_bits=st.none() | st.integers(9, 15),
    client_max_window_bits=st.none() | st.integers(9, 15),
    compress_level=st.integers(-1, 9),
    mem_level=st.integers(1, 9),
    window_bits=st.integers(9, 15),
    min_size=st.just(0),
)


@settings(max_examples=150, deadline=None)
@given(
    client_options=option_sets,
    server_options=option_sets,
    messages=st.lists(st.binary(max_size=3000) | st.text(max_size=500).map(str.encode), max_size=6),
    split=st.integers(1, 50),
)
def test_any_bytes_round_trip(
    client_options: DeflateOptions,
    server_options: DeflateOptions,
    messages: list[bytes],
    split: int,
) -> None:
    client, server, _ = negotiate(client_options, server_options)
    for sender, receiver in directions(client, server):
        for message in messages:
            payload = sender.compress(message)
            chunks = [payload[i : i + split] for i in range(0, len(payload), split)] or [b""]
            output = b""
            for index, chunk in enumerate(chunks):
                output += receiver.decompress(chunk, index == len(chunks) - 1, MAX - len(output))
            assert output == message


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(st.tuples(st.binary(max_size=200), st.booleans()), min_size=1, max_size=5),
    remote_no_context_takeover=st.booleans(),
    remote_max_window_bits=st.integers(8, 15),
    budget=st.integers(0, 5000),
)
def test_arbitrary_payloads_raise_only_remote_protocol_errors(
    frames: list[tuple[bytes, bool]],
    remote_no_context_takeover: bool,
    remote_max_window_bits: int,
    budget: int,
) -> None:
    deflate = make_deflate(
        remote_no_context_takeover=remote_no_context_takeover,
        remote_max_window_bits=remote_max_window_bits,
    )
    try:
        for payload, fin in frames:
            output = deflate.decompress(payload, fin, budget)
            assert len(output) <= budget
    except RemoteProtocolError as exc:
        assert exc.close_code in (CloseCode.INVALID_FRAME_PAYLOAD_DATA, CloseCode.MESSAGE_TOO_BIG)
