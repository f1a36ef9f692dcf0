"""Frame codec throughput: rfc6455 beside websockets and wsproto, in the same run.

Run with ``make bench`` (pytest-benchmark). Every case is grouped by what it measures,
so each group's table compares the implementations on the same machine at the same
moment; ``extra_info`` carries frames/s and MB/s. Speed is reported here, never asserted.

Implementations:
- ``rfc6455``: this project (``Connection.receive_data``, ``encode_frame``, ``apply_mask``).
- ``websockets``: the sans-I/O ``Protocol`` of the websockets library, with its C masking
  (``websockets.speedups``) when installed.
- ``websockets-py``: the same with its pure-Python ``apply_mask``.
- ``wsproto``: python-hyper's sans-I/O library.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from rfc6455 import BinaryMessage, Connection, Opcode, Role, State, TextMessage, apply_mask
from rfc6455.frames import encode_frame

websockets_frames = pytest.importorskip("websockets.frames")
websockets_protocol = pytest.importorskip("websockets.protocol")
websockets_utils = pytest.importorskip("websockets.utils")
wsproto_connection = pytest.importorskip("wsproto.connection")
wsproto_events = pytest.importorskip("wsproto.events")
wsproto_frame_protocol = pytest.importorskip("wsproto.frame_protocol")

SIZES = [16, 125, 1024, 16 * 1024, 64 * 1024, 1024 * 1024]
BUFFER_TARGET = 512 * 1024  # bytes of payload per decoded buffer (at least one frame)
LIMIT = 4 * 1024 * 1024
MASK = bytes.fromhex("37fa213d")


def _payload(size: int, text: bool) -> bytes:
    if text:
        return (b"chat message " * (size // 13 + 1))[:size]
    return os.urandom(size)


def _client_buffer(size: int, text: bool) -> tuple[bytes, int]:
    """Many masked client frames of ``size`` bytes, back to back, and their count."""
    count = max(1, BUFFER_TARGET // size)
    opcode = Opcode.TEXT if text else Opcode.BINARY
    payload = _payload(size, text)
    frames = [encode_frame(opcode, payload, mask=os.urandom(4)) for _ in range(count)]
    return b"".join(frames), count


def _chunks(buffer: bytes, read_size: int | None) -> list[bytes]:
    if read_size is None:
        return [buffer]
    return [buffer[i : i + read_size] for i in range(0, len(buffer), read_size)]


# --- decoders: each returns the number of messages it produced ---------------------------


def decode_rfc6455(chunks: list[bytes]) -> int:
    connection = Connection(Role.SERVER, state=State.OPEN, max_message_size=LIMIT)
    count = 0
    for chunk in chunks:
        for event in connection.receive_data(chunk):
            if type(event) is TextMessage or type(event) is BinaryMessage:
                count += 1
    return count


def decode_websockets(chunks: list[bytes]) -> int:
    protocol = websockets_protocol.Protocol(
        websockets_protocol.Side.SERVER, state=websockets_protocol.State.OPEN, max_size=LIMIT
    )
    text = websockets_frames.Opcode.TEXT
    count = 0
    for chunk in chunks:
        protocol.receive_data(chunk)
        for frame in protocol.events_received():
            if frame.opcode is text:
                frame.data.decode()  # websockets leaves UTF-8 decoding to its I/O layer
            count += 1
    return count


def decode_wsproto(chunks: list[bytes]) -> int:
    connection = wsproto_connection.Connection(wsproto_connection.ConnectionType.SERVER)
    message = wsproto_events.Message
    count = 0
    for chunk in chunks:
        connection.receive_data(chunk)
        for event in connection.events():
            if isinstance(event, message):
                count += 1
    return count


@pytest.fixture
def websockets_pure_python_mask() -> Iterator[None]:
    """Make websockets use its pure-Python masking, as without its C extension."""
    original = websockets_frames.apply_mask
    websockets_frames.apply_mask = websockets_utils.apply_mask
    try:
        yield
    finally:
        websockets_frames.apply_mask = original


DECODERS: dict[str, Callable[[list[bytes]], int]] = {
    "rfc6455": decode_rfc6455,
    "websockets": decode_websockets,
    "websockets-py": decode_websockets,
    "wsproto": decode_wsproto,
}


def _record(benchmark: Any, frames: int, size: int) -> None:
    mean = benchmark.stats.stats.mean if benchmark.stats else 0
    if mean:
        benchmark.extra_info["frames_per_s"] = round(frames / mean)
        benchmark.extra_info["MB_per_s"] = round(frames * size / mean / 1e6, 1)


@pytest.mark.parametrize("impl", list(DECODERS))
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["text", "binary"])
def test_decode_whole_buffer(
    benchmark: Any, request: pytest.FixtureRequest, impl: str, size: int, kind: str
) -> None:
    """Decode one buffer of many masked client frames into messages."""
    if impl == "wsproto" and size > 64 * 1024:
        pytest.skip("wsproto's 1 MiB decode takes seconds per round")
    if impl == "websockets-py":
        request.getfixturevalue("websockets_pure_python_mask")
    buffer, count = _client_buffer(size, kind == "text")
    benchmark.group = f"decode {kind} {size} B, whole buffer"
    chunks = _chunks(buffer, None)
    result = benchmark(DECODERS[impl], chunks)
    assert result == count
    _record(benchmark, count, size)


@pytest.mark.parametrize("impl", ["rfc6455", "websockets", "websockets-py"])
@pytest.mark.parametrize("size", [125, 64 * 1024, 1024 * 1024])
def test_decode_64k_reads(
    benchmark: Any, request: pytest.FixtureRequest, impl: str, size: int
) -> None:
    """Decode the same stream arriving in 64 KiB reads, as from a socket."""
    if impl == "websockets-py":
        request.getfixturevalue("websockets_pure_python_mask")
    buffer, count = _client_buffer(size, False)
    benchmark.group = f"decode binary {size} B, 64 KiB reads"
    chunks = _chunks(buffer, 64 * 1024)
    result = benchmark(DECODERS[impl], chunks)
    assert result == count
    _record(benchmark, count, size)


# --- encoders: server frames, unmasked ------------------------------------------------------


def encode_rfc6455(payload: bytes, count: int) -> int:
    total = 0
    for _ in range(count):
        total += len(encode_frame(Opcode.TEXT, payload))
    return total


def encode_websockets(payload: bytes, count: int) -> int:
    frame_class = websockets_frames.Frame
    text = websockets_frames.Opcode.TEXT
    total = 0
    for _ in range(count):
        total += len(frame_class(text, payload).serialize(mask=False))
    return total


def encode_wsproto(payload: bytes, count: int) -> int:
    protocol = wsproto_frame_protocol.FrameProtocol(client=False, extensions=[])
    message = payload.decode()
    total = 0
    for _ in range(count):
        total += len(protocol.send_data(message, fin=True))
    return total


ENCODERS: dict[str, Callable[[bytes, int], int]] = {
    "rfc6455": encode_rfc6455,
    "websockets": encode_websockets,
    "wsproto": encode_wsproto,
}


@pytest.mark.parametrize("impl", list(ENCODERS))
@pytest.mark.parametrize("size", SIZES)
def test_encode_server_frames(benchmark: Any, impl: str, size: int) -> None:
    """Encode unmasked server text frames (the server's side of every broadcast)."""
    payload = _payload(size, True)
    count = max(1, BUFFER_TARGET // size)
    benchmark.group = f"encode text {size} B"
    total = benchmark(ENCODERS[impl], payload, count)
    assert total >= count * size
    _record(benchmark, count, size)


# --- masking ---------------------------------------------------------------------------------

MASKERS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "rfc6455": apply_mask,
    "websockets-py": websockets_utils.apply_mask,
}
try:
    from websockets.speedups import apply_mask as websockets_c_apply_mask

    MASKERS["websockets-c"] = websockets_c_apply_mask
except ImportError:  # pragma: no cover - depends on the wheel
    pass


@pytest.mark.parametrize("impl", list(MASKERS))
@pytest.mark.parametrize("size", [16, 1024, 64 * 1024, 1024 * 1024])
def test_unmask(benchmark: Any, impl: str, size: int) -> None:
    """Unmask a payload; C masking is shown for reference only."""
    data = os.urandom(size)
    benchmark.group = f"unmask {size} B"
    result = benchmark(MASKERS[impl], data, MASK)
    assert result == websockets_utils.apply_mask(data, MASK)
    _record(benchmark, 1, size)
