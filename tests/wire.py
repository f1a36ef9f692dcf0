"""A raw WebSocket test client: byte-exact frames out, strictly parsed frames in.

Written from RFC 6455 and RFC 7692 without the ``rfc6455`` package, so that the server
is judged by an independent reading of the RFCs. It sends its own opening handshake,
writes any frame the tests can describe (masked with a random key, any RSV bits, any
opcode, any length encoding, a declared length that lies), and reads the server's frames
strictly: every rule a server must follow when it sends (section 5.1: never mask;
section 5.2: minimal lengths, RSV bits only for a negotiated extension; section 5.5:
control frames of at most 125 bytes and never fragmented) fails the test at once.

Every read is bounded by a timeout; nothing here can hang a test run.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "BINARY",
    "CLOSE",
    "CONTINUATION",
    "PING",
    "PONG",
    "TEXT",
    "DeflateSession",
    "HttpReply",
    "Message",
    "ProtocolViolation",
    "WireClient",
    "WireFrame",
    "close_payload",
    "encode",
    "mask_payload",
]

CONTINUATION = 0x0
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA

#: Section 1.3: the GUID the server appends to the key for Sec-WebSocket-Accept.
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: How long any single read may wait, unless a test says otherwise.
DEFAULT_TIMEOUT = 5.0

_DEFLATE_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 section 7.2.1


class ProtocolViolation(AssertionError):
    """The server sent something RFC 6455 forbids a server to send."""


# --- writing frames ---------------------------------------------------------------------


def mask_payload(payload: bytes, key: bytes) -> bytes:
    """Section 5.3: XOR octet i with key[i % 4]; one big-integer XOR, no byte loop."""
    length = len(payload)
    if not length:
        return b""
    repeated = (key * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        length, "big"
    )


def encode(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    masked: bool = True,
    key: bytes | None = None,
    length_size: int | None = None,
    declared_length: int | None = None,
) -> bytes:
    """One client frame, byte-exact, valid or not.

    ``opcode`` may be any nibble (reserved ones included). ``length_size`` forces the
    length encoding: 0 (7 bits), 2 (16 bits) or 8 (64 bits), minimal or not.
    ``declared_length`` writes a length other than ``len(payload)`` (to send a header
    alone, or to lie). ``key`` fixes the masking key, else a random one is drawn.
    """
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (0x20 if rsv2 else 0)
    first |= (0x10 if rsv3 else 0) | (opcode & 0x0F)
    length = len(payload) if declared_length is None else declared_length
    if length_size is None:
        length_size = 0 if length < 126 else 2 if length < 1 << 16 else 8
    mask_bit = 0x80 if masked else 0
    if length_size == 0:
        header = bytes((first, mask_bit | length))
    elif length_size == 2:
        header = bytes((first, mask_bit | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((first, mask_bit | 127)) + length.to_bytes(8, "big")
    if not masked:
        return header + payload
    key = os.urandom(4) if key is None else key
    return header + key + mask_payload(payload, key)


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    """The payload of a close frame (section 5.5.1): a 2-byte code, then the reason."""
    if code is None:
        return reason
    return code.to_bytes(2, "big") + reason


# --- reading frames ---------------------------------------------------------------------


class WireFrame(NamedTuple):
    """One frame as the server put it on the wire (the server never masks)."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv1: bool = False


class Message(NamedTuple):
    """A whole message (or a control frame), payload decompressed if it was compressed."""

    opcode: int
    data: bytes
    compressed: bool = False


@dataclass
class HttpReply:
    """The head of the server's HTTP response; header names are lower-cased."""

    status: int
    reason: str
    headers: dict[str, list[str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The value of a header that must appear at most once, or None."""
        values = self.headers.get(name.lower(), [])
        if len(values) > 1:
            raise AssertionError(f"header {name} appears {len(values)} times: {values}")
        return values[0] if values else None


# --- permessage-deflate (RFC 7692) ------------------------------------------------------


def parse_extension_header(value: str) -> list[tuple[str, dict[str, str | None]]]:
    """Parse a Sec-WebSocket-Extensions value (section 9.1 of RFC 6455), simply."""
    elements: list[tuple[str, dict[str, str | None]]] = []
    for element in value.split(","):
        name, *raw_params = (part.strip() for part in element.split(";"))
        params: dict[str, str | None] = {}
        for param in raw_params:
            key, sep, param_value = param.partition("=")
            if key.strip() in params:
                raise ProtocolViolation(f"parameter {key.strip()} repeated in {value!r}")
            params[key.strip()] = param_value.strip().strip('"') if sep else None
        elements.append((name, params))
    return elements


@dataclass
class DeflateSession:
    """The client side of a negotiated permessage-deflate (RFC 7692 section 7).

    Built from the server's response. The client compresses with at most the window the
    server allowed and starts afresh for each message when the server asked for
    ``client_no_context_takeover`` (section 7.1.1.2). It inflates with exactly the window
    the server announced (a server that compressed with a bigger one makes zlib fail:
    "invalid distance too far back"), and with a fresh inflater per message when the
    server promised ``server_no_context_takeover`` (section 7.1.1.1) — which proves the
    server kept its promise.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    _compressor: zlib._Compress | None = field(default=None, repr=False)
    _decompressor: zlib._Decompress | None = field(default=None, repr=False)

    @classmethod
    def from_response(cls, params: dict[str, str | None]) -> DeflateSession:
        """Read the parameters of the server's permessage-deflate response element."""
        known = {
            "server_no_context_takeover",
            "client_no_context_takeover",
            "server_max_window_bits",
            "client_max_window_bits",
        }
        unknown = set(params) - known
        if unknown:
            raise ProtocolViolation(f"unknown permessage-deflate parameters {unknown}")
        session = cls(
            server_no_context_takeover="server_no_context_takeover" in params,
            client_no_context_takeover="client_no_context_takeover" in params,
        )
        for name in ("server_max_window_bits", "client_max_window_bits"):
            if name in params:
                value = params[name]
                # Section 7.1.2: in a response both carry a value from 8 to 15.
                if value is None or not re.fullmatch(r"[89]|1[0-5]", value):
                    raise ProtocolViolation(f"{name}={value!r} in the server's response")
                setattr(session, name, int(value))
        return session

    def compress(self, data: bytes, *, window_bits: int | None = None) -> bytes:
        """Section 7.2.1: deflate, sync-flush, drop the trailing 00 00 ff ff."""
        bits = window_bits or max(self.client_max_window_bits, 9)  # zlib cannot deflate with 8
        if self._compressor is None or self.client_no_context_takeover:
            self._compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
        out = self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(_DEFLATE_TAIL)
        return out[:-4]

    def decompress(self, payload: bytes) -> bytes:
        """Section 7.2.2: append 00 00 ff ff and inflate, with the announced window."""
        if self._decompressor is None or self.server_no_context_takeover:
            self._decompressor = zlib.decompressobj(-self.server_max_window_bits)
        try:
            return self._decompressor.decompress(payload + _DEFLATE_TAIL)
        except zlib.error as error:
            raise ProtocolViolation(f"server sent invalid compressed data: {error}") from None


# --- the client -------------------------------------------------------------------------


class WireClient:
    """A blocking socket that speaks WebSocket byte by byte, with timeouts everywhere."""

    def __init__(self, sock: socket.socket, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.sock = sock
        self.timeout = timeout
        self.sock.settimeout(timeout)
        self._buffer = bytearray()
        self._eof = False
        #: Set by ``handshake`` when permessage-deflate was negotiated.
        self.deflate: DeflateSession | None = None
        #: The opcode of the server's fragmented message in progress.
        self._server_message: int | None = None

    @classmethod
    def connect(cls, address: tuple[str, int], *, timeout: float = DEFAULT_TIMEOUT) -> WireClient:
        """Open a TCP connection to ``address`` (no handshake yet)."""
        sock = socket.create_connection(address, timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, timeout=timeout)

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the socket."""
        self.sock.close()

    # --- bytes ----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write ``data`` in one ``sendall``."""
        self.sock.sendall(data)

    def send_chopped(self, data: bytes, size: int = 1) -> None:
        """Write ``data`` in ``size``-byte pieces, one ``send`` each (TCP_NODELAY is on)."""
        view = memoryview(data)
        for start in range(0, len(data), size):
            self.sock.sendall(view[start : start + size])

    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False at EOF. Raises TimeoutError at deadline."""
        if self._eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for the server")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(256 * 1024)
        except TimeoutError:
            raise TimeoutError("timed out waiting for the server") from None
        finally:
            self.sock.settimeout(self.timeout)
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def _read_exact(self, size: int, deadline: float) -> bytes:
        while len(self._buffer) < size:
            if not self._fill(deadline):
                raise ConnectionAbortedError(
                    f"EOF from the server with {len(self._buffer)} of {size} bytes read"
                )
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    # --- HTTP -----------------------------------------------------------------------------

    def read_http_response(self, *, timeout: float | None = None) -> HttpReply:
        """Read a response head (and a Content-Length body, if any)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while (end := self._buffer.find(b"\r\n\r\n")) == -1:
            if len(self._buffer) > 64 * 1024:
                raise AssertionError("response head over 64 KiB")
            if not self._fill(deadline):
                raise ConnectionAbortedError(
                    f"EOF before a complete response head: {bytes(self._buffer)!r}"
                )
        head = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 4]
        status_line, *lines = head.split("\r\n")
        match = re.fullmatch(r"HTTP/1\.1 (\d{3}) ?(.*)", status_line)
        if match is None:
            raise AssertionError(f"bad status line {status_line!r}")
        headers: dict[str, list[str]] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            if not colon or name != name.strip():
                raise AssertionError(f"bad header line {line!r}")
            headers.setdefault(name.lower(), []).append(value.strip())
        reply = HttpReply(int(match.group(1)), match.group(2), headers)
        length = reply.header("Content-Length")
        if length is not None and reply.status != 101:
            reply.body = self._read_exact(int(length), deadline)
        return reply

    def handshake(
        self,
        *,
        path: str = "/",
        extensions: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        version: str = "13",
        timeout: float | None = None,
    ) -> HttpReply:
        """Send an opening handshake (section 4.1) and read the reply.

        A 101 is checked completely (section 4.2.2: Upgrade, Connection, the accept
        hash, no subprotocol or extension we did not ask for); a permessage-deflate
        response sets ``self.deflate``. Other statuses are returned for the test to judge.
        """
        key = base64.b64encode(os.urandom(16)).decode()
        host, port = self.sock.getpeername()[:2]
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            f"Sec-WebSocket-Version: {version}",
        ]
        if extensions is not None:
            lines.append(f"Sec-WebSocket-Extensions: {extensions}")
        lines += [f"{name}: {value}" for name, value in headers]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        reply = self.read_http_response(timeout=timeout)
        if reply.status == 101:
            self._check_accept(reply, key, offered_deflate=extensions is not None)
        return reply

    def _check_accept(self, reply: HttpReply, key: str, *, offered_deflate: bool) -> None:
        expected = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()
        upgrade = reply.header("Upgrade") or ""
        connection = reply.headers.get("connection", [])
        tokens = {token.strip().lower() for value in connection for token in value.split(",")}
        if upgrade.lower() != "websocket" or "upgrade" not in tokens:
            raise ProtocolViolation(f"101 without Upgrade/Connection: {reply.headers}")
        if reply.header("Sec-WebSocket-Accept") != expected:
            raise ProtocolViolation("wrong Sec-WebSocket-Accept")
        if reply.header("Sec-WebSocket-Protocol") is not None:
            raise ProtocolViolation("a subprotocol nobody asked for")
        value = reply.header("Sec-WebSocket-Extensions")
        if value is None:
            return
        if not offered_deflate:
            raise ProtocolViolation(f"an extension nobody asked for: {value}")
        elements = parse_extension_header(value)
        if len(elements) != 1 or elements[0][0] != "permessage-deflate":
            raise ProtocolViolation(f"unexpected extensions in the response: {value}")
        self.deflate = DeflateSession.from_response(elements[0][1])

    @classmethod
    def open(
        cls,
        address: tuple[str, int],
        *,
        extensions: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> WireClient:
        """Connect and complete the opening handshake."""
        client = cls.connect(address, timeout=timeout)
        try:
            reply = client.handshake(extensions=extensions)
            assert reply.status == 101, f"handshake refused: {reply}"
        except BaseException:
            client.close()
            raise
        return client

    # --- frames ---------------------------------------------------------------------------

    def send_frame(self, opcode: int, payload: bytes = b"", **options: object) -> None:
        """Encode one frame (see ``encode``) and write it."""
        self.send(encode(opcode, payload, **options))  # type: ignore[arg-type]

    def send_message(self, opcode: int, data: bytes, *, compress: bool = False) -> None:
        """Write a whole message in one frame, deflated (RSV1) if asked."""
        if compress:
            assert self.deflate is not None, "permessage-deflate was not negotiated"
            self.send(encode(opcode, self.deflate.compress(data), rsv1=True))
        else:
            self.send(encode(opcode, data))

    def recv_frame(self, *, timeout: float | None = None) -> WireFrame:
        """Read one server frame and check every rule a server's frame must follow."""
        deadline = time.monotonic() + (timeout or self.timeout)
        first, second = self._read_exact(2, deadline)
        if second & 0x80:
            raise ProtocolViolation("masked frame from the server (section 5.1)")
        opcode = first & 0x0F
        fin = bool(first & 0x80)
        rsv1 = bool(first & 0x40)
        if first & 0x30:
            raise ProtocolViolation(f"RSV2/RSV3 set by the server: {first:#04x}")
        if opcode not in (CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG):
            raise ProtocolViolation(f"reserved opcode {opcode:#x} from the server")
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(self._read_exact(2, deadline), "big")
            if length < 126:
                raise ProtocolViolation("16-bit length for a payload under 126 bytes")
        elif length == 127:
            length = int.from_bytes(self._read_exact(8, deadline), "big")
            if length >> 63:
                raise ProtocolViolation("64-bit length with the top bit set")
            if length < 1 << 16:
                raise ProtocolViolation("64-bit length for a payload under 64 KiB")
        if opcode >= CLOSE:
            if length > 125:
                raise ProtocolViolation("control frame over 125 bytes")
            if not fin:
                raise ProtocolViolation("fragmented control frame")
            if rsv1:
                raise ProtocolViolation("RSV1 on a control frame")
        elif opcode == CONTINUATION:
            if self._server_message is None:
                raise ProtocolViolation("continuation frame without a message")
            if rsv1:
                raise ProtocolViolation("RSV1 on a continuation frame (RFC 7692 6.1)")
        else:
            if self._server_message is not None:
                raise ProtocolViolation("new data frame inside a fragmented message")
            if rsv1 and self.deflate is None:
                raise ProtocolViolation("RSV1 without permessage-deflate")
        if opcode in (TEXT, BINARY) and not fin:
            self._server_message = opcode
        elif opcode == CONTINUATION and fin:
            self._server_message = None
        payload = self._read_exact(length, deadline)
        if opcode == CLOSE:
            _check_close_payload(payload)
        return WireFrame(opcode, payload, fin, rsv1)

    def recv_message(self, *, timeout: float | None = None) -> Message:
        """Read a whole message (or one control frame), inflating it if compressed."""
        deadline = time.monotonic() + (timeout or self.timeout)
        first = self.recv_frame(timeout=timeout)
        if first.opcode >= CLOSE:
            return Message(first.opcode, first.payload)
        parts = [first.payload]
        frame = first
        while not frame.fin:
            frame = self.recv_frame(timeout=max(deadline - time.monotonic(), 0.001))
            if frame.opcode != CONTINUATION:
                # Section 5.4: control frames may be injected between fragments; this
                # server has no reason to, so the tests treat it as a surprise.
                raise AssertionError(f"frame {frame.opcode:#x} inside a server message")
            parts.append(frame.payload)
        data = b"".join(parts)
        if first.rsv1:
            assert self.deflate is not None
            data = self.deflate.decompress(data)
        if first.opcode == TEXT:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolViolation("invalid UTF-8 in a text message from the server") from None
        return Message(first.opcode, data, first.rsv1)

    def expect_close(self, code: int | None, *, timeout: float | None = None) -> bytes:
        """The next frame must be a close with ``code`` (None: an empty close)."""
        frame = self.recv_frame(timeout=timeout)
        if frame.opcode != CLOSE:
            raise AssertionError(f"expected a close frame with {code}, got {frame}")
        received = int.from_bytes(frame.payload[:2], "big") if frame.payload else None
        if received != code:
            reason = frame.payload[2:].decode("utf-8", "replace")
            raise AssertionError(f"expected close code {code}, got {received} ({reason!r})")
        return frame.payload[2:]

    def expect_eof(self, *, timeout: float | None = None) -> None:
        """The server must close the TCP connection, sending nothing more (7.1.1)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        if self._buffer:
            raise AssertionError(f"bytes after the close frame: {bytes(self._buffer[:64])!r}")
        try:
            if self._fill(deadline):
                raise AssertionError(f"bytes after the close frame: {bytes(self._buffer[:64])!r}")
        except TimeoutError:
            raise AssertionError("the server did not close the TCP connection") from None

    def expect_failure(self, code: int, *, timeout: float | None = None) -> None:
        """The server fails the connection: a close with ``code``, then its TCP close.

        Section 7.1.7: after _Fail the WebSocket Connection_ the server sends its close
        frame and closes the TCP connection itself, without waiting for our close.
        """
        self.expect_close(code, timeout=timeout)
        self.expect_eof(timeout=timeout)

    def close_handshake(self, code: int = 1000) -> None:
        """Client-initiated close (section 7.1.2): send a close, expect the echo and EOF."""
        self.send(encode(CLOSE, close_payload(code)))
        self.expect_close(code)
        self.expect_eof()


def _check_close_payload(payload: bytes) -> None:
    """Section 5.5.1 and 7.4: what a server may put in its close frame."""
    if len(payload) == 1:
        raise ProtocolViolation("1-byte close payload from the server")
    if payload:
        code = int.from_bytes(payload[:2], "big")
        if not (code in {1000, 1001, 1002, 1003, *range(1007, 1015)} or 3000 <= code <= 4999):
            raise ProtocolViolation(f"close code {code} may not be sent")
        try:
            payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("invalid UTF-8 in the server's close reason") from None
