"""The WebSocket connection state machine, for either role, without I/O.

Bytes in, events out: ``receive_data(bytes)`` returns the events the bytes completed;
``send_text``, ``send_binary``, ``ping``, ``pong`` and ``close`` return the bytes to
write; replies the protocol makes on its own (pongs, the close reply, the close that
fails a connection, a rejected handshake) wait in ``data_to_send()``. The connection
never reads a clock, never touches a socket and never raises for something the peer
did: a peer that breaks RFC 6455 gets a close frame with the right code, and the caller
learns why from ``close_code``, ``close_reason`` and ``failure``.

Lifecycle (section 4 for CONNECTING, sections 5.5.1 and 7 for the rest)::

    CONNECTING --accept / 101 received--> OPEN --send close--> CLOSING --close received--> CLOSED
         |                                 |                       |
         +--reject / refused--> CLOSED      +--close received (we reply) / failed / EOF--> CLOSED
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable, Iterable, Sequence
from enum import Enum

from rfc6455 import deflate, handshake
from rfc6455.codes import CloseCode, Opcode, is_sendable_close_code
from rfc6455.errors import InvalidHandshake, LocalProtocolError, RemoteProtocolError
from rfc6455.events import (
    Accepted,
    BinaryMessage,
    CloseReceived,
    Event,
    Ping,
    Pong,
    Rejected,
    RequestReceived,
    TextMessage,
)
from rfc6455.frames import (
    _KEY_REPEAT,
    _KEY_SHIFT,
    MAX_CONTROL_PAYLOAD,
    FrameParser,
    _unmask,
    encode_frame,
)
from rfc6455.http import (
    DEFAULT_LIMITS,
    HttpLimits,
    Request,
    parse_request_head,
    parse_response_head,
)

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "Connection", "Role", "State"]

#: DESIGN.md defaults: the largest message (and frame) accepted, 1 MiB.
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
#: Section 5.5.1: a close reason shares the 125-byte control payload with the 2-byte code.
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2

_utf8_decoder = codecs.getincrementaldecoder("utf-8")
_NO_DECODER = _utf8_decoder()  # a placeholder, never used to decode

# The hot path builds its frozen events through their slot descriptors: half the cost
# of the generated __init__, which goes through object.__setattr__ to defeat "frozen".
_set_text_data = TextMessage.data.__set__  # type: ignore[attr-defined,misc]
_set_binary_data = BinaryMessage.data.__set__  # type: ignore[attr-defined,misc]


class Role(Enum):
    """Which end of the connection we are; it decides the masking direction (5.1)."""

    SERVER = "server"
    CLIENT = "client"


class State(Enum):
    """The connection states of RFC 6455 (sections 4.1 and 7)."""

    CONNECTING = "CONNECTING"
    OPEN = "OPEN"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"


class _Trigger(Enum):
    ACCEPT = "accept"  # server sent 101, or client received a valid 101
    REJECT = "reject"  # handshake refused, either side
    SEND_CLOSE = "send close"
    RECEIVE_CLOSE = "receive close"
    FAIL = "fail"  # the peer broke the protocol; our close frame is queued
    EOF = "eof"  # the transport closed


# The state machine as data: (state, trigger) -> next state. Anything missing is a bug
# in the caller (LocalProtocolError), never a peer's fault.
TRANSITIONS: dict[tuple[State, _Trigger], State] = {
    (State.CONNECTING, _Trigger.ACCEPT): State.OPEN,
    (State.CONNECTING, _Trigger.REJECT): State.CLOSED,
    (State.CONNECTING, _Trigger.EOF): State.CLOSED,
    (State.OPEN, _Trigger.SEND_CLOSE): State.CLOSING,
    # Section 5.5.1: "If an endpoint receives a Close frame and did not previously send a
    # Close frame, the endpoint MUST send a Close frame in response." We reply at once.
    (State.OPEN, _Trigger.RECEIVE_CLOSE): State.CLOSED,
    (State.OPEN, _Trigger.FAIL): State.CLOSED,
    (State.OPEN, _Trigger.EOF): State.CLOSED,
    (State.CLOSING, _Trigger.RECEIVE_CLOSE): State.CLOSED,
    (State.CLOSING, _Trigger.FAIL): State.CLOSED,
    (State.CLOSING, _Trigger.EOF): State.CLOSED,
}


class Connection:
    """One WebSocket connection, from the opening handshake to the closing one.

    A server connection starts in CONNECTING and reports the HTTP request as
    ``RequestReceived``; answer it with ``accept()`` or ``reject()``. A client connection
    starts with ``initiate()`` and reports ``Accepted`` or ``Rejected``. Pass
    ``state=State.OPEN`` to skip the handshake (tests, or a handshake done elsewhere).

    ``max_message_size`` bounds a whole message after decompression and
    ``max_frame_size`` a single frame (default: the message limit); both are judged from
    declared lengths before payloads are buffered (close 1009). ``fragment_size`` splits
    outgoing messages into frames of at most that many payload bytes. ``subprotocols``
    is the server's supported list in order of preference, or the client's offer.
    ``deflate_options`` enables permessage-deflate (RFC 7692) with those options.

    ``pause_before_closing`` makes ``receive_data`` stop at a close frame or a protocol
    violation that follows messages in the same bytes: the messages are returned with the
    connection still OPEN (``paused``), so the application can answer them before the
    close; then it calls ``receive_data(b"")``. The server runtime turns it on, so that a
    peer that sends a message and closes at once still gets its answer.
    """

    __slots__ = (
        "_client_key",
        "_decoder",
        "_deferred_close",
        "_deferred_failure",
        "_extension",
        "_frame_limit",
        "_handshake_buffer",
        "_is_client",
        "_mask_source",
        "_message_compressed",
        "_message_opcode",
        "_message_parts",
        "_message_size",
        "_message_wire_size",
        "_out",
        "_parser",
        "_state",
        "_text_parts",
        "_validated",
        "close_code",
        "close_reason",
        "close_received",
        "close_sent",
        "deflate_options",
        "failure",
        "fragment_size",
        "http_limits",
        "max_message_size",
        "pause_before_closing",
        "request",
        "role",
        "subprotocol",
        "subprotocols",
    )

    def __init__(
        self,
        role: Role,
        *,
        state: State = State.CONNECTING,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_frame_size: int | None = None,
        fragment_size: int | None = None,
        subprotocols: Sequence[str] = (),
        deflate_options: deflate.DeflateOptions | None = None,
        extension: deflate.PerMessageDeflate | None = None,
        http_limits: HttpLimits = DEFAULT_LIMITS,
        mask_source: Callable[[int], bytes] = os.urandom,
        pause_before_closing: bool = False,
    ) -> None:
        if state not in (State.CONNECTING, State.OPEN):
            raise LocalProtocolError("a connection starts CONNECTING or OPEN")
        if max_message_size < 1:
            raise LocalProtocolError("max_message_size must be positive")
        if fragment_size is not None and fragment_size < 1:
            raise LocalProtocolError("fragment_size must be positive")
        self.role = role
        self._state: State = state
        self.max_message_size = max_message_size
        self._frame_limit = min(max_frame_size or max_message_size, max_message_size)
        self.fragment_size = fragment_size
        self.subprotocols = tuple(subprotocols)
        self.deflate_options = deflate_options
        self.http_limits = http_limits
        self.pause_before_closing = pause_before_closing
        self._mask_source = mask_source
        self._is_client = role is Role.CLIENT
        self._parser = FrameParser(
            require_mask=role is Role.SERVER, max_data_payload=self._frame_limit
        )
        self._extension: deflate.PerMessageDeflate | None = None
        self._set_extension(extension)
        self._out = bytearray()

        #: The negotiated subprotocol, once OPEN.
        self.subprotocol: str | None = None
        #: The HTTP request (server) that opened the connection, once received.
        self.request: Request | None = None
        #: The close code and reason as the application should see them: the peer's,
        #: ours when we failed the connection, or 1006 when the transport just closed.
        self.close_code: int | None = None
        self.close_reason = ""
        #: The peer's protocol violation, if that is how the connection ended.
        self.failure: RemoteProtocolError | InvalidHandshake | None = None
        self.close_sent = False
        self.close_received = False

        # Handshake state.
        self._handshake_buffer = bytearray()
        self._client_key: str | None = None

        # The message being assembled (sections 5.4 and 5.6).
        self._message_opcode: Opcode | None = None
        self._message_compressed = False
        self._message_wire_size = 0
        self._message_size = 0
        self._message_parts: list[bytes | bytearray] = []
        self._text_parts: list[str] = []
        # The UTF-8 decoder of a fragmented or compressed text message, made per message
        # (single-frame messages decode in one call and need none).
        self._decoder: codecs.IncrementalDecoder = _NO_DECODER
        # Bytes of the frame still arriving that peek-ahead UTF-8 validation has decoded.
        self._validated = 0
        # A violation found after events of the same call, applied at the next call.
        self._deferred_failure: RemoteProtocolError | None = None
        # A close frame that came after events of the same call, handled at the next call.
        self._deferred_close: bytes | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.role.value} {self._state.value}>"

    # --- state -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state (section 4.1's CONNECTING, OPEN, CLOSING, CLOSED)."""
        return self._state

    @property
    def extension(self) -> deflate.PerMessageDeflate | None:
        """The negotiated permessage-deflate, if any."""
        return self._extension

    def _transition(self, trigger: _Trigger) -> None:
        try:
            self._state = TRANSITIONS[self._state, trigger]
        except KeyError:
            raise LocalProtocolError(
                f"cannot {trigger.value} in state {self._state.value}"
            ) from None

    def _set_extension(self, extension: deflate.PerMessageDeflate | None) -> None:
        self._extension = extension
        # RFC 7692 section 6: permessage-deflate gives RSV1 a meaning; nothing else does.
        self._parser.allowed_rsv = 0x40 if extension is not None else 0
        self._parser.max_compressed_payload = _deflated_bound(self._frame_limit)

    @property
    def should_close_transport(self) -> bool:
        """True once the WebSocket is closed and the TCP connection may go.

        Section 7.1.1: the server should close the TCP connection first, so a server
        closes it now; a client gives the server a moment to do it (a timer, which is
        the I/O layer's business) before closing it itself.
        """
        return self._state is State.CLOSED

    def data_to_send(self) -> bytes:
        """Return and forget the bytes the protocol queued by itself."""
        if not self._out:
            return b""
        out = bytes(self._out)
        self._out.clear()
        return out

    # --- opening handshake (section 4) ---------------------------------------------------

    def initiate(
        self,
        host: str,
        target: str = "/",
        *,
        origin: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> bytes:
        """Client: return the opening handshake request (section 4.1)."""
        if not self._is_client or self._state is not State.CONNECTING or self._client_key:
            raise LocalProtocolError("initiate() is for a new client connection")
        self._client_key = handshake.generate_key()
        offer = None
        if self.deflate_options is not None:
            offer = deflate.client_offer(self.deflate_options)
        return handshake.build_request(
            host,
            target,
            self._client_key,
            origin=origin,
            subprotocols=self.subprotocols,
            extensions=offer,
            extra_headers=extra_headers,
        )

    def accept(
        self,
        *,
        subprotocol: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> bytes:
        """Server: validate the request and return the 101 response (section 4.2.2).

        Raises ``InvalidHandshake`` when the request is not an acceptable upgrade; answer
        it with ``reject(error)``. Without an explicit ``subprotocol`` the first of
        ``subprotocols`` that the client offered is chosen.
        """
        request = self.request
        if self._is_client or self._state is not State.CONNECTING or request is None:
            raise LocalProtocolError("accept() answers a received request, on a server")
        key = handshake.validate_request(request)
        headers = request.headers
        if subprotocol is None:
            offered = handshake.parse_subprotocols(headers.get_all("Sec-WebSocket-Protocol"))
            subprotocol = handshake.select_subprotocol(offered, self.subprotocols)
        response_extensions = None
        if self.deflate_options is not None:
            offers = handshake.parse_extensions(headers.get_all("Sec-WebSocket-Extensions"))
            negotiated = deflate.server_negotiate(
                offers, self.deflate_options, max_message_size=self.max_message_size
            )
            if negotiated is not None:
                response_extensions, extension = negotiated
                self._set_extension(extension)
        self.subprotocol = subprotocol
        self._transition(_Trigger.ACCEPT)
        return handshake.build_accept_response(
            key,
            subprotocol=subprotocol,
            extensions=response_extensions,
            extra_headers=extra_headers,
        )

    def reject(
        self, error: InvalidHandshake, extra_headers: Iterable[tuple[str, str]] = ()
    ) -> bytes:
        """Server: refuse the upgrade with ``error.status`` and return the response."""
        if self._is_client or self._state is not State.CONNECTING:
            raise LocalProtocolError("reject() answers a request, on a server")
        self.failure = error
        self._transition(_Trigger.REJECT)
        return handshake.build_reject_response(error, extra_headers)

    def take_unparsed(self) -> bytes:
        """Remove and return bytes received after the HTTP head but not yet parsed.

        The layer above uses it to read the body of a plain HTTP request.
        """
        return self._parser.take_buffered()

    def _receive_handshake(self, data: bytes | bytearray, events: list[Event]) -> None:
        buffer = self._handshake_buffer
        buffer += data
        if self.request is not None:
            # The request is in; bytes that follow wait for accept() or take_unparsed().
            self._parser.feed(bytes(buffer))
            buffer.clear()
            return
        try:
            if self._is_client:
                self._receive_response(events)
            else:
                parsed = parse_request_head(buffer, self.http_limits)
                if parsed is not None:
                    self.request, used = parsed
                    self._parser.feed(bytes(buffer[used:]))
                    buffer.clear()
                    events.append(RequestReceived(self.request))
        except InvalidHandshake as error:
            self.failure = error
            self._transition(_Trigger.REJECT)
            buffer.clear()
            if not self._is_client:
                self._out += handshake.build_reject_response(error)
            events.append(Rejected(None, error.reason))

    def _receive_response(self, events: list[Event]) -> None:
        """Client: check the server's response (section 4.1, 4.2.2)."""
        buffer = self._handshake_buffer
        parsed = parse_response_head(buffer, self.http_limits)
        if parsed is None:
            return
        response, used = parsed
        rest = bytes(buffer[used:])
        buffer.clear()
        if self._client_key is None:
            raise InvalidHandshake("response before initiate()", 0)
        try:
            subprotocol, offered = handshake.validate_response(
                response, self._client_key, subprotocols=self.subprotocols
            )
            accepted = []
            for name, params in offered:
                # Section 9.1: the client MUST fail the connection if the server answers
                # with an extension it did not offer.
                if name != deflate.EXTENSION_NAME or self.deflate_options is None:
                    raise InvalidHandshake(f"extension {name!r} was not offered", 101)
                if self._extension is not None:
                    raise InvalidHandshake("permessage-deflate negotiated twice", 101)
                self._set_extension(
                    deflate.client_accept(
                        params, self.deflate_options, max_message_size=self.max_message_size
                    )
                )
                accepted.append(handshake.serialize_extension(name, params))
        except InvalidHandshake as error:
            self.failure = error
            self._transition(_Trigger.REJECT)
            events.append(Rejected(response, error.reason))
            return
        self.subprotocol = subprotocol
        self._transition(_Trigger.ACCEPT)
        events.append(Accepted(response, subprotocol, ", ".join(accepted) or None))
        self._parser.feed(rest)

    # --- receiving (sections 5 and 7) ----------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> list[Event]:
        """Take bytes from the peer; return the events they complete, in order.

        Violations never raise: they queue a close frame with the right code (1002,
        1007 or 1009), record ``failure`` and close the connection. When ``paused``,
        this call first handles the close frame or violation it paused at; then the
        connection is closed and ``data`` is ignored.
        """
        events: list[Event] = []
        if self._deferred_failure is not None or self._deferred_close is not None:
            self._resume(events)
            return events
        state = self._state
        if state is State.CONNECTING:
            self._receive_handshake(data, events)
            if self._state is not State.OPEN:
                return events
        elif state is State.CLOSED:
            return events  # section 7.1.7: nothing more is processed
        else:
            self._parser.feed(data)
        try:
            if self._state is State.OPEN:
                self._receive_frames(events)
            else:
                self._receive_closing(events)
        except RemoteProtocolError as error:
            self._fail_after(events, error)
        except UnicodeDecodeError:
            invalid = RemoteProtocolError(
                "invalid UTF-8 in a text message", CloseCode.INVALID_FRAME_PAYLOAD_DATA
            )
            self._fail_after(events, invalid)
        return events

    def _receive_frames(self, events: list[Event]) -> None:
        """OPEN: turn every complete frame into events.

        Runs of small single-frame messages take ``_receive_small_messages``; complete,
        unfragmented, uncompressed messages of any size go straight to an event; every
        other frame takes ``_receive_frame``.
        """
        parser = self._parser
        while True:
            if self._message_opcode is None and not self._validated:
                self._receive_small_messages(events)
            frame = parser.next_frame(self._validated)
            if frame is None:
                break
            opcode, payload, fin, rsv1, _, _ = frame
            if fin and not rsv1 and self._message_opcode is None and not self._validated:
                if opcode is Opcode.TEXT:
                    # Section 8.1: invalid UTF-8 fails the connection (1007).
                    events.append(TextMessage(payload.decode("utf-8")))
                    continue
                if opcode is Opcode.BINARY:
                    events.append(BinaryMessage(bytes(payload)))
                    continue
            self._receive_frame(opcode, payload, fin, rsv1, events)
            if self._state is not State.OPEN or self._deferred_close is not None:
                return
        if parser.buffered:
            self._validate_partial_text()

    def _receive_small_messages(self, events: list[Event]) -> None:
        """Hot path: decode a run of complete single-frame messages in place.

        Chat traffic is mostly messages of a few dozen bytes to a few kilobytes, where
        the cost of a ``Frame`` and a method call per frame dominates. This loop reads
        them straight from the parser's buffer and stops at the first frame that is not
        FIN with opcode TEXT or BINARY, no RSV bit, the right MASK bit for our role, a
        7-bit or minimal 16-bit length (section 5.2) within the limits, and complete:
        ``FrameParser.next_frame`` takes that one, with every check of section 5.2.
        Same checks, fewer objects; bench/frames.py measures the difference.
        """
        buf, pos = self._parser.buffer()
        end = len(buf)
        masked = not self._is_client
        mask_bit = 0x80 if masked else 0
        limit = min(MAX_CONTROL_PAYLOAD, self._frame_limit)
        frame_limit = self._frame_limit
        from_bytes = int.from_bytes
        unmask = _unmask
        append = events.append
        new = object.__new__
        repeat = _KEY_REPEAT
        shift = _KEY_SHIFT
        set_text = _set_text_data
        set_binary = _set_binary_data
        start = pos
        try:
            while end - pos >= 2:
                first = buf[pos]
                if first != 0x81 and first != 0x82:  # noqa: PLR1714 - FIN+TEXT, FIN+BINARY
                    break
                second = buf[pos + 1]
                length = second & 0x7F
                if second & 0x80 != mask_bit:
                    break
                if length <= limit:
                    header = pos + 2
                elif length == 126 and end - pos >= 4:
                    length = (buf[pos + 2] << 8) | buf[pos + 3]
                    if length <= MAX_CONTROL_PAYLOAD or length > frame_limit:
                        break  # not minimal, or too long: next_frame says which
                    header = pos + 4
                else:
                    break
                payload: bytes | bytearray
                if masked:
                    start = header + 4
                    stop = start + length
                    if stop > end:
                        break
                    if length <= MAX_CONTROL_PAYLOAD:
                        # apply_mask's integer XOR, inlined (section 5.3), big-endian: the
                        # key times 0x...0000000100000001, shifted to the payload's
                        # length, is the key repeated over the payload.
                        payload = (
                            from_bytes(buf[start:stop])
                            ^ from_bytes(buf[header:start]) * repeat[length] >> shift[length]
                        ).to_bytes(length)
                    else:
                        payload = unmask(buf, start, stop, buf[header:start])
                else:
                    start = header
                    stop = start + length
                    if stop > end:
                        break
                    payload = bytes(buf[start:stop])
                pos = stop
                event: TextMessage | BinaryMessage
                if first == 0x81:
                    event = new(TextMessage)
                    set_text(event, payload.decode())  # UTF-8, strict (section 8.1)
                else:
                    event = new(BinaryMessage)
                    set_binary(event, payload if type(payload) is bytes else bytes(payload))
                append(event)
        finally:
            self._parser.consume_to(pos)

    def _receive_closing(self, events: list[Event]) -> None:
        """CLOSING: we sent a close and wait for the peer's.

        Section 5.5.1: after sending a close, no more *data* frames are sent, and the
        messages the peer still sends before its own close are discarded. A ping is still
        answered: section 5.5.2 excuses the pong only once a close was *received*.
        """
        while (frame := self._parser.next_frame()) is not None:
            if frame.opcode is Opcode.CLOSE:
                self._receive_close(bytes(frame.payload), events)
                return
            if frame.opcode is Opcode.PING:
                payload = bytes(frame.payload)
                self._out += self._frame(Opcode.PONG, payload)
                events.append(Ping(payload))

    def receive_eof(self) -> None:
        """The transport closed. Without a close handshake, that is 1006 (section 7.1.5)."""
        if self._deferred_failure is not None or self._deferred_close is not None:
            self._resume([])
        if self._state is State.CLOSED:
            return
        # Not CLOSED, so no close frame was received (receiving one closes).
        self.close_code = CloseCode.ABNORMAL_CLOSURE
        self.close_reason = ""
        self._transition(_Trigger.EOF)

    def _receive_frame(
        self,
        opcode: Opcode,
        payload: bytes | bytearray,
        fin: bool,
        rsv1: bool,
        events: list[Event],
    ) -> None:
        if opcode >= 0x8:
            if rsv1:
                # RFC 7692 section 6.1: RSV1 belongs to the first frame of a data message.
                raise RemoteProtocolError("RSV1 set on a control frame")
            payload = bytes(payload)  # at most 125 bytes
            if opcode is Opcode.PING:
                # Section 5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a
                # Pong frame in response ... the same Application data".
                self._out += self._frame(Opcode.PONG, payload)
                events.append(Ping(payload))
            elif opcode is Opcode.PONG:
                events.append(Pong(payload))
            elif self.pause_before_closing and _answerable(events):
                # Messages came first in this call: let the application answer them
                # before the close shuts the connection (section 5.5.1: an endpoint "MAY
                # delay sending a Close frame until its current message is sent").
                self._deferred_close = payload
            else:
                self._receive_close(payload, events)
            return
        self._receive_data_frame(opcode, payload, fin, rsv1, events)

    def _receive_data_frame(
        self,
        opcode: Opcode,
        payload: bytes | bytearray,
        fin: bool,
        rsv1: bool,
        events: list[Event],
    ) -> None:
        """Assemble fragmented and compressed messages (sections 5.4, RFC 7692 6.2)."""
        validated = self._validated
        self._validated = 0
        if opcode is Opcode.CONTINUATION:
            if self._message_opcode is None:
                raise RemoteProtocolError("continuation frame without a message to continue")
            if rsv1:
                raise RemoteProtocolError("RSV1 set on a continuation frame")
        else:
            # Section 5.4: fragments of one message are not interleaved with another.
            if self._message_opcode is not None:
                raise RemoteProtocolError("new data frame inside a fragmented message")
            self._message_opcode = opcode
            self._message_compressed = rsv1
            self._message_wire_size = 0
            self._message_size = 0
            if not validated:
                self._message_parts = []
                self._text_parts = []
                self._decoder = _utf8_decoder()

        # ``payload`` starts after the ``validated`` bytes of a text frame that were
        # already decoded as they arrived (``_validate_partial_text``).
        self._message_wire_size += validated + len(payload)
        if self._message_compressed:
            assert self._extension is not None  # RSV1 is refused without it
            payload = self._extension.decompress(
                payload, fin, self.max_message_size - self._message_size
            )
        self._message_size += validated + len(payload)
        if self._message_opcode is Opcode.TEXT:
            self._text_parts.append(self._decode_text(payload, fin))
        else:
            self._message_parts.append(payload)

        if not fin:
            # The whole message must fit too: lower the next frame's limit accordingly
            # (on the wire, a compressed message may exceed the limit by deflate's
            # worst-case expansion; what it inflates to is bounded by decompress).
            if self._message_compressed:
                frame_limit = _deflated_bound(self._frame_limit)
                message_limit = _deflated_bound(self.max_message_size)
            else:
                frame_limit, message_limit = self._frame_limit, self.max_message_size
            self._parser.max_data_payload = min(
                frame_limit, message_limit - self._message_wire_size
            )
            return
        if self._message_opcode is Opcode.TEXT:
            events.append(TextMessage("".join(self._text_parts)))
            self._text_parts = []
        else:
            events.append(BinaryMessage(b"".join(self._message_parts)))
            self._message_parts = []
        self._message_opcode = None
        self._message_compressed = False
        self._parser.max_data_payload = self._frame_limit

    def _decode_text(self, data: bytes | bytearray, final: bool) -> str:
        """Decode one piece of a text message, failing at its first invalid byte.

        CPython's incremental decoder rejects most invalid sequences as soon as their
        second byte arrives, but holds ED A0..BF (the start of a UTF-16 surrogate,
        which UTF-8 forbids) until the third: check that prefix ourselves.
        """
        text = self._decoder.decode(data, final)
        if not final:
            pending = self._decoder.getstate()[0]
            if len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0:
                raise RemoteProtocolError(
                    "invalid UTF-8 in a text message (a surrogate)",
                    CloseCode.INVALID_FRAME_PAYLOAD_DATA,
                )
        return text

    def _validate_partial_text(self) -> None:
        """Validate the UTF-8 of a text frame that is still arriving (section 8.1).

        A text message is invalid "as soon as" a bad byte is seen; waiting for the frame
        to complete would let a peer make us buffer up to the size limit first.
        """
        header = self._parser.peek_header()
        if header is None:
            return
        opcode, rsv1 = header
        if rsv1:
            return
        starts_text = opcode is Opcode.TEXT and self._message_opcode is None
        continues_text = (
            opcode is Opcode.CONTINUATION
            and self._message_opcode is Opcode.TEXT
            and not self._message_compressed
        )
        if not (starts_text or continues_text):
            return
        data = self._parser.peek_payload(self._validated)
        if not data:
            return
        if starts_text and not self._validated:
            self._text_parts = []
            self._decoder = _utf8_decoder()
        self._text_parts.append(self._decode_text(data, False))
        self._validated += len(data)

    def _receive_close(self, payload: bytes, events: list[Event]) -> None:
        """Section 5.5.1 and 7.1.5: the peer's close frame, and our answer."""
        if len(payload) == 1:
            raise RemoteProtocolError("close frame with a 1-byte payload")
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if not is_sendable_close_code(code):
                raise RemoteProtocolError(f"close code {code} is not allowed on the wire")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise RemoteProtocolError(
                    "invalid UTF-8 in a close reason", CloseCode.INVALID_FRAME_PAYLOAD_DATA
                ) from None
        else:
            code, reason = CloseCode.NO_STATUS_RCVD, ""
        self.close_received = True
        self.close_code, self.close_reason = code, reason
        if self._state is State.OPEN:
            # Section 5.5.1: "the endpoint typically echos the status code it received".
            self._out += self._frame(Opcode.CLOSE, payload[:2])
            self.close_sent = True
        self._transition(_Trigger.RECEIVE_CLOSE)
        self._reset_message()
        events.append(CloseReceived(code, reason))

    @property
    def paused(self) -> bool:
        """True when ``receive_data`` returned messages and stopped at a close frame or a
        violation that came after them in the same bytes.

        The connection is still OPEN so that the application can answer those messages;
        then call ``receive_data(b"")`` (the runtime does it after every batch of events)
        and the close is handled, or the connection fails, in the order the peer sent.
        """
        return self._deferred_failure is not None or self._deferred_close is not None

    @property
    def failure_pending(self) -> bool:
        """True when ``paused`` at a protocol violation (see ``paused``)."""
        return self._deferred_failure is not None

    def _resume(self, events: list[Event]) -> None:
        """Handle the close frame or violation that ``receive_data`` paused at."""
        if self._deferred_failure is not None:
            self._fail(self._deferred_failure)
            return
        payload = self._deferred_close
        assert payload is not None
        self._deferred_close = None
        try:
            self._receive_close(payload, events)
        except RemoteProtocolError as error:
            self._fail(error)

    def _fail_after(self, events: list[Event], error: RemoteProtocolError) -> None:
        """Fail now, or, if messages came before the violation, once they are answered.

        A peer that sends a valid message and then garbage still gets its message
        handled: its events are returned while the connection stays OPEN, and the
        failure takes effect at the next ``receive_data()`` (or ``receive_eof()``) call.
        Autobahn|Testsuite calls the other order "non-strict" (cases 3.2, 4.1.3, 5.15).
        """
        if self.pause_before_closing and _answerable(events) and self._state is State.OPEN:
            self._deferred_failure = error
        else:
            self._fail(error)

    def _fail(self, error: RemoteProtocolError) -> None:
        """Section 7.1.7, _Fail the WebSocket Connection_: send a close frame with the
        code for this violation, then process nothing more.

        The one funnel every peer error goes through.
        """
        self._deferred_failure = None
        self.failure = error
        if self._state is State.OPEN:
            reason = _truncate_reason(error.reason)
            self._out += self._frame(
                Opcode.CLOSE, error.close_code.to_bytes(2, "big") + reason.encode()
            )
            self.close_sent = True
            self.close_code, self.close_reason = error.close_code, reason
        self._transition(_Trigger.FAIL)
        self._reset_message()

    def _reset_message(self) -> None:
        self._parser.max_data_payload = self._frame_limit
        self._message_opcode = None
        self._message_parts = []
        self._text_parts = []
        self._validated = 0

    # --- sending -------------------------------------------------------------------------

    def _frame(
        self, opcode: Opcode, payload: bytes, *, fin: bool = True, rsv1: bool = False
    ) -> bytes:
        mask = self._mask_source(4) if self._is_client else None
        return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask)

    def send_text(self, text: str) -> bytes:
        """Return the frames of a text message (opcode 0x1, section 5.6)."""
        return self.send_message(Opcode.TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes | bytearray | memoryview) -> bytes:
        """Return the frames of a binary message (opcode 0x2, section 5.6)."""
        return self.send_message(Opcode.BINARY, bytes(data))

    def send_message(self, opcode: Opcode, payload: bytes) -> bytes:
        """Return the frames of one data message, compressed and fragmented as configured.

        Section 5.4 fragmentation at ``fragment_size``; RFC 7692 section 6: compress the
        whole message, then set RSV1 on the first frame only.
        """
        if self._state is not State.OPEN:
            raise LocalProtocolError(f"cannot send a message in state {self._state.value}")
        if opcode is not Opcode.TEXT and opcode is not Opcode.BINARY:
            raise LocalProtocolError("a data message is TEXT or BINARY")
        extension = self._extension
        size = self.fragment_size
        if (
            len(payload) < 126
            and extension is None
            and not self._is_client
            and (size is None or len(payload) <= size)
        ):
            # Hot path of every chat broadcast: a short, unmasked, single frame (5.2).
            return bytes((0x80 | opcode, len(payload))) + payload
        rsv1 = False
        if extension is not None and extension.should_compress(len(payload)):
            payload = extension.compress(payload)
            rsv1 = True
        if size is None or len(payload) <= size:
            return self._frame(opcode, payload, rsv1=rsv1)
        last = len(payload) - size
        frames = [self._frame(opcode, payload[:size], fin=False, rsv1=rsv1)]
        for offset in range(size, len(payload), size):
            frames.append(
                self._frame(
                    Opcode.CONTINUATION, payload[offset : offset + size], fin=offset >= last
                )
            )
        return b"".join(frames)

    def ping(self, payload: bytes = b"") -> bytes:
        """Return a ping frame (section 5.5.2)."""
        return self._control(Opcode.PING, payload)

    def pong(self, payload: bytes = b"") -> bytes:
        """Return an unsolicited pong frame, a unidirectional heartbeat (section 5.5.3)."""
        return self._control(Opcode.PONG, payload)

    def _control(self, opcode: Opcode, payload: bytes) -> bytes:
        if self._state is not State.OPEN:
            raise LocalProtocolError(f"cannot send a {opcode.name} in state {self._state.value}")
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise LocalProtocolError("control frame payloads are at most 125 bytes")
        return self._frame(opcode, bytes(payload))

    def close(self, code: int | None = CloseCode.NORMAL_CLOSURE, reason: str = "") -> bytes:
        """Start the closing handshake (section 7.1.2) and return the close frame.

        ``code`` None sends a close frame without a status code. Codes that may not be
        sent (1005, 1006, 1015, unregistered ones) raise ``LocalProtocolError``. Once a
        close was sent or received, this returns b"" (closing twice is harmless).
        """
        if self._state is not State.OPEN:
            if self._state is State.CONNECTING:
                raise LocalProtocolError("cannot close before the handshake completes")
            return b""
        if code is None:
            if reason:
                raise LocalProtocolError("a close reason needs a close code")
            payload = b""
            code = CloseCode.NO_STATUS_RCVD
        else:
            if not is_sendable_close_code(code):
                raise LocalProtocolError(f"close code {code} may not be sent")
            encoded = reason.encode("utf-8")
            if len(encoded) > MAX_CLOSE_REASON:
                raise LocalProtocolError("a close reason is at most 123 bytes of UTF-8")
            payload = code.to_bytes(2, "big") + encoded
        self.close_sent = True
        self.close_code, self.close_reason = code, reason
        self._transition(_Trigger.SEND_CLOSE)
        self._reset_message()
        return self._frame(Opcode.CLOSE, payload)


def _deflated_bound(size: int) -> int:
    """The most bytes a peer's deflate may need for ``size`` bytes of input.

    zlib's conservative ``deflateBound``: a compressor with a small memLevel closes a
    block every few hundred symbols, each costing a few bytes when stored, so
    incompressible data can grow by over 10% (websockets' defaults add 0.24%).
    Decompression is bounded separately; this only bounds what we buffer.
    """
    return size + (size >> 3) + (size >> 6) + 64


def _answerable(events: list[Event]) -> bool:
    """True if ``events`` ends with something the application may want to answer."""
    return bool(events) and type(events[-1]) is not Accepted


def _truncate_reason(reason: str) -> str:
    """Cut ``reason`` to fit a close frame without splitting a UTF-8 sequence."""
    encoded = reason.encode("utf-8")
    if len(encoded) <= MAX_CLOSE_REASON:
        return reason
    return encoded[:MAX_CLOSE_REASON].decode("utf-8", "ignore")
