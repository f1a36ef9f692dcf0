"""permessage-deflate: compressing WebSocket messages (RFC 7692).

Two halves live here, both sans-I/O:

* Negotiation (RFC 7692 section 5 and 7.1). The client offers the extension with
  :func:`client_offer`; the server picks the first acceptable offer with
  :func:`server_negotiate`, which returns the ``Sec-WebSocket-Extensions`` response element
  and a configured :class:`PerMessageDeflate`; the client checks that response with
  :func:`client_accept`.
* The per-connection codec, :class:`PerMessageDeflate` (section 7.2): ``compress`` turns one
  whole outgoing message into the payload of a frame with RSV1 set; ``decompress`` turns the
  payload of each frame of a compressed incoming message back into data, under a size budget.

Inside :class:`PerMessageDeflate` the two directions are called *local* (what we compress)
and *remote* (what the peer compressed and we decompress), so the same code serves a client
and a server. On a server, local is ``server_*`` and remote is ``client_*``; on a client the
other way round.

zlib and 8-bit windows. RFC 7692 allows LZ77 windows of 8 to 15 bits, but zlib 1.2.9 and
later refuses to *deflate* a raw stream with an 8-bit window: ``zlib.compressobj(wbits=-8)``
raises ``ValueError: Invalid initialization option`` (madler/zlib#171; with the zlib wrapper it
silently uses 9 instead). Inflating is different: a window only bounds how far back a match may
reach, so an inflater with a 9-bit window reads everything an 8-bit deflater can produce.
Therefore:

* we never agree to compress with an 8-bit window: a server declines an offer that asks it to
  (``server_max_window_bits=8``) and tries the next offer; a client that is told to
  (``client_max_window_bits=8``) keeps the extension but never compresses (section 6 lets a
  sender leave any message uncompressed) rather than failing the connection;
* when the peer compresses with an 8-bit window we inflate with a 9-bit one.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from rfc6455.codes import CloseCode
from rfc6455.errors import InvalidHandshake, LocalProtocolError, RemoteProtocolError

__all__ = [
    "EXTENSION_NAME",
    "BytesLike",
    "CompressorSettings",
    "DeflateOptions",
    "ExtensionParameters",
    "PerMessageDeflate",
    "client_accept",
    "client_offer",
    "compress_once",
    "server_negotiate",
]

EXTENSION_NAME = "permessage-deflate"

#: What :func:`server_negotiate` and :func:`client_accept` receive for one element of the
#: ``Sec-WebSocket-Extensions`` header: ``(name, value)``, value ``None`` for a bare parameter.
ExtensionParameters: TypeAlias = Sequence[tuple[str, str | None]]

#: Anything zlib reads: the frame parser may hand us a ``memoryview`` of its buffer.
BytesLike: TypeAlias = bytes | bytearray | memoryview

# Section 7.2.1 removes, and section 7.2.2 restores, these 4 octets: the LEN and NLEN of the
# empty stored block that ends every Z_SYNC_FLUSH.
_EMPTY_BLOCK_TAIL = b"\x00\x00\xff\xff"

# Section 7.1.2.1: "This parameter has a decimal integer value without leading zeroes between
# 8 to 15, inclusive". A dict lookup rejects "08", " 9", "+9" and "0x9" for free.
_WINDOW_BITS_VALUES = {str(bits): bits for bits in range(8, 16)}

_MAX_WINDOW_BITS = 15  # what a window is when nobody limits it (section 7.1.2)
_MIN_DEFLATE_WINDOW_BITS = 9  # the smallest window zlib can raw-deflate with (see above)

_SERVER_NO_CONTEXT_TAKEOVER = "server_no_context_takeover"
_CLIENT_NO_CONTEXT_TAKEOVER = "client_no_context_takeover"
_SERVER_MAX_WINDOW_BITS = "server_max_window_bits"
_CLIENT_MAX_WINDOW_BITS = "client_max_window_bits"


def _check_int(name: str, value: object, low: int, high: int) -> None:
    # bool is an int to Python; ``client_max_window_bits=True`` (websockets' spelling of a
    # bare parameter) must not pass as 1.
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name} must be an int between {low} and {high}, not {value!r}")


@dataclass(frozen=True, slots=True)
class DeflateOptions:
    """What this endpoint asks for and permits when it negotiates permessage-deflate.

    The same options serve both roles; what each field does depends on the role:

    * ``server_no_context_takeover`` / ``client_no_context_takeover``: ask that the server's /
      the client's compressor start every message afresh (section 7.1.1). A client puts them
      in its offer; a server puts them in its response (both are always allowed there).
    * ``server_max_window_bits``: a client asks the server to compress with at most this
      window (the server may refuse the whole offer, so the default is not to ask); a server
      never compresses with more.
    * ``client_max_window_bits``: a client promises to compress with at most this window; a
      server asks the client to, when the client's offer allows it (default: ``window_bits``).
    * ``window_bits``: the window our compressor uses when the peer allows more, and the
      default limit a server asks of the client. 12 bits (4 KiB) instead of zlib's 15
      (32 KiB), and ``mem_level`` 5 instead of 8, cut the memory of a compressor from 256 KiB
      to 32 KiB per connection (zlib.h: ``(1 << (windowBits+2)) + (1 << (memLevel+9))``)
      and of a decompressor's window from 32 KiB to 4 KiB, for little loss on chat messages.
    * ``compress_level``: zlib's level, 0-9 (or -1 for zlib's default, 6); ``mem_level``:
      zlib's memLevel, 1-9.
    * ``min_size``: messages shorter than this go uncompressed (RSV1 clear); section 6 lets a
      sender choose per message, and compressing a few bytes only makes them longer.

    Window bits are 9-15: RFC 7692 allows 8, but zlib cannot compress with an 8-bit window.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None
    compress_level: int = 6
    mem_level: int = 5
    window_bits: int = 12
    min_size: int = 64

    def __post_init__(self) -> None:
        for name in (_SERVER_NO_CONTEXT_TAKEOVER, _CLIENT_NO_CONTEXT_TAKEOVER):
            if type(getattr(self, name)) is not bool:
                raise ValueError(f"{name} must be a bool, not {getattr(self, name)!r}")
        for name in (_SERVER_MAX_WINDOW_BITS, _CLIENT_MAX_WINDOW_BITS):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), _MIN_DEFLATE_WINDOW_BITS, _MAX_WINDOW_BITS)
        _check_int("window_bits", self.window_bits, _MIN_DEFLATE_WINDOW_BITS, _MAX_WINDOW_BITS)
        _check_int("compress_level", self.compress_level, -1, 9)
        _check_int("mem_level", self.mem_level, 1, 9)
        if type(self.min_size) is not int or self.min_size < 0:
            raise ValueError(f"min_size must be a non-negative int, not {self.min_size!r}")


@dataclass(frozen=True, slots=True)
class CompressorSettings:
    """The zlib settings of a compressor; equal settings produce equal bytes.

    Hashable, so the runtime can key a cache of :func:`compress_once` results by it.
    """

    level: int
    window_bits: int
    mem_level: int


def compress_once(data: BytesLike, settings: CompressorSettings) -> bytes:
    """Compress one message with a fresh compressor: the payload of a frame with RSV1 set.

    When the local side has no context takeover, every message starts from a fresh
    compressor, so one call serves every connection whose
    :attr:`PerMessageDeflate.broadcast_settings` equals ``settings`` (a chat message sent to a
    whole room is compressed once, not once per member)::

        payloads: dict[CompressorSettings, bytes] = {}
        for deflate in receivers:
            settings = deflate.broadcast_settings if deflate.should_compress(len(data)) else None
            if settings is not None and settings not in payloads:
                payloads[settings] = compress_once(data, settings)
    """
    # A fresh compressobj is faster than .copy() of a pristine one: copy() must also copy the
    # window, hash chains and pending buffer that a new compressor only allocates (0.4 us
    # against 1.0 us for 12 bits and memLevel 5; CPython 3.11, zlib 1.2.13).
    compressor = zlib.compressobj(
        settings.level, zlib.DEFLATED, -settings.window_bits, settings.mem_level
    )
    return _compress_message(compressor, data)


def _compress_message(compressor: zlib._Compress, data: BytesLike) -> bytes:
    # Section 7.2.1: "1. Compress all the octets of the payload of the message using DEFLATE.
    # 2. If the resulting data does not end with an empty DEFLATE block with no compression
    # (the "BTYPE" bits are set to 00), append an empty DEFLATE block with no compression to
    # the tail end. 3. Remove 4 octets (that are 0x00 0x00 0xff 0xff) from the tail end."
    # Z_SYNC_FLUSH does step 2: it always ends the output with exactly that empty block.
    payload = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return payload[:-4]


class PerMessageDeflate:
    """The permessage-deflate codec of one connection, for either role.

    Made by :func:`server_negotiate` or :func:`client_accept`; the ``Connection`` calls
    :meth:`should_compress` and :meth:`compress` for each outgoing data message and
    :meth:`decompress` for each frame of an incoming message that had RSV1 set on its first
    frame. zlib objects are created on first use, and, on a side without context takeover,
    dropped after every message, so an idle connection holds no compression memory.
    """

    __slots__ = (
        "_compressor",
        "_compressor_settings",
        "_decompressor",
        "_inflate_window_bits",
        "_local_max_window_bits",
        "_local_no_context_takeover",
        "_message_has_data",
        "_min_size",
        "_remote_max_window_bits",
        "_remote_no_context_takeover",
        "_skip_rest_of_message",
        "is_server",
        "max_message_size",
    )

    def __init__(
        self,
        *,
        is_server: bool,
        local_no_context_takeover: bool,
        remote_no_context_takeover: bool,
        local_max_window_bits: int,
        remote_max_window_bits: int,
        options: DeflateOptions,
        max_message_size: int,
    ) -> None:
        """Configure the codec from negotiated parameters (window bits are 8-15)."""
        _check_int("local_max_window_bits", local_max_window_bits, 8, _MAX_WINDOW_BITS)
        _check_int("remote_max_window_bits", remote_max_window_bits, 8, _MAX_WINDOW_BITS)
        if type(max_message_size) is not int or max_message_size < 0:
            raise ValueError(f"max_message_size must be a non-negative int: {max_message_size!r}")
        self.is_server = is_server
        #: The connection's limit on one decompressed message; caps every ``max_size``.
        self.max_message_size = max_message_size
        self._local_no_context_takeover = local_no_context_takeover
        self._remote_no_context_takeover = remote_no_context_takeover
        self._local_max_window_bits = local_max_window_bits
        self._remote_max_window_bits = remote_max_window_bits
        self._min_size = options.min_size
        # The compressor uses our preferred window unless the peer allows less. None: the peer
        # holds us to 8 bits, which zlib cannot do, so we send every message uncompressed.
        self._compressor_settings: CompressorSettings | None = None
        if local_max_window_bits >= _MIN_DEFLATE_WINDOW_BITS:
            self._compressor_settings = CompressorSettings(
                level=options.compress_level,
                window_bits=min(options.window_bits, local_max_window_bits),
                mem_level=options.mem_level,
            )
        # zlib: "windowBits must be greater than or equal to the windowBits value provided to
        # deflateInit2() while compressing", so inflating with 9 bits reads what a peer
        # compressed with 8, for 256 more bytes of window.
        self._inflate_window_bits = max(remote_max_window_bits, _MIN_DEFLATE_WINDOW_BITS)
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None
        self._message_has_data = False  # some payload of this message reached the inflater
        self._skip_rest_of_message = False  # the DEFLATE stream ended before the message did

    @property
    def local_no_context_takeover(self) -> bool:
        """Our compressor starts every message afresh."""
        return self._local_no_context_takeover

    @property
    def remote_no_context_takeover(self) -> bool:
        """The peer's compressor starts every message afresh, so our decompressor does too."""
        return self._remote_no_context_takeover

    @property
    def local_max_window_bits(self) -> int:
        """The largest window the peer lets us compress with (15: no limit)."""
        return self._local_max_window_bits

    @property
    def remote_max_window_bits(self) -> int:
        """The largest window the peer compresses with (15: no limit)."""
        return self._remote_max_window_bits

    @property
    def broadcast_settings(self) -> CompressorSettings | None:
        """Settings for :func:`compress_once`, when its result is what :meth:`compress` makes.

        That holds when the local side has no context takeover; otherwise (or when we cannot
        compress at all) this is None and every message must go through :meth:`compress`.
        """
        if self._local_no_context_takeover:
            return self._compressor_settings
        return None

    def should_compress(self, size: int) -> bool:
        """Tell whether to compress an outgoing message of ``size`` bytes (section 6).

        No for messages under ``min_size``, and no at all if the peer limits our window to 8
        bits. A message sent uncompressed goes out with RSV1 clear.
        """
        return size >= self._min_size and self._compressor_settings is not None

    def compress(self, data: BytesLike) -> bytes:
        """Compress one whole message; the result is the payload of its frame(s), RSV1 set."""
        settings = self._compressor_settings
        if settings is None:
            raise LocalProtocolError(
                "cannot compress: the peer limits our window to 8 bits; check should_compress()"
            )
        # Section 7.1.1: if the agreed parameters contain [our] no_context_takeover parameter,
        # we "MUST start compressing each new message with an empty LZ77 sliding window".
        if self._local_no_context_takeover:
            return compress_once(data, settings)
        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = zlib.compressobj(
                settings.level, zlib.DEFLATED, -settings.window_bits, settings.mem_level
            )
        return _compress_message(compressor, data)

    def decompress(self, payload: BytesLike, fin: bool, max_size: int) -> bytes:
        """Decompress the payload of one frame of a compressed message (section 7.2.2).

        ``fin`` is the frame's FIN bit. ``max_size`` is what this message may still produce
        (the caller subtracts what earlier frames of the message returned); it is capped by
        ``max_message_size``. Raises :class:`RemoteProtocolError` with 1009 when the message
        would be bigger, and with 1007 when the payload is not valid DEFLATE data.
        """
        if max_size < 0:
            raise ValueError(f"max_size must not be negative: {max_size}")
        # zlib takes max_length as a C ssize_t: an "unlimited" size must still fit budget + 1.
        budget = min(max_size, self.max_message_size, sys.maxsize - 1)
        if self._skip_rest_of_message:
            # A DEFLATE block with BFINAL set ended the stream in an earlier frame (section
            # 7.2.3.4); like any inflater we ignore what follows the end of the stream.
            if fin:
                self._skip_rest_of_message = self._message_has_data = False
            return b""
        if payload:
            self._message_has_data = True
        elif fin and not self._message_has_data:
            # A compressed message with an empty payload: nothing to inflate. Appending the
            # tail to nothing would leave the inflater inside a stored block, corrupting every
            # later message on a connection with context takeover.
            return b""
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(-self._inflate_window_bits)
        # Section 7.2.2: "1. Append 4 octets of 0x00 0x00 0xff 0xff to the tail end of the
        # payload of the message. 2. Decompress the resulting data using DEFLATE."
        data = b"".join((payload, _EMPTY_BLOCK_TAIL)) if fin else payload
        try:
            # Bounded: zlib stops after budget + 1 bytes, so a bomb costs at most that much
            # memory. Output of budget + 1 means "too big" (the rest of the input then sits
            # in unconsumed_tail); less means all of the input was consumed.
            output = decompressor.decompress(data, budget + 1)
        except zlib.error as exc:
            # 1007, not 1002: the frame itself was well formed and RSV1 was negotiated; what
            # is wrong is the data inside the message, as with invalid UTF-8 in a text
            # message (RFC 6455 section 7.4.1: "data within a message that was not
            # consistent with the type of the message"). The ws library for Node.js also
            # answers 1007; websockets answers 1002.
            detail = str(exc).rpartition(": ")[2]
            raise RemoteProtocolError(
                f"invalid compressed data: {detail}", CloseCode.INVALID_FRAME_PAYLOAD_DATA
            ) from exc
        if len(output) > budget:
            raise RemoteProtocolError(
                "message too big after decompression", CloseCode.MESSAGE_TOO_BIG
            )
        if decompressor.eof:
            # The peer ended the DEFLATE stream with a BFINAL block (section 7.2.3.4). zlib
            # cannot inflate past it, so the next message needs a fresh inflater; we drop
            # this one now so that later input does not pile up in its unused_data.
            self._decompressor = None
            self._skip_rest_of_message = not fin
        if fin:
            self._message_has_data = False
            # Section 7.1.1.1: "If the peer server doesn't use context takeover, the client
            # doesn't need to reserve memory to retain the LZ77 sliding window between
            # messages"; the same holds for a server whose client has no context takeover.
            if self._remote_no_context_takeover:
                self._decompressor = None
        return output

    def __repr__(self) -> str:
        role = "server" if self.is_server else "client"
        settings = self._compressor_settings
        compressing = (
            "off"
            if settings is None
            else f"level={settings.level} window_bits={settings.window_bits} "
            f"mem_level={settings.mem_level}"
        )
        return (
            f"<PerMessageDeflate {role}"
            f" local_no_context_takeover={self._local_no_context_takeover}"
            f" local_max_window_bits={self._local_max_window_bits}"
            f" remote_no_context_takeover={self._remote_no_context_takeover}"
            f" remote_max_window_bits={self._remote_max_window_bits}"
            f" compressor=({compressing}) min_size={self._min_size}"
            f" max_message_size={self.max_message_size}>"
        )


# --- Negotiation (RFC 7692 section 7.1) -----------------------------------------------------


class _NegotiationError(Exception):
    """An offer the server must decline, or a response the client must fail on."""


@dataclass(slots=True)
class _Parameters:
    """The parameters of one permessage-deflate offer or response, validated."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    has_client_max_window_bits: bool = False
    client_max_window_bits: int | None = None  # None with has_...: bare (offers only)


def _parse_parameters(params: ExtensionParameters, *, is_offer: bool) -> _Parameters:
    """Check the parameters against section 7, raising :class:`_NegotiationError`.

    Section 7: a server "MUST decline" an offer, and a client "MUST _Fail the WebSocket
    Connection_" on a response, that has "an extension parameter not defined for use in an
    [offer/response]", "an extension parameter with an invalid value" or "multiple extension
    parameters with the same name".
    """
    parsed = _Parameters()
    seen: set[str] = set()
    for name, value in params:
        if name in seen:
            raise _NegotiationError(f"duplicate parameter {name}")
        seen.add(name)
        if name in (_SERVER_NO_CONTEXT_TAKEOVER, _CLIENT_NO_CONTEXT_TAKEOVER):
            # Section 7.1.1: "This extension parameter has no value."
            if value is not None:
                raise _NegotiationError(f"{name} takes no value, got {value!r}")
            setattr(parsed, name, True)
        elif name == _SERVER_MAX_WINDOW_BITS:
            parsed.server_max_window_bits = _parse_window_bits(name, value)
        elif name == _CLIENT_MAX_WINDOW_BITS:
            # Section 7.1.2.2: in an offer "This parameter has no value or a decimal integer
            # value"; a response has a value.
            parsed.has_client_max_window_bits = True
            if value is not None or not is_offer:
                parsed.client_max_window_bits = _parse_window_bits(name, value)
        else:
            raise _NegotiationError(f"unknown parameter {name}")
    return parsed


def _parse_window_bits(name: str, value: str | None) -> int:
    bits = _WINDOW_BITS_VALUES.get(value) if value is not None else None
    if bits is None:
        raise _NegotiationError(f"invalid value for {name}: {value!r}")
    return bits


def _format_element(
    *,
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: int | None,
    client_max_window_bits: int | bool,
) -> str:
    """Build an extension element: ``True`` for ``client_max_window_bits`` means bare."""
    parts = [EXTENSION_NAME]
    if server_no_context_takeover:
        parts.append(_SERVER_NO_CONTEXT_TAKEOVER)
    if client_no_context_takeover:
        parts.append(_CLIENT_NO_CONTEXT_TAKEOVER)
    if server_max_window_bits is not None:
        parts.append(f"{_SERVER_MAX_WINDOW_BITS}={server_max_window_bits}")
    if client_max_window_bits is True:
        parts.append(_CLIENT_MAX_WINDOW_BITS)
    elif client_max_window_bits is not False:
        parts.append(f"{_CLIENT_MAX_WINDOW_BITS}={client_max_window_bits}")
    return "; ".join(parts)


def client_offer(options: DeflateOptions) -> str:
    """Build the ``Sec-WebSocket-Extensions`` element a client offers (section 5.1, 7.1).

    ``client_max_window_bits`` is always offered, so the server may limit our window
    (section 7.1.2.2: it tells the server "that the client supports the
    "client_max_window_bits" extension parameter in an extension negotiation response").
    """
    return _format_element(
        server_no_context_takeover=options.server_no_context_takeover,
        client_no_context_takeover=options.client_no_context_takeover,
        server_max_window_bits=options.server_max_window_bits,
        client_max_window_bits=options.client_max_window_bits or True,
    )


def server_negotiate(
    offers: Iterable[tuple[str, ExtensionParameters]],
    options: DeflateOptions,
    *,
    max_message_size: int,
) -> tuple[str, PerMessageDeflate] | None:
    """Accept the first acceptable permessage-deflate offer (section 5.1 and 7.1).

    ``offers`` is the parsed ``Sec-WebSocket-Extensions`` request header, in order; other
    extensions are skipped. Returns the response element and the connection's codec, or
    None when no offer is acceptable (the connection then goes without compression).
    """
    for name, params in offers:
        if name != EXTENSION_NAME:
            continue
        try:
            return _accept_offer(
                _parse_parameters(params, is_offer=True), options, max_message_size
            )
        except _NegotiationError:
            # Section 5: a client may offer several configurations, most preferred first;
            # a declined one is simply skipped.
            continue
    return None


def _accept_offer(
    offer: _Parameters, options: DeflateOptions, max_message_size: int
) -> tuple[str, PerMessageDeflate]:
    # Section 7.1.1.1: a server accepts an offer with server_no_context_takeover "by including
    # the "server_no_context_takeover" extension parameter in the corresponding extension
    # negotiation response", and "MAY include [it] ... even if the extension negotiation offer
    # being accepted by the extension negotiation response didn't include" it.
    server_no_context_takeover = (
        offer.server_no_context_takeover or options.server_no_context_takeover
    )
    # Section 7.1.1.2: "the server may either ignore the parameter or use the parameter to
    # avoid taking over the LZ77 sliding window unnecessarily by including" it. We echo it:
    # then our inflater can be dropped between messages.
    client_no_context_takeover = (
        offer.client_no_context_takeover or options.client_no_context_takeover
    )

    # Section 7.1.2.1: "A server accepts an extension negotiation offer with this parameter by
    # including the "server_max_window_bits" extension parameter in the extension negotiation
    # response to send back to the client with the same or smaller value as the offer"; it
    # "MAY include [it] ... even if the extension negotiation offer being accepted by the
    # response didn't include" it. We announce the window we really use whenever it is below
    # 15, which lets the client inflate with a smaller window too (websockets' default server
    # answers server_max_window_bits=12 to every browser in the same way).
    server_limit = min(
        offer.server_max_window_bits or _MAX_WINDOW_BITS,
        options.server_max_window_bits or _MAX_WINDOW_BITS,
    )
    if server_limit < _MIN_DEFLATE_WINDOW_BITS:
        # "A server declines an extension negotiation offer with this parameter if the server
        # doesn't support it": zlib cannot compress with an 8-bit window.
        raise _NegotiationError("server_max_window_bits=8 is not supported by zlib")
    server_window_bits = min(options.window_bits, server_limit)
    server_max_window_bits: int | None = server_window_bits
    if offer.server_max_window_bits is None and server_window_bits == _MAX_WINDOW_BITS:
        server_max_window_bits = None

    # Section 7.1.2.2: "If a received extension negotiation offer doesn't have the
    # "client_max_window_bits" extension parameter, the corresponding extension negotiation
    # response to the offer MUST NOT include the "client_max_window_bits" extension
    # parameter." When the offer has it, the response may include it with "a value equal to or
    # smaller than the received value"; without a response value, an offered value still
    # binds the client ("the client is not going to use an LZ77 sliding window size greater
    # than the size specified by the value in the extension negotiation offer").
    client_max_window_bits: int | bool = False
    client_window_bits = _MAX_WINDOW_BITS
    if offer.has_client_max_window_bits:
        wanted = options.client_max_window_bits or options.window_bits
        client_window_bits = min(offer.client_max_window_bits or _MAX_WINDOW_BITS, wanted)
        client_max_window_bits = client_window_bits

    response = _format_element(
        server_no_context_takeover=server_no_context_takeover,
        client_no_context_takeover=client_no_context_takeover,
        server_max_window_bits=server_max_window_bits,
        client_max_window_bits=client_max_window_bits,
    )
    deflate = PerMessageDeflate(
        is_server=True,
        local_no_context_takeover=server_no_context_takeover,
        remote_no_context_takeover=client_no_context_takeover,
        local_max_window_bits=server_window_bits,
        remote_max_window_bits=client_window_bits,
        options=options,
        max_message_size=max_message_size,
    )
    return response, deflate


def client_accept(
    params: ExtensionParameters, options: DeflateOptions, *, max_message_size: int
) -> PerMessageDeflate:
    """Check the server's permessage-deflate response to our offer and build the codec.

    ``params`` are the parameters of the response element; the offer was
    ``client_offer(options)``. Raises :class:`InvalidHandshake` (status 101) when section 7
    says the client "MUST _Fail the WebSocket Connection_".
    """
    try:
        response = _parse_parameters(params, is_offer=False)
        return _accept_response(response, options, max_message_size)
    except _NegotiationError as exc:
        raise InvalidHandshake(f"unacceptable {EXTENSION_NAME} response: {exc}", 101) from exc


def _accept_response(
    response: _Parameters, options: DeflateOptions, max_message_size: int
) -> PerMessageDeflate:
    # Section 7.1.1.1: a server accepts an offer with server_no_context_takeover "by including
    # the "server_no_context_takeover" extension parameter in the corresponding extension
    # negotiation response"; without it, the server did not accept what we offered. The
    # server may also add it unasked.
    if options.server_no_context_takeover and not response.server_no_context_takeover:
        raise _NegotiationError("server_no_context_takeover was offered but not accepted")

    # Section 7.1.2.1: the server accepts server_max_window_bits "by including [it] in the
    # extension negotiation response ... with the same or smaller value as the offer", and
    # may include it unasked.
    server_window_bits = response.server_max_window_bits
    if options.server_max_window_bits is not None:
        if server_window_bits is None:
            raise _NegotiationError("server_max_window_bits was offered but not accepted")
        if server_window_bits > options.server_max_window_bits:
            raise _NegotiationError(
                f"server_max_window_bits={server_window_bits} exceeds the offered "
                f"{options.server_max_window_bits}"
            )

    # Section 7.1.2.2: the response may limit our window, to at most what we offered. We
    # always offer the parameter, so it may always be there. A limit of 8 bits is legal but
    # zlib cannot honour it: rather than fail the connection we keep the extension and send
    # every message uncompressed (section 6 allows that per message).
    client_window_bits = response.client_max_window_bits
    if client_window_bits is None:
        client_window_bits = options.client_max_window_bits or _MAX_WINDOW_BITS
    elif options.client_max_window_bits is not None and (
        client_window_bits > options.client_max_window_bits
    ):
        raise _NegotiationError(
            f"client_max_window_bits={client_window_bits} exceeds the offered "
            f"{options.client_max_window_bits}"
        )

    return PerMessageDeflate(
        is_server=False,
        # Section 7.1.1.2: if the agreed parameters contain client_no_context_takeover, "the
        # client MUST start compressing each new message with an empty LZ77 sliding window";
        # we also keep the promise our offer made.
        local_no_context_takeover=(
            response.client_no_context_takeover or options.client_no_context_takeover
        ),
        remote_no_context_takeover=response.server_no_context_takeover,
        local_max_window_bits=client_window_bits,
        remote_max_window_bits=server_window_bits or _MAX_WINDOW_BITS,
        options=options,
        max_message_size=max_message_size,
    )
