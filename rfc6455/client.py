"""A blocking WebSocket client for tools, tests and benchmarks.

The protocol is the sans-I/O ``Connection``'s business; this module only moves bytes
between it and a socket, under timeouts::

    with Client.connect("ws://127.0.0.1:8080/ws", timeout=5) as client:
        client.send("hello")
        print(client.recv())
        client.ping(wait=True)
    # leaving the block runs the closing handshake (code 1000)

Every operation is bounded in time: ``connect`` by its ``timeout`` (TCP, TLS and the
opening handshake together), ``send`` and the default ``recv`` by the client's
``timeout``, ``close`` by ``close_timeout``. A timeout raises ``TimeoutError``; a timed-out
``recv`` or ``ping`` leaves the connection usable, a timed-out ``send`` aborts it (part of a
frame may have been written). When the connection is over, ``recv`` and ``send`` raise
``ConnectionClosed`` with the close code and reason.

A ``Client`` is meant to be used from one thread: it holds no locks, and two threads
calling ``recv`` (or ``send`` while another reads) at once would interleave bytes.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from types import TracebackType
from typing import NamedTuple, Self
from urllib.parse import quote, urlsplit

from rfc6455.codes import CloseCode
from rfc6455.connection import DEFAULT_MAX_MESSAGE_SIZE, Connection, Role, State
from rfc6455.deflate import DeflateOptions, PerMessageDeflate
from rfc6455.errors import InvalidHandshake, WebSocketError
from rfc6455.events import (
    Accepted,
    BinaryMessage,
    CloseReceived,
    Event,
    Pong,
    Rejected,
    TextMessage,
)
from rfc6455.http import Response

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "RECV_SIZE",
    "Client",
    "ConnectionClosed",
    "connect",
]

#: Seconds allowed to open a connection, and for each later operation by default.
DEFAULT_TIMEOUT = 10.0
#: DESIGN.md defaults: seconds allowed for the closing handshake.
DEFAULT_CLOSE_TIMEOUT = 5.0
#: Bytes asked of the socket per read.
RECV_SIZE = 64 * 1024

#: Codes of a close that went as planned: ``ConnectionClosed.ok`` and the end of iteration.
_OK_CLOSE_CODES = frozenset(
    {CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD}
)

_DEFAULT_PORTS = {"ws": 80, "wss": 443}
# RFC 3986 section 2.2 reserved characters and "%" (an existing escape) stay as they are;
# anything else outside the unreserved set (spaces, non-ASCII) is percent-encoded, so the
# request target is always ASCII VCHARs (RFC 7230 section 5.3).
_TARGET_SAFE = "!$%&'()*+,/:;=?@~"


class ConnectionClosed(WebSocketError):
    """The WebSocket connection is closed; ``code`` and ``reason`` say how.

    ``code`` is the peer's close code (1005 when its close frame had none), ours when we
    failed the connection because the peer broke the protocol, or 1006 when the transport
    closed without a closing handshake (section 7.1.5).
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason

    @property
    def ok(self) -> bool:
        """True for a closing handshake with 1000, 1001 or no status code."""
        return self.code in _OK_CLOSE_CODES

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.reason!r})"


class _Endpoint(NamedTuple):
    """Where a ``ws://`` or ``wss://`` URL points (RFC 6455 section 3)."""

    secure: bool
    host: str  # for DNS and TLS: no brackets, IDNA-encoded
    port: int
    host_header: str  # "host", "host:port", "[::1]:port" (section 4.1)
    target: str  # path and query, percent-encoded


def _parse_url(url: str) -> _Endpoint:
    """Split a WebSocket URL into where to connect and what to ask for.

    Section 3: ``ws-URI = "ws:" "//" host [ ":" port ] path [ "?" query ]``, the port
    defaulting to 80 (443 for wss); "Fragment identifiers are meaningless in the context of
    WebSocket URIs and MUST NOT be used on these URIs". Raise ``ValueError`` otherwise.
    """
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    if "#" in url:
        raise ValueError(f"a WebSocket URL has no fragment (RFC 6455 section 3): {url!r}")
    if parts.username is not None:
        raise ValueError(
            "a WebSocket URL has no user information (RFC 6455 section 3); "
            "send credentials in extra_headers"
        )
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    host = parts.hostname.encode("idna").decode("ascii")  # UnicodeError is a ValueError
    default_port = _DEFAULT_PORTS[parts.scheme]
    port = parts.port  # raises ValueError when out of range
    if port is None:
        port = default_port
    authority = f"[{host}]" if ":" in host else host
    if port != default_port:
        authority = f"{authority}:{port}"
    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target = f"{target}?{quote(parts.query, safe=_TARGET_SAFE)}"
    return _Endpoint(parts.scheme == "wss", host, port, authority, target)


def _deflate_options(deflate: bool | DeflateOptions) -> DeflateOptions | None:
    if isinstance(deflate, DeflateOptions):
        return deflate
    return DeflateOptions() if deflate else None


def _remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (a ``time.monotonic()`` value), or TimeoutError."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("timed out")
    return remaining


class Client:
    """A blocking WebSocket client connection; make one with ``Client.connect(url)``.

    Use it from one thread. ``timeout`` bounds each operation that has no ``timeout``
    argument of its own (and those called with ``timeout=None``); ``close_timeout`` bounds
    the closing handshake.
    """

    def __init__(
        self,
        sock: socket.socket,
        connection: Connection,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        """Wrap a connected socket and a client ``Connection`` (``connect`` does this)."""
        self._sock: socket.socket | None = sock
        self._connection = connection
        self._events: deque[Event] = deque()
        self.timeout = timeout
        self.close_timeout = close_timeout
        #: The server's ``101 Switching Protocols`` response.
        self.response: Response | None = None
        #: The subprotocol the server selected, or None.
        self.subprotocol: str | None = None

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        subprotocols: Sequence[str] = (),
        deflate: bool | DeflateOptions = False,
        origin: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        fragment_size: int | None = None,
    ) -> Self:
        """Open a connection to ``url`` and complete the opening handshake (section 4.1).

        ``timeout`` bounds the whole opening (TCP, TLS, HTTP) and becomes the client's
        default timeout. ``wss://`` uses ``ssl_context``, or ``ssl.create_default_context()``
        (system CAs, hostname checked). ``deflate`` offers permessage-deflate, with
        ``DeflateOptions()`` for ``True``. ``subprotocols`` are offered in order of
        preference. Raise ``ValueError`` for a bad URL, ``TimeoutError``, ``OSError`` (and
        ``ssl.SSLError``) for the transport, ``InvalidHandshake`` when the server refuses:
        its ``status`` is the server's HTTP status (0 for a malformed response).
        """
        endpoint = _parse_url(url)
        if ssl_context is not None and not endpoint.secure:
            raise ValueError("ssl_context is for wss:// URLs")
        connection = Connection(
            Role.CLIENT,
            max_message_size=max_message_size,
            fragment_size=fragment_size,
            subprotocols=subprotocols,
            deflate_options=_deflate_options(deflate),
        )
        request = connection.initiate(
            endpoint.host_header, endpoint.target, origin=origin, extra_headers=extra_headers
        )
        deadline = time.monotonic() + timeout
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if endpoint.secure:
                context = ssl_context or ssl.create_default_context()
                sock.settimeout(_remaining(deadline))
                sock = context.wrap_socket(sock, server_hostname=endpoint.host)
            client = cls(sock, connection, timeout=timeout, close_timeout=close_timeout)
            client._handshake(request, deadline)
        except BaseException:
            sock.close()
            raise
        return client

    def _handshake(self, request: bytes, deadline: float) -> None:
        """Send the request and read until the server accepts or refuses it."""
        sock = self._sock
        assert sock is not None
        self._send_bytes(request, deadline)
        events: list[Event] = []
        while not events:
            sock.settimeout(_remaining(deadline))
            data = sock.recv(RECV_SIZE)
            if not data:
                raise InvalidHandshake("the server closed the connection during the handshake", 0)
            events = self._process(data)
        first, *rest = events
        if isinstance(first, Rejected):
            status = first.response.status if first.response is not None else 0
            raise InvalidHandshake(first.reason, status)
        assert isinstance(first, Accepted)
        self.response = first.response
        self.subprotocol = first.subprotocol
        # Frames that came with the 101 (section 4.1: the server may send at once).
        self._events.extend(rest)
        self._finish_if_closed()

    # --- context manager and properties ----------------------------------------------------

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self._connection.state.value}>"

    @property
    def connection(self) -> Connection:
        """The sans-I/O state machine underneath."""
        return self._connection

    @property
    def state(self) -> State:
        """OPEN until the closing handshake starts, CLOSED once it is over."""
        return self._connection.state

    @property
    def extension(self) -> PerMessageDeflate | None:
        """The negotiated permessage-deflate, or None."""
        return self._connection.extension

    @property
    def close_code(self) -> int | None:
        """How the connection closed (see ``ConnectionClosed``); None while it is open."""
        return self._connection.close_code

    @property
    def close_reason(self) -> str:
        """The close reason that goes with ``close_code``."""
        return self._connection.close_reason

    # --- sending ---------------------------------------------------------------------------

    def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send a text message for ``str``, a binary message for bytes-like data."""
        if isinstance(message, str):
            self.send_text(message)
        elif isinstance(message, bytes | bytearray | memoryview):
            self.send_binary(message)
        else:
            raise TypeError(f"a message is str or bytes, not {type(message).__name__}")

    def send_text(self, text: str) -> None:
        """Send a text message (opcode 0x1)."""
        self._check_open()
        self._send_frames(self._connection.send_text(text))

    def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        """Send a binary message (opcode 0x2)."""
        self._check_open()
        self._send_frames(self._connection.send_binary(data))

    def ping(
        self, payload: bytes = b"", *, wait: bool = False, timeout: float | None = None
    ) -> None:
        """Send a ping (section 5.5.2); with ``wait``, return once its pong arrives.

        The pong that matches ``payload`` is consumed; any other event that arrives while
        waiting stays queued for ``recv``. ``timeout`` (default: the client's) bounds the
        wait; ``TimeoutError`` leaves the connection open.
        """
        self._check_open()
        self._send_frames(self._connection.ping(payload))
        if not wait:
            return
        deadline = self._deadline(timeout)
        while True:
            if self._sock is None:
                raise self._closed()
            answered = False
            for event in self._receive(deadline):
                if not answered and isinstance(event, Pong) and event.payload == payload:
                    answered = True
                else:
                    self._events.append(event)
            if answered:
                return

    def _check_open(self) -> None:
        if self._connection.state is not State.OPEN:
            raise self._closed()

    def _send_frames(self, data: bytes) -> None:
        try:
            self._send_bytes(data, self._deadline(None))
        except TimeoutError:
            raise
        except OSError as error:
            raise self._closed() from error

    def _send_bytes(self, data: bytes, deadline: float) -> None:
        """Write all of ``data`` by ``deadline``; abort the connection if that fails."""
        sock = self._sock
        assert sock is not None
        try:
            sock.settimeout(_remaining(deadline))
            sock.sendall(data)
        except OSError:  # TimeoutError too: part of a frame may have left
            self._abort()
            raise

    # --- receiving -------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> str | bytes:
        """Return the next message: ``str`` for text, ``bytes`` for binary.

        Pings (already answered) and pongs are skipped. Raise ``ConnectionClosed`` once
        the connection is closed, ``TimeoutError`` when nothing arrives within ``timeout``
        (default: the client's).
        """
        deadline = self._deadline(timeout)
        while True:
            event = self._next_event(deadline)
            if isinstance(event, TextMessage | BinaryMessage):
                return event.data
            if isinstance(event, CloseReceived):
                raise ConnectionClosed(event.code, event.reason)

    def recv_event(self, timeout: float | None = None) -> Event:
        """Return the next event as the ``Connection`` reported it.

        ``TextMessage``, ``BinaryMessage``, ``Ping`` (already answered), ``Pong`` or
        ``CloseReceived`` (then the connection is closed). Raise ``ConnectionClosed`` when
        no event is left, ``TimeoutError`` when nothing arrives within ``timeout``.
        """
        return self._next_event(self._deadline(timeout))

    def __iter__(self) -> Iterator[str | bytes]:
        """Yield messages until the connection closes.

        A normal close (1000, 1001, 1005) ends the iteration; any other raises
        ``ConnectionClosed``. Each message must arrive within the client's ``timeout``.
        """
        try:
            while True:
                yield self.recv()
        except ConnectionClosed as closed:
            if not closed.ok:
                raise

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _next_event(self, deadline: float) -> Event:
        while not self._events:
            if self._sock is None:
                raise self._closed()
            self._events.extend(self._receive(deadline))
        return self._events.popleft()

    def _receive(self, deadline: float) -> list[Event]:
        """Read once, and finish the transport if that ended the WebSocket connection."""
        events = self._read(deadline)
        self._finish_if_closed()
        return events

    def _read(self, deadline: float) -> list[Event]:
        """Read what arrives by ``deadline`` (or TimeoutError) and return its events."""
        sock = self._sock
        assert sock is not None
        sock.settimeout(_remaining(deadline))
        try:
            data = sock.recv(RECV_SIZE)
        except TimeoutError:
            raise
        except OSError:  # reset, TLS failure: the transport is gone, as with EOF
            data = b""
        return self._process(data)

    def _process(self, data: bytes) -> list[Event]:
        """Feed ``data`` (b"" for EOF) to the connection and write what it answers."""
        if not data:
            self._abort()
            return []
        connection = self._connection
        events = connection.receive_data(data)
        # Pongs, the reply to a close, or the close that fails the connection.
        reply = connection.data_to_send()
        if reply:
            with suppress(OSError):  # _send_bytes aborted: the next read reports it
                self._send_bytes(reply, self._deadline(None))
        return events

    # --- closing ---------------------------------------------------------------------------

    def close(
        self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "", timeout: float | None = None
    ) -> None:
        """Run the closing handshake (section 7.1.2) and close the socket.

        Send a close frame, read until the server's arrives, then give the server the
        rest of ``timeout`` (default ``close_timeout``) to close TCP first (section 7.1.1)
        before closing the socket. Messages received before ``close()`` stay readable
        with ``recv``; data messages the server sends after our close frame are
        discarded (section 5.5.1: we are CLOSING). A server that does not answer in time
        gets the socket closed on it (``close_code`` 1006). Closing a closed client does
        nothing.
        """
        if self._sock is None:
            return
        deadline = time.monotonic() + (self.close_timeout if timeout is None else timeout)
        connection = self._connection
        try:
            # b"" when a close frame already went out (then we only wait for the reply).
            self._send_bytes(connection.close(code, reason), deadline)
        except OSError:
            return  # aborted: nobody is there to answer
        try:
            while self._sock is not None and connection.state is not State.CLOSED:
                self._events.extend(self._read(deadline))
        except TimeoutError:
            self._abort()
        self._wait_for_server_close(deadline)

    def _finish_if_closed(self) -> None:
        if self._connection.state is State.CLOSED:
            self._wait_for_server_close(time.monotonic() + self.close_timeout)

    def _wait_for_server_close(self, deadline: float) -> None:
        """Section 7.1.1: "the underlying TCP connection, in most normal cases, SHOULD be
        closed first by the server"; a client "SHOULD wait for the server to close the
        connection but MAY close the connection at any time after sending and receiving a
        Close message, e.g., if it has not received a TCP Close from the server in a
        reasonable time period". Whatever arrives meanwhile is discarded (section 1.4).
        """
        sock = self._sock
        if sock is None:
            return
        with suppress(OSError):  # TimeoutError included: we stop waiting
            while True:
                sock.settimeout(_remaining(deadline))
                if not sock.recv(RECV_SIZE):
                    break
        self._abort()

    def _abort(self) -> None:
        """Close the socket now; without a closing handshake that is 1006."""
        sock = self._sock
        assert sock is not None, "every caller holds an open socket"
        self._sock = None
        self._connection.receive_eof()
        sock.close()

    def _closed(self) -> ConnectionClosed:
        error = ConnectionClosed(
            self._connection.close_code or CloseCode.ABNORMAL_CLOSURE,
            self._connection.close_reason,
        )
        error.__cause__ = self._connection.failure
        return error


connect = Client.connect
"""``connect(url, ...)`` is ``Client.connect(url, ...)``."""
