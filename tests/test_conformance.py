"""Conformance of the echo server over real sockets, grouped like Autobahn|Testsuite.

The cases are our own, written from RFC 6455 and RFC 7692; the group numbers follow
Autobahn's so that a failure here points at the same area of the protocol there:

    1 framing   2 pings   3 reserved bits   4 opcodes   5 fragmentation   6 UTF-8
    7 close     9 limits  12/13 permessage-deflate
    and the opening handshake over HTTP, and 1,000 concurrent connections.

The peer is ``tests/wire.py``, a raw client that writes frames byte for byte (valid or
not) and reads the server's frames strictly. Every case asserts the exact outcome: the
echoed messages in order, the close code, and that the *server* closes the TCP
connection once the closing handshake is over (section 7.1.1: "the server SHOULD close
the underlying TCP connection first"), sending nothing after its close frame.

A violation always comes right after a valid message in the same write: the valid
message must still be echoed, then the connection fails. Autobahn accepts both orders
("non-strict"); our core promises the stricter one (``Connection._fail_after``).

The echo server runs in-process on a daemon thread; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from wire import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    Message,
    ProtocolViolation,
    WireClient,
    close_payload,
    encode,
)

from rfc6455.deflate import DeflateOptions
from rfc6455.echo import EchoHandler
from rfc6455.server import Server, ServerConfig

#: The server's message limit: the DESIGN.md default, 1 MiB.
MAX_MESSAGE = 1 << 20
#: How long the tests wait for the server to start, answer, or stop.
TIMEOUT = 5.0
#: For the 1 MiB messages written one byte per ``send``.
SLOW_TIMEOUT = 60.0
#: The closing handshake is bounded by the server's close_timeout; ours is shorter.
CLOSE_TIMEOUT = 2.0

NORMAL = 1000
PROTOCOL_ERROR = 1002
INVALID_PAYLOAD = 1007
TOO_BIG = 1009


# --- the server under test ----------------------------------------------------------------


@dataclass
class RunningServer:
    """An echo server on a daemon thread, and the errors it logged."""

    server: Server
    address: tuple[str, int]
    errors: list[logging.LogRecord]


class _ErrorCollector(logging.Handler):
    def __init__(self, errors: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.errors = errors

    def emit(self, record: logging.LogRecord) -> None:
        self.errors.append(record)


def server_config() -> ServerConfig:
    """The echo server's configuration for these tests.

    Keepalive pings are off so that every frame the client reads is an answer to what it
    sent; the write limit lets a 1 MiB echo leave at once (as in ``rfc6455.echo``).
    """
    return ServerConfig(
        max_message_size=MAX_MESSAGE,
        deflate=DeflateOptions(),
        ping_interval=None,
        write_limit=4 * MAX_MESSAGE,
    )


@contextlib.contextmanager
def running_echo_server(config: ServerConfig) -> Iterator[RunningServer]:
    """Serve ``EchoHandler`` on 127.0.0.1 (a free port) until the block ends."""
    errors: list[logging.LogRecord] = []
    collector = _ErrorCollector(errors)
    logging.getLogger("rfc6455").addHandler(collector)
    server = Server(EchoHandler(), config)
    server.listen("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, name="echo-server", daemon=True)
    thread.start()
    host, port = server.addresses[0][:2]
    running = RunningServer(server, (host, port), errors)
    try:
        yield running
    finally:
        server.request_shutdown()
        thread.join(TIMEOUT + 10.0)
        logging.getLogger("rfc6455").removeHandler(collector)
        assert not thread.is_alive(), "the echo server did not stop"


@pytest.fixture(scope="module")
def echo() -> Iterator[RunningServer]:
    """One echo server for the whole module."""
    with running_echo_server(server_config()) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_server_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever a peer sends, the server logs no ERROR (no exception escaped a handler)."""
    if "echo" not in request.fixturenames:
        yield
        return
    running: RunningServer = request.getfixturevalue("echo")
    running.errors.clear()
    yield
    assert not running.errors, [record.getMessage() for record in running.errors]


@pytest.fixture
def client(echo: RunningServer) -> Iterator[WireClient]:
    """A client after a successful opening handshake without extensions."""
    with WireClient.open(echo.address, timeout=TIMEOUT) as opened:
        yield opened


def open_client(echo: RunningServer, extensions: str | None = None) -> WireClient:
    """Another client; use it as a context manager."""
    return WireClient.open(echo.address, extensions=extensions, timeout=TIMEOUT)


def binary_payload(size: int) -> bytes:
    """Bytes of every value, 0x00 and 0xFF included, in a pattern that shows shifts."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def text_payload(size: int) -> bytes:
    """``size`` bytes of UTF-8 text, multi-byte characters included where they fit."""
    unit = "*κόσμε-\U0001f600-".encode()
    data = (unit * (size // len(unit) + 1))[:size]
    # Never end on a partial character: pad the tail with ASCII.
    while True:
        try:
            data.decode()
            return data
        except UnicodeDecodeError as error:
            data = data[: error.start] + b"*" * (size - error.start)


def fragments(opcode: int, parts: list[bytes], **first_options: bool) -> bytes:
    """A fragmented message (section 5.4): ``opcode`` first, continuations after."""
    frames = []
    for index, part in enumerate(parts):
        options = first_options if index == 0 else {}
        frames.append(
            encode(
                opcode if index == 0 else CONTINUATION,
                part,
                fin=index == len(parts) - 1,
                **options,  # type: ignore[arg-type]
            )
        )
    return b"".join(frames)


VALID_TEXT = b"valid message first"
ECHO_OF_VALID_FIRST = Message(TEXT, VALID_TEXT)


def fails_after_valid_message(client: WireClient, violation: bytes, code: int) -> None:
    """Send a valid message and ``violation`` in one write (plus a message that must be
    ignored): the first is echoed, then the server fails with ``code`` and closes TCP.
    """
    client.send(encode(TEXT, VALID_TEXT) + violation + encode(TEXT, b"never echoed"))
    assert client.recv_message() == ECHO_OF_VALID_FIRST
    client.expect_failure(code)


# --- 0. the test client itself, against RFC 6455 section 5.7's examples -----------------

RFC6455_KEY = bytes.fromhex("37fa213d")


def test_0_wire_encodes_the_rfc_examples() -> None:
    assert encode(TEXT, b"Hello", masked=False) == bytes.fromhex("810548656c6c6f")
    assert encode(TEXT, b"Hello", key=RFC6455_KEY) == bytes.fromhex("818537fa213d7f9f4d5158")
    assert encode(TEXT, b"Hel", fin=False, masked=False) == bytes.fromhex("010348656c")
    assert encode(CONTINUATION, b"lo", masked=False) == bytes.fromhex("80026c6f")
    assert encode(PONG, b"Hello", key=RFC6455_KEY) == bytes.fromhex("8a8537fa213d7f9f4d5158")
    assert encode(BINARY, bytes(256), masked=False)[:4] == bytes.fromhex("827e0100")
    assert encode(BINARY, bytes(65536), masked=False)[:10] == bytes.fromhex("827f0000000000010000")


@pytest.mark.parametrize(
    ("wire", "complaint"),
    [
        pytest.param(bytes.fromhex("818537fa213d7f9f4d5158"), "masked", id="masked"),
        pytest.param(bytes.fromhex("c10548656c6c6f"), "RSV1 without", id="rsv1"),
        pytest.param(bytes.fromhex("a10548656c6c6f"), "RSV2/RSV3", id="rsv2"),
        pytest.param(bytes.fromhex("837e0005") + b"Hello", "reserved opcode", id="opcode"),
        pytest.param(bytes.fromhex("817e0005") + b"Hello", "16-bit length", id="length-16"),
        pytest.param(bytes.fromhex("827f0000000000000005") + b"Hello", "64-bit", id="length-64"),
        pytest.param(bytes.fromhex("097e007e") + bytes(126), "control frame over", id="ping-126"),
        pytest.param(bytes.fromhex("0900"), "fragmented control", id="ping-fragmented"),
        pytest.param(bytes.fromhex("8000"), "continuation frame without", id="continuation"),
        pytest.param(bytes.fromhex("880103"), "1-byte close", id="close-1-byte"),
        pytest.param(bytes.fromhex("880203ed"), "may not be sent", id="close-1005"),
    ],
)
def test_0_wire_rejects_what_a_server_must_not_send(wire: bytes, complaint: str) -> None:
    ours, theirs = socket.socketpair()
    with WireClient(ours, timeout=TIMEOUT) as client, theirs:
        theirs.sendall(wire)
        with pytest.raises(ProtocolViolation, match=complaint):
            client.recv_frame()


# --- 1. framing (section 5.2) -------------------------------------------------------------

FRAMING_SIZES = [0, 125, 126, 127, 128, 65535, 65536, MAX_MESSAGE]


@pytest.mark.parametrize("chop", [None, 1], ids=["whole", "1-byte-chops"])
@pytest.mark.parametrize("size", FRAMING_SIZES)
@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
def test_1_framing_echo(client: WireClient, opcode: int, size: int, chop: int | None) -> None:
    """Every length encoding (7, 16 and 64 bits, at their edges) is read and echoed with
    the minimal one (the strict reader checks), whatever the TCP chunking."""
    data = text_payload(size) if opcode == TEXT else binary_payload(size)
    frame = encode(opcode, data)
    if chop is None:
        client.send(frame)
    else:
        client.send_chopped(frame, chop)
    assert client.recv_message(timeout=SLOW_TIMEOUT) == Message(opcode, data)
    client.close_handshake()


def test_1_many_messages_in_one_write_echoed_in_order(client: WireClient) -> None:
    messages = [Message(TEXT if i % 2 else BINARY, f"message {i}".encode()) for i in range(50)]
    client.send(b"".join(encode(m.opcode, m.data) for m in messages))
    assert [client.recv_message() for _ in messages] == messages
    client.close_handshake()


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(encode(TEXT, b"hello", masked=False), id="unmasked-text"),
        pytest.param(encode(PING, b"", masked=False), id="unmasked-ping"),
        pytest.param(encode(CLOSE, close_payload(NORMAL), masked=False), id="unmasked-close"),
        pytest.param(encode(TEXT, b"short", length_size=2), id="16-bit-length-under-126"),
        pytest.param(encode(BINARY, b"short", length_size=8), id="64-bit-length-under-126"),
        pytest.param(encode(BINARY, b"x" * 200, length_size=8), id="64-bit-length-under-64k"),
        pytest.param(
            encode(BINARY, b"", declared_length=1 << 63, length_size=8), id="64-bit-length-msb"
        ),
    ],
)
def test_1_framing_violations_fail_with_1002(client: WireClient, frame: bytes) -> None:
    """Section 5.1: a server MUST close on an unmasked frame; section 5.2: "the minimal
    number of bytes MUST be used to encode the length" and the 64-bit length's "most
    significant bit MUST be 0"."""
    fails_after_valid_message(client, frame, PROTOCOL_ERROR)


# --- 2. pings and pongs (section 5.5.2, 5.5.3) --------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"ping text", id="text"),
        pytest.param(b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff\x80", id="binary"),
        pytest.param(b"\xfe" * 125, id="125-bytes"),
    ],
)
def test_2_ping_answered_with_identical_pong(client: WireClient, payload: bytes) -> None:
    """Section 5.5.2: the pong has "identical Application data" to the ping."""
    client.send_frame(PING, payload)
    assert client.recv_message() == Message(PONG, payload)
    client.close_handshake()


def test_2_ping_chopped_answered(client: WireClient) -> None:
    client.send_chopped(encode(PING, b"chopped ping"), 1)
    assert client.recv_message() == Message(PONG, b"chopped ping")
    client.close_handshake()


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(encode(PING, b"\xfe" * 126), id="126-byte-ping"),
        pytest.param(encode(PING, b"\xfe" * 65536), id="64k-ping"),
        pytest.param(encode(PONG, b"\xfe" * 126), id="126-byte-pong"),
        pytest.param(encode(PING, b"", declared_length=126, length_size=2), id="header-only"),
        pytest.param(encode(PING, b"fragmented", fin=False), id="fragmented-ping"),
        pytest.param(
            encode(PING, b"frag", fin=False) + encode(CONTINUATION, b"mented"),
            id="fragmented-ping-completed",
        ),
        pytest.param(encode(PONG, b"fragmented", fin=False), id="fragmented-pong"),
    ],
)
def test_2_bad_control_frames_fail_with_1002(client: WireClient, frame: bytes) -> None:
    """Section 5.5: "All control frames MUST have a payload length of 125 bytes or less
    and MUST NOT be fragmented"."""
    fails_after_valid_message(client, frame, PROTOCOL_ERROR)


@pytest.mark.parametrize("payload", [b"", b"unsolicited", b"\xff" * 125], ids=["0", "11", "125"])
def test_2_unsolicited_pong_ignored(client: WireClient, payload: bytes) -> None:
    """Section 5.5.3: "A response to an unsolicited Pong frame is not expected"."""
    client.send(encode(PONG, payload) + encode(TEXT, b"after the pong"))
    assert client.recv_message() == Message(TEXT, b"after the pong")
    client.close_handshake()


def test_2_ten_pings_answered_in_order(client: WireClient) -> None:
    payloads = [f"ping {i}".encode() for i in range(10)]
    client.send(b"".join(encode(PING, payload) for payload in payloads))
    assert [client.recv_message() for _ in payloads] == [Message(PONG, p) for p in payloads]
    client.close_handshake()


def test_2_pings_between_messages_all_answered(client: WireClient) -> None:
    """Pongs come in the order of the pings and echoes in the order of the messages.
    How the two interleave is not specified (section 5.5.2 asks for a pong "as soon as
    practical"); our server sends the pongs of one read before the echoes."""
    client.send(
        encode(TEXT, b"one") + encode(PING, b"a") + encode(BINARY, b"two") + encode(PING, b"b")
    )
    received = [client.recv_message() for _ in range(4)]
    assert [m for m in received if m.opcode == PONG] == [Message(PONG, b"a"), Message(PONG, b"b")]
    assert [m for m in received if m.opcode != PONG] == [
        Message(TEXT, b"one"),
        Message(BINARY, b"two"),
    ]
    client.close_handshake()


@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
def test_2_ping_inside_fragmented_message_answered_before_it_completes(
    client: WireClient, opcode: int
) -> None:
    """Section 5.4: control frames "MAY be injected in the middle of a fragmented
    message"; the pong must not wait for the message to end."""
    client.send_frame(opcode, b"first half, ", fin=False)
    client.send_frame(PING, b"in the middle")
    assert client.recv_message() == Message(PONG, b"in the middle")
    client.send_frame(CONTINUATION, b"second half")
    assert client.recv_message() == Message(opcode, b"first half, second half")
    client.close_handshake()


# --- 3. reserved bits (section 5.2) -------------------------------------------------------

RSV_BITS = {
    "rsv1": {"rsv1": True},
    "rsv2": {"rsv2": True},
    "rsv3": {"rsv3": True},
    "rsv123": {"rsv1": True, "rsv2": True, "rsv3": True},
}

RSV_FRAMES: dict[str, Callable[[dict[str, bool]], bytes]] = {
    "text": lambda bits: encode(TEXT, b"hello", **bits),  # type: ignore[arg-type]
    "binary": lambda bits: encode(BINARY, b"\x00\xff", **bits),  # type: ignore[arg-type]
    "ping": lambda bits: encode(PING, b"ping", **bits),  # type: ignore[arg-type]
    "pong": lambda bits: encode(PONG, b"pong", **bits),  # type: ignore[arg-type]
    "close": lambda bits: encode(CLOSE, close_payload(NORMAL), **bits),  # type: ignore[arg-type]
    "continuation": lambda bits: (
        encode(TEXT, b"start", fin=False) + encode(CONTINUATION, b"end", **bits)  # type: ignore[arg-type]
    ),
}


@pytest.mark.parametrize("kind", RSV_FRAMES)
@pytest.mark.parametrize("bits", RSV_BITS)
def test_3_reserved_bits_fail_with_1002(client: WireClient, bits: str, kind: str) -> None:
    """Section 5.2: "If a nonzero value is received and none of the negotiated extensions
    defines the meaning of such a nonzero value, the receiving endpoint MUST _Fail the
    WebSocket Connection_." The bad frame is not echoed, the valid one before it is."""
    fails_after_valid_message(client, RSV_FRAMES[kind](RSV_BITS[bits]), PROTOCOL_ERROR)


@pytest.mark.parametrize("bits", RSV_BITS)
def test_3_reserved_bits_chopped(client: WireClient, bits: str) -> None:
    client.send_chopped(encode(TEXT, VALID_TEXT) + encode(TEXT, b"bad", **RSV_BITS[bits]), 1)  # type: ignore[arg-type]
    assert client.recv_message() == ECHO_OF_VALID_FIRST
    client.expect_failure(PROTOCOL_ERROR)


# --- 4. opcodes (section 5.2) -------------------------------------------------------------

RESERVED_OPCODES = [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]


@pytest.mark.parametrize("payload", [b"", b"reserved payload"], ids=["empty", "payload"])
@pytest.mark.parametrize("opcode", RESERVED_OPCODES, ids=[f"{op:#x}" for op in RESERVED_OPCODES])
def test_4_reserved_opcodes_fail_with_1002(client: WireClient, opcode: int, payload: bytes) -> None:
    """Section 5.2: "If an unknown opcode is received, the receiving endpoint MUST _Fail
    the WebSocket Connection_"."""
    fails_after_valid_message(client, encode(opcode, payload), PROTOCOL_ERROR)


@pytest.mark.parametrize("opcode", [3, 0xB], ids=["0x3", "0xb"])
def test_4_reserved_opcode_inside_fragmented_message(client: WireClient, opcode: int) -> None:
    violation = encode(TEXT, b"start", fin=False) + encode(opcode, b"")
    fails_after_valid_message(client, violation, PROTOCOL_ERROR)


# --- 5. fragmentation (section 5.4) -------------------------------------------------------

FRAGMENTATIONS = {
    "2-fragments": [b"Hello, ", b"fragmented world"],
    "3-fragments": [b"one ", b"two ", b"three"],
    "1-byte-fragments": [bytes([byte]) for byte in b"fragmented into single bytes"],
    "empty-first": [b"", b"after an empty first fragment"],
    "empty-middle": [b"before ", b"", b"", b"after"],
    "empty-last": [b"before an empty last fragment", b""],
    "all-empty": [b"", b"", b""],
    "64k-fragments": ["\U0001f600".encode() * 16384, b"", "\U0001f600".encode() * 16384],
}


@pytest.mark.parametrize("chop", [None, 1], ids=["whole", "1-byte-chops"])
@pytest.mark.parametrize("parts", FRAGMENTATIONS.values(), ids=list(FRAGMENTATIONS))
@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
def test_5_fragmented_message_echoed_whole(
    client: WireClient, opcode: int, parts: list[bytes], chop: int | None
) -> None:
    """Section 5.4: the message is the concatenation of its fragments; the echo server
    sends it back in one piece (its fragment_size is None)."""
    wire = fragments(opcode, parts)
    if chop is None:
        client.send(wire)
    else:
        client.send_chopped(wire, chop)
    assert client.recv_message() == Message(opcode, b"".join(parts))
    client.close_handshake()


def test_5_fragments_in_separate_writes(client: WireClient) -> None:
    client.send_frame(BINARY, b"part 1, ", fin=False)
    client.send_frame(CONTINUATION, b"part 2, ", fin=False)
    client.send_frame(CONTINUATION, b"part 3")
    assert client.recv_message() == Message(BINARY, b"part 1, part 2, part 3")
    client.close_handshake()


@pytest.mark.parametrize(
    "violation",
    [
        pytest.param(encode(CONTINUATION, b"orphan"), id="continuation-without-start-fin"),
        pytest.param(
            encode(CONTINUATION, b"orphan", fin=False), id="continuation-without-start-nofin"
        ),
        pytest.param(
            encode(CONTINUATION, b"a", fin=False)
            + encode(CONTINUATION, b"b", fin=False)
            + encode(CONTINUATION, b"c"),
            id="fragmented-message-without-start",
        ),
        pytest.param(
            encode(TEXT, b"start", fin=False) + encode(TEXT, b"new message"),
            id="text-inside-text",
        ),
        pytest.param(
            encode(TEXT, b"start", fin=False) + encode(BINARY, b"new message", fin=False),
            id="binary-inside-text",
        ),
        pytest.param(
            encode(BINARY, b"start", fin=False)
            + encode(CONTINUATION, b"more", fin=False)
            + encode(TEXT, b"new"),
            id="text-inside-binary",
        ),
        pytest.param(encode(CLOSE, close_payload(NORMAL), fin=False), id="fragmented-close"),
        pytest.param(
            encode(TEXT, b"start", fin=False) + encode(PING, b"x", fin=False),
            id="fragmented-ping-inside-message",
        ),
    ],
)
def test_5_fragmentation_violations_fail_with_1002(client: WireClient, violation: bytes) -> None:
    """Section 5.4: fragments of one message "MUST NOT be interleaved" with another, and
    a continuation frame continues nothing outside a fragmented message."""
    fails_after_valid_message(client, violation, PROTOCOL_ERROR)


def test_5_continuation_after_a_complete_message_fails_with_1002(client: WireClient) -> None:
    """The message before the stray continuation is complete, so it is echoed too."""
    client.send(
        encode(TEXT, VALID_TEXT) + encode(TEXT, b"complete") + encode(CONTINUATION, b"too late")
    )
    assert client.recv_message() == ECHO_OF_VALID_FIRST
    assert client.recv_message() == Message(TEXT, b"complete")
    client.expect_failure(PROTOCOL_ERROR)


def test_5_pong_between_fragments_ignored(client: WireClient) -> None:
    client.send(
        encode(TEXT, b"before ", fin=False)
        + encode(PONG, b"unsolicited")
        + encode(CONTINUATION, b"after")
    )
    assert client.recv_message() == Message(TEXT, b"before after")
    client.close_handshake()


def test_5_many_pings_between_many_fragments(client: WireClient) -> None:
    wire = []
    for index in range(10):
        opcode = TEXT if index == 0 else CONTINUATION
        wire.append(encode(opcode, f"{index},".encode(), fin=index == 9))
        if index < 9:
            wire.append(encode(PING, f"ping {index}".encode()))
    client.send(b"".join(wire))
    for index in range(9):
        assert client.recv_message() == Message(PONG, f"ping {index}".encode())
    assert client.recv_message() == Message(TEXT, b"0,1,2,3,4,5,6,7,8,9,")
    client.close_handshake()


# --- 6. UTF-8 (section 8.1) ---------------------------------------------------------------

VALID_UTF8 = {
    "ascii": "Hello, world",
    "greek": "κόσμε",
    "latin": "Hello-µ@ßöäüàá-UTF-8!!",
    "cjk": "中文字符と日本語",
    "4-byte": "\U0001d11e music, \U0001f600 smile, \U00020000 cjk-b",
    "first-of-each-length": "\x00\u0080\u0800\U00010000",
    "last-of-each-length": "\x7f\u07ff\uffff\U0010ffff",
    "around-surrogates": "\ud7ff\ue000\ufffd",
    "noncharacters": "\ufdd0\ufffe\U0001fffe\U0010fffe",
}


@pytest.mark.parametrize("text", VALID_UTF8.values(), ids=list(VALID_UTF8))
@pytest.mark.parametrize(
    "delivery", ["one-frame", "1-byte-chops", "1-byte-fragments", "fragments-in-separate-writes"]
)
def test_6_valid_utf8_echoed_unchanged(client: WireClient, text: str, delivery: str) -> None:
    """Section 8.1 and 5.6: valid UTF-8 comes back byte for byte, even when fragments
    split a character (UTF-8 is validated over the whole message, not per frame)."""
    data = text.encode("utf-8")
    if delivery == "one-frame":
        client.send_frame(TEXT, data)
    elif delivery == "1-byte-chops":
        client.send_chopped(encode(TEXT, data), 1)
    elif delivery == "1-byte-fragments":
        client.send(fragments(TEXT, [data[i : i + 1] for i in range(len(data))]))
    else:
        for index in range(len(data)):
            opcode = TEXT if index == 0 else CONTINUATION
            client.send_frame(opcode, data[index : index + 1], fin=index == len(data) - 1)
    assert client.recv_message() == Message(TEXT, data)
    client.close_handshake()


KOSME = "κόσμε".encode()

# Each invalid sequence, and how many of its bytes it takes to know that it is invalid
# (None: only the end of the message shows it, a sequence cut short).
INVALID_UTF8: dict[str, tuple[bytes, int | None]] = {
    "overlong-2-byte": (b"\xc0\xaf", 1),
    "overlong-nul": (b"\xc0\x80", 1),
    "overlong-max-2-byte": (b"\xc1\xbf", 1),
    "overlong-3-byte": (b"\xe0\x80\xaf", 2),
    "overlong-max-3-byte": (b"\xe0\x9f\xbf", 2),
    "overlong-4-byte": (b"\xf0\x80\x80\xaf", 2),
    "overlong-max-4-byte": (b"\xf0\x8f\xbf\xbf", 2),
    "surrogate-high": (b"\xed\xa0\x80", 2),
    "surrogate-low": (b"\xed\xbf\xbf", 2),
    "surrogate-pair-cesu8": (b"\xed\xa0\x80\xed\xb0\x80", 2),
    "above-u+10ffff": (b"\xf4\x90\x80\x80", 2),
    "f5-lead-byte": (b"\xf5\x80\x80\x80", 1),
    "5-byte-form": (b"\xf8\x88\x80\x80\x80", 1),
    "byte-fe": (b"\xfe", 1),
    "byte-ff": (b"\xff", 1),
    "lone-continuation-80": (b"\x80", 1),
    "lone-continuation-bf": (b"\xbf", 1),
    "continuation-run": (b"\x80\xbf\x80\xbf", 1),
    "lead-byte-then-ascii": (b"\xce ", 2),
    "3-byte-lead-then-ascii": (b"\xe2\x82 ", 3),
    "truncated-2-byte-at-end": (b"\xce", None),
    "truncated-3-byte-at-end": (b"\xe2\x82", None),
    "truncated-4-byte-at-end": (b"\xf0\x9f\x98", None),
}


@pytest.mark.parametrize("bad", [case[0] for case in INVALID_UTF8.values()], ids=list(INVALID_UTF8))
@pytest.mark.parametrize(
    "delivery", ["one-frame", "1-byte-chops", "1-byte-fragments", "two-fragments"]
)
def test_6_invalid_utf8_fails_with_1007(client: WireClient, bad: bytes, delivery: str) -> None:
    """Section 8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds
    that the byte stream is not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail
    the WebSocket Connection_" (7.4.1: 1007)."""
    data = KOSME + bad
    if delivery == "one-frame":
        violation = encode(TEXT, data)
    elif delivery == "1-byte-fragments":
        violation = fragments(TEXT, [data[i : i + 1] for i in range(len(data))])
    elif delivery == "two-fragments":
        # Split inside the invalid sequence when it has two bytes or more.
        split = len(KOSME) + max(len(bad) // 2, 1)
        violation = fragments(TEXT, [data[:split], data[split:]])
    else:
        client.send_chopped(encode(TEXT, VALID_TEXT) + encode(TEXT, data), 1)
        assert client.recv_message() == ECHO_OF_VALID_FIRST
        client.expect_failure(INVALID_PAYLOAD)
        return
    fails_after_valid_message(client, violation, INVALID_PAYLOAD)


FAIL_FAST_CASES = {name: case for name, case in INVALID_UTF8.items() if case[1] is not None}


@pytest.mark.parametrize("whole_sequence", [True, False], ids=["whole-sequence", "first-bad-byte"])
@pytest.mark.parametrize("case", FAIL_FAST_CASES.values(), ids=list(FAIL_FAST_CASES))
def test_6_invalid_utf8_fails_fast_mid_frame(
    client: WireClient, case: tuple[bytes, int], whole_sequence: bool
) -> None:
    """Section 8.1 asks for a failure as soon as the stream is known to be invalid: the
    close must come while the frame is incomplete. The frame declares 64 KiB; we write
    its header and a valid start, then the bad bytes in a separate write, then stop."""
    bad, known_after = case
    sent_bad = bad if whole_sequence else bad[:known_after]
    rest = b"x" * 65536
    payload = KOSME + bad + rest
    key = os.urandom(4)
    frame = encode(TEXT, payload, key=key)
    header_size = len(frame) - len(payload)
    client.send(frame[: header_size + len(KOSME)])
    time.sleep(0.01)  # let the valid start arrive on its own
    client.send(frame[header_size + len(KOSME) : header_size + len(KOSME) + len(sent_bad)])
    client.expect_failure(INVALID_PAYLOAD)


@pytest.mark.parametrize("whole_sequence", [True, False], ids=["whole-sequence", "first-bad-byte"])
@pytest.mark.parametrize("case", FAIL_FAST_CASES.values(), ids=list(FAIL_FAST_CASES))
def test_6_invalid_utf8_fails_fast_in_a_fragment(
    client: WireClient, case: tuple[bytes, int], whole_sequence: bool
) -> None:
    """A non-final fragment that is already invalid fails the message at once: the close
    comes without the final fragment ever being sent."""
    bad, known_after = case
    sent_bad = bad if whole_sequence else bad[:known_after]
    client.send_frame(TEXT, KOSME, fin=False)
    client.send_frame(CONTINUATION, sent_bad, fin=False)
    client.expect_failure(INVALID_PAYLOAD)


@pytest.mark.parametrize("bad", [b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"])
def test_6_invalid_utf8_fails_fast_in_an_incomplete_continuation(
    client: WireClient, bad: bytes
) -> None:
    """The same inside a continuation frame whose payload is still arriving."""
    client.send_frame(TEXT, KOSME, fin=False)
    payload = bad + b"x" * 65536
    frame = encode(CONTINUATION, payload)
    header_size = len(frame) - len(payload)
    client.send(frame[: header_size + len(bad)])
    client.expect_failure(INVALID_PAYLOAD)


def test_6_binary_messages_are_not_utf8_checked(client: WireClient) -> None:
    data = b"\xed\xa0\x80\xff\xfe\xc0\xaf"
    client.send(encode(BINARY, data) + fragments(BINARY, [data[:2], data[2:]]))
    assert client.recv_message() == Message(BINARY, data)
    assert client.recv_message() == Message(BINARY, data)
    client.close_handshake()


# --- 7. close (section 5.5.1, 7) ----------------------------------------------------------

VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3999, 4000, 4999]
INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("reason", [b"", "bye, κόσμε".encode()], ids=["no-reason", "reason"])
@pytest.mark.parametrize("code", VALID_CLOSE_CODES)
def test_7_close_with_valid_code_echoed(client: WireClient, code: int, reason: bytes) -> None:
    """Section 5.5.1: the endpoint "typically echos the status code it received"; and
    section 7.1.1: the server then closes the TCP connection."""
    client.send_frame(CLOSE, close_payload(code, reason))
    client.expect_close(code)
    client.expect_eof()


def test_7_close_without_payload_echoed_without_payload(client: WireClient) -> None:
    client.send_frame(CLOSE, b"")
    assert client.recv_frame().payload == b""
    client.expect_eof()


def test_7_close_chopped(client: WireClient) -> None:
    client.send_chopped(encode(CLOSE, close_payload(NORMAL, b"chopped")), 1)
    client.expect_close(NORMAL)
    client.expect_eof()


@pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
def test_7_close_with_invalid_code_fails_with_1002(client: WireClient, code: int) -> None:
    """Section 7.4: 1004-1006 and 1015 may not be sent; 0-999 are not used; 1016-2999
    are reserved for the protocol (unregistered); 5000 and up do not exist."""
    fails_after_valid_message(client, encode(CLOSE, close_payload(code)), PROTOCOL_ERROR)


def test_7_close_with_one_byte_payload_fails_with_1002(client: WireClient) -> None:
    """Section 5.5.1: a body "MUST start with a two-byte unsigned integer"."""
    fails_after_valid_message(client, encode(CLOSE, b"\x03"), PROTOCOL_ERROR)


@pytest.mark.parametrize(
    "reason",
    [b"\xff", b"bye \xed\xa0\x80", b"\xce", KOSME + b"\xf4\x90\x80\x80"],
    ids=["ff", "surrogate", "truncated", "above-max"],
)
def test_7_close_with_invalid_utf8_reason_fails_with_1007(
    client: WireClient, reason: bytes
) -> None:
    """Section 5.5.1: the reason is UTF-8; section 8.1 makes invalid UTF-8 fatal."""
    fails_after_valid_message(client, encode(CLOSE, close_payload(NORMAL, reason)), INVALID_PAYLOAD)


def test_7_close_with_123_byte_reason_echoed(client: WireClient) -> None:
    client.send_frame(CLOSE, close_payload(NORMAL, b"r" * 123))
    client.expect_close(NORMAL)
    client.expect_eof()


def test_7_close_with_124_byte_reason_fails_with_1002(client: WireClient) -> None:
    """2 + 124 = 126 bytes: over the 125 a control frame may carry (section 5.5)."""
    fails_after_valid_message(
        client, encode(CLOSE, close_payload(NORMAL, b"r" * 124)), PROTOCOL_ERROR
    )


def test_7_message_then_close_in_separate_writes(client: WireClient) -> None:
    client.send_frame(TEXT, b"before the close")
    assert client.recv_message() == Message(TEXT, b"before the close")
    client.send_frame(CLOSE, close_payload(NORMAL))
    client.expect_close(NORMAL)
    client.expect_eof()


@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
def test_7_message_then_close_in_one_write(client: WireClient, opcode: int) -> None:
    """A message and a close that arrive in one read are handled as when they arrive in
    two: the message is echoed, then the close. Section 5.5.1 lets an endpoint "delay
    sending a Close frame until its current message is sent"; answering the close before
    the application saw the message makes the outcome depend on TCP segmentation (a
    client that sends its last message and closes at once loses the reply)."""
    client.send(encode(opcode, b"before the close") + encode(CLOSE, close_payload(NORMAL)))
    assert client.recv_message() == Message(opcode, b"before the close")
    client.expect_close(NORMAL)
    client.expect_eof()


def test_7_data_after_close_ignored(client: WireClient) -> None:
    """Section 5.5.1: after the close, the server "MUST NOT send any more data frames"
    and discards what follows the peer's close; pings after it get no pong."""
    client.send(
        encode(CLOSE, close_payload(NORMAL))
        + encode(TEXT, b"after the close")
        + encode(PING, b"after the close")
    )
    client.expect_close(NORMAL)
    client.expect_eof()


def test_7_close_in_the_middle_of_a_fragmented_message(client: WireClient) -> None:
    """A close may come between fragments (it is a control frame); the unfinished message
    is dropped."""
    client.send(
        encode(TEXT, b"never ", fin=False)
        + encode(CLOSE, close_payload(NORMAL))
        + encode(CONTINUATION, b"finished")
    )
    client.expect_close(NORMAL)
    client.expect_eof()


def test_7_close_then_nothing_more_from_the_server(client: WireClient) -> None:
    """After the close handshake the server closes TCP even though we keep ours open."""
    client.send_frame(CLOSE, close_payload(NORMAL))
    client.expect_close(NORMAL)
    client.expect_eof(timeout=CLOSE_TIMEOUT)


# --- 9. limits (section 10.4) -------------------------------------------------------------


@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["text", "binary"])
@pytest.mark.parametrize("declared", [MAX_MESSAGE + 1, 16 * MAX_MESSAGE, (1 << 63) - 1])
def test_9_oversized_frame_refused_from_its_header(
    client: WireClient, opcode: int, declared: int
) -> None:
    """Section 10.4: "implementations SHOULD impose a limit on frame sizes"; the limit is
    judged from the declared length, so the header alone brings the close (1009)."""
    client.send(encode(TEXT, VALID_TEXT) + encode(opcode, b"", declared_length=declared))
    assert client.recv_message() == ECHO_OF_VALID_FIRST
    client.expect_failure(TOO_BIG)


def test_9_fragment_that_would_exceed_the_limit_refused_from_its_header(
    client: WireClient,
) -> None:
    half = binary_payload(MAX_MESSAGE // 2)
    client.send(encode(BINARY, half, fin=False))
    client.send(encode(CONTINUATION, b"", declared_length=MAX_MESSAGE // 2 + 1))
    client.expect_failure(TOO_BIG)


def test_9_many_small_fragments_over_the_limit_fail_with_1009(client: WireClient) -> None:
    piece = binary_payload(4096)
    count = MAX_MESSAGE // len(piece) + 1
    wire = encode(BINARY, piece, fin=False) + b"".join(
        encode(CONTINUATION, piece, fin=False) for _ in range(count - 1)
    )
    client.send(wire)
    client.expect_failure(TOO_BIG)


def test_9_fragments_up_to_exactly_the_limit_echoed(client: WireClient) -> None:
    piece = binary_payload(65536)
    parts = [piece] * (MAX_MESSAGE // len(piece))
    client.send(fragments(BINARY, parts))
    assert client.recv_message(timeout=SLOW_TIMEOUT) == Message(BINARY, b"".join(parts))
    client.close_handshake()


# --- 12/13. permessage-deflate (RFC 7692) -------------------------------------------------

# What the server (DeflateOptions(): window_bits=12, context takeover allowed) answers to
# each offer: section 7.1.1 (context takeover), 7.1.2 (window bits). None: declined.
DEFLATE_NEGOTIATIONS = {
    "default": ("permessage-deflate", "permessage-deflate; server_max_window_bits=12"),
    "client-no-context-takeover": (
        "permessage-deflate; client_no_context_takeover",
        "permessage-deflate; client_no_context_takeover; server_max_window_bits=12",
    ),
    "server-no-context-takeover": (
        "permessage-deflate; server_no_context_takeover",
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
    ),
    "client-max-window-bits-bare": (
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
    ),
    "client-max-window-bits-10": (
        "permessage-deflate; client_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=12; client_max_window_bits=10",
    ),
    "client-max-window-bits-15": (
        "permessage-deflate; client_max_window_bits=15",
        "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
    ),
    "client-max-window-bits-8": (
        "permessage-deflate; client_max_window_bits=8",
        "permessage-deflate; server_max_window_bits=12; client_max_window_bits=8",
    ),
    "server-max-window-bits-10": (
        "permessage-deflate; server_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=10",
    ),
    "server-max-window-bits-15": (
        "permessage-deflate; server_max_window_bits=15",
        "permessage-deflate; server_max_window_bits=12",
    ),
    "server-max-window-bits-quoted": (
        'permessage-deflate; server_max_window_bits="10"',
        "permessage-deflate; server_max_window_bits=10",
    ),
    "everything": (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=9; client_max_window_bits=9",
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=9; client_max_window_bits=9",
    ),
    "server-max-window-bits-8-declined": ("permessage-deflate; server_max_window_bits=8", None),
    "fallback-after-declined-offer": (
        "permessage-deflate; server_max_window_bits=8, permessage-deflate; client_max_window_bits",
        "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
    ),
    "unknown-extension-skipped": (
        "x-unknown-extension; foo=bar, permessage-deflate",
        "permessage-deflate; server_max_window_bits=12",
    ),
    "unknown-parameter-declined": ("permessage-deflate; foo", None),
    "repeated-parameter-declined": (
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        None,
    ),
    "window-bits-16-declined": ("permessage-deflate; server_max_window_bits=16", None),
    "window-bits-7-declined": ("permessage-deflate; client_max_window_bits=7", None),
    "window-bits-leading-zero-declined": ("permessage-deflate; server_max_window_bits=09", None),
    "server-window-bits-without-value-declined": (
        "permessage-deflate; server_max_window_bits",
        None,
    ),
    "value-on-flag-declined": ("permessage-deflate; server_no_context_takeover=1", None),
}


@pytest.mark.parametrize(
    ("offer", "expected"), DEFLATE_NEGOTIATIONS.values(), ids=list(DEFLATE_NEGOTIATIONS)
)
def test_12_deflate_negotiation(echo: RunningServer, offer: str, expected: str | None) -> None:
    """RFC 7692 section 5 and 7.1: the exact response element, or no extension at all
    when the server must (or chooses to) decline every offer; the connection works."""
    with WireClient.connect(echo.address, timeout=TIMEOUT) as client:
        reply = client.handshake(extensions=offer)
        assert reply.status == 101
        assert reply.header("Sec-WebSocket-Extensions") == expected
        client.send_frame(TEXT, b"still works")
        assert client.recv_message() == Message(TEXT, b"still works")
        client.close_handshake()


ECHO_NEGOTIATIONS = {
    name: offer
    for name, (offer, expected) in DEFLATE_NEGOTIATIONS.items()
    if expected is not None and "quoted" not in name and "unknown" not in name
}

LARGE_TEXT = ("All work and no play makes Jack a dull boy. κόσμε \U0001f600 " * 40).encode()


@pytest.mark.parametrize("offer", ECHO_NEGOTIATIONS.values(), ids=list(ECHO_NEGOTIATIONS))
def test_13_deflate_echo(echo: RunningServer, offer: str) -> None:
    """RFC 7692 section 7.2: compressed messages in (RSV1 on the first frame only),
    compressed messages out; each side honours the negotiated context takeover and
    window (the client inflates with exactly the announced window, and afresh for each
    message when the server promised no context takeover)."""
    with open_client(echo, offer) as client:
        session = client.deflate
        assert session is not None
        # zlib cannot deflate with an 8-bit window: then we only send uncompressed.
        can_compress = session.client_max_window_bits >= 9
        messages = [
            (TEXT, LARGE_TEXT),
            (TEXT, LARGE_TEXT),  # again: a back-reference into the previous message
            (BINARY, binary_payload(3000)),
            (BINARY, os.urandom(2000)),  # incompressible
            (TEXT, b"tiny"),  # under the server's min_size: echoed uncompressed
            (TEXT, b""),
            (TEXT, text_payload(100_000)),
        ]
        for opcode, data in messages:
            client.send_message(opcode, data, compress=can_compress)
            reply = client.recv_message()
            assert (reply.opcode, reply.data) == (opcode, data)
            # Section 6: the sender may choose per message; our server compresses from
            # 64 bytes on (DeflateOptions.min_size).
            assert reply.compressed == (len(data) >= 64)
        # Uncompressed messages are allowed too, with or between compressed ones.
        client.send_message(TEXT, LARGE_TEXT)
        assert client.recv_message().data == LARGE_TEXT
        if can_compress:
            client.send_message(TEXT, LARGE_TEXT, compress=True)
            assert client.recv_message().data == LARGE_TEXT
        client.close_handshake()


@pytest.mark.parametrize(
    "offer",
    ["permessage-deflate", "permessage-deflate; client_no_context_takeover"],
    ids=["context-takeover", "no-context-takeover"],
)
@pytest.mark.parametrize("count", [2, 5, 40])
def test_13_deflate_fragmented_compressed_message(
    echo: RunningServer, offer: str, count: int
) -> None:
    """RFC 7692 section 6.1: RSV1 on the first frame of a fragmented message only; the
    payload of all the fragments together is one DEFLATE stream."""
    with open_client(echo, offer) as client:
        assert client.deflate is not None
        for _ in range(2):
            payload = client.deflate.compress(LARGE_TEXT)
            step = len(payload) // count + 1
            parts = [payload[i : i + step] for i in range(0, len(payload), step)]
            parts += [b""] * (count - len(parts))
            client.send(fragments(TEXT, parts, rsv1=True))
            assert client.recv_message() == Message(TEXT, LARGE_TEXT, True)
        client.close_handshake()


# RFC 7692 section 7.2.3: the byte literals of the examples, all "Hello".
RFC7692_EXAMPLES = {
    "7.2.3.1-one-block": b"\xf2\x48\xcd\xc9\xc9\x07\x00",
    "7.2.3.3-no-compression": b"\x00\x05\x00\xfa\xff\x48\x65\x6c\x6c\x6f\x00",
    "7.2.3.4-bfinal-set": b"\xf3\x48\xcd\xc9\xc9\x07\x00\x00",
    "7.2.3.5-two-blocks": b"\xf2\x48\x05\x00\x00\x00\xff\xff\xca\xc9\xc9\x07\x00",
}


@pytest.mark.parametrize("payload", RFC7692_EXAMPLES.values(), ids=list(RFC7692_EXAMPLES))
def test_13_rfc7692_examples(echo: RunningServer, payload: bytes) -> None:
    with open_client(echo, "permessage-deflate") as client:
        client.send(encode(TEXT, payload, rsv1=True))
        assert client.recv_message() == Message(TEXT, b"Hello")
        # And again: the examples leave the stream ready for the next message.
        client.send(encode(TEXT, payload, rsv1=True))
        assert client.recv_message() == Message(TEXT, b"Hello")
        client.close_handshake()


def test_13_rfc7692_shared_window_example(echo: RunningServer) -> None:
    """Section 7.2.3.2: the second "Hello" is a back-reference into the first message."""
    with open_client(echo, "permessage-deflate") as client:
        client.send(encode(TEXT, b"\xf2\x48\xcd\xc9\xc9\x07\x00", rsv1=True))
        assert client.recv_message() == Message(TEXT, b"Hello")
        client.send(encode(TEXT, b"\xf2\x00\x11\x00\x00", rsv1=True))
        assert client.recv_message() == Message(TEXT, b"Hello")
        # Split across two fragments, the RSV1 on the first.
        client.send(fragments(TEXT, [b"\xf2\x00", b"\x11\x00\x00"], rsv1=True))
        assert client.recv_message() == Message(TEXT, b"Hello")
        client.close_handshake()


@pytest.mark.parametrize(
    "payload", [b"\x00", b"\x02\x00", b""], ids=["empty-stored-block", "empty-fixed", "nothing"]
)
def test_13_compressed_empty_message(echo: RunningServer, payload: bytes) -> None:
    """Section 7.2.3.6: an empty message may be compressed to a single 0x00 byte."""
    with open_client(echo, "permessage-deflate") as client:
        client.send(encode(BINARY, payload, rsv1=True))
        assert client.recv_message() == Message(BINARY, b"")
        client.send_message(TEXT, LARGE_TEXT, compress=True)
        assert client.recv_message().data == LARGE_TEXT
        client.close_handshake()


def _deflate_violations() -> dict[str, tuple[Callable[[WireClient], bytes], int]]:
    def compressed(client: WireClient, data: bytes) -> bytes:
        assert client.deflate is not None
        return client.deflate.compress(data)

    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb_payload = bomb.compress(b"\x00" * (4 * MAX_MESSAGE)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    return {
        "rsv1-on-continuation": (
            lambda c: (
                encode(TEXT, compressed(c, LARGE_TEXT)[:10], fin=False, rsv1=True)
                + encode(CONTINUATION, b"\x00", rsv1=True)
            ),
            PROTOCOL_ERROR,
        ),
        "rsv1-on-ping": (lambda c: encode(PING, b"", rsv1=True), PROTOCOL_ERROR),
        "rsv1-on-pong": (lambda c: encode(PONG, b"", rsv1=True), PROTOCOL_ERROR),
        "rsv1-on-close": (
            lambda c: encode(CLOSE, close_payload(NORMAL), rsv1=True),
            PROTOCOL_ERROR,
        ),
        "rsv2-on-text": (lambda c: encode(TEXT, b"hello", rsv2=True), PROTOCOL_ERROR),
        "rsv3-on-binary": (lambda c: encode(BINARY, b"hello", rsv3=True), PROTOCOL_ERROR),
        "invalid-deflate-data": (
            # BTYPE 11 is reserved (RFC 1951 section 3.2.3): "an error".
            lambda c: encode(BINARY, b"\xff\xff\xff\xff", rsv1=True),
            INVALID_PAYLOAD,
        ),
        "bomb-over-the-limit": (
            lambda c: encode(BINARY, bomb_payload[:-4], rsv1=True),
            TOO_BIG,
        ),
        "invalid-utf8-inside": (
            lambda c: encode(TEXT, compressed(c, KOSME + b"\xed\xa0\x80 " * 40), rsv1=True),
            INVALID_PAYLOAD,
        ),
    }


DEFLATE_VIOLATIONS = _deflate_violations()


@pytest.mark.parametrize("name", DEFLATE_VIOLATIONS)
def test_13_deflate_violations(echo: RunningServer, name: str) -> None:
    """With permessage-deflate, RSV1 means "compressed" on the first frame of a data
    message only (RFC 7692 section 6.1); RSV2/3 stay reserved; bad DEFLATE data fails the
    connection (section 8: 1007 is our choice), and so does a decompression bomb (1009)."""
    build, code = DEFLATE_VIOLATIONS[name]
    with open_client(echo, "permessage-deflate") as client:
        fails_after_valid_message(client, build(client), code)


def test_13_rsv1_refused_when_deflate_was_declined(echo: RunningServer) -> None:
    with open_client(echo, "permessage-deflate; server_max_window_bits=8") as client:
        assert client.deflate is None
        fails_after_valid_message(
            client, encode(TEXT, b"\xf2\x48\xcd\xc9\xc9\x07\x00", rsv1=True), PROTOCOL_ERROR
        )


# --- the opening handshake over HTTP (section 4.2) ---------------------------------------


def read_error_reply(client: WireClient) -> tuple[int, dict[str, list[str]]]:
    """An HTTP error answer, after which the server closes the connection."""
    reply = client.read_http_response()
    client.expect_eof()
    return reply.status, reply.headers


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="one-word"),
        pytest.param(b"hello world, how are you\r\n\r\n", id="words"),
        pytest.param(b"\x00\x01\x02\x03 \xff\xfe\r\n\r\n", id="binary-line"),
        pytest.param(b"GET / HTTP/1.1\r\nHost localhost\r\n\r\n", id="header-without-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost : localhost\r\n\r\n", id="space-before-colon"),
        pytest.param(b"GET / HTTP/1.1\r\n folded\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\nHost: localhost\n\n", id="bare-lf"),
    ],
)
def test_http_garbage_gets_400(echo: RunningServer, request_bytes: bytes) -> None:
    with WireClient.connect(echo.address, timeout=TIMEOUT) as client:
        client.send(request_bytes)
        status, _ = read_error_reply(client)
        assert status == 400


def test_http_tls_client_hello_on_plain_port_gets_400_promptly(echo: RunningServer) -> None:
    """A TLS ClientHello on the ws:// port (a wss:// client, a scanner): bytes that can
    never start an HTTP request line. Refused at once, not after the handshake timeout."""
    hello = bytes.fromhex("1603010200010001fc0303") + os.urandom(32) + b"\x00" * 64
    with WireClient.connect(echo.address, timeout=TIMEOUT) as client:
        client.send(hello)
        status, _ = read_error_reply(client)
        assert status == 400


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([("X-Filler", "f" * 9000)], id="one-long-header"),
        pytest.param([(f"X-Filler-{i}", "f" * 200) for i in range(45)], id="head-over-8k"),
        pytest.param([(f"X-Filler-{i}", "f") for i in range(100)], id="too-many-headers"),
    ],
)
def test_http_oversized_head_gets_431(echo: RunningServer, extra: list[tuple[str, str]]) -> None:
    """DESIGN.md: an 8 KiB head with at most 64 headers; RFC 6585: 431 Request Header
    Fields Too Large."""
    with WireClient.connect(echo.address, timeout=TIMEOUT) as client:
        reply = client.handshake(headers=extra)
        assert reply.status == 431
        client.expect_eof()


def test_http_endless_head_gets_431_without_waiting_for_its_end(echo: RunningServer) -> None:
    with WireClient.connect(echo.address, timeout=TIMEOUT) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        with contextlib.suppress(ConnectionError):
            for index in range(200):
                client.send(f"X-Filler-{index}: {'f' * 100}\r\n".encode())
        status, _ = read_error_reply(client)
        assert status == 431


@pytest.mark.parametrize("version", ["8", "7", "12", "14", "13, 8"])
def test_http_unsupported_version_gets_426(echo: RunningServer, version: str) -> None:
    """Section 4.4: "the server MUST ... send ... a |Sec-WebSocket-Version| header field
    containing all versions it supports" with a suitable error (4.2.2: 426)."""
    with WireClient.connect(echo.address, timeout=TIMEOUT) as client:
        reply = client.handshake(version=version)
        assert reply.status == 426
        assert reply.header("Sec-WebSocket-Version") == "13"
        client.expect_eof()


def test_http_handshake_then_frames_in_the_same_write(echo: RunningServer) -> None:
    """Frames right behind the request (no wait for the 101) are not lost."""
    with WireClient.connect(echo.address, timeout=TIMEOUT) as client:
        host, port = echo.address
        client.send(
            b"GET / HTTP/1.1\r\nHost: "
            + f"{host}:{port}".encode()
            + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            + encode(TEXT, b"eager")
            + encode(PING, b"eager")
        )
        reply = client.read_http_response()
        assert reply.status == 101
        # Section 1.3's sample key and its accept value.
        assert reply.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        received = [client.recv_message(), client.recv_message()]
        assert sorted(received) == [Message(TEXT, b"eager"), Message(PONG, b"eager")]
        client.close_handshake()


# --- 1,000 concurrent connections ---------------------------------------------------------

CONCURRENT = 1000


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target < needed:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} descriptors needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def test_1000_concurrent_connections() -> None:
    """A fresh server; 1,000 clients connect at once, each sends one message, every echo
    arrives, every client closes with 1000, and the server closes every TCP connection."""
    # Each connection costs a descriptor on both sides, in this one process.
    _raise_fd_limit(2 * CONCURRENT + 500)
    deadline = time.monotonic() + 20.0
    with running_echo_server(server_config()) as running, contextlib.ExitStack() as stack:
        clients: list[WireClient] = []
        for _ in range(CONCURRENT):
            sock = socket.create_connection(running.address, timeout=TIMEOUT)
            clients.append(stack.enter_context(WireClient(sock, timeout=TIMEOUT)))
        # Every handshake is in flight before any answer is read.
        for client in clients:
            client.send(
                b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
        for client in clients:
            reply = client.read_http_response()
            assert reply.status == 101
            assert reply.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert time.monotonic() < deadline
        assert len(running.server.connections) == CONCURRENT
        for index, client in enumerate(clients):
            client.send_frame(TEXT, f"hello from client {index}".encode())
        for index, client in enumerate(clients):
            assert client.recv_message() == Message(TEXT, f"hello from client {index}".encode())
        for client in clients:
            client.send_frame(CLOSE, close_payload(NORMAL))
        for client in clients:
            client.expect_close(NORMAL)
            client.expect_eof()
        for client in clients:
            client.close()
        assert time.monotonic() < deadline
        while running.server.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not running.server.connections
        assert running.server.stats["handshakes_accepted"] == CONCURRENT
        assert running.server.stats["messages_received"] == CONCURRENT
        assert running.server.stats["closed"] == CONCURRENT
        assert not running.errors, [record.getMessage() for record in running.errors]


# --- graceful shutdown (DESIGN.md: close 1001, then exit) ---------------------------------

GOING_AWAY = 1001


def test_shutdown_closes_every_connection_with_1001() -> None:
    """Stop accepting, send 1001 to every open connection (one in the middle of a
    fragmented message too), finish each closing handshake, drop unfinished handshakes."""
    with running_echo_server(server_config()) as running, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(open_client(running)) for _ in range(3)]
        clients[2].send_frame(TEXT, b"unfinished", fin=False)
        half_open = stack.enter_context(WireClient.connect(running.address, timeout=TIMEOUT))
        half_open.send(b"GET / HTTP/1.1\r\n")
        for client in clients:  # a round trip: the server has read everything before
            client.send_frame(PING, b"sync")
            assert client.recv_message() == Message(PONG, b"sync")
        deadline = time.monotonic() + TIMEOUT
        while running.server.stats["accepted"] < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert running.server.stats["accepted"] == 4

        running.server.request_shutdown()
        for client in clients:
            client.expect_close(GOING_AWAY)
            client.send_frame(CLOSE, close_payload(GOING_AWAY))
            client.expect_eof()
        half_open.expect_eof()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(running.address, timeout=TIMEOUT).close()
