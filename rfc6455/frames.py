"""Frames: the base framing protocol of RFC 6455 section 5.

```
 0                   1                   2                   3
 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
+-+-+-+-+-------+-+-------------+-------------------------------+
|F|R|R|R| opcode|M| Payload len |    Extended payload length    |
|I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
|N|V|V|V|       |S|             |   (if payload len==126/127)   |
| |1|2|3|       |K|             |                               |
+-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
|     Extended payload length continued, if payload len == 127  |
+ - - - - - - - - - - - - - - - +-------------------------------+
|                               |Masking-key, if MASK set to 1  |
+-------------------------------+-------------------------------+
| Masking-key (continued)       |          Payload Data         |
+-------------------------------- - - - - - - - - - - - - - - - +
```

This module knows single frames only: how to write one (``encode_frame``), how to mask
one (``apply_mask``) and how to cut a byte stream into frames whatever its chunking
(``FrameParser``), enforcing the rules that a single frame header can break. Rules that
need the sequence of frames (fragmentation, UTF-8, the close handshake) live in
``connection``. ``FrameParser`` and ``apply_mask`` are the hot path of the library:
they are written for speed, and ``bench/test_frames.py`` measures them.
"""

from __future__ import annotations

from typing import NamedTuple

from rfc6455.codes import CloseCode, Opcode
from rfc6455.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "HEADER_FIELDS",
    "MAX_CONTROL_PAYLOAD",
    "CloseCode",
    "Frame",
    "FrameParser",
    "HeaderField",
    "Opcode",
    "apply_mask",
    "encode_frame",
]

#: Section 5.5: "All control frames MUST have a payload length of 125 bytes or less".
MAX_CONTROL_PAYLOAD = 125


class HeaderField(NamedTuple):
    """One field of the frame header (section 5.2), as the RFC's figure names it.

    ``widths`` lists the sizes in bits the field can have on the wire: one value for a
    fixed field, several for a field whose presence or size another field decides
    (0 meaning absent).
    """

    name: str
    widths: tuple[int, ...]
    meaning: str


#: The frame header of section 5.2 as data, field by field in wire order, most
#: significant bit first. ``docs/gen_diagrams.py`` draws the RFC's figure from it, at
#: the widest (a 64-bit length and a masking key: 14 bytes); the shortest header is
#: 2 bytes. The parser below does not read the table: it has the bit masks written out.
HEADER_FIELDS: tuple[HeaderField, ...] = (
    HeaderField("FIN", (1,), "1 on the final fragment of a message, 0 when more follow"),
    HeaderField("RSV1", (1,), "reserved for extensions: permessage-deflate marks compression"),
    HeaderField("RSV2", (1,), "reserved for extensions; 0 unless one defines it"),
    HeaderField("RSV3", (1,), "reserved for extensions; 0 unless one defines it"),
    HeaderField("opcode", (4,), "the frame type: continuation, text, binary, close, ping, pong"),
    HeaderField(
        "MASK", (1,), "1 when the payload is masked: always from a client, never from a server"
    ),
    HeaderField(
        "Payload len",
        (7,),
        "the payload length if 0-125; 126: a 16-bit length follows; 127: a 64-bit one",
    ),
    HeaderField(
        "Extended payload length",
        (0, 16, 64),
        "absent for payload len 0-125; else the length, big-endian, in 16 bits (126) or 64",
    ),
    HeaderField(
        "Masking-key", (0, 32), "the 4-byte key the payload is XORed with (5.3), if MASK is 1"
    ),
)

# The flag bits of the header's first two bytes, in the order of HEADER_FIELDS (FIN is
# bit 0 of the first byte, the most significant; MASK is bit 0 of the second byte). The
# hot paths write the 4-bit opcode and 7-bit payload len masks inline: 0x0F and 0x7F.
_FIN = 0x80
_RSV1 = 0x40
_RSV2 = 0x20
_RSV3 = 0x10
_RSV_BITS = _RSV1 | _RSV2 | _RSV3
_MASK_BIT = 0x80

# The opcode nibble to its Opcode, or None for the reserved values 3-7 and 0xB-0xF
# (section 5.2: "If an unknown opcode is received, the receiving endpoint MUST _Fail the
# WebSocket Connection_"). A list lookup is much cheaper than ``Opcode(n)`` per frame.
_OPCODES: list[Opcode | None] = [None] * 16
for _opcode in Opcode:
    _OPCODES[_opcode] = _opcode
del _opcode


class Frame(NamedTuple):
    """One WebSocket frame, its payload already unmasked.

    A NamedTuple rather than a dataclass: frames are made once per frame on the hot path,
    and a tuple is immutable and the cheapest object Python builds. A large payload the
    parser had to unmask or cut out of its own buffer comes as a ``bytearray``, which
    spares a copy of up to a megabyte; treat it as read-only.
    """

    opcode: Opcode
    payload: bytes | bytearray
    fin: bool = True
    rsv1: bool = False
    rsv2: bool = False
    rsv3: bool = False


# --- masking (section 5.3) -------------------------------------------------------------

# _XOR_TABLES[k] maps every byte b to b ^ k, for bytes.translate.
_XOR_TABLES = [bytes(b ^ k for b in range(256)) for k in range(256)]

# Below this size one big-integer XOR is cheapest; above it, four ``bytes.translate``
# calls over the strided lanes win (measured in bench/test_frames.py: ~0.4 us for
# 16 bytes with the integer, ~1 GB/s for large payloads with the lanes).
_LANES_THRESHOLD = 1024


def apply_mask(data: bytes | bytearray, mask: bytes) -> bytes:
    """Mask or unmask ``data`` with the 4-byte ``mask`` (section 5.3).

    "Octet i of the transformed data is the XOR of octet i of the original data with
    octet at index i modulo 4 of the masking key." The operation is its own inverse.
    """
    if len(mask) != 4:
        raise LocalProtocolError("a masking key is exactly 4 bytes")
    result = _unmask(data, 0, len(data), mask)
    return result if type(result) is bytes else bytes(result)


# For a payload of n <= 125 bytes (every control frame, most chat messages): the 4-byte
# key read as an integer, times _KEY_REPEAT[n], is the key repeated over ceil(n / 4)
# words; shifting that right by _KEY_SHIFT[n] keeps its first n bytes. Cheaper than
# building the repeated key as bytes and converting it.
_KEY_REPEAT = [sum(1 << (32 * word) for word in range((n + 3) // 4)) for n in range(126)]
_KEY_SHIFT = [8 * (-n % 4) for n in range(126)]


def _unmask(
    buf: bytes | bytearray, start: int, end: int, mask: bytes | bytearray
) -> bytes | bytearray:
    """Unmask ``buf[start:end]`` with ``mask`` aligned at ``start``; hot path.

    Large payloads come back as the ``bytearray`` they were assembled in: converting a
    megabyte to ``bytes`` costs a third of the unmasking itself (bench/test_frames.py).
    """
    length = end - start
    if length <= MAX_CONTROL_PAYLOAD:
        return (
            int.from_bytes(buf[start:end])
            ^ int.from_bytes(mask) * _KEY_REPEAT[length] >> _KEY_SHIFT[length]
        ).to_bytes(length)
    if length < _LANES_THRESHOLD:
        # One XOR of two little-endian integers: the payload and the key repeated.
        key = (mask * ((length >> 2) + 1))[:length]
        return (int.from_bytes(buf[start:end], "little") ^ int.from_bytes(key, "little")).to_bytes(
            length, "little"
        )
    # Lane i holds the bytes at i, i+4, i+8...: all XORed with mask[i], which is a
    # byte-to-byte table, which is what bytes.translate does at C speed. Strided slices
    # of the source buffer avoid copying the payload out of it first.
    out = bytearray(length)
    tables = _XOR_TABLES
    out[0::4] = buf[start:end:4].translate(tables[mask[0]])
    out[1::4] = buf[start + 1 : end : 4].translate(tables[mask[1]])
    out[2::4] = buf[start + 2 : end : 4].translate(tables[mask[2]])
    out[3::4] = buf[start + 3 : end : 4].translate(tables[mask[3]])
    return out


# --- encoding (section 5.2) --------------------------------------------------------------


def encode_frame(
    opcode: Opcode,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    mask: bytes | None = None,
) -> bytes:
    """Serialize one frame (section 5.2); ``mask`` is the client's 4-byte key.

    Section 5.1: "a client MUST mask all frames that it sends to the server" and "A server
    MUST NOT mask any frames that it sends to the client": the ``Connection`` passes a
    fresh random key for the client role and None for the server role. The length is
    written in the minimal number of bytes, as section 5.2 requires.
    """
    first = opcode | (_FIN if fin else 0)
    if rsv1:
        first |= _RSV1
    if rsv2:
        first |= _RSV2
    if rsv3:
        first |= _RSV3
    length = len(payload)
    if length < 126:
        header = bytes((first, length))
    elif length < 0x10000:
        header = bytes((first, 126, length >> 8, length & 0xFF))
    else:
        header = bytes((first, 127)) + length.to_bytes(8, "big")
    if mask is None:
        return header + payload
    if len(mask) != 4:
        raise LocalProtocolError("a masking key is exactly 4 bytes")
    # Set the MASK bit in the second byte of the header.
    header = bytes((header[0], header[1] | _MASK_BIT)) + header[2:]
    return header + mask + _unmask(payload, 0, length, mask)


# --- parsing (section 5.2) ---------------------------------------------------------------


class FrameParser:
    """Cut a byte stream into frames, whatever its chunking (section 5.2).

    Feed bytes with ``feed()``, then call ``next_frame()`` until it returns None (it needs
    more bytes). A header that breaks a rule raises ``RemoteProtocolError`` as soon as the
    header is complete, before its payload is buffered: an oversized frame is refused
    from its declared length (1009), not after the parser has stored it.

    ``require_mask`` is True for a server (section 5.1: "The server MUST close the
    connection upon receiving a frame that is not masked") and False for a client ("A
    client MUST close a connection if it detects a masked frame"). ``allowed_rsv`` is a
    bit mask of the RSV bits a negotiated extension defines (0x40 for
    permessage-deflate's RSV1). ``max_data_payload`` bounds the payload of data frames
    and may be lowered by the caller while a fragmented message is in progress;
    ``max_compressed_payload`` is the bound for a frame with RSV1 set (a compressed
    message may be a little larger on the wire than the limit it inflates within).
    """

    __slots__ = (
        "_buf",
        "_need",
        "_pos",
        "allowed_rsv",
        "max_compressed_payload",
        "max_data_payload",
        "require_mask",
    )

    def __init__(self, *, require_mask: bool, max_data_payload: int, allowed_rsv: int = 0) -> None:
        self.require_mask = require_mask
        self.max_data_payload = max_data_payload
        self.max_compressed_payload = max_data_payload
        self.allowed_rsv = allowed_rsv
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._need = 2  # bytes needed from _pos before next_frame can make progress

    def feed(self, data: bytes | bytearray) -> None:
        """Append received bytes to the buffer."""
        buf = self._buf
        pos = self._pos
        if pos == len(buf):
            # Everything was consumed: take the new chunk as it is, without a copy, if
            # it is immutable; a caller's bytearray may be reused, so copy that one.
            self._buf = data if type(data) is bytes else bytearray(data)
            self._pos = 0
        elif isinstance(buf, bytearray):
            if pos:
                del buf[:pos]
                self._pos = 0
            buf += data
        else:
            self._buf = bytearray(buf[pos:]) + data
            self._pos = 0

    def buffer(self) -> tuple[bytes | bytearray, int]:
        """Return the buffer and the offset of its first unparsed byte.

        For a caller that decodes simple frames in place (``Connection``'s hot path);
        it must report how far it got with ``consume_to``.
        """
        return self._buf, self._pos

    def consume_to(self, position: int) -> None:
        """Mark the buffer as parsed up to ``position`` (see ``buffer``)."""
        if position != self._pos:
            self._pos = position
            self._need = 2  # what next_frame waited for may have been consumed

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet part of a returned frame."""
        return len(self._buf) - self._pos

    def take_buffered(self) -> bytes:
        """Remove and return the unparsed bytes (for the layer above, e.g. after HTTP)."""
        rest = bytes(self._buf[self._pos :])
        self._buf = b""
        self._pos = 0
        self._need = 2
        return rest

    def next_frame(self, skip: int = 0) -> Frame | None:
        """Return the next complete frame, or None if more bytes are needed; hot path.

        ``skip``: the first bytes of its payload that were already read through
        ``peek_payload`` (a text frame validated as it arrived); they are left out of the
        payload returned, so that no byte is unmasked twice.
        """
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available < self._need:
            return None
        first = buf[pos]
        second = buf[pos + 1]
        length = second & 0x7F
        header_size = 2
        if length >= 126:
            if length == 126:
                header_size = 4
                if available < 4:
                    self._need = 4
                    return None
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                if length < 126:
                    raise RemoteProtocolError("payload length not minimally encoded")
            else:
                header_size = 10
                if available < 10:
                    self._need = 10
                    return None
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                # "the most significant bit MUST be 0"
                if length >> 63:
                    raise RemoteProtocolError("64-bit payload length with its top bit set")
                if length < 0x10000:
                    raise RemoteProtocolError("payload length not minimally encoded")
        masked = second & _MASK_BIT
        if masked:
            header_size += 4

        # The header is complete (but for the masking key): check it before any payload.
        opcode = _OPCODES[first & 0x0F]
        if first & _RSV_BITS & ~self.allowed_rsv:
            raise RemoteProtocolError("reserved bits set without a negotiated extension")
        if opcode is None:
            raise RemoteProtocolError(f"reserved opcode 0x{first & 0x0F:X}")
        if self.require_mask:
            if not masked:
                raise RemoteProtocolError("unmasked frame from a client")
        elif masked:
            raise RemoteProtocolError("masked frame from a server")
        if opcode >= 0x8:
            # Section 5.5: "All control frames MUST have a payload length of 125 bytes or
            # less and MUST NOT be fragmented."
            if length > MAX_CONTROL_PAYLOAD:
                raise RemoteProtocolError("control frame payload over 125 bytes")
            if not first & _FIN:
                raise RemoteProtocolError("fragmented control frame")
        elif length > self.max_data_payload and (
            not first & _RSV1 or length > self.max_compressed_payload
        ):
            raise RemoteProtocolError(
                f"frame of {length} bytes over the size limit "
                f"({self.max_data_payload} bytes left for this message)",
                CloseCode.MESSAGE_TOO_BIG,
            )

        end = pos + header_size + length
        if end > len(buf):
            self._need = header_size + length
            return None
        start = pos + header_size
        if masked:
            key = bytes(buf[start - 4 : start])
            if skip:
                # Rotate the key so that it lines up with byte ``skip`` of the payload.
                key = key[skip & 3 :] + key[: skip & 3]
            payload = _unmask(buf, start + skip, end, key)
        else:
            payload = buf[start + skip : end]
        self._pos = end
        self._need = 2
        return Frame(
            opcode,
            payload,
            first & _FIN != 0,
            first & _RSV1 != 0,
            first & _RSV2 != 0,
            first & _RSV3 != 0,
        )

    def peek_header(self) -> tuple[Opcode, bool] | None:
        """The opcode and RSV1 bit of the frame whose payload is still arriving.

        None when no frame header is complete. Used with ``peek_payload``.
        """
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 2:
            return None
        opcode = _OPCODES[buf[pos] & 0x0F]
        if opcode is None:  # the next call to next_frame raises; nothing to show
            return None
        return opcode, buf[pos] & _RSV1 != 0

    def peek_payload(self, start: int) -> bytes | bytearray:
        """Look into the frame whose payload is still arriving, without consuming it.

        Returns its unmasked payload from offset ``start`` to what has arrived (b"" if
        nothing new). The connection uses it to validate UTF-8 before a large text frame
        is complete (section 8.1: fail "as soon as" invalid data is seen); each call
        unmasks only the new bytes, so a frame arriving in pieces costs linear time.
        """
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available < 2:
            return b""
        second = buf[pos + 1]
        length = second & 0x7F
        header_size = 2 if length < 126 else 4 if length == 126 else 10
        if second & _MASK_BIT:
            header_size += 4
        if available <= header_size + start:
            return b""
        payload_start = pos + header_size
        data_start = payload_start + start
        data_end = len(buf)
        if not second & _MASK_BIT:
            return bytes(buf[data_start:data_end])
        key = bytes(buf[payload_start - 4 : payload_start])
        # Rotate the key so that it lines up with byte ``start`` of the payload.
        shift = start & 3
        return _unmask(buf, data_start, data_end, key[shift:] + key[:shift])
