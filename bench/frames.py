"""Frame codec throughput: rfc6455 beside websockets, wsproto, aiohttp and picows, one timer.

``python -m bench.frames [--quick]`` (and ``python -m bench``, which calls
:func:`run_frames`) measures every case for every implementation with the same timer
(``time.perf_counter_ns``), interleaved: in every round each case is measured for every
implementation, in an order rotated from round to round, so that drift on the machine
(another process, a frequency change) hits every implementation alike. ``bench/test_frames.py``
runs the same cases and adapters through pytest-benchmark, as a second opinion.

What one operation ("op") is:

* ``decode``: a server receives masked client frames and turns them into application
  messages (``str`` for text, bytes for binary), fed as one buffer ("whole") or in 64 KiB
  reads cut regardless of frame boundaries, as a socket would hand them over.
* ``encode``: a server turns payloads into unmasked frames.
* ``deflate-decode`` / ``deflate-encode``: the same through permessage-deflate (RFC 7692)
  with context takeover, on JSON chat messages, with each library's own codec.

Small payloads come many to an op (at least 256 KiB of payload), so per-op costs vanish.
Each implementation keeps one connection object per case for the whole run: an op feeds
the case's stream into it again, which measures the codec in steady state, not the cost of
setting up a connection (every stream ends on a message boundary, and a DEFLATE stream only
refers back to data it produced itself, so reusing a decompressor is exact). Every adapter
is checked once before it is timed: decoded messages must equal the originals, encoded
frames must decode back (rfc6455's ``FrameParser``) to the payloads; a mismatch raises.

Fairness, adapter by adapter (the JSON repeats the case-specific parts in ``note``):

* ``rfc6455``: ``Connection.receive_data`` (messages out, UTF-8 checked), ``encode_frame``;
  ``Connection.send_message`` for deflate.
* ``websockets`` / ``websockets-py``: the sans-I/O ``Protocol`` (with the C ``apply_mask`` or
  the pure-Python one swapped in while measuring). ``Protocol`` yields frames: the adapter
  joins fragments and decodes text, which websockets' I/O layer does in real use. Encode:
  ``Frame.serialize``; deflate: ``Protocol.send_text``. Server frames are not masked, so
  ``websockets-py`` measures decoding only.
* ``wsproto``: ``Connection`` events; partial events (fragments, and frames split across
  reads) are joined by the adapter. ``FrameProtocol.send_data`` needs ``str`` for a text frame
  and encodes it itself: the one UTF-8 encode the others do not pay.
* ``aiohttp``: ``WebSocketReader`` (Cython when built) fed with ``feed_data`` into its
  ``WebSocketDataQueue``, limit ``DEFAULT_CHUNK_SIZE`` as aiohttp sets it, drained with
  ``await queue.read()`` after each read as an application would (the reader pauses when
  the queue is full and resumes as it drains). Encode: ``WebSocketWriter.send_frame`` into
  an in-memory transport. The coroutines never wait, so they run without an event loop.
* ``picows``: ``WSProtocol`` (Cython) after a real upgrade request, fed through
  ``get_buffer``/``buffer_updated`` as asyncio does: the bytes are copied into its read
  buffer, a copy the others do not pay here. It delivers frames: the adapter joins
  fragments (picows does not reassemble messages) and reads text with
  ``get_payload_as_utf8_text`` (strict UTF-8). Encode: ``WSTransport.send`` into an
  in-memory transport that reports pending data, so that picows hands it the frame instead
  of calling ``send(2)`` itself (one bytes copy). picows has no permessage-deflate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import importlib.metadata
import json
import logging
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import rfc6455
from rfc6455 import (
    BinaryMessage,
    Connection,
    DeflateOptions,
    Opcode,
    PerMessageDeflate,
    Role,
    State,
    TextMessage,
)
from rfc6455.deflate import server_negotiate
from rfc6455.frames import FrameParser, encode_frame

__all__ = [
    "CASES",
    "FULL",
    "IMPLEMENTATIONS",
    "OURS",
    "QUICK",
    "QUICK_CASES",
    "SIZES",
    "TARGETS",
    "Adapter",
    "FrameCase",
    "FrameSettings",
    "Operation",
    "Unsupported",
    "VerificationError",
    "Workload",
    "build_workload",
    "chat_messages",
    "decode_case",
    "deflate_case",
    "encode_case",
    "format_frames_table",
    "load_adapters",
    "main",
    "run_frames",
    "verify",
]

OURS = "rfc6455"
#: Every implementation, in the order of the tables (and of round 1).
IMPLEMENTATIONS = ("rfc6455", "websockets", "websockets-py", "wsproto", "aiohttp", "picows")

SIZES = (2, 16, 125, 1024, 16 * 1024, 64 * 1024, 1024 * 1024)
#: Payload bytes per op at least: small messages come many to an op.
OP_PAYLOAD_TARGET = 256 * 1024
#: The read size of the "64KiB" cases, as a socket might deliver.
READ_SIZE = 64 * 1024
#: The fragment size of the fragmented-message cases.
FRAGMENT_SIZE = 16 * 1024
#: Every implementation's limit on one message (each has one; all get the same).
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
#: Everything random here (payloads, masks, chat text) is drawn from this seed.
SEED = 6455

# permessage-deflate as rfc6455's server agrees it with a browser's offer
# ("permessage-deflate; client_max_window_bits"): 12-bit windows both ways, context
# takeover. rfc6455 and websockets compress with level 6 and memLevel 5 by default.
_BROWSER_OFFER = [("permessage-deflate", [("client_max_window_bits", None)])]
_NEGOTIATED = "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
DEFLATE_WINDOW_BITS = 12
DEFLATE_MEM_LEVEL = 5
_DEFLATE_NOTE = (
    "12-bit windows both ways with context takeover (what rfc6455 and websockets agree "
    "with a browser); the client frames are compressed once, by rfc6455's client side "
    "(level 6, memLevel 5). Server compressors: rfc6455 and websockets level 6, memLevel 5; "
    "wsproto level 6, memLevel 8 (not configurable); aiohttp level 1 (Z_BEST_SPEED, faster "
    "but larger output), memLevel 8 (not configurable); aiohttp inflates with a 15-bit "
    "window whatever was agreed. picows has no permessage-deflate"
)
_FRAGMENT_NOTE = (
    "websockets and picows deliver frames and wsproto partial messages: their adapters join "
    "the fragments (and decode text), as their I/O layers or an application would"
)
_TEXT_NOTE = (
    "websockets' sans-I/O core leaves UTF-8 to its I/O layer and picows to the caller: "
    "their adapters decode (bytes.decode, get_payload_as_utf8_text), both strict"
)
_ENCODE_TEXT_NOTE = "wsproto takes str for a text frame and encodes it to UTF-8 itself"
_ENCODE_LARGE_NOTE = (
    "picows (payloads over 8 KiB) and aiohttp (over 16 KiB) hand the transport the header "
    "and the payload separately, without copying the payload; rfc6455 and websockets return "
    "header and payload as one new bytes object, wsproto as a bytearray (a copy each)"
)

#: Minimum ratios of ours to a peer (messages/s), per case.
TARGETS: dict[str, dict[str, float]] = {
    "decode-text-16-whole": {"websockets": 2.5},
    "decode-text-1048576-whole": {"websockets-py": 2.0},
    "decode-binary-1048576-whole": {"websockets-py": 2.0},
}


# --- settings and cases ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameSettings:
    """How long to measure: ``rounds`` interleaved rounds, each repetition ``min_time_s``.

    ``quick`` measures :data:`QUICK_CASES` only (unless cases are named explicitly).
    """

    rounds: int = 5
    min_time_s: float = 0.2
    quick: bool = False


FULL = FrameSettings()
QUICK = FrameSettings(rounds=2, min_time_s=0.05, quick=True)


@dataclass(frozen=True, slots=True)
class FrameCase:
    """One thing to measure; ``messages``, ``frames`` and ``bytes`` are per op.

    ``bytes`` counts payload before compression; ``reads`` is the read size the stream
    is cut into (None: one buffer); ``fragment`` the payload size of each frame of a
    fragmented message (None: one frame per message).
    """

    key: str
    label: str
    operation: str  # "decode", "encode", "deflate-decode", "deflate-encode"
    opcode: str  # "text", "binary"
    size: int
    messages: int
    frames: int
    bytes: int
    reads: int | None
    fragment: int | None
    deflate: bool
    note: str | None = None


def _size_label(size: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def _messages_for(size: int) -> int:
    return max(1, math.ceil(OP_PAYLOAD_TARGET / size))


def decode_case(
    opcode: str,
    size: int,
    *,
    reads: int | None,
    fragment: int | None = None,
    messages: int | None = None,
) -> FrameCase:
    """A decode case: ``messages`` masked client messages of ``size`` bytes per op."""
    count = messages if messages is not None else _messages_for(size)
    frames_per_message = 1 if fragment is None else max(1, math.ceil(size / fragment))
    read_label = "whole buffer" if reads is None else f"{_size_label(reads)} reads"
    note: str | None
    if fragment is not None:
        key = f"decode-{opcode}-{size}-frag{fragment}"
        label = f"decode, {opcode}, {_size_label(size)} in {_size_label(fragment)} fragments"
        note = _FRAGMENT_NOTE
    else:
        feed = "whole" if reads is None else _size_label(reads).replace(" ", "")
        key = f"decode-{opcode}-{size}-{feed}"
        label = f"decode, {opcode}, {_size_label(size)}"
        note = _TEXT_NOTE if opcode == "text" else None
    return FrameCase(
        key=key,
        label=f"{label}, {read_label}",
        operation="decode",
        opcode=opcode,
        size=size,
        messages=count,
        frames=count * frames_per_message,
        bytes=count * size,
        reads=reads,
        fragment=fragment,
        deflate=False,
        note=note,
    )


def encode_case(opcode: str, size: int, *, messages: int | None = None) -> FrameCase:
    """An encode case: ``messages`` unmasked server frames of ``size`` bytes per op."""
    count = messages if messages is not None else _messages_for(size)
    notes = [_ENCODE_TEXT_NOTE] if opcode == "text" else []
    if size > 8 * 1024:
        notes.append(_ENCODE_LARGE_NOTE)
    return FrameCase(
        key=f"encode-{opcode}-{size}",
        label=f"encode, {opcode}, {_size_label(size)}",
        operation="encode",
        opcode=opcode,
        size=size,
        messages=count,
        frames=count,
        bytes=count * size,
        reads=None,
        fragment=None,
        deflate=False,
        note="; ".join(notes) or None,
    )


def deflate_case(operation: str, *, messages: int | None = None) -> FrameCase:
    """A permessage-deflate case on chat messages: ``deflate-decode`` or ``deflate-encode``."""
    if operation not in ("deflate-decode", "deflate-encode"):
        raise ValueError(f"not a deflate operation: {operation!r}")
    texts = chat_messages(messages if messages is not None else _chat_message_count())
    total = sum(len(text.encode()) for text in texts)
    decoding = operation == "deflate-decode"
    direction = "decode (client frames, 64 KiB reads)" if decoding else "encode (server frames)"
    return FrameCase(
        key=f"{operation}-chat",
        label=f"permessage-deflate {direction}, chat JSON ~{round(total / len(texts))} B",
        operation=operation,
        opcode="text",
        size=round(total / len(texts)),
        messages=len(texts),
        frames=len(texts),
        bytes=total,
        reads=READ_SIZE if decoding else None,
        fragment=None,
        deflate=True,
        note=_DEFLATE_NOTE,
    )


# --- chat text --------------------------------------------------------------------------------

# Common English words, for chat text that compresses like chat text.
_VOCABULARY = (
    "the of and to in is you that it he was for on are as with his they at be this have "
    "from or one had by word but not what all were we when your can said there use an each "
    "which she do how their if will up other about out many then them these so some her "
    "would make like him into time has look two more write go see number no way could "
    "people my than first water been call who oil its now find long down day did get come "
    "made may part over new sound take only little work know place year live me back give "
    "most very after thing our just name good sentence man think say great where help "
    "through much before line right too mean old any same tell boy follow came want show "
    "also around form three small set put end does another well large must big even such "
    "because turn here why ask went men read need land different home us move try kind "
    "hand picture again change off play spell air away animal house point page letter "
    "mother answer found study still learn should world tonight lunch meeting deploy"
)
_WORDS = tuple(_VOCABULARY.split())
_USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy")
_ROOMS = ("lobby", "general", "random", "dev", "ops")


def _sentence(rng: random.Random, length: int) -> str:
    """English-looking words, capitalised and punctuated: at most ``length`` characters (but
    one word at least), and at most a word shorter than that.
    """
    words = [rng.choice(_WORDS)]
    total = len(words[0]) + 1  # with the final punctuation
    while True:
        word = rng.choice(_WORDS)
        if total + 1 + len(word) > length:
            break
        words.append(word)
        total += 1 + len(word)
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice(".?!")


def chat_messages(count: int) -> list[str]:
    """``count`` JSON chat messages of 100-300 bytes, the same every run (seeded)."""
    rng = random.Random(SEED)
    messages = []
    for number in range(count):
        envelope = {"type": "message", "room": rng.choice(_ROOMS), "id": number}
        envelope["user"] = rng.choice(_USERS)
        head = json.dumps({**envelope, "text": ""}, separators=(",", ":"))
        # Up to a word (10 characters) short of a length drawn from 110-300.
        envelope["text"] = _sentence(rng, rng.randint(110, 300) - len(head))
        messages.append(json.dumps(envelope, separators=(",", ":")))
    return messages


def _chat_message_count() -> int:
    """How many chat messages make :data:`OP_PAYLOAD_TARGET` bytes."""
    total = 0
    for count, text in enumerate(chat_messages(OP_PAYLOAD_TARGET // 100), start=1):
        total += len(text.encode())
        if total >= OP_PAYLOAD_TARGET:
            return count
    raise AssertionError("chat messages are at least 100 bytes")  # pragma: no cover


def _all_cases() -> tuple[FrameCase, ...]:
    cases: list[FrameCase] = []
    for opcode in ("text", "binary"):
        for size in SIZES:
            cases.append(decode_case(opcode, size, reads=None))
            cases.append(decode_case(opcode, size, reads=READ_SIZE))
    for opcode in ("text", "binary"):
        cases.append(decode_case(opcode, 1024 * 1024, reads=READ_SIZE, fragment=FRAGMENT_SIZE))
    for opcode in ("text", "binary"):
        cases.extend(encode_case(opcode, size) for size in SIZES)
    cases.append(deflate_case("deflate-decode"))
    cases.append(deflate_case("deflate-encode"))
    return tuple(cases)


#: Every case of a full run, in the order of the tables.
CASES = _all_cases()
#: The cases of a quick run: the targets' neighbourhood and one of each kind.
QUICK_CASES = (
    "decode-text-16-whole",
    "decode-text-125-whole",
    "decode-text-1048576-whole",
    "decode-binary-1048576-64KiB",
    "encode-text-16",
    "encode-text-1048576",
    "deflate-decode-chat",
    "deflate-encode-chat",
)


# --- workloads --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Workload:
    """The data of one op: ``payloads`` (bytes) to encode, or ``chunks`` to decode into
    ``messages`` (``str`` for text, bytes for binary).
    """

    payloads: tuple[bytes, ...]
    messages: tuple[str | bytes, ...]
    chunks: tuple[bytes, ...]


def _text_payload(rng: random.Random, size: int) -> bytes:
    # ASCII: any cut is valid UTF-8. A sentence may fall a word short of its length.
    return _sentence(rng, size + 16).encode()[:size]


def build_workload(case: FrameCase) -> Workload:
    """Generate a case's data, the same every run; client frames are masked with seeded keys.

    rfc6455's client side writes the client frames (fragmented or compressed as the case
    says); every adapter must read them back exactly, which checks the writer too.
    """
    rng = random.Random(f"{SEED}-{case.key}")
    if case.deflate:
        texts = chat_messages(case.messages)
        payloads = tuple(text.encode() for text in texts)
        messages: tuple[str | bytes, ...] = tuple(texts)
    else:
        if case.opcode == "text":
            payload = _text_payload(rng, case.size)
            messages = (payload.decode(),) * case.messages
        else:
            payload = rng.randbytes(case.size)
            messages = (payload,) * case.messages
        payloads = (payload,) * case.messages
    if case.operation in ("encode", "deflate-encode"):
        return Workload(payloads, messages, ())
    client = Connection(
        Role.CLIENT,
        state=State.OPEN,
        max_message_size=MAX_MESSAGE_SIZE,
        fragment_size=case.fragment,
        extension=_rfc6455_deflate(is_server=False) if case.deflate else None,
        mask_source=rng.randbytes,
    )
    opcode = Opcode.TEXT if case.opcode == "text" else Opcode.BINARY
    stream = b"".join([client.send_message(opcode, payload) for payload in payloads])
    if case.reads is None:
        chunks: tuple[bytes, ...] = (stream,)
    else:
        chunks = tuple(stream[i : i + case.reads] for i in range(0, len(stream), case.reads))
    return Workload(payloads, messages, chunks)


def _rfc6455_deflate(*, is_server: bool) -> PerMessageDeflate:
    """rfc6455's codec as negotiated with a browser's default offer."""
    if is_server:
        negotiated = server_negotiate(
            _BROWSER_OFFER, DeflateOptions(), max_message_size=MAX_MESSAGE_SIZE
        )
        assert negotiated is not None and negotiated[0] == _NEGOTIATED, negotiated
        return negotiated[1]
    return PerMessageDeflate(
        is_server=False,
        local_no_context_takeover=False,
        remote_no_context_takeover=False,
        local_max_window_bits=DEFLATE_WINDOW_BITS,
        remote_max_window_bits=DEFLATE_WINDOW_BITS,
        options=DeflateOptions(),
        max_message_size=MAX_MESSAGE_SIZE,
    )


# --- verification -----------------------------------------------------------------------------


class VerificationError(AssertionError):
    """An adapter produced wrong messages or frames: its timings would mean nothing."""


def verify(case: FrameCase, workload: Workload, result: Sequence[Any]) -> None:
    """Check one op's result: decoded messages equal the originals, or encoded frames decode
    back to the payloads (with rfc6455's ``FrameParser``, and its inflater for deflate).
    """
    if case.operation in ("decode", "deflate-decode"):
        _verify_messages(case, workload, result)
    else:
        _verify_frames(case, workload, result)


def _verify_messages(case: FrameCase, workload: Workload, messages: Sequence[Any]) -> None:
    if len(messages) != len(workload.messages):
        raise VerificationError(f"{len(messages)} messages, expected {len(workload.messages)}")
    for index, (message, expected) in enumerate(zip(messages, workload.messages, strict=True)):
        if case.opcode == "text":
            ok = type(message) is str and message == expected
        else:
            ok = isinstance(message, bytes | bytearray | memoryview) and message == expected
        if not ok:
            raise VerificationError(
                f"message {index}: {_preview(message)} is not {_preview(expected)}"
            )


def _verify_frames(case: FrameCase, workload: Workload, written: Sequence[Any]) -> None:
    stream = b"".join(bytes(chunk) for chunk in written)
    parser = FrameParser(
        require_mask=False,
        max_data_payload=MAX_MESSAGE_SIZE,
        allowed_rsv=0x40 if case.deflate else 0,
    )
    parser.feed(stream)
    parsed = []
    while (frame := parser.next_frame()) is not None:
        parsed.append(frame)
    if parser.buffered:
        raise VerificationError(f"{parser.buffered} bytes after the last whole frame")
    if len(parsed) != len(workload.payloads):
        raise VerificationError(f"{len(parsed)} frames, expected {len(workload.payloads)}")
    opcode = Opcode.TEXT if case.opcode == "text" else Opcode.BINARY
    for index, frame in enumerate(parsed):
        if frame.opcode is not opcode or not frame.fin or frame.rsv1 is not case.deflate:
            raise VerificationError(
                f"frame {index}: opcode {frame.opcode!r}, fin {frame.fin}, rsv1 {frame.rsv1}"
            )
    if case.deflate:
        client = Connection(
            Role.CLIENT,
            state=State.OPEN,
            max_message_size=MAX_MESSAGE_SIZE,
            extension=PerMessageDeflate(
                is_server=False,
                local_no_context_takeover=False,
                remote_no_context_takeover=False,
                local_max_window_bits=15,
                remote_max_window_bits=15,  # inflate whatever window the server used
                options=DeflateOptions(),
                max_message_size=MAX_MESSAGE_SIZE,
            ),
        )
        events = client.receive_data(stream)
        if client.failure is not None:
            raise VerificationError(f"the frames do not inflate: {client.failure}")
        messages = [event.data for event in events if isinstance(event, TextMessage)]
        _verify_messages(case, workload, messages)
        return
    for index, (frame, payload) in enumerate(zip(parsed, workload.payloads, strict=True)):
        if frame.payload != payload:
            raise VerificationError(
                f"frame {index}: payload {_preview(frame.payload)} is not {_preview(payload)}"
            )


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} chars)"


# --- adapters ---------------------------------------------------------------------------------

#: One op: feed a case's stream (or encode its payloads); return the messages (or the
#: bytes written, in pieces).
Operation = Callable[[], list[Any]]


class Unsupported(Exception):
    """This implementation cannot do this case; the message says why."""


class Adapter:
    """How one implementation decodes and encodes; subclasses import their library lazily.

    ``operation`` returns the op for a case, with the connection it needs already set up
    (outside the timed region) and reused by every call.
    """

    name = ""
    package = ""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self.available = False
        self.reason: str | None = None
        self.version: str | None = None
        self.label = self.name
        try:
            self.load()
        except ImportError as error:
            self.reason = f"not importable: {error}"
        else:
            self.available = True

    def load(self) -> None:
        """Import the library and describe it (label, version); ImportError: unavailable."""
        raise NotImplementedError

    def operation(self, case: FrameCase, workload: Workload) -> Operation:
        """The op for ``case``; raises :class:`Unsupported` with a reason."""
        text = case.opcode == "text"
        if case.operation in ("decode", "deflate-decode"):
            return self.decoder(list(workload.chunks), text=text, deflate=case.deflate)
        return self.encoder(list(workload.payloads), text=text, deflate=case.deflate)

    def decoder(self, chunks: list[bytes], *, text: bool, deflate: bool) -> Operation:
        """Server side: masked client frames in, messages out."""
        raise Unsupported("cannot decode")

    def encoder(self, payloads: list[bytes], *, text: bool, deflate: bool) -> Operation:
        """Server side: payloads in, unmasked frames out."""
        raise Unsupported("cannot encode")

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """Wrap verification, calibration and every repetition (websockets-py's masking)."""
        yield

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """An event loop for objects that want one when made (futures); nothing runs on it."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def close(self) -> None:
        """Release what the adapter holds (its event loop)."""
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def describe(self) -> dict[str, Any]:
        """The ``implementations`` entry of the results."""
        return {
            "label": self.label,
            "version": self.version,
            "available": self.available,
            "reason": self.reason,
        }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


class Rfc6455Adapter(Adapter):
    """Ours: ``Connection.receive_data``, ``encode_frame``, ``Connection.send_message``."""

    name = "rfc6455"

    def load(self) -> None:
        self.version = rfc6455.__version__
        self.label = f"rfc6455 {self.version} (ours, pure Python)"

    def decoder(self, chunks: list[bytes], *, text: bool, deflate: bool) -> Operation:
        connection = Connection(
            Role.SERVER,
            state=State.OPEN,
            max_message_size=MAX_MESSAGE_SIZE,
            extension=_rfc6455_deflate(is_server=True) if deflate else None,
        )
        receive = connection.receive_data

        def decode() -> list[Any]:
            messages = []
            for chunk in chunks:
                for event in receive(chunk):
                    if type(event) is TextMessage or type(event) is BinaryMessage:
                        messages.append(event.data)
            return messages

        return decode

    def encoder(self, payloads: list[bytes], *, text: bool, deflate: bool) -> Operation:
        opcode = Opcode.TEXT if text else Opcode.BINARY
        if deflate:
            connection = Connection(
                Role.SERVER,
                state=State.OPEN,
                max_message_size=MAX_MESSAGE_SIZE,
                extension=_rfc6455_deflate(is_server=True),
            )
            send = connection.send_message
            return lambda: [send(opcode, payload) for payload in payloads]
        return lambda: [encode_frame(opcode, payload) for payload in payloads]


class WebsocketsAdapter(Adapter):
    """websockets' sans-I/O ``Protocol``, with its C ``apply_mask`` when built."""

    name = "websockets"
    package = "websockets"

    def load(self) -> None:
        self.frames: Any = importlib.import_module("websockets.frames")
        self.protocol: Any = importlib.import_module("websockets.protocol")
        self.utils: Any = importlib.import_module("websockets.utils")
        self.deflate: Any = importlib.import_module("websockets.extensions.permessage_deflate")
        self.version = _version(self.package)
        self.has_c_masking = self.frames.apply_mask is not self.utils.apply_mask
        masking = "C masking" if self.has_c_masking else "no C extension: pure-Python masking"
        self.label = f"websockets {self.version} ({masking})"

    def _new_protocol(self, deflate: bool) -> Any:
        protocol = self.protocol.Protocol(
            self.protocol.Side.SERVER, state=self.protocol.State.OPEN, max_size=MAX_MESSAGE_SIZE
        )
        if deflate:
            # What websockets' enable_server_permessage_deflate() agrees with a browser.
            protocol.extensions = [
                self.deflate.PerMessageDeflate(
                    remote_no_context_takeover=False,
                    local_no_context_takeover=False,
                    remote_max_window_bits=DEFLATE_WINDOW_BITS,
                    local_max_window_bits=DEFLATE_WINDOW_BITS,
                    compress_settings={"memLevel": DEFLATE_MEM_LEVEL},
                )
            ]
        return protocol

    def decoder(self, chunks: list[bytes], *, text: bool, deflate: bool) -> Operation:
        protocol = self._new_protocol(deflate)
        receive = protocol.receive_data
        events_received = protocol.events_received
        text_opcode = self.frames.Opcode.TEXT
        continuation = self.frames.Opcode.CONT

        def decode() -> list[Any]:
            messages: list[Any] = []
            parts: list[bytes] = []
            is_text = False
            for chunk in chunks:
                receive(chunk)
                for frame in events_received():
                    # Protocol yields frames; its I/O layer assembles and decodes messages.
                    if frame.opcode is not continuation:
                        is_text = frame.opcode is text_opcode
                    if not frame.fin:
                        parts.append(frame.data)
                        continue
                    data = frame.data
                    if parts:
                        parts.append(data)
                        data = b"".join(parts)
                        parts = []
                    messages.append(data.decode() if is_text else data)
            return messages

        return decode

    def encoder(self, payloads: list[bytes], *, text: bool, deflate: bool) -> Operation:
        if deflate:
            protocol = self._new_protocol(deflate=True)
            send = protocol.send_text if text else protocol.send_binary
            data_to_send = protocol.data_to_send

            def encode_compressed() -> list[Any]:
                written = []
                for payload in payloads:
                    send(payload)
                    written.extend(data_to_send())
                return written

            return encode_compressed
        frame_class = self.frames.Frame
        opcode = self.frames.Opcode.TEXT if text else self.frames.Opcode.BINARY
        return lambda: [frame_class(opcode, payload).serialize(mask=False) for payload in payloads]


class WebsocketsPurePythonAdapter(WebsocketsAdapter):
    """websockets with ``websockets.utils.apply_mask`` swapped in, as without its C extension."""

    name = "websockets-py"

    def load(self) -> None:
        super().load()
        self.label = f"websockets {self.version} (pure-Python masking)"

    def encoder(self, payloads: list[bytes], *, text: bool, deflate: bool) -> Operation:
        raise Unsupported("server frames are not masked: the same code as websockets")

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        original = self.frames.apply_mask
        self.frames.apply_mask = self.utils.apply_mask
        try:
            yield
        finally:
            self.frames.apply_mask = original


class WsprotoAdapter(Adapter):
    """python-hyper's wsproto: ``Connection`` events, ``FrameProtocol.send_data``."""

    name = "wsproto"
    package = "wsproto"

    def load(self) -> None:
        self.connection: Any = importlib.import_module("wsproto.connection")
        self.events: Any = importlib.import_module("wsproto.events")
        self.extensions: Any = importlib.import_module("wsproto.extensions")
        self.frame_protocol: Any = importlib.import_module("wsproto.frame_protocol")
        self.version = _version(self.package)
        self.label = f"wsproto {self.version} (pure Python)"

    def _extensions(self, deflate: bool) -> list[Any]:
        if not deflate:
            return []
        extension = self.extensions.PerMessageDeflate(
            client_max_window_bits=DEFLATE_WINDOW_BITS,
            server_max_window_bits=DEFLATE_WINDOW_BITS,
        )
        # What wsproto's handshake does with a browser's offer.
        extension.accept("permessage-deflate; client_max_window_bits")
        return [extension]

    def decoder(self, chunks: list[bytes], *, text: bool, deflate: bool) -> Operation:
        connection = self.connection.Connection(
            self.connection.ConnectionType.SERVER, extensions=self._extensions(deflate)
        )
        receive = connection.receive_data
        events = connection.events
        text_message = self.events.TextMessage
        bytes_message = self.events.BytesMessage

        def decode() -> list[Any]:
            messages: list[Any] = []
            parts: list[Any] = []
            for chunk in chunks:
                receive(chunk)
                for event in events():
                    kind = type(event)
                    if kind is not text_message and kind is not bytes_message:
                        continue
                    # wsproto delivers what has arrived: parts of frames and of messages.
                    if not event.message_finished:
                        parts.append(event.data)
                        continue
                    data = event.data
                    if parts:
                        parts.append(data)
                        data = "".join(parts) if kind is text_message else b"".join(parts)
                        parts = []
                    messages.append(data)
            return messages

        return decode

    def encoder(self, payloads: list[bytes], *, text: bool, deflate: bool) -> Operation:
        # wsproto picks the opcode from the type: str for text (it encodes), bytes for binary.
        data: list[str | bytes] = [p.decode() for p in payloads] if text else list(payloads)
        if deflate:
            connection = self.connection.Connection(
                self.connection.ConnectionType.SERVER, extensions=self._extensions(deflate)
            )
            message = self.events.TextMessage if text else self.events.BytesMessage
            send = connection.send
            return lambda: [send(message(data=item)) for item in data]
        protocol = self.frame_protocol.FrameProtocol(client=False, extensions=[])
        send_data = protocol.send_data
        return lambda: [send_data(item, fin=True) for item in data]


def _run_to_completion(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits, without an event loop (as when data is at hand)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the coroutine waited for the event loop")


class _MemoryTransport:
    """An asyncio transport stand-in that keeps what is written; for aiohttp and picows.

    ``get_write_buffer_size`` reports pending data: picows then hands its frames to
    ``write`` instead of calling ``send(2)`` on the socket itself.
    """

    def __init__(self) -> None:
        self.written: list[Any] = []

    def take(self) -> list[Any]:
        """Return and forget what was written."""
        written = self.written
        self.written = []
        return written

    def write(self, data: Any) -> None:
        self.written.append(data)

    def writelines(self, chunks: Sequence[Any]) -> None:
        # picows passes a view of the header buffer it reuses: copy views only.
        for chunk in chunks:
            self.written.append(bytes(chunk) if type(chunk) is memoryview else chunk)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = {
            "socket": _FakeSocket(),
            "peername": ("127.0.0.1", 50000),
            "sockname": ("127.0.0.1", 8080),
        }
        return extra.get(name, default)


class _FakeSocket:
    """Just enough of a socket for picows' ``connection_made`` (options, a descriptor)."""

    def fileno(self) -> int:
        return -1

    def setsockopt(self, *args: Any) -> None:
        pass

    def getsockopt(self, *args: Any) -> int:
        return 0


class _AiohttpProtocol:
    """What aiohttp's queue and writer ask of their protocol: flow-control flags."""

    _reading_paused = False
    _paused = False

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        self._reading_paused = False


class AiohttpAdapter(Adapter):
    """aiohttp's ``WebSocketReader`` (Cython when built) and ``WebSocketWriter``."""

    name = "aiohttp"
    package = "aiohttp"

    def load(self) -> None:
        self.reader: Any = importlib.import_module("aiohttp._websocket.reader")
        self.writer: Any = importlib.import_module("aiohttp._websocket.writer")
        self.message_type: Any = importlib.import_module("aiohttp._websocket.models").WSMsgType
        # The queue's limit as aiohttp's server and client set it.
        self.queue_limit: int = importlib.import_module("aiohttp.helpers").DEFAULT_CHUNK_SIZE
        self.version = _version(self.package)
        compiled = self.reader.WebSocketReader.__module__.endswith("_c")
        self.label = f"aiohttp {self.version} ({'C' if compiled else 'pure-Python'} reader)"

    def decoder(self, chunks: list[bytes], *, text: bool, deflate: bool) -> Operation:
        # The queue makes futures on its loop only when it must wait, which it never does here.
        queue = self.reader.WebSocketDataQueue(_AiohttpProtocol(), self.queue_limit, loop=self.loop)
        reader = self.reader.WebSocketReader(
            queue, MAX_MESSAGE_SIZE, compress=deflate, decode_text=True
        )
        feed = reader.feed_data
        pending = queue._buffer
        read = queue.read

        async def receive_all() -> list[Any]:
            messages = []
            for chunk in chunks:
                feed(chunk)
                # Drained after each read as the application would; the reader pauses when
                # the queue is full and resumes as it drains.
                while pending:
                    message = await read()
                    messages.append(message.data)
            return messages

        return lambda: _run_to_completion(receive_all())

    def encoder(self, payloads: list[bytes], *, text: bool, deflate: bool) -> Operation:
        transport = _MemoryTransport()
        writer = self.writer.WebSocketWriter(
            _AiohttpProtocol(),
            transport,
            use_mask=False,
            compress=DEFLATE_WINDOW_BITS if deflate else 0,
        )
        send_frame = writer.send_frame
        opcode = self.message_type.TEXT if text else self.message_type.BINARY

        async def send_all() -> None:
            for payload in payloads:
                await send_frame(payload, opcode)

        def encode() -> list[Any]:
            _run_to_completion(send_all())
            return transport.take()

        return encode


_UPGRADE_REQUEST = (
    b"GET / HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8080\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


class PicowsAdapter(Adapter):
    """picows' Cython ``WSProtocol`` and ``WSTransport``, on in-memory transports."""

    name = "picows"
    package = "picows"

    def load(self) -> None:
        self.picows: Any = importlib.import_module("picows")
        self.protocol_class: Any = importlib.import_module("picows.picows").WSProtocol
        self.version = _version(self.package)
        self.label = f"picows {self.version} (Cython)"
        self.listener_class = _picows_listener_class(self.picows)
        self.logger = logging.getLogger("bench.frames.picows")

    def decoder(self, chunks: list[bytes], *, text: bool, deflate: bool) -> Operation:
        if deflate:
            raise Unsupported("picows has no permessage-deflate")
        listener = self.listener_class()

        async def create() -> Any:
            # WSProtocol's constructor needs a running loop; ws_create_server's arguments.
            return self.protocol_class(
                None,  # host and port: server side
                None,  # path
                False,  # is_client_side
                lambda request: listener,
                self.logger,
                True,  # disconnect_on_exception
                None,  # websocket_handshake_timeout: no timer
                False,  # enable_auto_ping
                20,
                20,
                self.picows.WSAutoPingStrategy.PING_WHEN_IDLE,
                True,  # enable_auto_pong
                MAX_MESSAGE_SIZE,  # max_frame_size
                None,  # extra_headers
                16 * 1024,  # read_buffer_init_size, the default
            )

        protocol = self.loop.run_until_complete(create())
        protocol.connection_made(_MemoryTransport())
        _feed_buffered(protocol, _UPGRADE_REQUEST)
        if not listener.connected:
            raise RuntimeError("picows did not accept the upgrade request")

        def decode() -> list[Any]:
            listener.messages = []
            for chunk in chunks:
                _feed_buffered(protocol, chunk)
            return listener.messages  # type: ignore[no-any-return]

        return decode

    def encoder(self, payloads: list[bytes], *, text: bool, deflate: bool) -> Operation:
        if deflate:
            raise Unsupported("picows has no permessage-deflate")
        transport = _MemoryTransport()
        ws_transport = self.picows.WSTransport(False, transport, self.logger, self.loop)
        send = ws_transport.send
        message_type = self.picows.WSMsgType.TEXT if text else self.picows.WSMsgType.BINARY

        def encode() -> list[Any]:
            for payload in payloads:
                send(message_type, payload)
            return transport.take()

        return encode


def _feed_buffered(protocol: Any, data: bytes) -> None:
    """Hand ``data`` to a BufferedProtocol as asyncio's ``recv_into`` would: into the buffer
    it offers, as much as fits each time.
    """
    view = memoryview(data)
    while view:
        buffer = protocol.get_buffer(-1)
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]


def _picows_listener_class(picows: Any) -> type:
    """A listener that assembles messages from picows' frames (picows does not)."""
    text_type = picows.WSMsgType.TEXT
    continuation = picows.WSMsgType.CONTINUATION

    class MessageListener(picows.WSListener):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.connected = False
            self.messages: list[Any] = []
            self.parts: list[bytes] = []
            self.is_text = False

        def on_ws_connected(self, transport: Any) -> None:
            self.connected = True

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            msg_type = frame.msg_type
            if frame.fin and not self.parts:
                if msg_type == text_type:
                    self.messages.append(frame.get_payload_as_utf8_text())
                else:
                    self.messages.append(frame.get_payload_as_bytes())
                return
            if msg_type != continuation:
                self.is_text = msg_type == text_type
            self.parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                data = b"".join(self.parts)
                self.parts = []
                self.messages.append(data.decode() if self.is_text else data)

    return MessageListener


_ADAPTERS: dict[str, type[Adapter]] = {
    "rfc6455": Rfc6455Adapter,
    "websockets": WebsocketsAdapter,
    "websockets-py": WebsocketsPurePythonAdapter,
    "wsproto": WsprotoAdapter,
    "aiohttp": AiohttpAdapter,
    "picows": PicowsAdapter,
}


def load_adapters(names: Sequence[str] | None = None) -> dict[str, Adapter]:
    """The adapters for ``names`` (default: all), in table order; missing libraries are
    marked unavailable, never raised. Names that are not frame implementations are ignored
    (``python -m bench --impl`` also names servers).
    """
    wanted = IMPLEMENTATIONS if names is None else [n for n in IMPLEMENTATIONS if n in names]
    return {name: _ADAPTERS[name]() for name in wanted}


# --- the timer ----------------------------------------------------------------------------------


def _time_ns(operation: Operation, loops: int) -> int:
    """Run ``operation`` ``loops`` times with the garbage collector off; nanoseconds."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(loops):
            operation()
        return time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def _calibrate(operation: Operation, min_time_s: float) -> int:
    """The loop count that makes one repetition last at least ``min_time_s``."""
    loops = 1
    while True:
        elapsed_s = _time_ns(operation, loops) / 1e9
        if elapsed_s >= min_time_s:
            return loops
        # Aim 20% past the minimum, so that noise rarely leaves a repetition short.
        estimate = math.ceil(loops * min_time_s * 1.2 / max(elapsed_s, 1e-9))
        loops = min(max(loops + 1, estimate), loops * 100)


@dataclass(slots=True)
class _Measured:
    """One (case, implementation) pair ready to time."""

    adapter: Adapter
    operation: Operation
    loops: int


def run_frames(
    settings: FrameSettings,
    *,
    implementations: Sequence[str] | None = None,
    cases: Sequence[str] | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure ``cases`` (keys; default: every case, or :data:`QUICK_CASES` when quick) for
    ``implementations`` (default: all) and return the ``frames`` section of the results.

    Raises :class:`VerificationError` when an adapter gets a case wrong, and ValueError for
    an unknown case key.
    """
    selected = _select_cases(settings, cases)
    adapters = load_adapters(implementations)
    try:
        for adapter in adapters.values():
            if not adapter.available:
                progress(f"frames: {adapter.name} unavailable ({adapter.reason})")
        case_entries, plans = _prepare(selected, adapters, settings, progress)
        repetitions = _measure_rounds(selected, adapters, plans, settings, progress)
    finally:
        for adapter in adapters.values():
            adapter.close()
    return {
        "settings": asdict(settings),
        "ours": OURS,
        "implementations": {name: adapter.describe() for name, adapter in adapters.items()},
        "cases": case_entries,
        "repetitions": repetitions,
        "summary": _summarize(selected, repetitions),
    }


def _select_cases(settings: FrameSettings, keys: Sequence[str] | None) -> list[FrameCase]:
    by_key = {case.key: case for case in CASES}
    if keys is None:
        keys = QUICK_CASES if settings.quick else [case.key for case in CASES]
    unknown = [key for key in keys if key not in by_key]
    if unknown:
        raise ValueError(f"unknown frame cases: {', '.join(unknown)}")
    return [by_key[key] for key in keys]


def _prepare(
    cases: list[FrameCase],
    adapters: dict[str, Adapter],
    settings: FrameSettings,
    progress: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, _Measured]]]:
    """Build each case's data, set up every adapter's op, verify it once and calibrate it."""
    entries = []
    plans: dict[str, dict[str, _Measured]] = {}
    for case in cases:
        workload = build_workload(case)
        plan: dict[str, _Measured] = {}
        skipped: dict[str, str] = {}
        for name, adapter in adapters.items():
            if not adapter.available:
                skipped[name] = adapter.reason or "unavailable"
                continue
            try:
                operation = adapter.operation(case, workload)
            except Unsupported as reason:
                skipped[name] = str(reason)
                continue
            with adapter.patched():
                try:
                    verify(case, workload, operation())
                except VerificationError as error:
                    raise VerificationError(f"{name} got {case.key} wrong: {error}") from None
                loops = _calibrate(operation, settings.min_time_s)
            plan[name] = _Measured(adapter, operation, loops)
        plans[case.key] = plan
        loops_text = ", ".join(f"{name} {measured.loops}" for name, measured in plan.items())
        progress(f"frames verified {case.key}; loops: {loops_text}")
        entry = asdict(case)
        note = entry.pop("note")
        entries.append({**entry, "impls": list(plan), "skipped": skipped, "note": note})
    return entries, plans


def _measure_rounds(
    cases: list[FrameCase],
    adapters: dict[str, Adapter],
    plans: dict[str, dict[str, _Measured]],
    settings: FrameSettings,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    names = list(adapters)
    repetitions = []
    for round_number in range(1, settings.rounds + 1):
        shift = (round_number - 1) % max(1, len(names))
        order = names[shift:] + names[:shift]
        for case in cases:
            plan = plans[case.key]
            for name in order:
                measured = plan.get(name)
                if measured is None:
                    continue
                with measured.adapter.patched():
                    elapsed_ns = _time_ns(measured.operation, measured.loops)
                seconds = elapsed_ns / 1e9
                per_op = seconds / measured.loops
                repetitions.append(
                    {
                        "case": case.key,
                        "impl": name,
                        "round": round_number,
                        "loops": measured.loops,
                        "seconds": seconds,
                        "seconds_per_op": per_op,
                    }
                )
                progress(
                    f"frames round {round_number}/{settings.rounds}  {case.key}  {name}  "
                    f"{_format_rate(case, per_op)}"
                )
    return repetitions


def _summarize(cases: list[FrameCase], repetitions: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for case in cases:
        times: dict[str, list[float]] = {}
        for repetition in repetitions:
            if repetition["case"] == case.key:
                times.setdefault(repetition["impl"], []).append(repetition["seconds_per_op"])
        impls = {}
        for name, per_op in times.items():
            median = statistics.median(per_op)
            impls[name] = {
                "median_s": median,
                "min_s": min(per_op),
                "max_s": max(per_op),
                "messages_per_s": case.messages / median,
                "bytes_per_s": case.bytes / median,
                "counted": len(per_op),
            }
        ratios = {}
        if OURS in impls:
            ours = impls[OURS]["messages_per_s"]
            ratios = {
                name: ours / entry["messages_per_s"]
                for name, entry in impls.items()
                if name != OURS
            }
        targets = TARGETS.get(case.key, {})
        met = {
            peer: (ratios[peer] >= target if peer in ratios else None)
            for peer, target in targets.items()
        }
        summary[case.key] = {
            "impls": impls,
            "ratios": ratios,
            "targets": dict(targets),
            "met": met,
        }
    return summary


# --- output ------------------------------------------------------------------------------------


def _uses_bytes_rate(case: FrameCase) -> bool:
    """Large messages read best in MB/s, small ones in messages/s."""
    return not case.deflate and case.size >= 1024


def _format_rate(case: FrameCase, seconds_per_op: float) -> str:
    messages_per_s = case.messages / seconds_per_op
    rate = _format_count(messages_per_s) + " msg/s"
    if _uses_bytes_rate(case):
        rate += f"  {case.bytes / seconds_per_op / 1e6:,.0f} MB/s"
    return rate


def _format_count(value: float) -> str:
    for suffix, scale in ((" M", 1e6), (" k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def format_frames_table(result: dict[str, Any]) -> str:
    """Two plain-text tables: each implementation's throughput per case (MB/s for messages
    of 1 KiB and more, messages/s below), then ours / peer in messages/s (>1: ours faster),
    with the targets.
    """
    ours = result["ours"]
    names = [name for name in result["implementations"] if name in _measured_names(result)]
    peers = [name for name in names if name != ours]
    cases = result["cases"]
    rates = [["case", "unit", *names]]
    for case in cases:
        impls = result["summary"][case["key"]]["impls"]
        in_bytes = not case["deflate"] and case["size"] >= 1024
        row = [case["key"], "MB/s" if in_bytes else "msg/s"]
        for name in names:
            entry = impls.get(name)
            if entry is None:
                row.append("-")
            elif in_bytes:
                row.append(f"{entry['bytes_per_s'] / 1e6:,.0f}")
            else:
                row.append(_format_count(entry["messages_per_s"]).replace(" ", ""))
        rates.append(row)
    lines = ["frame codec throughput (median of rounds; '-' not measured)", *_align(rates)]
    if peers:
        ratios = [["case", *peers]]
        for case in cases:
            entry = result["summary"][case["key"]]
            row = [case["key"]]
            for name in peers:
                ratio = entry["ratios"].get(name)
                cell = "-" if ratio is None else f"{ratio:.2f}"
                if name in entry["targets"]:
                    verdict = {True: "ok", False: "MISSED", None: "?"}[entry["met"][name]]
                    cell += f" (target {entry['targets'][name]:g}: {verdict})"
                row.append(cell)
            ratios.append(row)
        lines += ["", f"ours ({ours}) / peer, messages/s: >1 means ours is faster"]
        lines += _align(ratios)
    skipped = {
        f"{name}: {reason}"
        for case in cases
        for name, reason in case["skipped"].items()
        if name in result["implementations"]
    }
    if skipped:
        lines += ["", "skipped:", *(f"  {line}" for line in sorted(skipped))]
    return "\n".join(lines)


def _align(rows: list[list[str]]) -> list[str]:
    """Columns two spaces apart: the first left-aligned, the others right-aligned."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def _measured_names(result: dict[str, Any]) -> set[str]:
    return {name for case in result["cases"] for name in case["impls"]}


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: ``python -m bench.frames [--quick] [--rounds N] [--impl NAME]...
    [--case KEY]... [--output FILE]``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m bench.frames", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a subset, in under a minute")
    parser.add_argument("--rounds", type=int, help="rounds (default: 5, quick: 2)")
    parser.add_argument(
        "--impl", action="append", choices=IMPLEMENTATIONS, help="implementation (repeatable)"
    )
    parser.add_argument(
        "--case",
        action="append",
        choices=[case.key for case in CASES],
        metavar="KEY",
        help="case key, e.g. decode-text-16-whole (repeatable)",
    )
    parser.add_argument("--output", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.rounds:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    started = time.monotonic()
    result = run_frames(
        settings,
        implementations=args.impl,
        cases=args.case,
        progress=lambda line: print(line, flush=True),
    )
    print()
    print(format_frames_table(result))
    print(f"\n{time.monotonic() - started:.1f} s")
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
