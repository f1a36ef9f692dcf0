"""Hypothesis properties of the codec: rfc6455.frames and rfc6455.connection.

* encode then parse gives back any frame, whatever the chunking;
* arbitrary bytes never make the parser raise anything but ``RemoteProtocolError``, nor a
  ``Connection`` raise at all: every violation ends as a close frame;
* what one ``Connection`` sends, another receives, for any message, fragment size and
  chunking, in both directions;
* the same stream gives the same events in every chunking.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rfc6455.codes import Opcode
from rfc6455.connection import Connection, Role, State
from rfc6455.deflate import DeflateOptions, PerMessageDeflate
from rfc6455.errors import RemoteProtocolError
from rfc6455.events import (
    BinaryMessage,
    CloseReceived,
    Event,
    Ping,
    Pong,
    Rejected,
    RequestReceived,
    TextMessage,
)
from rfc6455.frames import Frame, FrameParser, apply_mask, encode_frame
from rfc6455.handshake import build_request

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MASK = b"\x37\xfa\x21\x3d"

# --- strategies ---------------------------------------------------------------------------

masks = st.binary(min_size=4, max_size=4)
optional_masks = st.none() | masks

# Payloads on both sides of every boundary that matters: 7-bit / 16-bit / 64-bit lengths,
# and apply_mask's switch from one integer XOR to strided lanes at 1024 bytes.
small_payloads = st.binary(max_size=130)
medium_payloads = st.binary(min_size=1000, max_size=1100)
large_payloads = st.builds(
    lambda size, byte: (
        bytes((byte + i) & 0xFF for i in range(256)) * (size // 256) + bytes([byte]) * (size % 256)
    ),
    st.integers(65530, 65600),
    st.integers(0, 255),
)
payloads = st.one_of(small_payloads, small_payloads, medium_payloads, large_payloads)


@st.composite
def frames(draw: st.DrawFn) -> tuple[Frame, bytes | None]:
    """A valid frame (any RSV bits) and the key to mask it with, or None."""
    opcode = draw(st.sampled_from(list(Opcode)))
    if opcode.is_control:
        payload = draw(st.binary(max_size=125))
        fin = True
    else:
        payload = draw(payloads)
        fin = draw(st.booleans())
    rsv1, rsv2, rsv3 = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    return Frame(opcode, payload, fin, rsv1, rsv2, rsv3), draw(optional_masks)


def cut(data: bytes, positions: list[int]) -> list[bytes]:
    """Split ``data`` at ``positions`` (any order, any value within 0..len)."""
    points = sorted({0, len(data), *(p % (len(data) + 1) for p in positions)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


cuts = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12)


def encode(frame: Frame, mask: bytes | None) -> bytes:
    opcode, payload, fin, rsv1, rsv2, rsv3 = frame
    return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, rsv2=rsv2, rsv3=rsv3, mask=mask)


def parse_chunks(parser: FrameParser, chunks: list[bytes]) -> list[Frame]:
    result = []
    for chunk in chunks:
        parser.feed(chunk)
        while (frame := parser.next_frame()) is not None:
            result.append(frame)
    return result


# --- frames ----------------------------------------------------------------------------------


@FAST
@given(frame=frames())
def test_encode_then_parse_gives_back_the_frame(frame: tuple[Frame, bytes | None]) -> None:
    original, mask = frame
    wire = encode(original, mask)
    parser = FrameParser(require_mask=mask is not None, max_data_payload=1 << 20, allowed_rsv=0x70)
    parser.feed(wire)
    assert parser.next_frame() == original
    assert parser.next_frame() is None
    assert parser.buffered == 0
    assert bool(wire[1] & 0x80) is (mask is not None)


@FAST
@given(
    sequence=st.lists(frames(), min_size=1, max_size=6),
    require_mask=st.booleans(),
    positions=cuts,
)
def test_encode_then_parse_a_stream_in_any_chunking(
    sequence: list[tuple[Frame, bytes | None]], require_mask: bool, positions: list[int]
) -> None:
    # Every frame masked for a server, none for a client.
    wire = b"".join(
        encode(frame, (mask or MASK) if require_mask else None) for frame, mask in sequence
    )
    parser = FrameParser(require_mask=require_mask, max_data_payload=1 << 20, allowed_rsv=0x70)
    assert parse_chunks(parser, cut(wire, positions)) == [frame for frame, _ in sequence]
    assert parser.buffered == 0


@FAST
@given(data=st.one_of(small_payloads, medium_payloads), mask=masks)
def test_apply_mask_is_the_definition_and_its_own_inverse(data: bytes, mask: bytes) -> None:
    masked = apply_mask(data, mask)
    assert masked == bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert apply_mask(masked, mask) == data


@FAST
@given(payload=payloads, mask=masks, start=st.integers(0, 40), arrived=st.integers(0, 2000))
def test_peek_payload_shows_what_arrived_unmasked(
    payload: bytes, mask: bytes, start: int, arrived: int
) -> None:
    wire = encode_frame(Opcode.TEXT, payload, fin=False, mask=mask)
    header_size = len(wire) - len(payload)
    arrived = min(arrived, len(payload) - 1)
    parser = FrameParser(require_mask=True, max_data_payload=1 << 20)
    parser.feed(wire[: header_size + arrived] if arrived >= 0 else b"")
    assert parser.next_frame() is None
    assert parser.peek_payload(start) == payload[start:arrived]
    if arrived >= 0:
        assert parser.peek_header() == (Opcode.TEXT, False)


@FAST
@given(
    data=st.binary(max_size=400),
    require_mask=st.booleans(),
    allowed_rsv=st.sampled_from([0, 0x40]),
    positions=cuts,
)
@example(data=b"\x82\xff\x80" + bytes(7), require_mask=True, allowed_rsv=0, positions=[])
@example(data=b"\x82\x7f" + b"\xff" * 8, require_mask=False, allowed_rsv=0, positions=[5])
def test_parser_raises_only_remote_protocol_errors(
    data: bytes, require_mask: bool, allowed_rsv: int, positions: list[int]
) -> None:
    parser = FrameParser(require_mask=require_mask, max_data_payload=1000, allowed_rsv=allowed_rsv)
    try:
        for chunk in cut(data, positions):
            parser.feed(chunk)
            while parser.next_frame() is not None:
                pass
            parser.peek_header()
            parser.peek_payload(0)
    except RemoteProtocolError as error:
        assert error.close_code in (1002, 1009)
        assert 0 < len(error.reason.encode()) <= 123


# --- Connection: arbitrary input ------------------------------------------------------------

EVENT_TYPES = (TextMessage, BinaryMessage, Ping, Pong, CloseReceived)


@st.composite
def fuzz_frames(draw: st.DrawFn) -> bytes:
    """A frame that may break any rule: any opcode nibble, RSV bits, mask bit, length."""
    first = draw(st.integers(0, 255))
    masked = draw(st.booleans())
    payload = draw(st.one_of(st.binary(max_size=20), st.binary(max_size=200)))
    if draw(st.integers(0, 9)) == 0:
        # Text-ish payloads, sometimes valid UTF-8, sometimes not.
        payload = draw(st.text(max_size=20)).encode() + draw(st.binary(max_size=3))
    if draw(st.booleans()):
        first = (
            (first & 0x70)
            | draw(st.sampled_from([0x80, 0x00]))
            | draw(st.sampled_from([0, 1, 2, 8, 9, 10]))
        )
        if draw(st.integers(0, 3)):
            first &= 0x8F  # usually no RSV bits
    if first & 0x0F >= 8 and draw(st.booleans()):
        payload = draw(st.sampled_from([b"", b"\x03\xe8", b"\x03", b"\x03\xedx", b"\x0f\xa0ok"]))
    length = len(payload)
    if length < 126:
        header = bytes((first, (0x80 if masked else 0) | length))
    elif draw(st.booleans()):
        header = bytes((first, (0x80 if masked else 0) | 126)) + length.to_bytes(2, "big")
    else:  # non-minimal 64-bit length
        header = bytes((first, (0x80 if masked else 0) | 127)) + length.to_bytes(8, "big")
    if masked:
        key = draw(masks)
        return header + key + apply_mask(payload, key)
    return header + payload


garbage = st.one_of(
    st.binary(max_size=300),
    st.lists(fuzz_frames(), max_size=8).map(b"".join),
    st.tuples(st.lists(fuzz_frames(), max_size=5), st.binary(max_size=20)).map(
        lambda parts: b"".join(parts[0]) + parts[1]
    ),
)


def check_outcome(conn: Connection, events: list[Event]) -> None:
    """Whatever came in: valid events, and a failure is a close frame with its code."""
    # A failure found after some events waits for the next call; make it happen.
    events += conn.receive_data(b"")
    assert not getattr(conn, "failure_pending", False)
    assert all(isinstance(event, EVENT_TYPES) for event in events)
    out = conn.data_to_send()
    parser = FrameParser(require_mask=conn.role is Role.CLIENT, max_data_payload=1 << 20)
    parser.feed(out)
    sent = []
    while (frame := parser.next_frame()) is not None:
        sent.append(frame)
    assert parser.buffered == 0
    assert all(frame.opcode in (Opcode.PONG, Opcode.CLOSE) for frame in sent)
    closes = [frame for frame in sent if frame.opcode is Opcode.CLOSE]
    assert len(closes) <= 1
    if conn.failure is not None:
        assert isinstance(conn.failure, RemoteProtocolError)
        assert conn.state is State.CLOSED
        assert closes, "a violation must be answered with a close frame"
        assert closes[0].payload[:2] == conn.failure.close_code.to_bytes(2, "big")
        assert closes[0].payload[2:] == conn.failure.reason.encode()[:123]
        assert conn.failure.close_code in (1002, 1007, 1009)
    elif closes:
        assert isinstance(events[-1], CloseReceived)
        assert conn.state is State.CLOSED
    else:
        assert conn.state is State.OPEN


@FAST
@given(data=garbage, role=st.sampled_from([Role.SERVER, Role.CLIENT]), positions=cuts)
@example(data=b"\x81\x85" + b"\x00" * 4 + b"\xed\xa0\x80ab", role=Role.SERVER, positions=[9])
@example(data=b"\x81\x01a\x83\x00", role=Role.CLIENT, positions=[])
def test_arbitrary_bytes_never_raise(data: bytes, role: Role, positions: list[int]) -> None:
    conn = Connection(role, state=State.OPEN, max_message_size=1000, mask_source=lambda n: MASK)
    events: list[Event] = []
    for chunk in cut(data, positions):
        events += conn.receive_data(chunk)
    check_outcome(conn, events)


@FAST
@given(data=garbage, role=st.sampled_from([Role.SERVER, Role.CLIENT]), positions=cuts)
def test_arbitrary_bytes_with_permessage_deflate_never_raise(
    data: bytes, role: Role, positions: list[int]
) -> None:
    extension = PerMessageDeflate(
        is_server=role is Role.SERVER,
        local_no_context_takeover=False,
        remote_no_context_takeover=False,
        local_max_window_bits=15,
        remote_max_window_bits=15,
        options=DeflateOptions(),
        max_message_size=1000,
    )
    conn = Connection(
        role,
        state=State.OPEN,
        max_message_size=1000,
        extension=extension,
        mask_source=lambda n: MASK,
    )
    events: list[Event] = []
    for chunk in cut(data, positions):
        events += conn.receive_data(chunk)
    check_outcome(conn, events)


REQUEST = build_request("chat.example", "/ws", "dGhlIHNhbXBsZSBub25jZQ==")


@FAST
@given(
    prefix=st.sampled_from([b"", REQUEST, REQUEST[:40], b"GET / HTTP/1.1\r\n"]),
    data=st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode)),
    positions=cuts,
)
def test_arbitrary_bytes_during_the_handshake_never_raise(
    prefix: bytes, data: bytes, positions: list[int]
) -> None:
    conn = Connection(Role.SERVER)
    events: list[Event] = []
    for chunk in cut(prefix + data, positions):
        events += conn.receive_data(chunk)
    assert all(isinstance(event, RequestReceived | Rejected) for event in events)
    if any(isinstance(event, Rejected) for event in events):
        assert conn.state is State.CLOSED
        assert conn.data_to_send()[:10] in (b"HTTP/1.1 4", b"HTTP/1.1 5")
    else:
        assert conn.state is State.CONNECTING


@FAST
@given(data=st.binary(max_size=300), positions=cuts)
def test_arbitrary_response_bytes_never_raise(data: bytes, positions: list[int]) -> None:
    conn = Connection(Role.CLIENT)
    conn.initiate("chat.example")
    events: list[Event] = []
    for chunk in cut(b"HTTP/1.1 101 Switching Protocols\r\n" + data, positions):
        events += conn.receive_data(chunk)
    assert all(isinstance(event, Rejected) for event in events)
    assert conn.state in (State.CONNECTING, State.CLOSED)


# --- Connection: round trips ------------------------------------------------------------------

fragment_sizes = st.none() | st.integers(1, 300)


def pair(
    sender_role: Role, fragment_size: int | None, deflate: bool = False
) -> tuple[Connection, Connection]:
    receiver_role = Role.SERVER if sender_role is Role.CLIENT else Role.CLIENT
    extensions: list[PerMessageDeflate | None] = [None, None]
    if deflate:
        extensions = [
            PerMessageDeflate(
                is_server=role is Role.SERVER,
                local_no_context_takeover=False,
                remote_no_context_takeover=False,
                local_max_window_bits=12,
                remote_max_window_bits=12,
                options=DeflateOptions(min_size=0),
                max_message_size=1 << 20,
            )
            for role in (sender_role, receiver_role)
        ]
    sender = Connection(
        sender_role, state=State.OPEN, fragment_size=fragment_size, extension=extensions[0]
    )
    receiver = Connection(receiver_role, state=State.OPEN, extension=extensions[1])
    return sender, receiver


roles = st.sampled_from([Role.SERVER, Role.CLIENT])
texts = st.one_of(st.text(max_size=200), st.text(min_size=300, max_size=1500))


@FAST
@given(text=texts, role=roles, fragment_size=fragment_sizes, positions=cuts)
def test_send_text_then_receive(
    text: str, role: Role, fragment_size: int | None, positions: list[int]
) -> None:
    sender, receiver = pair(role, fragment_size)
    wire = sender.send_text(text)
    events: list[Event] = []
    for chunk in cut(wire, positions):
        events += receiver.receive_data(chunk)
    assert events == [TextMessage(text)]
    assert receiver.state is State.OPEN
    assert receiver.data_to_send() == b""


@FAST
@given(data=payloads, role=roles, fragment_size=fragment_sizes, positions=cuts)
def test_send_binary_then_receive(
    data: bytes, role: Role, fragment_size: int | None, positions: list[int]
) -> None:
    if fragment_size is not None:
        fragment_size = max(fragment_size, len(data) // 100)  # at most ~100 frames
    sender, receiver = pair(role, fragment_size)
    wire = sender.send_binary(data)
    events: list[Event] = []
    for chunk in cut(wire, positions):
        events += receiver.receive_data(chunk)
    assert events == [BinaryMessage(data)]
    assert type(events[0].data) is bytes  # type: ignore[union-attr]
    assert receiver.state is State.OPEN


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(st.one_of(texts, st.binary(max_size=500)), min_size=1, max_size=4),
    role=roles,
    fragment_size=fragment_sizes,
    positions=cuts,
)
def test_compressed_messages_round_trip(
    messages: list[str | bytes], role: Role, fragment_size: int | None, positions: list[int]
) -> None:
    sender, receiver = pair(role, fragment_size, deflate=True)
    wire = b"".join(
        sender.send_text(m) if isinstance(m, str) else sender.send_binary(m) for m in messages
    )
    events: list[Event] = []
    for chunk in cut(wire, positions):
        events += receiver.receive_data(chunk)
    assert events == [TextMessage(m) if isinstance(m, str) else BinaryMessage(m) for m in messages]
    assert receiver.state is State.OPEN


@FAST
@given(payload=st.binary(max_size=125), role=roles, reason=st.text(max_size=30))
def test_ping_and_close_round_trip(payload: bytes, role: Role, reason: str) -> None:
    sender, receiver = pair(role, None)
    assert receiver.receive_data(sender.ping(payload)) == [Ping(payload)]
    assert sender.receive_data(receiver.data_to_send()) == [Pong(payload)]
    reason = reason.encode()[:123].decode("utf-8", "ignore")
    assert receiver.receive_data(sender.close(4000, reason)) == [CloseReceived(4000, reason)]
    assert sender.receive_data(receiver.data_to_send()) == [CloseReceived(4000, "")]
    assert sender.state is receiver.state is State.CLOSED


# --- the same stream in every chunking ---------------------------------------------------------


@st.composite
def message_streams(draw: st.DrawFn) -> tuple[bytes, list[Event], Role]:
    """Messages (fragmented or not, pings and pongs interleaved), then a close."""
    role = draw(roles)  # the receiving role
    mask = MASK if role is Role.SERVER else None
    wire = []
    events: list[Event] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["text", "binary", "ping", "pong"]))
        if kind in ("ping", "pong"):
            payload = draw(st.binary(max_size=125))
            opcode = Opcode.PING if kind == "ping" else Opcode.PONG
            wire.append(encode_frame(opcode, payload, mask=mask))
            events.append(Ping(payload) if kind == "ping" else Pong(payload))
            continue
        if kind == "text":
            text = draw(st.text(max_size=300))
            data = text.encode()
            message: Event = TextMessage(text)
        else:
            data = draw(st.binary(max_size=300))
            message = BinaryMessage(data)
        splits = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
        pieces = [data[a:b] for a, b in itertools.pairwise([0, *splits, len(data)])]
        opcode = Opcode.TEXT if kind == "text" else Opcode.BINARY
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            wire.append(encode_frame(opcode, piece, fin=last, mask=mask))
            opcode = Opcode.CONTINUATION
            if not last and draw(st.booleans()):
                ping = draw(st.binary(max_size=10))
                wire.append(encode_frame(Opcode.PING, ping, mask=mask))
                events.append(Ping(ping))
        events.append(message)
    wire.append(encode_frame(Opcode.CLOSE, b"\x03\xe8bye", mask=mask))
    events.append(CloseReceived(1000, "bye"))
    return b"".join(wire), events, role


@FAST
@given(stream=message_streams(), positions=cuts)
def test_same_stream_same_events_in_any_chunking(
    stream: tuple[bytes, list[Event], Role], positions: list[int]
) -> None:
    wire, expected, role = stream
    whole = Connection(role, state=State.OPEN, mask_source=lambda n: MASK)
    chunked = Connection(role, state=State.OPEN, mask_source=lambda n: MASK)
    assert whole.receive_data(wire) == expected
    events: list[Event] = []
    for chunk in cut(wire, positions):
        events += chunked.receive_data(chunk)
    assert events == expected
    for event in events:
        if isinstance(event, BinaryMessage):
            assert type(event.data) is bytes
        elif isinstance(event, Ping | Pong):
            assert type(event.payload) is bytes
    assert chunked.data_to_send() == whole.data_to_send()
    assert chunked.state is whole.state is State.CLOSED
