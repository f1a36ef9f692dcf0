"""A selectors-based WebSocket server: one thread, one selector, non-blocking sockets.

The runtime only moves bytes and runs timers; every protocol question is answered by the
sans-I/O ``Connection``. Per connection it keeps a bounded read size, an outgoing buffer
with a high-water mark (a peer that stops reading is closed instead of growing memory),
write coalescing (everything queued during one loop tick leaves in one ``send``) and
timers for the handshake, pings, pongs, the closing handshake and idleness. Plain HTTP
requests on the same port go to ``Handler.on_http``. TLS runs through ``ssl`` with
non-blocking handshakes.

The shape follows CPython's ``selectors`` and ``asyncio/selector_events.py``: the
per-connection object lives in ``SelectorKey.data``; ``send()`` is tried first and
EVENT_WRITE is registered only while something is left over; every fatal path funnels
into ``ServerConnection._abort``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rfc6455.codes import CloseCode, Opcode
from rfc6455.connection import DEFAULT_MAX_MESSAGE_SIZE, Connection, Role, State
from rfc6455.deflate import DeflateOptions
from rfc6455.errors import InvalidHandshake
from rfc6455.events import (
    BinaryMessage,
    CloseReceived,
    Event,
    Pong,
    Rejected,
    RequestReceived,
    TextMessage,
)
from rfc6455.frames import encode_frame
from rfc6455.handshake import is_websocket_upgrade, validate_request
from rfc6455.http import (
    DEFAULT_LIMITS,
    HttpLimits,
    Request,
    request_body_length,
    serialize_response,
)
from rfc6455.timers import Timer, TimerHeap

__all__ = [
    "Handler",
    "HttpResponse",
    "Server",
    "ServerConfig",
    "ServerConnection",
]

logger = logging.getLogger("rfc6455.server")

T = TypeVar("T")

#: Seconds to stop accepting after running out of file descriptors or memory; retrying
#: at once would spin the loop (the listener stays readable) and flood the log.
ACCEPT_RETRY_DELAY = 1.0

#: The answer to a plain HTTP request on a TLS port, written below TLS.
PLAIN_HTTP_ON_TLS = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 46\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"This port speaks TLS: use https:// or wss://.\n"
)

#: How much one ``recv`` reads. Also the most a connection reads per loop tick, so one
#: busy peer cannot starve the others.
READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits and timeouts (DESIGN.md defaults). Times are in seconds; None disables."""

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_frame_size: int | None = None
    fragment_size: int | None = None
    handshake_timeout: float = 10.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 5.0
    #: Close (1001) a connection that sent no message for this long; pings and pongs
    #: keep a connection alive, not active.
    idle_timeout: float | None = None
    #: Outgoing bytes a connection may have waiting, beyond what the kernel took, before it
    #: counts as a slow consumer.
    write_limit: int = 1024 * 1024
    max_http_body: int = 1024 * 1024
    subprotocols: tuple[str, ...] = ()
    deflate: DeflateOptions | None = None
    http_limits: HttpLimits = DEFAULT_LIMITS
    #: Close code for a peer that stops reading: 1008 (policy) or 1013 (try again later).
    slow_consumer_code: int = CloseCode.TRY_AGAIN_LATER
    backlog: int = 1024
    server_header: str | None = "rfc6455"
    #: Threads for ``Server.run_in_thread`` (started on first use).
    worker_threads: int = 2

    def __post_init__(self) -> None:
        if self.slow_consumer_code not in (CloseCode.POLICY_VIOLATION, CloseCode.TRY_AGAIN_LATER):
            raise ValueError("slow_consumer_code is 1008 or 1013")
        for name in ("handshake_timeout", "close_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.write_limit < 1024:
            raise ValueError("write_limit must be at least 1024 bytes")
        if self.worker_threads < 1:
            raise ValueError("worker_threads must be at least 1")


@dataclass(slots=True)
class HttpResponse:
    """A plain HTTP response from ``Handler.on_http``."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


class DeferredResponse:
    """An HTTP answer that comes later, for work that must not run on the loop (a
    password hash): ``Handler.on_http_request`` returns it, and whoever finishes the work
    calls ``complete`` on the loop thread (``Server.run_in_thread`` arranges that).
    Meanwhile the connection reads nothing more (a pipelined request waits its turn).
    """

    __slots__ = ("_connection", "_keep_alive", "_rest", "response")

    def __init__(self) -> None:
        self.response: HttpResponse | None = None
        self._connection: ServerConnection | None = None
        self._keep_alive = False
        self._rest = b""

    def complete(self, response: HttpResponse) -> None:
        """Send ``response`` (loop thread only); a connection gone meanwhile is ignored."""
        if self.response is not None:
            return
        self.response = response
        connection = self._connection
        if connection is not None:
            connection._complete_deferred(self)


class Handler:
    """The application's side of the server. Subclass and override what you need.

    Every method runs on the event loop thread and must not block.
    """

    def on_connect(
        self, connection: ServerConnection, request: Request
    ) -> Sequence[tuple[str, str]]:
        """Decide on a valid WebSocket upgrade; return extra response headers.

        Raise ``InvalidHandshake`` to refuse it with that HTTP status (an Origin check,
        authentication); any other exception refuses it with 500. Requests that break
        section 4.2.1 are refused before this is called. The default accepts every upgrade.
        """
        return ()

    def on_open(self, connection: ServerConnection) -> None:
        """The handshake completed; the connection is OPEN."""

    def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
        """A complete text (str) or binary (bytes) message arrived."""

    def on_close(self, connection: ServerConnection, code: int, reason: str) -> None:
        """An OPEN connection ended; ``code`` is 1006 if no close frame was exchanged."""

    def on_http(self, request: Request, body: bytes) -> HttpResponse:
        """Answer a plain HTTP request on the WebSocket port. The default is 404."""
        return HttpResponse(404, b"not found\n")

    def on_http_request(
        self, connection: ServerConnection, request: Request, body: bytes
    ) -> HttpResponse | DeferredResponse:
        """The runtime's entry for plain HTTP: passes the request to ``on_http``.

        Override this one instead when the answer depends on who asks: the peer's
        address (``connection.remote_address``) or whether it came over TLS
        (``connection.tls``), or when it takes work that must leave the loop: return a
        ``DeferredResponse`` and complete it later.
        """
        return self.on_http(request, body)


class _Listener:
    """``SelectorKey.data`` of a listening socket."""

    __slots__ = ("sock", "tls")

    def __init__(self, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
        self.sock = sock
        self.tls = tls


class _Wakeup:
    """``SelectorKey.data`` of a socket pair that wakes ``select`` from another thread or
    a signal handler (the self-pipe trick, as ``asyncio`` does).
    """

    __slots__ = ("reader", "writer")

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def wake(self) -> None:
        # Full means a wake-up is already pending; closed means the server is gone.
        with contextlib.suppress(OSError):
            self.writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):  # BlockingIOError: drained
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


class ServerConnection:
    """One accepted socket: its ``Connection``, buffers and timers.

    The application sees this object in every ``Handler`` callback and talks back through
    ``send_text``, ``send_binary``, ``send_prepared`` and ``close``. ``context`` is free
    for the application's own per-connection state.
    """

    __slots__ = (
        "_close_after_flush",
        "_close_timer",
        "_deferred",
        "_handshake_timer",
        "_http_body",
        "_http_body_length",
        "_http_request",
        "_idle_timer",
        "_last_message",
        "_last_received",
        "_outgoing",
        "_paused_for_tick",
        "_pending",
        "_pending_size",
        "_ping_payload",
        "_ping_timer",
        "_pong_timer",
        "_replay",
        "_shares_frames",
        "_shut_down",
        "_slow",
        "_tls_handshaking",
        "_write_registered",
        "closed",
        "context",
        "opened",
        "protocol",
        "remote_address",
        "request",
        "server",
        "sock",
    )

    def __init__(self, server: Server, sock: socket.socket | ssl.SSLSocket, address: Any) -> None:
        self.server = server
        self.sock = sock
        self.remote_address = address
        self.context: Any = None
        self.protocol = server._new_protocol()
        self.request: Request | None = None
        self.opened = False
        self.closed = False
        self._tls_handshaking = isinstance(sock, ssl.SSLSocket)
        self._pending: list[bytes] = []  # queued this tick, not yet given to the kernel
        self._pending_size = 0
        self._outgoing = bytearray()  # what the kernel did not take
        self._write_registered = False
        self._close_after_flush = False
        self._paused_for_tick = False
        #: Sends prepared frames as they are: no extension, no fragmentation (set at open).
        self._shares_frames = False
        self._shut_down = False
        self._slow = False
        self._http_request: Request | None = None
        self._http_body = bytearray()
        self._http_body_length = 0
        self._replay = b""  # bytes after a keep-alive HTTP request, for the next one
        self._deferred: DeferredResponse | None = None  # an HTTP answer still being worked on
        self._handshake_timer: Timer | None = None
        self._ping_timer: Timer | None = None
        self._pong_timer: Timer | None = None
        self._close_timer: Timer | None = None
        self._idle_timer: Timer | None = None
        self._last_received = time.monotonic()
        self._last_message = self._last_received
        self._ping_payload = b""

    def __repr__(self) -> str:
        return f"<ServerConnection {self.peer} {self.protocol.state.value}>"

    @property
    def peer(self) -> str:
        """The peer's address as ``host:port``, for logs."""
        address = self.remote_address
        if isinstance(address, tuple) and len(address) >= 2:
            host = address[0]
            return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
        return str(address)

    @property
    def tls(self) -> bool:
        """True when this connection came over TLS (``wss://``, ``https://``)."""
        return isinstance(self.sock, ssl.SSLSocket)

    @property
    def is_open(self) -> bool:
        """True while messages can be sent."""
        return self.protocol.state is State.OPEN and not self._slow

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol."""
        return self.protocol.subprotocol

    @property
    def buffered_amount(self) -> int:
        """Bytes queued for this peer and not yet taken by the kernel."""
        return self._pending_size + len(self._outgoing)

    # --- sending, for the application ----------------------------------------------------

    def send_text(self, text: str) -> bool:
        """Queue a text message; False if the connection can no longer send."""
        if not self.is_open:
            return False
        self._queue(self.protocol.send_text(text))
        return True

    def send_binary(self, data: bytes) -> bool:
        """Queue a binary message; False if the connection can no longer send."""
        if not self.is_open:
            return False
        self._queue(self.protocol.send_binary(data))
        return True

    def send_prepared(self, prepared: PreparedMessage) -> bool:
        """Queue messages encoded once for many connections (``Server.prepare``)."""
        if not self.is_open:
            return False
        if self.protocol.extension is not None or self.protocol.fragment_size is not None:
            for opcode, payload in prepared.messages:
                self._queue(self.protocol.send_message(opcode, payload))
        else:
            self._queue(prepared.frames)
        return True

    def ping(self, payload: bytes = b"") -> bool:
        """Send a ping; the pong arrives as a ``Pong`` (not reported to the Handler)."""
        if not self.is_open:
            return False
        self._queue(self.protocol.ping(payload))
        return True

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake; the socket closes when the peer answers or after
        ``close_timeout``.
        """
        if self.protocol.state is State.OPEN:
            self._queue(self.protocol.close(code, reason))
            self._count_close_sent(code)
            self._start_close_timer()
        elif self.protocol.state is State.CONNECTING:
            self._abort("closed before the handshake completed")

    def _count_close_sent(self, code: int) -> None:
        """Count a close frame this side started (not the echo of a peer's), per code:
        ``Server.stats["close_sent_<code>"]``.
        """
        stats = self.server.stats
        key = f"close_sent_{code}"
        stats[key] = stats.get(key, 0) + 1

    # --- the write path --------------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        """Hold ``data`` until the end of the loop tick (write coalescing)."""
        if not data or self.closed:
            return
        if not self._pending:
            self.server._dirty.append(self)
        self._pending.append(data)
        self._pending_size += len(data)
        limit = self.server.config.write_limit
        if (
            self._pending_size + len(self._outgoing) > limit
            and not self._slow
            and self.protocol.state is State.OPEN
        ):
            # Coalescing pays off for small frames; this much is worth a send now, and the
            # peer is judged by what the kernel refuses, not by what one tick queued.
            self._send_early()
            if self.buffered_amount > limit:
                self._slow_consumer()

    def _send_early(self) -> None:
        """Give the kernel what is queued, mid-tick. A failed send is not reported here
        (we may be inside a handler): the write path meets the error again and aborts.
        """
        if self._outgoing:
            return  # the kernel already refuses bytes
        pending = self._pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._pending_size = 0
        try:
            sent = self.sock.send(data)
        except OSError:  # BlockingIOError, SSLWant*Error, or a failure seen again later
            sent = 0
        self.server.stats["bytes_sent"] += sent
        if sent < len(data):
            self._outgoing += memoryview(data)[sent:]
            self._want_write(True)

    def _slow_consumer(self) -> None:
        """The peer does not read fast enough: close instead of buffering without end."""
        self._slow = True
        self.server.stats["slow_consumers"] += 1
        code = self.server.config.slow_consumer_code
        logger.warning(
            "%s: closing slow consumer (%d bytes waiting)", self.peer, self.buffered_amount
        )
        close_frame = self.protocol.close(code, "slow consumer")
        self._count_close_sent(code)
        self._pending.append(close_frame)
        self._pending_size += len(close_frame)
        self._start_close_timer()

    def _flush(self) -> None:
        """Give the kernel what this tick queued: one ``send`` for all of it."""
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._pending_size = 0
        if self.closed:
            return
        if self._outgoing:
            self._outgoing += data
            return
        sent = self._send(data)
        if sent < len(data):
            self._outgoing += memoryview(data)[sent:]
            self._want_write(True)
        elif self._close_after_flush:
            self._shutdown()

    def _send(self, data: bytes | bytearray) -> int:
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return 0
        except OSError as error:
            self._abort(f"send failed: {error}")
            return len(data)
        self.server.stats["bytes_sent"] += sent
        return sent

    def _on_writable(self) -> None:
        if self._tls_handshaking:
            self._continue_tls_handshake()
            return
        outgoing = self._outgoing
        if outgoing:
            sent = self._send(outgoing)
            if self.closed:
                return
            del outgoing[:sent]
        if not outgoing:
            self._want_write(False)
            if self._close_after_flush:
                self._shutdown()

    def _want_write(self, wanted: bool) -> None:
        if wanted is self._write_registered or self.closed:
            return
        self._write_registered = wanted
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
        self.server._selector.modify(self.sock, events, self)

    # --- the read path ---------------------------------------------------------------------

    def _on_readable(self) -> None:
        if self._tls_handshaking:
            self._continue_tls_handshake()
            return
        try:
            data = self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except ssl.SSLError as error:
            self._abort(f"TLS error: {error.reason or error}")
            return
        except OSError as error:
            self._abort(f"recv failed: {error}")
            return
        if not data:
            self._on_eof()
            return
        self.server.stats["bytes_received"] += len(data)
        self._last_received = time.monotonic()
        self._receive(data)
        # TLS may hold decrypted bytes that select() cannot see: read them now, bounded.
        if isinstance(self.sock, ssl.SSLSocket) and not self.closed:
            for _ in range(16):
                if not self.sock.pending():
                    break
                try:
                    more = self.sock.recv(READ_SIZE)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                except OSError as error:
                    self._abort(f"recv failed: {error}")
                    return
                if not more:
                    self._on_eof()
                    return
                self.server.stats["bytes_received"] += len(more)
                self._receive(more)
                if self.closed:
                    return

    def _receive(self, data: bytes) -> None:
        # A loop, not recursion: the bytes after a keep-alive HTTP request (pipelined
        # requests) come back through ``_replay``, however many there are.
        while data:
            if self._close_after_flush or self.closed:
                return  # the last answer is queued or sent; nothing the peer adds matters
            if self._deferred is not None:
                # An answer is being worked on: hold what follows, within a request's size.
                self._replay += data
                config = self.server.config
                if len(self._replay) > config.http_limits.max_head_size + config.max_http_body:
                    self._abort("too much pipelined while an answer was pending")
                return
            if self._http_request is not None:
                self._receive_http_body(data)
            else:
                self._handle_events(self.protocol.receive_data(data))
            data, self._replay = self._replay, b""

    def _handle_events(self, events: list[Event]) -> None:
        # What the protocol answered on its own while parsing (pongs) goes out before
        # the application's answers to the same bytes, in the order the peer sent them.
        self._queue(self.protocol.data_to_send())
        server = self.server
        handler = server.handler
        for event in events:
            if self.closed:
                return
            event_type = type(event)
            if event_type is TextMessage or event_type is BinaryMessage:
                server.stats["messages_received"] += 1
                self._last_message = self._last_received
                handler.on_message(self, event.data)  # type: ignore[union-attr]
            elif event_type is RequestReceived:
                self._on_request(event.request)  # type: ignore[union-attr]
            elif event_type is Pong:
                self._on_pong(event.payload)  # type: ignore[union-attr]
            elif event_type is CloseReceived:
                if self.protocol.failure is None:
                    logger.debug("%s: close received: %s", self.peer, event)
            elif event_type is Rejected:
                logger.info("%s: bad request: %s", self.peer, event.reason)  # type: ignore[union-attr]
        self._after_protocol()

    def _after_protocol(self) -> None:
        """Send what the protocol queued by itself and close when it says so."""
        if self.closed:
            return
        protocol = self.protocol
        if protocol.paused:
            if self.server._tick_callbacks and not self._paused_for_tick:
                # An application that answers at the end of the tick (chatd acknowledges
                # a message once it is committed) answers before the close reply: the
                # connection goes on from there (Server.run_once).
                self._queue(protocol.data_to_send())
                self._paused_for_tick = True
                self.server._paused.append(self)
                return
            self._paused_for_tick = False
            # The messages before a close frame or a violation are answered: go on.
            protocol.receive_data(b"")
        self._queue(protocol.data_to_send())
        if protocol.failure is not None and not self._close_after_flush:
            failure = protocol.failure
            if not isinstance(failure, InvalidHandshake):
                logger.info(
                    "%s: protocol error, closing with %s: %s",
                    self.peer,
                    int(failure.close_code),
                    failure.reason,
                )
                # Section 7.1.7: the protocol sent a close frame with the failure's code,
                # unless the connection was closing already (then it sends nothing more).
                if protocol.close_sent and protocol.close_code == failure.close_code:
                    self._count_close_sent(failure.close_code)
        if protocol.should_close_transport:
            self._close_after_flush = True
            self._start_close_timer()
            if not self._pending and not self._outgoing:
                self._shutdown()

    def _on_eof(self) -> None:
        self.protocol.receive_eof()
        self._finish()

    # --- handshake and plain HTTP --------------------------------------------------------------

    def _on_request(self, request: Request) -> None:
        self.request = request
        server = self.server
        if not is_websocket_upgrade(request):
            self._start_http(request)
            return
        try:
            # The application decides on valid upgrades only (section 4.2.1 first).
            validate_request(request)
            extra = list(server.handler.on_connect(self, request))
        except InvalidHandshake as error:
            self._refuse(error)
            return
        except Exception:
            logger.exception("%s: on_connect failed for %s", self.peer, request.path)
            self._refuse(InvalidHandshake("internal server error", 500))
            return
        if self.closed:
            return  # on_connect closed the connection itself
        if server.config.server_header:
            extra.append(("Server", server.config.server_header))
        try:
            # Negotiation happens here: a malformed Sec-WebSocket-Protocol or -Extensions
            # header is the client's fault, answered with 400 like any other.
            response = self.protocol.accept(extra_headers=extra)
        except InvalidHandshake as error:
            self._refuse(error)
            return
        server.stats["handshakes_accepted"] += 1
        self._queue(response)
        self._cancel(self._handshake_timer)
        self._handshake_timer = None
        self.opened = True
        self._shares_frames = (
            self.protocol.extension is None and self.protocol.fragment_size is None
        )
        self._schedule_ping()
        self._schedule_idle()
        server.handler.on_open(self)
        # Bytes that came right behind the request are parsed now.
        if not self.closed and self.protocol.state is State.OPEN:
            self._handle_events(self.protocol.receive_data(b""))

    def _refuse(self, error: InvalidHandshake) -> None:
        self.server.stats["handshakes_rejected"] += 1
        logger.info("%s: handshake refused with %d: %s", self.peer, error.status, error.reason)
        self._queue(self.protocol.reject(error))

    def _start_http(self, request: Request) -> None:
        try:
            length = request_body_length(request.headers)
            if length > self.server.config.max_http_body:
                raise InvalidHandshake("request body too large", 413)
        except InvalidHandshake as error:
            self._respond_http(HttpResponse(error.status, f"{error.reason}\n".encode()), False)
            return
        self._http_request = request
        self._http_body_length = length
        self._http_body = bytearray()
        self._receive_http_body(self.protocol.take_unparsed())

    def _receive_http_body(self, data: bytes) -> None:
        request = self._http_request
        assert request is not None
        body = self._http_body
        body += data
        if len(body) < self._http_body_length:
            return
        rest = bytes(body[self._http_body_length :])
        del body[self._http_body_length :]
        self._http_request = None
        try:
            response = self.server.handler.on_http_request(self, request, bytes(body))
        except Exception:
            logger.exception(
                "%s: HTTP handler failed for %s %s", self.peer, request.method, request.path
            )
            response = HttpResponse(500, b"internal server error\n")
        keep_alive = request.version == "HTTP/1.1" and "close" not in request.headers.tokens(
            "Connection"
        )
        if isinstance(response, DeferredResponse):
            if response.response is None:
                response._connection = self
                response._keep_alive = keep_alive
                response._rest = rest
                self._deferred = response
                return
            response = response.response  # completed already
        self._finish_http(response, keep_alive, rest)

    def _complete_deferred(self, deferred: DeferredResponse) -> None:
        if self.closed or self._deferred is not deferred:
            return
        assert deferred.response is not None
        self._deferred = None
        held, self._replay = self._replay, b""
        self._finish_http(deferred.response, deferred._keep_alive, deferred._rest + held)
        data, self._replay = self._replay, b""
        if data:
            self._receive(data)

    def _finish_http(self, response: HttpResponse, keep_alive: bool, rest: bytes) -> None:
        self._respond_http(response, keep_alive)
        if keep_alive and not self.closed:
            # HTTP/1.1 persistent connection: a fresh protocol object for the next request.
            self.protocol = self.server._new_protocol()
            self.request = None
            self._cancel(self._handshake_timer)
            self._handshake_timer = self.server._timers.call_later(
                self.server.config.handshake_timeout, self._on_handshake_timeout
            )
            self._replay = rest

    def _respond_http(self, response: HttpResponse, keep_alive: bool) -> None:
        headers = [("Content-Type", response.content_type), *response.headers]
        if self.server.config.server_header:
            headers.append(("Server", self.server.config.server_header))
        headers.append(("Connection", "keep-alive" if keep_alive else "close"))
        self.server.stats["http_requests"] += 1
        message = serialize_response(response.status, headers, response.body)
        if self.request is not None and self.request.method == "HEAD" and response.body:
            # RFC 9110 section 9.3.2: the same header fields as GET, without the content.
            message = message[: -len(response.body)]
        self._queue(message)
        if not keep_alive:
            self._close_after_flush = True
            self._start_close_timer()

    # --- timers ----------------------------------------------------------------------------------

    def _cancel(self, timer: Timer | None) -> None:
        if timer is not None:
            timer.cancel()

    def _on_handshake_timeout(self) -> None:
        self._handshake_timer = None
        if self.protocol.state is State.CONNECTING and not self.closed:
            logger.info("%s: handshake timeout", self.peer)
            self.server.stats["handshake_timeouts"] += 1
            if self._tls_handshaking or self.request is None:
                self._abort("handshake timeout")
            else:
                self._queue(self.protocol.reject(InvalidHandshake("handshake timeout", 408)))
                self._after_protocol()

    def _schedule_ping(self) -> None:
        interval = self.server.config.ping_interval
        if interval is not None:
            self._ping_timer = self.server._timers.call_later(interval, self._send_keepalive_ping)

    def _send_keepalive_ping(self) -> None:
        self._ping_timer = None
        if not self.is_open:
            return
        # Skip the ping if the peer spoke recently: that already proves it is alive.
        config = self.server.config
        assert config.ping_interval is not None
        quiet = time.monotonic() - self._last_received
        if quiet < config.ping_interval / 2:
            self._ping_timer = self.server._timers.call_later(
                config.ping_interval - quiet, self._send_keepalive_ping
            )
            return
        self._ping_payload = int(time.monotonic() * 1e6).to_bytes(8, "big")
        self.ping(self._ping_payload)
        if config.ping_timeout is not None and self._pong_timer is None:
            self._pong_timer = self.server._timers.call_later(
                config.ping_timeout, self._on_pong_timeout
            )
        self._schedule_ping()

    def _on_pong(self, payload: bytes) -> None:
        # Any pong proves the peer is alive (section 5.5.3 allows unsolicited ones).
        self._cancel(self._pong_timer)
        self._pong_timer = None

    def _on_pong_timeout(self) -> None:
        self._pong_timer = None
        if self.protocol.state is State.OPEN:
            logger.info(
                "%s: no pong within %ss, closing", self.peer, self.server.config.ping_timeout
            )
            self.server.stats["ping_timeouts"] += 1
            self.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")

    def _schedule_idle(self) -> None:
        timeout = self.server.config.idle_timeout
        if timeout is not None:
            self._idle_timer = self.server._timers.call_later(timeout, self._on_idle_check)

    def _on_idle_check(self) -> None:
        self._idle_timer = None
        timeout = self.server.config.idle_timeout
        assert timeout is not None
        quiet = time.monotonic() - self._last_message
        if quiet >= timeout:
            if self.protocol.state is State.OPEN:
                logger.info("%s: idle for %.0fs, closing", self.peer, quiet)
                self.close(CloseCode.GOING_AWAY, "idle timeout")
        else:
            self._idle_timer = self.server._timers.call_later(timeout - quiet, self._on_idle_check)

    def _start_close_timer(self) -> None:
        if self._close_timer is None and not self.closed:
            self._close_timer = self.server._timers.call_later(
                self.server.config.close_timeout, self._on_close_timeout
            )

    def _on_close_timeout(self) -> None:
        self._close_timer = None
        if not self.closed:
            self._abort("close timeout")

    # --- TLS -------------------------------------------------------------------------------------

    def _continue_tls_handshake(self) -> None:
        sock = self.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want_write(False)
            return
        except ssl.SSLWantWriteError:
            self._want_write(True)
            return
        except (ssl.SSLError, OSError) as error:
            self.server.stats["tls_failures"] += 1
            reason = getattr(error, "reason", None) or error
            if reason == "HTTP_REQUEST":
                # Plain HTTP on the TLS port (OpenSSL recognizes the request line): say so
                # in plain HTTP, below TLS, rather than leave the client with a bare reset.
                with contextlib.suppress(OSError):
                    os.write(sock.fileno(), PLAIN_HTTP_ON_TLS)
                    # Read the rest of the request first: closing over unread bytes would
                    # send an RST, which can destroy the answer before the client reads it.
                    for _ in range(4):
                        if not os.read(sock.fileno(), READ_SIZE):
                            break
            self._abort(f"TLS handshake failed: {reason}")
            return
        self._tls_handshaking = False
        self._want_write(bool(self._outgoing))

    # --- ending ----------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Everything is sent and the protocol is done: send our FIN (section 7.1.1: the
        server closes the TCP connection first), then wait for the peer's EOF.
        """
        if self._shut_down or self.closed:
            return
        self._shut_down = True
        try:
            # With TLS too: closing the socket now over unread bytes (whatever the peer sent
            # after its close) would answer with an RST that can destroy our last frames in
            # flight. SSLSocket.shutdown drops TLS without a close_notify exchange, which
            # the closing handshake makes unnecessary; what the peer still sends is ignored.
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._finish()
            return
        self._start_close_timer()

    def _abort(self, reason: str) -> None:
        """The one exit for fatal conditions: log once, drop the socket."""
        if self.closed:
            return
        logger.info("%s: connection dropped: %s", self.peer, reason)
        self.protocol.receive_eof()
        self._finish()

    def _finish(self) -> None:
        """Close the socket, cancel the timers, tell the application (once)."""
        if self.closed:
            return
        self.closed = True
        for timer in (
            self._handshake_timer,
            self._ping_timer,
            self._pong_timer,
            self._close_timer,
            self._idle_timer,
        ):
            self._cancel(timer)
        self.server._forget(self)
        self._outgoing = bytearray()
        self._pending.clear()
        self._pending_size = 0
        if self.protocol.state is not State.CLOSED:
            self.protocol.receive_eof()
        if self.opened:
            code = self.protocol.close_code or CloseCode.ABNORMAL_CLOSURE
            self.server.stats["closed"] += 1
            try:
                self.server.handler.on_close(self, code, self.protocol.close_reason)
            except Exception:
                logger.exception("%s: on_close failed", self.peer)


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """One or more messages encoded once for many connections (broadcast).

    Server frames are never masked (RFC 6455 section 5.1), so the same uncompressed
    frames serve every connection without permessage-deflate; the others compress each
    payload themselves. Several messages in one (``Server.prepare_many``) cost each
    recipient one queued ``bytes`` instead of one per message: a chat server sends a
    tick's messages to a room that way.
    """

    #: (opcode, payload) of each message, in order.
    messages: tuple[tuple[Opcode, bytes], ...]
    #: Their frames, back to back.
    frames: bytes


class Server:
    """Accept WebSocket (and plain HTTP) connections and drive them on one thread.

    Use ``listen()`` (or pass sockets from systemd to ``add_socket()``), then
    ``serve_forever()``; ``shutdown()`` from a handler or a signal handler (via
    ``request_shutdown``) closes every connection with 1001 and returns.
    """

    def __init__(self, handler: Handler, config: ServerConfig | None = None) -> None:
        self.handler = handler
        self.config = config or ServerConfig()
        self._selector = selectors.DefaultSelector()
        self._timers = TimerHeap()
        self._listeners: list[_Listener] = []
        self.connections: set[ServerConnection] = set()
        self._dirty: list[ServerConnection] = []
        self._tick_callbacks: list[Callable[[], None]] = []
        #: Connections stopped at a close frame or a violation until the tick callbacks
        #: have answered the messages before it.
        self._paused: list[ServerConnection] = []
        self._soon: deque[Callable[[], None]] = deque()
        self._executor: ThreadPoolExecutor | None = None
        self._wakeup = _Wakeup()
        self._selector.register(self._wakeup.reader, selectors.EVENT_READ, self._wakeup)
        self._stopping = False
        self._shutdown_requested = False
        self.stats: dict[str, int] = {
            "accepted": 0,
            "handshakes_accepted": 0,
            "handshakes_rejected": 0,
            "handshake_timeouts": 0,
            "http_requests": 0,
            "messages_received": 0,
            "slow_consumers": 0,
            "ping_timeouts": 0,
            "tls_failures": 0,
            "closed": 0,
            # Socket I/O, in bytes (after TLS): what recv returned, what send took.
            "bytes_received": 0,
            "bytes_sent": 0,
            # Close frames this side started are counted as "close_sent_<code>" as they
            # happen (ServerConnection._count_close_sent).
        }

    # --- sockets ---------------------------------------------------------------------------

    def listen(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> socket.socket:
        """Bind and listen on ``host:port`` (port 0 picks a free one)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(self.config.backlog)
        except OSError:
            sock.close()
            raise
        self.add_socket(sock, ssl_context=ssl_context)
        return sock

    def add_socket(self, sock: socket.socket, *, ssl_context: ssl.SSLContext | None = None) -> None:
        """Serve on an already bound, listening socket (systemd socket activation)."""
        sock.setblocking(False)
        listener = _Listener(sock, ssl_context)
        self._listeners.append(listener)
        self._selector.register(sock, selectors.EVENT_READ, listener)

    @property
    def addresses(self) -> list[Any]:
        """Where the server listens."""
        return [listener.sock.getsockname() for listener in self._listeners]

    def _accept(self, listener: _Listener) -> None:
        # Accept a bounded batch per tick so a connection storm cannot starve the others.
        for _ in range(64):
            try:
                sock, address = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logger.error(
                        "accept failed, out of resources: %s; pausing accepts for %ss",
                        error,
                        ACCEPT_RETRY_DELAY,
                    )
                    self._selector.unregister(listener.sock)
                    self._timers.call_later(
                        ACCEPT_RETRY_DELAY, lambda: self._resume_accepting(listener)
                    )
                    return
                logger.warning("accept failed: %s", error)
                return
            self._start_connection(sock, address, listener.tls)

    def _resume_accepting(self, listener: _Listener) -> None:
        if listener in self._listeners:  # not closed by a shutdown in the meantime
            self._selector.register(listener.sock, selectors.EVENT_READ, listener)

    def _start_connection(
        self, sock: socket.socket, address: Any, tls: ssl.SSLContext | None
    ) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn_sock: socket.socket = sock
        if tls is not None:
            try:
                conn_sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (ssl.SSLError, OSError) as error:
                logger.info("%s: TLS setup failed: %s", address, error)
                sock.close()
                return
        connection = ServerConnection(self, conn_sock, address)
        self.stats["accepted"] += 1
        self.connections.add(connection)
        self._selector.register(conn_sock, selectors.EVENT_READ, connection)
        connection._handshake_timer = self._timers.call_later(
            self.config.handshake_timeout, connection._on_handshake_timeout
        )
        if self._stopping:
            connection._abort("server shutting down")

    def _forget(self, connection: ServerConnection) -> None:
        self.connections.discard(connection)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        with contextlib.suppress(OSError):
            connection.sock.close()

    def _new_protocol(self) -> Connection:
        config = self.config
        return Connection(
            Role.SERVER,
            max_message_size=config.max_message_size,
            max_frame_size=config.max_frame_size,
            fragment_size=config.fragment_size,
            subprotocols=config.subprotocols,
            deflate_options=config.deflate,
            http_limits=config.http_limits,
            # Answer a peer's last messages before its close (or its violation) shuts
            # the connection; _after_protocol resumes the protocol afterwards.
            pause_before_closing=True,
        )

    # --- broadcast -------------------------------------------------------------------------

    @staticmethod
    def prepare(message: str | bytes) -> PreparedMessage:
        """Encode ``message`` once, to send to many connections with ``send_prepared``."""
        return Server.prepare_many((message,))

    @staticmethod
    def prepare_many(messages: Iterable[str | bytes]) -> PreparedMessage:
        """Encode several messages once, to send together to many connections."""
        parts: list[tuple[Opcode, bytes]] = []
        for message in messages:
            if isinstance(message, str):
                parts.append((Opcode.TEXT, message.encode()))
            else:
                parts.append((Opcode.BINARY, bytes(message)))
        frames = b"".join(encode_frame(opcode, payload) for opcode, payload in parts)
        return PreparedMessage(tuple(parts), frames)

    def send_prepared_many(
        self, connections: Iterable[ServerConnection], prepared: PreparedMessage
    ) -> int:
        """``send_prepared`` to each of ``connections``; return how many could send.

        The broadcast hot path. For a connection that shares frames (no extension, no
        fragmentation) and stays under its write limit, this is two appends and an
        addition, without the method and property calls of ``send_prepared``: a profile
        of a 1,000-client room showed those costing more than the ``send`` system calls.
        """
        frames = prepared.frames
        size = len(frames)
        # Beyond this, the general path decides between an early send and 1013.
        below = self.config.write_limit - size
        dirty = self._dirty
        open_state = State.OPEN
        sent = 0
        for connection in connections:
            if connection.protocol.state is not open_state or connection._slow:
                continue
            sent += 1
            pending = connection._pending
            if connection._shares_frames and connection._pending_size < below - len(
                connection._outgoing
            ):
                if not pending:
                    dirty.append(connection)
                pending.append(frames)
                connection._pending_size += size
            else:
                connection.send_prepared(prepared)
        return sent

    def broadcast(self, connections: Iterable[ServerConnection], message: str | bytes) -> int:
        """Send ``message`` to every open connection in ``connections``; return how many."""
        return self.send_prepared_many(connections, self.prepare(message))

    # --- the loop --------------------------------------------------------------------------

    def add_tick_callback(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` at the end of every loop tick, before writes are flushed.

        chatd commits the tick's database writes there, so that acknowledgements and
        broadcasts made after the commit leave in the same ``send`` as everything else.
        """
        self._tick_callbacks.append(callback)

    def call_later(self, delay: float, callback: Any) -> Timer:
        """Run ``callback`` on the loop after ``delay`` seconds."""
        return self._timers.call_later(delay, callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop thread at its next tick; safe from any thread."""
        self._soon.append(callback)
        self._wakeup.wake()

    def run_in_thread(
        self, work: Callable[[], T], done: Callable[[T | BaseException], None]
    ) -> None:
        """Run ``work`` on a worker thread (blocking or CPU-heavy work, such as a password
        hash, that must not stall the loop), then ``done(result or exception)`` on the
        loop thread. ``work`` must not touch the loop's state.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.config.worker_threads, thread_name_prefix="rfc6455-worker"
            )

        def finished(future: Future[T]) -> None:
            error = future.exception()
            outcome: T | BaseException = error if error is not None else future.result()
            self.call_soon_threadsafe(lambda: done(outcome))

        self._executor.submit(work).add_done_callback(finished)

    def run_once(self, max_wait: float | None = 1.0) -> None:
        """One loop tick: wait for I/O or the next timer, handle it, flush writes."""
        timeout = self._timers.timeout(max_wait)
        for key, mask in self._selector.select(timeout):
            data = key.data
            if isinstance(data, _Listener):
                self._accept(data)
                continue
            if isinstance(data, _Wakeup):
                data.drain()
                self._run_soon()
                continue
            connection: ServerConnection = data
            try:
                if mask & selectors.EVENT_READ and not connection.closed:
                    connection._on_readable()
                if mask & selectors.EVENT_WRITE and not connection.closed:
                    connection._on_writable()
            except Exception:
                # A bug in a handler must not take the server down with it.
                logger.exception("%s: unexpected error, dropping the connection", connection.peer)
                connection._abort("internal error")
        self._timers.run_due()
        for callback in self._tick_callbacks:
            try:
                callback()
            except Exception:
                logger.exception("tick callback %r failed", callback)
        if self._paused:
            paused, self._paused = self._paused, []
            for connection in paused:
                if not connection.closed:
                    connection._after_protocol()  # resumes: it was paused for this tick
                connection._paused_for_tick = False
        self._flush()
        if self._shutdown_requested and not self._stopping:
            self._begin_shutdown()

    def _run_soon(self) -> None:
        """Run what other threads handed to the loop (``call_soon_threadsafe``)."""
        soon = self._soon
        for _ in range(len(soon)):  # what is there now; later ones wake the loop again
            callback = soon.popleft()
            try:
                callback()
            except Exception:
                logger.exception("callback %r failed", callback)

    def _flush(self) -> None:
        dirty = self._dirty
        while dirty:
            self._dirty = []
            for connection in dirty:
                connection._flush()
            dirty = self._dirty

    def serve_forever(self, shutdown_timeout: float = 10.0) -> None:
        """Run until ``request_shutdown()``; then close gracefully within the timeout."""
        while not self._stopping:
            self.run_once()
        self._finish_shutdown(shutdown_timeout)

    @property
    def stopping(self) -> bool:
        """True once a shutdown was asked for or began: the server takes no new work."""
        return self._shutdown_requested or self._stopping

    def request_shutdown(self) -> None:
        """Ask the loop to shut down; safe from another thread or a signal handler."""
        self._shutdown_requested = True
        self._wakeup.wake()

    def _begin_shutdown(self) -> None:
        self._stopping = True
        for listener in self._listeners:
            with contextlib.suppress(KeyError):  # not registered while accepts are paused
                self._selector.unregister(listener.sock)
            listener.sock.close()
        self._listeners.clear()
        for connection in list(self.connections):
            if connection.protocol.state is State.OPEN:
                connection.close(CloseCode.GOING_AWAY, "server shutting down")
            elif connection.protocol.state is State.CONNECTING:
                connection._abort("server shutting down")
        self._flush()

    def _finish_shutdown(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.connections:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.run_once(min(remaining, 0.1))
        for connection in list(self.connections):
            connection._abort("shutdown deadline")
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        self._selector.close()
        self._wakeup.close()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop accepting, close every connection with 1001, wait for the replies up to
        ``timeout`` seconds, then drop what is left.
        """
        if not self._stopping:
            self._begin_shutdown()
        self._finish_shutdown(timeout)

    def close(self) -> None:
        """Drop everything at once (tests, errors); prefer ``shutdown``."""
        for connection in list(self.connections):
            connection._abort("server closed")
        for listener in self._listeners:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(listener.sock)
            listener.sock.close()
        self._listeners.clear()
        self._selector.close()
        self._wakeup.close()
