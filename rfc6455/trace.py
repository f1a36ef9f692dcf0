"""A wire tracer for people learning the protocol: every handshake and frame, field by field.

Two ways to use it::

    python -m rfc6455.trace --decode "81 85 37 fa 21 3d 7f 9f 4d 51 58" [--client|--server]
    python -m rfc6455.trace --listen 127.0.0.1:9000 --upstream 127.0.0.1:9001 [--json]

``--decode`` explains a captured byte string; ``--listen`` is a transparent TCP proxy that
forwards bytes unchanged in both directions and explains what passes.

Decoding is a lenient header walk of its own (``TraceStream``) rather than
``FrameParser.next_frame``: a tracer must show the frame a peer got wrong, not stop at it.
The walk reads the header layout of section 5.2, which describes itself (the length and
the MASK bit say where the payload starts and ends), so a broken rule does not lose the
thread. Each complete header is then handed alone to a ``FrameParser`` configured for
the sender's role, and the ``RemoteProtocolError`` it raises is reported as the problem,
in the library's own words. The walk keeps at most ``payload_limit`` bytes of a payload
(125 for a control frame, to show a whole close reason) and skips the rest, so its memory
is bounded however large the frames.

The printing functions (``format_frame``, ``format_handshake``, ``to_json``) are pure:
records in, lines out.
"""

from __future__ import annotations

import argparse
import codecs
import collections
import contextlib
import errno
import ipaddress
import json
import selectors
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

from rfc6455.codes import CloseCode, Opcode, is_sendable_close_code
from rfc6455.errors import InvalidHandshake, RemoteProtocolError
from rfc6455.frames import MAX_CONTROL_PAYLOAD, FrameParser, apply_mask
from rfc6455.handshake import accept_key
from rfc6455.http import Headers, parse_request_head, parse_response_head

__all__ = [
    "CLIENT_TO_SERVER",
    "DEFAULT_PAYLOAD_LIMIT",
    "SERVER_TO_CLIENT",
    "HandshakeContext",
    "TraceProxy",
    "TraceRecord",
    "TraceStream",
    "TracedFrame",
    "TracedHandshake",
    "TracedProblem",
    "decode",
    "format_frame",
    "format_handshake",
    "format_record",
    "main",
    "to_json",
]

#: How many payload bytes are shown before the rest is left out (``--payload-limit``).
DEFAULT_PAYLOAD_LIMIT = 64
#: The proxy stops reading from a side while more than this waits to be written to the
#: other side, and starts again below a quarter of it (asyncio's water marks).
HIGH_WATER = 64 * 1024
LOW_WATER = HIGH_WATER // 4
#: How much the proxy reads from a socket at once.
RECV_SIZE = 64 * 1024
#: Seconds the proxy waits for the upstream to accept a connection.
CONNECT_TIMEOUT = 5.0

CLIENT_TO_SERVER = "client → server"
SERVER_TO_CLIENT = "server → client"

_LENGTH_ENCODINGS = {2: "7-bit", 4: "16-bit extended", 10: "64-bit extended"}
_OPCODE_NAMES = {opcode.value: opcode.name for opcode in Opcode}

# One-line meanings of the header fields that matter to WebSocket (RFC 6455 section 4).
_HEADER_MEANINGS = {
    "host": "the server's host and port; required in every HTTP/1.1 request (4.1)",
    "upgrade": "asks to switch this connection to another protocol; must be 'websocket' (4.1)",
    "connection": "hop-by-hop options; an upgrade lists 'Upgrade' so proxies pass it on (4.1)",
    "sec-websocket-key": "16 random bytes, base64; the server proves it read them (4.1)",
    "sec-websocket-version": "protocol version; 13 is RFC 6455 (4.1)",
    "sec-websocket-accept": "base64(SHA-1(key + GUID)): the server understood the key (4.2.2)",
    "sec-websocket-protocol": "subprotocols offered by the client, or the one chosen (4.1)",
    "sec-websocket-extensions": "extensions offered or accepted, e.g. permessage-deflate (9.1)",
    "origin": "the page that opened the socket; servers check it against CSWSH (10.2)",
}


# --- records ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TracedFrame:
    """One frame as seen on the wire; ``payload`` is unmasked and at most the limit."""

    offset: int
    fin: bool
    rsv1: bool
    rsv2: bool
    rsv3: bool
    opcode: int
    masked: bool
    length: int
    length_encoding: str
    mask_key: bytes | None
    payload: bytes
    problems: tuple[str, ...] = ()
    direction: str | None = None
    connection: int | None = None

    @property
    def opcode_name(self) -> str:
        """The opcode's name, or RESERVED for 3-7 and 0xB-0xF (section 5.2)."""
        return _OPCODE_NAMES.get(self.opcode, "RESERVED")

    @property
    def truncated(self) -> bool:
        """True when only the first bytes of the payload are kept."""
        return len(self.payload) < self.length

    @property
    def close(self) -> tuple[int | None, str | None]:
        """The close code and reason of a close frame (section 5.5.1), else (None, None)."""
        if self.opcode != Opcode.CLOSE or len(self.payload) < 2:
            return None, None
        reason = self.payload[2:].decode("utf-8", "replace")
        return int.from_bytes(self.payload[:2], "big"), reason


@dataclass(frozen=True, slots=True)
class TracedHandshake:
    """An HTTP request or response head, with notes on the fields WebSocket reads."""

    offset: int
    start_line: str
    headers: tuple[tuple[str, str], ...]
    notes: tuple[str, ...] = ()
    direction: str | None = None
    connection: int | None = None


@dataclass(frozen=True, slots=True)
class TracedProblem:
    """Bytes that are not a frame or a head, or a connection that failed (offset None)."""

    offset: int | None
    message: str
    direction: str | None = None
    connection: int | None = None


TraceRecord = TracedFrame | TracedHandshake | TracedProblem


@dataclass(slots=True)
class HandshakeContext:
    """What both directions of one connection learn from the handshake."""

    key: str | None = None
    allowed_rsv: int = 0


# --- decoding -----------------------------------------------------------------------------


class TraceStream:
    """Cut one direction of a connection into handshake heads and frames, leniently.

    ``sender`` is "client", "server" or None (unknown: masking is not checked). Feed bytes
    with ``feed()``, which returns the records completed so far; ``finish()`` reports
    what the end of the capture left incomplete.

    A head is expected while the next byte is an ASCII capital (``GET``, ``HTTP/``): as a
    frame header such a byte would have RSV1 set and, for ``G`` (0x47), a reserved
    opcode, so no valid first frame is mistaken for HTTP. A refused handshake (any status
    but 101) ends the WebSocket part: what follows is HTTP and is not decoded.
    """

    def __init__(
        self,
        sender: str | None = None,
        *,
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
        context: HandshakeContext | None = None,
        connection: int | None = None,
    ) -> None:
        self.sender = sender
        self.payload_limit = payload_limit
        self.context = context if context is not None else HandshakeContext()
        self.connection = connection
        self.direction = {"client": CLIENT_TO_SERVER, "server": SERVER_TO_CLIENT}.get(sender or "")
        self._buf = bytearray()
        self._offset = 0  # stream offset of _buf[0]
        self._skip = 0  # payload bytes of the last frame still to pass unshown
        self._http = True  # a head may still come
        self._raw = False  # after a refused handshake: bytes that are not WebSocket

    def feed(self, data: bytes) -> list[TraceRecord]:
        """Take received bytes; return the heads and frames they complete."""
        self._buf += data
        records: list[TraceRecord] = []
        while True:
            if self._skip:
                self._consume(min(self._skip, len(self._buf)), skipping=True)
                if self._skip:
                    return records
            if not self._buf or self._raw:
                if self._raw:
                    self._consume(len(self._buf))
                return records
            record = self._next_head() if self._http else None
            if record is None and not self._http:
                record = self._next_frame()
            if record is None:
                return records
            records.append(record)

    def finish(self) -> list[TraceRecord]:
        """Report what is incomplete at the end of the capture."""
        records: list[TraceRecord] = []
        if self._buf and not self._http and not self._raw and not self._skip:
            # A frame whose payload was cut off: show what arrived of it.
            partial = self._next_frame(partial=True)
            if partial is not None:
                records.append(partial)
        return records + self._incomplete()

    def _incomplete(self) -> list[TraceRecord]:
        if self._skip:
            return [
                self._problem(self._offset, f"truncated frame: {self._skip} payload bytes missing")
            ]
        if self._buf and not self._raw:
            what = "HTTP head (no blank line)" if self._http else "frame header"
            return [
                self._problem(
                    self._offset, f"truncated {what}: only {len(self._buf)} bytes at the end"
                )
            ]
        return []

    def _consume(self, count: int, *, skipping: bool = False) -> None:
        del self._buf[:count]
        self._offset += count
        if skipping:
            self._skip -= count

    def _problem(self, offset: int, message: str) -> TracedProblem:
        return TracedProblem(offset, message, self.direction, self.connection)

    def _next_head(self) -> TraceRecord | None:
        """Parse an HTTP head at the start of the buffer, or decide that frames begin."""
        first = self._buf[:1]
        if self._offset == 0 and first == b"\x16":
            if len(self._buf) < 2:
                return None
            if self._buf[1] == 0x03:
                # A TLS handshake record (content type 22, version 3.x): encrypted from
                # here on, so nothing to decode.
                self._raw = True
                return self._problem(
                    0,
                    "this is TLS (a handshake record), not plain HTTP: the tracer reads "
                    "ws:// only; trace between a TLS-terminating proxy and the server",
                )
        if not (b"A" <= first <= b"Z"):
            self._http = False
            return None
        offset = self._offset
        try:
            if self._buf.startswith(b"HTTP/"):
                parsed_response = parse_response_head(self._buf)
                if parsed_response is None:
                    return None
                response, used = parsed_response
                start = f"{response.version} {response.status} {response.reason}".rstrip()
                headers = response.headers
                self._raw = response.status != 101
            else:
                parsed_request = parse_request_head(self._buf)
                if parsed_request is None:
                    return None
                request, used = parsed_request
                start = f"{request.method} {request.target} {request.version}"
                headers = request.headers
        except InvalidHandshake as error:
            self._raw = True
            return self._problem(offset, f"invalid HTTP head: {error.reason}")
        self._consume(used)
        notes = self._handshake_notes(headers)
        if self._raw:
            notes.append("not 101 Switching Protocols: what follows is HTTP, not WebSocket")
        return TracedHandshake(
            offset, start, tuple(headers.items()), tuple(notes), self.direction, self.connection
        )

    def _handshake_notes(self, headers: Headers) -> list[str]:
        """Check the accept against the key seen earlier; note negotiated extensions."""
        notes = []
        key = headers.get("sec-websocket-key")
        if key is not None:
            self.context.key = key
            notes.append(f"expected Sec-WebSocket-Accept: {accept_key(key)}")
        accept = headers.get("sec-websocket-accept")
        if accept is not None:
            if self.context.key is None:
                notes.append("Sec-WebSocket-Accept cannot be checked: no key was seen")
            elif accept == accept_key(self.context.key):
                notes.append("Sec-WebSocket-Accept matches the key")
            else:
                notes.append(
                    f"Sec-WebSocket-Accept does NOT match the key "
                    f"(expected {accept_key(self.context.key)})"
                )
            if any(
                token.split(";")[0].strip().lower() == "permessage-deflate"
                for token in headers.get_all("sec-websocket-extensions")
            ):
                self.context.allowed_rsv = 0x40  # RFC 7692 section 6: RSV1 marks compression
        return notes

    def _next_frame(self, *, partial: bool = False) -> TraceRecord | None:
        """Walk one frame header (section 5.2); keep up to the limit of its payload.

        ``partial``: the capture ended; take what arrived of the payload.
        """
        buf = self._buf
        if len(buf) < 2:
            return None
        length = buf[1] & 0x7F
        header_size = 2 if length < 126 else 4 if length == 126 else 10
        masked = bool(buf[1] & 0x80)
        if masked:
            header_size += 4
        if len(buf) < header_size:
            return None
        if length == 126:
            length = int.from_bytes(buf[2:4], "big")
        elif length == 127:
            length = int.from_bytes(buf[2:10], "big")
        opcode = buf[0] & 0x0F
        limit = MAX_CONTROL_PAYLOAD if opcode >= 0x8 else self.payload_limit
        keep = min(length, max(limit, 0))
        if partial:
            keep = min(keep, len(buf) - header_size)
        if len(buf) < header_size + keep:
            return None
        problems = self._header_problems(bytes(buf[:header_size]))
        mask_key = bytes(buf[header_size - 4 : header_size]) if masked else None
        payload = bytes(buf[header_size : header_size + keep])
        if mask_key is not None:
            payload = apply_mask(payload, mask_key)
        frame = TracedFrame(
            offset=self._offset,
            fin=bool(buf[0] & 0x80),
            rsv1=bool(buf[0] & 0x40),
            rsv2=bool(buf[0] & 0x20),
            rsv3=bool(buf[0] & 0x10),
            opcode=opcode,
            masked=masked,
            length=length,
            length_encoding=_LENGTH_ENCODINGS[header_size - (4 if masked else 0)],
            mask_key=mask_key,
            payload=payload,
            problems=(*problems, *_payload_problems(opcode, payload, length)),
            direction=self.direction,
            connection=self.connection,
        )
        self._consume(header_size + keep)
        self._skip = length - keep
        return frame

    def _header_problems(self, header: bytes) -> list[str]:
        """Let the library's FrameParser judge the header alone, for the sender's role."""
        masked = bool(header[1] & 0x80)
        parser = FrameParser(
            require_mask=masked if self.sender is None else self.sender == "client",
            max_data_payload=1 << 63,
            allowed_rsv=self.context.allowed_rsv,
        )
        parser.feed(header)
        try:
            parser.next_frame()
        except RemoteProtocolError as error:
            code = CloseCode(error.close_code)
            return [f"{error.reason} (a receiver closes with {code.value} {code.name})"]
        return []


def _payload_problems(opcode: int, payload: bytes, length: int) -> list[str]:
    """Rules of section 5.5.1 a close payload can break."""
    if opcode != Opcode.CLOSE or length > MAX_CONTROL_PAYLOAD:
        return []
    if length == 1:
        return ["close payload of 1 byte: a code takes 2 (section 5.5.1)"]
    if length >= 2:
        code = int.from_bytes(payload[:2], "big")
        problems = []
        if not is_sendable_close_code(code):
            problems.append(f"close code {code} may not be sent (section 7.4)")
        try:
            payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            problems.append("close reason is not valid UTF-8 (section 5.5.1)")
        return problems
    return []


def decode(
    data: bytes, sender: str | None = None, payload_limit: int = DEFAULT_PAYLOAD_LIMIT
) -> list[TraceRecord]:
    """Decode a whole capture: its head(s), its frames and what is left incomplete."""
    stream = TraceStream(sender, payload_limit=payload_limit)
    return [*stream.feed(data), *stream.finish()]


# --- printing -----------------------------------------------------------------------------

_BOLD = "\x1b[1m"
_DIM = "\x1b[2m"
_RED = "\x1b[31m"
_GREEN = "\x1b[32m"
_CYAN = "\x1b[36m"
_RESET = "\x1b[0m"


def _paint(text: str, style: str, color: bool) -> str:
    return f"{style}{text}{_RESET}" if color else text


def _prefix(direction: str | None, connection: int | None) -> str:
    parts = []
    if connection is not None:
        parts.append(f"#{connection}")
    if direction is not None:
        parts.append(direction)
    return f"[{' '.join(parts)}] " if parts else ""


_WHITESPACE = str.maketrans("", "", "\t\r\n")


def _show_payload(frame: TracedFrame) -> tuple[str, str]:
    """Return ("text", shown) when the kept payload is readable UTF-8, else ("hex", shown).

    Readable: valid UTF-8 (section 5.6 for text frames) without control characters other
    than tab, CR and LF; a binary payload of zeros is valid UTF-8 but reads better as hex.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        # A truncated payload may end inside a character: final=False holds it back.
        text = decoder.decode(frame.payload, final=not frame.truncated)
    except UnicodeDecodeError:
        return "hex", frame.payload.hex(" ")
    # Valid UTF-8 full of control characters (zeros, say) reads better as hex.
    if text.translate(_WHITESPACE).isprintable():
        return "text", text
    return "hex", frame.payload.hex(" ")


def format_frame(frame: TracedFrame, *, color: bool = False) -> list[str]:
    """Describe one frame, one field per line."""
    title = f"frame at byte {frame.offset}: {frame.opcode_name} (0x{frame.opcode:X})"
    lines = [_prefix(frame.direction, frame.connection) + _paint(title, _BOLD, color)]

    def field_line(name: str, value: str) -> None:
        lines.append(f"  {_paint(f'{name:<8}', _CYAN, color)} {value}")

    field_line("FIN", f"{int(frame.fin)} ({'final fragment' if frame.fin else 'more follow'})")
    field_line("RSV1-3", f"{int(frame.rsv1)} {int(frame.rsv2)} {int(frame.rsv3)}")
    field_line("opcode", f"0x{frame.opcode:X} {frame.opcode_name}")
    field_line("MASK", f"{int(frame.masked)} ({'masked' if frame.masked else 'not masked'})")
    field_line("length", f"{frame.length} ({frame.length_encoding})")
    if frame.mask_key is not None:
        field_line("mask key", frame.mask_key.hex(" "))
    code, reason = frame.close
    if code is not None:
        name = CloseCode(code).name if code in CloseCode._value2member_map_ else "unregistered"
        field_line("code", f"{code} {name}")
        field_line("reason", repr(reason))
    elif frame.length:
        kind, shown = _show_payload(frame)
        text = repr(shown) if kind == "text" else shown
        note = f" ({kind})"
        if frame.truncated:
            hidden = frame.length - len(frame.payload)
            note = f" ({kind}; {hidden} more byte{'s' if hidden != 1 else ''} not shown)"
        field_line("payload", text + note)
    for problem in frame.problems:
        lines.append("  " + _paint(f"problem: {problem}", _RED, color))
    return lines


def format_handshake(handshake: TracedHandshake, *, color: bool = False) -> list[str]:
    """Describe an HTTP head: each field, with what it means for WebSocket."""
    title = f"HTTP head at byte {handshake.offset}: {handshake.start_line}"
    lines = [_prefix(handshake.direction, handshake.connection) + _paint(title, _BOLD, color)]
    for name, value in handshake.headers:
        lines.append(f"  {_paint(name, _CYAN, color)}: {value}")
        meaning = _HEADER_MEANINGS.get(name.lower())
        if meaning is not None:
            lines.append("      " + _paint(meaning, _DIM, color))
    for note in handshake.notes:
        style = _RED if "NOT" in note or "cannot" in note else _GREEN
        lines.append("  " + _paint(note, style, color))
    return lines


def format_record(record: TraceRecord, *, color: bool = False) -> list[str]:
    """Describe any record: a frame, a head or a problem."""
    if isinstance(record, TracedFrame):
        return format_frame(record, color=color)
    if isinstance(record, TracedHandshake):
        return format_handshake(record, color=color)
    where = "" if record.offset is None else f" at byte {record.offset}"
    message = f"problem{where}: {record.message}"
    return [_prefix(record.direction, record.connection) + _paint(message, _RED, color)]


def to_json(record: TraceRecord) -> str:
    """One JSON object for a record (the ``--json`` output)."""
    common: dict[str, object] = {
        "direction": record.direction,
        "connection": record.connection,
        "offset": record.offset,
    }
    if isinstance(record, TracedHandshake):
        common.update(
            type="handshake",
            start_line=record.start_line,
            headers=[list(item) for item in record.headers],
            notes=list(record.notes),
        )
    elif isinstance(record, TracedProblem):
        common.update(type="problem", message=record.message)
    else:
        code, reason = record.close
        common.update(
            type="frame",
            fin=record.fin,
            rsv1=record.rsv1,
            rsv2=record.rsv2,
            rsv3=record.rsv3,
            opcode=record.opcode,
            opcode_name=record.opcode_name,
            masked=record.masked,
            length=record.length,
            length_encoding=record.length_encoding,
            mask_key=record.mask_key.hex() if record.mask_key is not None else None,
        )
        kind, shown = _show_payload(record)
        common["payload_text" if kind == "text" else "payload_hex"] = (
            shown if kind == "text" else record.payload.hex()
        )
        common.update(
            truncated=record.truncated,
            close_code=code,
            close_reason=reason,
            problems=list(record.problems),
        )
    return json.dumps(common, ensure_ascii=False)


# --- the proxy ----------------------------------------------------------------------------


@dataclass(eq=False)
class _Side:
    """One socket of a proxied connection and what waits to be written to it."""

    sock: socket.socket
    pending: collections.deque[memoryview] = field(default_factory=collections.deque)
    pending_size: int = 0
    read_closed: bool = False  # no more bytes will come from this socket
    write_shut: bool = False  # we sent FIN to it
    connecting: bool = False
    paused: bool = False  # not read while the peer's write buffer is over the high water
    stream: TraceStream | None = None  # traces what this side sends
    peer: _Side | None = None
    number: int = 0


class TraceProxy:
    """Forward bytes unchanged between clients and one upstream; trace them.

    One selector; each socket's ``SelectorKey.data`` is its ``_Side``. A side is read only
    while its peer's write buffer is under ``HIGH_WATER`` (resumed below ``LOW_WATER``).
    """

    def __init__(
        self,
        listen: tuple[str, int],
        upstream: tuple[str, int],
        emit: Callable[[TraceRecord], None],
        payload_limit: int = DEFAULT_PAYLOAD_LIMIT,
    ) -> None:
        self.upstream = upstream
        self.emit = emit
        self.payload_limit = payload_limit
        self.selector = selectors.DefaultSelector()
        self.listener = socket.create_server(listen)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self._connections = 0
        self._stopping = False

    def request_stop(self) -> None:
        """Ask ``serve_forever`` to return (safe from a signal handler)."""
        self._stopping = True

    def serve_forever(self) -> None:
        """Run until ``request_stop``; close every socket on the way out."""
        try:
            while not self._stopping:
                for key, events in self.selector.select(timeout=0.5):
                    if key.data is None:
                        self._accept()
                    else:
                        self._handle(key.data, events)
        finally:
            for key in list(self.selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            self.selector.close()

    def _accept(self) -> None:
        try:
            client_sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._connections += 1
        number = self._connections
        context = HandshakeContext()
        client_sock.setblocking(False)
        client_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream_sock = socket.socket(
            socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET
        )
        upstream_sock.setblocking(False)
        upstream_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _Side(client_sock, number=number)
        server = _Side(upstream_sock, number=number, connecting=True)
        client.stream = TraceStream(
            "client", payload_limit=self.payload_limit, context=context, connection=number
        )
        server.stream = TraceStream(
            "server", payload_limit=self.payload_limit, context=context, connection=number
        )
        client.peer, server.peer = server, client
        result = upstream_sock.connect_ex(self.upstream)
        if result not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._report(number, f"cannot connect to the upstream: {errno.errorcode[result]}")
            client_sock.close()
            upstream_sock.close()
            return
        self.selector.register(client_sock, selectors.EVENT_READ, client)
        self.selector.register(upstream_sock, selectors.EVENT_WRITE, server)
        self._update(client)

    def _report(self, number: int, message: str) -> None:
        self.emit(TracedProblem(None, message, None, number))

    def _handle(self, side: _Side, events: int) -> None:
        try:
            if side.connecting and events & selectors.EVENT_WRITE:
                error = side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise ConnectionRefusedError(error, errno.errorcode.get(error, str(error)))
                side.connecting = False
            if events & selectors.EVENT_WRITE:
                self._flush(side)
            if events & selectors.EVENT_READ:
                self._read(side)
        except OSError as error:
            if side.connecting:
                host, port = self.upstream
                self._report(side.number, f"cannot connect to the upstream {host}:{port}: {error}")
            else:
                self._report(side.number, f"connection ended: {error}")
            self._close(side)
            return
        self._update(side)
        if side.peer is not None:
            self._update(side.peer)

    def _read(self, side: _Side) -> None:
        assert side.peer is not None and side.stream is not None
        try:
            data = side.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            side.read_closed = True
            for record in side.stream.finish():
                self.emit(record)
        else:
            for record in side.stream.feed(data):
                self.emit(record)
            self._write(side.peer, data)

    def _write(self, side: _Side, data: bytes) -> None:
        """Send now what the kernel takes; buffer the rest (selectors habit)."""
        if not side.pending and not side.connecting:
            try:
                sent = side.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            data = data[sent:]
        if data:
            side.pending.append(memoryview(data))
            side.pending_size += len(data)

    def _flush(self, side: _Side) -> None:
        while side.pending:
            chunk = side.pending[0]
            try:
                sent = side.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            side.pending_size -= sent
            if sent < len(chunk):
                side.pending[0] = chunk[sent:]
                return
            side.pending.popleft()

    def _update(self, side: _Side) -> None:
        """Register the events this side needs; pass a FIN on; close when all is done."""
        peer = side.peer
        if side.sock.fileno() < 0 or peer is None:
            return
        if peer.read_closed and not side.pending and not side.write_shut and not side.connecting:
            side.write_shut = True
            with contextlib.suppress(OSError):  # the peer may be gone already
                side.sock.shutdown(socket.SHUT_WR)
        if side.read_closed and side.write_shut and peer.read_closed and peer.write_shut:
            self._close(side)
            return
        events = 0
        if side.pending or side.connecting:
            events |= selectors.EVENT_WRITE
        # Flow control: stop reading at the high water mark, resume at the low one.
        if peer.pending_size >= HIGH_WATER:
            side.paused = True
        elif peer.pending_size <= LOW_WATER:
            side.paused = False
        if not side.read_closed and not side.connecting and not side.paused:
            events |= selectors.EVENT_READ
        key = self.selector.get_map().get(side.sock)
        if events and key is None:
            self.selector.register(side.sock, events, side)
        elif events and key is not None and key.events != events:
            self.selector.modify(side.sock, events, side)
        elif not events and key is not None:
            self.selector.unregister(side.sock)

    def _close(self, side: _Side) -> None:
        for each in (side, side.peer):
            if each is None or each.sock.fileno() < 0:
                continue
            if each.sock in self.selector.get_map():
                self.selector.unregister(each.sock)
            each.sock.close()


# --- the command line ---------------------------------------------------------------------


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: Sequence[str] | None = None) -> int:
    """Decode a capture or run the tracing proxy, as the arguments ask."""
    parser = argparse.ArgumentParser(
        prog="python -m rfc6455.trace",
        description="Show WebSocket handshakes and frames field by field.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--decode", metavar="HEX", help="decode these bytes (hex, spaces allowed)")
    mode.add_argument("--listen", type=_address, metavar="HOST:PORT", help="run the proxy here")
    parser.add_argument("--upstream", type=_address, metavar="HOST:PORT", help="proxy to here")
    sender = parser.add_mutually_exclusive_group()
    sender.add_argument("--client", action="store_true", help="the bytes were sent by a client")
    sender.add_argument("--server", action="store_true", help="the bytes were sent by a server")
    parser.add_argument("--json", action="store_true", help="one JSON object per record")
    parser.add_argument("--color", choices=["always", "never", "auto"], default="auto")
    parser.add_argument("--payload-limit", type=int, default=DEFAULT_PAYLOAD_LIMIT)
    parser.add_argument("--allow-any-host", action="store_true", help="allow non-loopback")
    args = parser.parse_args(argv)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())

    def emit(record: TraceRecord) -> None:
        if args.json:
            print(to_json(record), flush=True)
        else:
            print("\n".join(format_record(record, color=color)), flush=True)

    if args.decode is not None:
        try:
            data = bytes.fromhex(args.decode)
        except ValueError as error:
            parser.error(f"--decode: not hex: {error}")
        role = "client" if args.client else "server" if args.server else None
        for record in decode(data, role, args.payload_limit):
            emit(record)
        return 0

    if args.upstream is None:
        parser.error("--listen needs --upstream")
    if not args.allow_any_host:
        for host, _ in (args.listen, args.upstream):
            if not _is_loopback(host):
                parser.error(f"{host} is not a loopback address (use --allow-any-host)")
    try:
        proxy = TraceProxy(args.listen, args.upstream, emit, args.payload_limit)
    except OSError as error:
        print(f"cannot listen on {args.listen[0]}:{args.listen[1]}: {error}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        proxy.request_stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    host, port = proxy.address
    print(f"tracing on {host}:{port} -> {args.upstream[0]}:{args.upstream[1]}", file=sys.stderr)
    sys.stderr.flush()
    proxy.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
