"""Tests for rfc6455.server: a real Server on 127.0.0.1 in a background thread.

The peers are independent: the ``websockets`` library, ``websocket-client``, and a raw
socket (``RawClient``) for byte-exact cases. Every wait is bounded by ``TIMEOUT``; the
timer tests use timeouts of a few tenths of a second. What a test asserts about time is a
bound that guards correctness (a timer fires, and not at once), never a performance.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import websocket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect, unix_connect

from rfc6455.codes import CloseCode, Opcode
from rfc6455.deflate import DeflateOptions
from rfc6455.echo import EchoHandler
from rfc6455.errors import InvalidHandshake
from rfc6455.http import Request
from rfc6455.server import (
    DeferredResponse,
    Handler,
    HttpResponse,
    Server,
    ServerConfig,
    ServerConnection,
)

TIMEOUT = 5.0
"""Seconds any single wait may take before the test fails."""

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3's example

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def make_config(**overrides: Any) -> ServerConfig:
    """The configuration most tests use: no keepalive pings, a short close timeout."""
    options: dict[str, Any] = {"close_timeout": 1.0, "ping_interval": None}
    options.update(overrides)
    return ServerConfig(**options)


# --- the application side ---------------------------------------------------------------


class Recorder(EchoHandler):
    """The echo handler, recording every callback for the test thread to wait on."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.opens: list[ServerConnection] = []
        self.closes: list[tuple[ServerConnection, int, str]] = []
        self.requests: list[tuple[Request, bytes]] = []
        self.connects: list[Request] = []

    def on_connect(self, connection: ServerConnection, request: Request) -> list[tuple[str, str]]:
        self.connects.append(request)
        return []

    def on_open(self, connection: ServerConnection) -> None:
        self.opens.append(connection)
        self.events.put(("open", connection))

    def on_close(self, connection: ServerConnection, code: int, reason: str) -> None:
        self.closes.append((connection, code, reason))
        self.events.put(("close", connection, code, reason))

    def on_http(self, request: Request, body: bytes) -> HttpResponse:
        self.requests.append((request, body))
        if request.method == "POST":
            return HttpResponse(200, b"got " + body, "application/octet-stream")
        return super().on_http(request, body)

    def wait(self, kind: str, timeout: float = TIMEOUT) -> tuple[Any, ...]:
        """Return the next event of ``kind`` (skipping others) within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {kind!r} event within {timeout}s")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if event[0] == kind:
                return event


@dataclass
class Running:
    """A server serving in a background thread."""

    server: Server
    handler: Handler
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.addresses[0][1])

    def url(self, path: str = "/", scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def stop(self, timeout: float = TIMEOUT) -> None:
        """Ask for a shutdown and wait for ``serve_forever`` to return."""
        self.server.request_shutdown()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not stop"
        assert not self.errors, f"serve_forever raised {self.errors!r}"


Serve = Callable[..., Running]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start ``Server(handler, config)`` on 127.0.0.1 port 0 in a thread."""
    started: list[Running] = []

    def start(
        handler: Handler | None = None,
        config: ServerConfig | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        sock: socket.socket | None = None,
        shutdown_timeout: float = 2.0,
    ) -> Running:
        server = Server(handler or Recorder(), config or make_config())
        if sock is None:
            server.listen("127.0.0.1", 0, ssl_context=ssl_context)
        else:
            server.add_socket(sock, ssl_context=ssl_context)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                server.serve_forever(shutdown_timeout)
            except BaseException as error:  # reported by Running.stop()
                errors.append(error)
                raise

        thread = threading.Thread(target=run, name="test-server", daemon=True)
        running = Running(server, server.handler, thread, errors)
        started.append(running)
        thread.start()
        return running

    yield start
    for running in started:
        running.stop()


# --- peers ------------------------------------------------------------------------------


def ws_connect(url: str, **options: Any) -> ClientConnection:
    """The websockets library's client, with bounded timeouts and no keepalive."""
    options.setdefault("open_timeout", TIMEOUT)
    options.setdefault("close_timeout", TIMEOUT)
    options.setdefault("ping_interval", None)
    options.setdefault("proxy", None)
    return connect(url, **options)


def mask_payload(payload: bytes, key: bytes) -> bytes:
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


def frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv1: bool = False
) -> bytes:
    """Encode a frame the way a client does (RFC 6455 section 5.2), written afresh here."""
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + length.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + mask_payload(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


UPGRADE_REQUEST = (
    "GET {path} HTTP/1.1\r\n"
    "Host: 127.0.0.1\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\n"
    "Sec-WebSocket-Version: {version}\r\n"
    "{extra}"
    "\r\n"
)


def upgrade_request(path: str = "/", version: str = "13", extra: str = "") -> bytes:
    return UPGRADE_REQUEST.format(path=path, version=version, extra=extra).encode()


@dataclass
class HttpReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class RawClient:
    """A byte-exact client on a plain socket, written independently of rfc6455."""

    def __init__(
        self,
        port: int,
        *,
        rcvbuf: int | None = None,
        sock: socket.socket | None = None,
        family: socket.AddressFamily = socket.AF_INET,
    ) -> None:
        if sock is None:
            sock = socket.socket(family, socket.SOCK_STREAM)
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(TIMEOUT)
            sock.connect(("127.0.0.1" if family == socket.AF_INET else "::1", port))
        self.sock = sock
        self.buffer = bytearray()

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with an RST instead of a FIN (SO_LINGER with a zero timeout)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.buffer += data

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read_http(self) -> HttpReply:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        end = self.buffer.index(b"\r\n\r\n") + 4
        head = self._take(end)
        lines = head[:-4].decode("latin-1").split("\r\n")
        version, status, _ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1"
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
        reply = HttpReply(int(status), headers, b"", head)
        length = reply.header("Content-Length")
        if length is not None:
            reply.body = self._take(int(length))
            reply.raw += reply.body
        return reply

    def handshake(self, path: str = "/", extra: str = "") -> HttpReply:
        self.send(upgrade_request(path, extra=extra))
        reply = self.read_http()
        assert reply.status == 101, reply.raw
        assert reply.header("Sec-WebSocket-Accept") == ACCEPT
        return reply

    def send_frame(self, opcode: int, payload: bytes = b"", **options: Any) -> None:
        self.send(frame(opcode, payload, **options))

    def read_frame(self) -> tuple[bool, int, bytes]:
        """Return (fin, opcode, payload) of the next frame, which must not be masked."""
        first, second = self._take(2)
        assert not second & 0x80, "a server must not mask its frames (section 5.1)"
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(self._take(2), "big")
        elif length == 127:
            length = int.from_bytes(self._take(8), "big")
        return bool(first & 0x80), first & 0x0F, self._take(length)

    def read_close(self) -> tuple[int, str]:
        """Skip data frames until a close frame; return its code and reason."""
        while True:
            _, opcode, payload = self.read_frame()
            if opcode == CLOSE:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()

    def expect_eof(self, timeout: float = TIMEOUT, *, allow_reset: bool = True) -> bytes:
        """Read until the server closes the connection, then close our side too; return
        what came before the end. ``allow_reset=False`` insists on a FIN, not an RST.
        """
        self.sock.settimeout(timeout)
        data = bytes(self.buffer)
        self.buffer.clear()
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            if not allow_reset:
                raise
        self.sock.close()
        return data


@pytest.fixture
def raw() -> Iterator[Callable[..., RawClient]]:
    """Open raw clients that are closed after the test."""
    clients: list[RawClient] = []

    def open_client(port: int, **options: Any) -> RawClient:
        client = RawClient(port, **options)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


# --- echo with independent peers --------------------------------------------------------


def test_echo_text_and_binary_with_websockets(serve: Serve) -> None:
    running = serve()
    with ws_connect(running.url()) as ws:
        ws.send("hello ☃")
        assert ws.recv(timeout=TIMEOUT) == "hello ☃"
        ws.send(b"\x00\xff binary")
        assert ws.recv(timeout=TIMEOUT) == b"\x00\xff binary"
        ws.send("")
        assert ws.recv(timeout=TIMEOUT) == ""
    assert ws.close_code == CloseCode.NORMAL_CLOSURE


def test_echo_one_mebibyte_with_default_limits(serve: Serve) -> None:
    # A message of exactly max_message_size, echoed: its frame is a few bytes more than
    # write_limit (both 1 MiB by default), which must not count as a slow consumer.
    running = serve(config=ServerConfig())
    message = os.urandom(1 << 20)
    with ws_connect(running.url(), max_size=None, compression=None) as ws:
        ws.send(message)
        assert ws.recv(timeout=TIMEOUT) == message
        ws.send(message.hex()[: 1 << 20])
        assert ws.recv(timeout=TIMEOUT) == message.hex()[: 1 << 20]
        ws.send("still open")
        assert ws.recv(timeout=TIMEOUT) == "still open"
    assert ws.close_code == CloseCode.NORMAL_CLOSURE
    assert running.server.stats["slow_consumers"] == 0


def test_echo_fragmented_with_websockets(serve: Serve) -> None:
    running = serve()
    with ws_connect(running.url()) as ws:
        ws.send(["frag", "mented ", "text"])
        assert ws.recv(timeout=TIMEOUT) == "fragmented text"
        ws.send([b"\x01", b"\x02" * 70000, b"\x03"])
        assert ws.recv(timeout=TIMEOUT) == b"\x01" + b"\x02" * 70000 + b"\x03"


def test_echo_with_websocket_client(serve: Serve) -> None:
    running = serve()
    ws = websocket.create_connection(running.url(), timeout=TIMEOUT)
    try:
        ws.send("hello ☃")
        assert ws.recv() == "hello ☃"
        ws.send_binary(b"\x00\x01\x02")
        assert ws.recv() == b"\x00\x01\x02"
        big = os.urandom(1 << 20)
        ws.send_binary(big)
        assert ws.recv() == big
        ws.send_frame(websocket.ABNF.create_frame("frag", websocket.ABNF.OPCODE_TEXT, fin=0))
        ws.send_frame(websocket.ABNF.create_frame("men", websocket.ABNF.OPCODE_CONT, fin=0))
        ws.ping(b"in between")  # a control frame inside a fragmented message
        ws.send_frame(websocket.ABNF.create_frame("ted", websocket.ABNF.OPCODE_CONT, fin=1))
        opcode, data = ws.recv_data(control_frame=True)
        assert (opcode, data) == (websocket.ABNF.OPCODE_PONG, b"in between")
        assert ws.recv() == "fragmented"
        ws.send_close(CloseCode.NORMAL_CLOSURE, b"bye")
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert data[:2] == b"\x03\xe8"
    finally:
        ws.shutdown()
    handler = running.handler
    assert isinstance(handler, Recorder)
    _, _, code, reason = handler.wait("close")
    assert (code, reason) == (1000, "bye")


def test_permessage_deflate_with_websockets(serve: Serve) -> None:
    running = serve(config=make_config(deflate=DeflateOptions()))
    handler = running.handler
    assert isinstance(handler, Recorder)
    with ws_connect(running.url()) as ws:  # websockets offers permessage-deflate by default
        assert ws.response is not None
        extensions = ws.response.headers["Sec-WebSocket-Extensions"]
        assert extensions.startswith("permessage-deflate")
        _, connection = handler.wait("open")
        assert connection.protocol.extension is not None
        for message in ("short", "chat " * 20000, b"\x00" * 100_000, os.urandom(5000)):
            ws.send(message)
            assert ws.recv(timeout=TIMEOUT) == message


def test_permessage_deflate_is_refused_when_not_configured(serve: Serve) -> None:
    running = serve()
    with ws_connect(running.url()) as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("plain")
        assert ws.recv(timeout=TIMEOUT) == "plain"


def test_subprotocol_is_negotiated(serve: Serve) -> None:
    running = serve(config=make_config(subprotocols=("chat.v2", "chat.v1")))
    handler = running.handler
    assert isinstance(handler, Recorder)
    with ws_connect(running.url(), subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"
        _, connection = handler.wait("open")
        assert connection.subprotocol == "chat.v2"


def test_many_concurrent_clients_get_only_their_own_echoes(serve: Serve) -> None:
    running = serve()
    url = running.url()

    def client(number: int) -> list[str]:
        with ws_connect(url) as ws:
            sent = [f"client {number} message {index}" for index in range(20)]
            for message in sent:
                ws.send(message)
            received = [ws.recv(timeout=TIMEOUT) for _ in sent]
            assert received == sent
            return received

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(client, range(50)))
    assert len(results) == 50
    assert running.server.stats["handshakes_accepted"] == 50


def test_frames_right_behind_the_handshake_are_handled(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.send(upgrade_request() + frame(TEXT, b"early") + frame(BINARY, b"bird"))
    assert client.read_http().status == 101
    assert client.read_frame() == (True, TEXT, b"early")
    assert client.read_frame() == (True, BINARY, b"bird")


def test_ping_is_answered_before_the_echo_of_later_bytes(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.handshake()
    client.send(frame(PING, b"are you there") + frame(TEXT, b"yes"))
    assert client.read_frame() == (True, PONG, b"are you there")
    assert client.read_frame() == (True, TEXT, b"yes")


def test_pong_from_the_client_is_accepted(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.handshake()
    client.send(frame(PONG, b"unsolicited") + frame(TEXT, b"after"))
    assert client.read_frame() == (True, TEXT, b"after")


# --- plain HTTP on the same port --------------------------------------------------------


def test_http_get_root(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = client.read_http()
    assert reply.status == 200
    assert reply.body == b"rfc6455 echo server: connect a WebSocket client here\n"
    assert reply.header("Content-Type") == "text/plain; charset=utf-8"
    assert reply.header("Server") == "rfc6455"
    assert reply.header("Connection") == "keep-alive"
    assert reply.header("Content-Length") == str(len(reply.body))


def test_http_unknown_path_is_404(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.send(b"GET /nothing/here?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = client.read_http()
    assert reply.status == 404
    assert reply.body == b"not found\n"


def test_default_handler_answers_404(serve: Serve, raw: Any) -> None:
    running = serve(Handler())
    client = raw(running.port)
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.read_http().status == 404


def test_http_keep_alive_serves_two_requests_on_one_connection(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.read_http().status == 200
    client.send(b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.read_http().status == 404
    handler = running.handler
    assert isinstance(handler, Recorder)
    assert [request.path for request, _ in handler.requests] == ["/", "/missing"]


def test_http_pipelined_requests_are_answered_in_order(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    paths = [f"/{index}" if index % 2 else "/" for index in range(2000)]
    client.send(b"".join(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for path in paths))
    statuses = [client.read_http().status for _ in paths]
    assert statuses == [404 if index % 2 else 200 for index in range(2000)]


def test_http_10_request_is_answered_then_closed(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    reply = client.read_http()
    assert reply.status == 200
    assert reply.header("Connection") == "close"
    assert client.expect_eof() == b""


def test_http_connection_close_is_honoured(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert client.read_http().header("Connection") == "close"
    assert client.expect_eof() == b""


def test_http_post_body_is_delivered(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.send(b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello")
    time.sleep(0.05)  # the rest of the body in a later read
    client.send(b" world")
    reply = client.read_http()
    assert (reply.status, reply.body) == (200, b"got hello world")
    assert reply.header("Content-Type") == "application/octet-stream"
    # The connection stays usable: the next request follows the body.
    client.send(
        b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n"
    )
    assert client.read_http().body == b"got abc"
    assert client.read_http().status == 200
    handler = running.handler
    assert isinstance(handler, Recorder)
    assert handler.requests[0][1] == b"hello world"


def test_on_http_request_sees_the_connection(serve: Serve, raw: Any) -> None:
    class WhoAsks(Recorder):
        def on_http_request(
            self, connection: ServerConnection, request: Request, body: bytes
        ) -> HttpResponse:
            host = connection.remote_address[0]
            return HttpResponse(200, f"{host} {connection.tls} {request.path}".encode())

    running = serve(WhoAsks())
    client = raw(running.port)
    client.send(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = client.read_http()
    assert (reply.status, reply.body) == (200, b"127.0.0.1 False /who")


class SlowHash(Recorder):
    """Answers ``POST /slow`` after work on a worker thread, everything else at once."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.worker_threads: list[str] = []

    def on_http_request(
        self, connection: ServerConnection, request: Request, body: bytes
    ) -> HttpResponse | DeferredResponse:
        if request.path != "/slow":
            return HttpResponse(200, b"fast " + request.path.encode())
        deferred = DeferredResponse()

        def work() -> bytes:
            self.worker_threads.append(threading.current_thread().name)
            assert self.release.wait(TIMEOUT)
            if body == b"boom":
                raise ValueError("the work failed")
            return body.upper()

        def done(result: bytes | BaseException) -> None:
            assert threading.current_thread().name == "test-server"  # the loop thread
            if isinstance(result, BaseException):
                deferred.complete(HttpResponse(500, str(result).encode()))
            else:
                deferred.complete(HttpResponse(200, result))

        connection.server.run_in_thread(work, done)
        return deferred


def test_deferred_response_waits_for_the_worker_and_keeps_the_order(serve: Serve, raw: Any) -> None:
    handler = SlowHash()
    running = serve(handler)
    slow = raw(running.port)
    # A pipelined GET behind the slow POST must be answered after it, not before.
    slow.send(
        b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /next HTTP/1.1\r\n\r\n"
    )
    # Meanwhile the loop serves everyone else.
    other = raw(running.port)
    other.send(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
    assert other.read_http().body == b"fast /other"
    handler.release.set()
    first = slow.read_http()
    assert (first.status, first.body) == (200, b"ABC")
    assert slow.read_http().body == b"fast /next"
    assert handler.worker_threads[0].startswith("rfc6455-worker")


def test_deferred_response_reports_a_failed_work(serve: Serve, raw: Any) -> None:
    handler = SlowHash()
    handler.release.set()
    running = serve(handler)
    client = raw(running.port)
    client.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nboom")
    reply = client.read_http()
    assert (reply.status, reply.body) == (500, b"the work failed")


def test_deferred_response_to_a_peer_that_left_is_dropped(serve: Serve, raw: Any) -> None:
    handler = SlowHash()
    running = serve(handler)
    client = raw(running.port)
    client.send(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
    time.sleep(0.1)
    client.close()
    time.sleep(0.1)
    handler.release.set()
    # The server carries on: a new request is answered.
    again = raw(running.port)
    again.send(b"GET /alive HTTP/1.1\r\nHost: x\r\n\r\n")
    assert again.read_http().body == b"fast /alive"


def test_call_soon_threadsafe_runs_on_the_loop(serve: Serve) -> None:
    running = serve()
    seen: list[str] = []
    ran = threading.Event()

    def on_loop() -> None:
        seen.append(threading.current_thread().name)
        ran.set()

    threading.Thread(target=running.server.call_soon_threadsafe, args=(on_loop,)).start()
    assert ran.wait(TIMEOUT)
    assert seen == ["test-server"]


@pytest.mark.parametrize(
    "header",
    [
        "Sec-WebSocket-Protocol: chat v2, ,",
        'Sec-WebSocket-Protocol: "chat"',
        "Sec-WebSocket-Extensions: permessage-deflate;;",
    ],
)
def test_malformed_negotiation_headers_get_400(serve: Serve, raw: Any, header: str) -> None:
    # Found by tests/fuzz_chatd.py: negotiation runs in Connection.accept, after the
    # application said yes; its refusal must still be a 400, not a dropped connection.
    config = make_config(subprotocols=("chat",), deflate=DeflateOptions())
    running = serve(config=config)
    client = raw(running.port)
    client.send(
        (
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{header}\r\n\r\n"
        ).encode()
    )
    assert client.read_http().status == 400
    # The server is fine: the next client gets in.
    with ws_connect(running.url()) as ws:
        ws.send("still here")
        assert ws.recv(timeout=TIMEOUT) == "still here"


def test_http_body_over_the_limit_is_413(serve: Serve, raw: Any) -> None:
    running = serve(config=make_config(max_http_body=1000))
    client = raw(running.port)
    client.send(b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n" + b"x" * 1001)
    reply = client.read_http()
    assert reply.status == 413
    assert reply.header("Connection") == "close"
    assert client.expect_eof() == b""
    handler = running.handler
    assert isinstance(handler, Recorder)
    assert handler.requests == []


def test_http_chunked_body_is_411(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.send(
        b"POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    reply = client.read_http()
    assert reply.status == 411
    assert client.expect_eof() == b""


def test_http_head_response_has_no_body(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
    while b"\r\n\r\n" not in client.buffer:
        client._fill()
    head = client._take(client.buffer.index(b"\r\n\r\n") + 4)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    # Section 9.3.2 of RFC 9110: the same Content-Length as for GET, and no content.
    assert b"Content-Length: 53\r\n" in head
    assert client.read_http().status == 404


def test_http_handler_failure_is_500(
    serve: Serve, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Recorder):
        def on_http(self, request: Request, body: bytes) -> HttpResponse:
            raise RuntimeError("on_http is broken")

    caplog.set_level(logging.ERROR, logger="rfc6455.server")
    running = serve(Broken())
    client = raw(running.port)
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = client.read_http()
    assert (reply.status, reply.body) == (500, b"internal server error\n")
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # still keeps the connection
    assert client.read_http().status == 500
    assert "HTTP handler failed for GET /" in caplog.text


def test_http_handler_headers_are_sent(serve: Serve, raw: Any) -> None:
    class Custom(Recorder):
        def on_http(self, request: Request, body: bytes) -> HttpResponse:
            return HttpResponse(201, b"{}", "application/json", [("X-Thing", "1")])

    running = serve(Custom(), make_config(server_header=None))
    client = raw(running.port)
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    reply = client.read_http()
    assert reply.status == 201
    assert reply.header("X-Thing") == "1"
    assert reply.header("Content-Type") == "application/json"
    assert reply.header("Server") is None


def test_websocket_upgrade_after_http_on_the_same_connection(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.read_http().status == 200
    client.handshake("/ws")
    client.send_frame(TEXT, b"upgraded")
    assert client.read_frame() == (True, TEXT, b"upgraded")


def test_keep_alive_connection_idle_is_closed_after_handshake_timeout(
    serve: Serve, raw: Any
) -> None:
    running = serve(config=make_config(handshake_timeout=0.2))
    client = raw(running.port)
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.read_http().status == 200
    started = time.monotonic()
    assert client.expect_eof() == b""
    assert time.monotonic() - started > 0.1


def test_http_body_that_never_completes_gets_408(serve: Serve, raw: Any) -> None:
    running = serve(config=make_config(handshake_timeout=0.2))
    client = raw(running.port)
    client.send(b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nsome")
    reply = client.read_http()
    assert reply.status == 408
    assert reply.body == b"handshake timeout\n"
    assert client.expect_eof() == b""
    assert running.server.stats["handshake_timeouts"] == 1


# --- the opening handshake --------------------------------------------------------------


def test_on_connect_refusal_is_sent_exactly_and_on_open_is_not_called(
    serve: Serve, raw: Any
) -> None:
    class Refuse(Recorder):
        def on_connect(
            self, connection: ServerConnection, request: Request
        ) -> list[tuple[str, str]]:
            super().on_connect(connection, request)
            raise InvalidHandshake("origin not allowed", 403)

    handler = Refuse()
    running = serve(handler)
    client = raw(running.port)
    client.send(upgrade_request(extra="Origin: https://evil.example\r\n"))
    assert client.expect_eof() == (
        b"HTTP/1.1 403 Forbidden\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Connection: close\r\n"
        b"Content-Length: 19\r\n"
        b"\r\n"
        b"origin not allowed\n"
    )
    assert handler.connects[0].headers.get("Origin") == "https://evil.example"
    running.stop()
    assert handler.opens == []
    assert handler.closes == []
    assert running.server.stats["handshakes_rejected"] == 1


def test_on_connect_headers_are_added_to_the_101(serve: Serve, raw: Any) -> None:
    class Cookie(Recorder):
        def on_connect(
            self, connection: ServerConnection, request: Request
        ) -> list[tuple[str, str]]:
            return [("Set-Cookie", "session=abc")]

    running = serve(Cookie())
    client = raw(running.port)
    reply = client.handshake("/ws?room=lobby")
    assert reply.header("Set-Cookie") == "session=abc"
    assert reply.header("Server") == "rfc6455"
    assert reply.header("Upgrade") == "websocket"


def test_on_connect_failure_is_500(
    serve: Serve, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Recorder):
        def on_connect(
            self, connection: ServerConnection, request: Request
        ) -> list[tuple[str, str]]:
            raise RuntimeError("on_connect is broken")

    caplog.set_level(logging.ERROR, logger="rfc6455.server")
    handler = Broken()
    running = serve(handler)
    client = raw(running.port)
    client.send(upgrade_request())
    reply = client.read_http()
    assert reply.status == 500
    assert client.expect_eof() == b""
    assert "on_connect is broken" in caplog.text
    running.stop()
    assert handler.opens == []


def test_on_connect_may_close_the_connection(
    serve: Serve, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Drop(Recorder):
        def on_connect(
            self, connection: ServerConnection, request: Request
        ) -> list[tuple[str, str]]:
            connection.close()
            return []

    caplog.set_level(logging.INFO, logger="rfc6455.server")
    handler = Drop()
    running = serve(handler)
    client = raw(running.port)
    client.send(upgrade_request())
    assert client.expect_eof() == b""
    running.stop()
    assert handler.opens == []
    assert "unexpected error" not in caplog.text


def test_malformed_request_is_400(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.send(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n")
    reply = client.read_http()
    assert reply.status == 400
    assert reply.header("Connection") == "close"
    assert client.expect_eof() == b""


def test_oversized_head_is_431(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.send(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(100)) + b"\r\n")
    assert client.read_http().status == 431
    assert client.expect_eof() == b""


def test_version_8_is_426_with_version_13(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.send(upgrade_request(version="8"))
    reply = client.read_http()
    assert reply.status == 426
    assert reply.header("Sec-WebSocket-Version") == "13"
    assert client.expect_eof() == b""
    handler = running.handler
    assert isinstance(handler, Recorder)
    running.stop()
    assert handler.opens == []
    assert handler.connects == []  # the application only judges valid upgrades


def test_websockets_client_sees_the_refusal(serve: Serve) -> None:
    class Refuse(Recorder):
        def on_connect(
            self, connection: ServerConnection, request: Request
        ) -> list[tuple[str, str]]:
            raise InvalidHandshake("no", 403)

    running = serve(Refuse())
    with pytest.raises(Exception, match="403"):
        ws_connect(running.url())


# --- timers -----------------------------------------------------------------------------


def test_handshake_timeout_on_a_half_request(serve: Serve, raw: Any) -> None:
    running = serve(config=make_config(handshake_timeout=0.2))
    client = raw(running.port)
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    assert client.expect_eof() == b""
    assert time.monotonic() - started > 0.1
    assert running.server.stats["handshake_timeouts"] == 1


def test_handshake_timeout_on_a_silent_socket(serve: Serve, raw: Any) -> None:
    running = serve(config=make_config(handshake_timeout=0.2))
    client = raw(running.port)
    started = time.monotonic()
    assert client.expect_eof() == b""
    assert time.monotonic() - started > 0.1
    wait_until(lambda: not running.server.connections)


def test_keepalive_pings_are_sent_and_pongs_keep_the_connection(serve: Serve, raw: Any) -> None:
    running = serve(config=make_config(ping_interval=0.2, ping_timeout=0.3))
    client = raw(running.port)
    client.handshake()
    for _ in range(3):
        fin, opcode, payload = client.read_frame()
        assert (fin, opcode, len(payload)) == (True, PING, 8)
        client.send_frame(PONG, payload)
    client.send_frame(TEXT, b"alive")
    while (frame_ := client.read_frame())[1] == PING:
        client.send_frame(PONG, frame_[2])
    assert frame_ == (True, TEXT, b"alive")
    assert running.server.stats["ping_timeouts"] == 0


def test_peer_that_never_answers_pings_is_closed_with_1011(serve: Serve, raw: Any) -> None:
    handler = Recorder()
    running = serve(handler, make_config(ping_interval=0.2, ping_timeout=0.2, close_timeout=0.3))
    client = raw(running.port)
    client.handshake()
    _, opcode, _ = client.read_frame()
    assert opcode == PING
    assert client.read_close() == (1011, "keepalive ping timeout")
    assert client.expect_eof() == b""  # no close reply from us: dropped after close_timeout
    _, _, code, _ = handler.wait("close")
    assert code == CloseCode.ABNORMAL_CLOSURE
    assert running.server.stats["ping_timeouts"] == 1


def test_keepalive_ping_is_skipped_while_the_peer_talks(serve: Serve, raw: Any) -> None:
    running = serve(config=make_config(ping_interval=0.3, ping_timeout=5.0))
    client = raw(running.port)
    client.handshake()
    pings = 0
    deadline = time.monotonic() + 0.7  # two pings, if they were not skipped
    while time.monotonic() < deadline:
        client.send_frame(TEXT, b"chatter")
        while (received := client.read_frame())[1] == PING:
            pings += 1
            client.send_frame(PONG, received[2])
        assert received == (True, TEXT, b"chatter")
        time.sleep(0.02)
    assert pings <= 1  # a peer that keeps talking proves it is alive


def test_close_timeout_when_the_peer_never_answers(serve: Serve, raw: Any) -> None:
    class CloseOnRequest(Recorder):
        def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
            connection.close(4000, "you asked")

    handler = CloseOnRequest()
    running = serve(handler, make_config(close_timeout=0.2))
    client = raw(running.port)
    client.handshake()
    client.send_frame(TEXT, b"close please")
    assert client.read_close() == (4000, "you asked")
    started = time.monotonic()
    assert client.expect_eof() == b""
    assert time.monotonic() - started > 0.1
    _, _, code, _ = handler.wait("close")
    assert code == CloseCode.ABNORMAL_CLOSURE


def test_server_initiated_close_completes_with_websockets(serve: Serve) -> None:
    class CloseOnRequest(Recorder):
        def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
            connection.close(4000, "you asked")
            assert not connection.send_text("too late")
            connection.close()  # closing twice is harmless

    handler = CloseOnRequest()
    running = serve(handler)
    with ws_connect(running.url()) as ws:
        ws.send("close please")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT)
    assert (ws.close_code, ws.close_reason) == (4000, "you asked")
    _, _, code, reason = handler.wait("close")
    assert (code, reason) == (4000, "you asked")


def test_idle_timeout_closes_with_1001(serve: Serve, raw: Any) -> None:
    running = serve(config=make_config(idle_timeout=0.2))
    client = raw(running.port)
    client.handshake()
    started = time.monotonic()
    assert client.read_close() == (1001, "idle timeout")
    assert time.monotonic() - started > 0.1
    client.send_frame(CLOSE, close_payload(1001))
    assert client.expect_eof() == b""


def test_idle_timer_waits_while_the_peer_talks(serve: Serve, raw: Any) -> None:
    running = serve(config=make_config(idle_timeout=0.25))
    client = raw(running.port)
    client.handshake()
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        client.send_frame(TEXT, b"here")
        assert client.read_frame() == (True, TEXT, b"here")
        time.sleep(0.05)
    assert client.read_close() == (1001, "idle timeout")


# --- the write path: coalescing, partial writes, slow consumers ------------------------


class CountingSocket:
    """Wraps the server's real socket and counts its ``send`` calls."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sends = 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self._sock.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


#: More than the kernel takes at once on loopback (its send buffer grows to 4 MiB).
BIG_MESSAGE = b"\xab" * (8 << 20)


class Counting(Recorder):
    """Swaps each connection's socket for a CountingSocket once it is open."""

    def __init__(self) -> None:
        super().__init__()
        self.sockets: list[CountingSocket] = []

    def on_open(self, connection: ServerConnection) -> None:
        counting = CountingSocket(connection.sock)
        connection.sock = counting  # type: ignore[assignment]
        self.sockets.append(counting)
        super().on_open(connection)

    def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
        if message == "burst":
            for index in range(5):
                connection.send_text(f"burst {index}")
            connection.ping(b"p")
        elif message == "big":
            connection.send_binary(BIG_MESSAGE)
        else:
            super().on_message(connection, message)


def test_write_coalescing_one_send_per_tick(serve: Serve, raw: Any) -> None:
    handler = Counting()
    running = serve(handler)
    client = raw(running.port)
    client.handshake()
    handler.wait("open")
    counting = handler.sockets[0]
    wait_until(lambda: counting.sends == 1)  # the 101 response left after on_open
    client.send_frame(TEXT, b"burst")
    for index in range(5):
        assert client.read_frame() == (True, TEXT, f"burst {index}".encode())
    assert client.read_frame() == (True, PING, b"p")
    assert counting.sends == 2
    # Three frames in one read: three answers in one send (the protocol's own pong
    # leads, ahead of the application's echoes).
    client.send(frame(TEXT, b"a") + frame(TEXT, b"b") + frame(PING, b"c"))
    assert client.read_frame() == (True, PONG, b"c")
    assert client.read_frame() == (True, TEXT, b"a")
    assert client.read_frame() == (True, TEXT, b"b")
    assert counting.sends == 3


def test_partial_writes_deliver_a_large_message_whole(serve: Serve, raw: Any) -> None:
    handler = Counting()
    running = serve(handler, make_config(write_limit=16 << 20))
    client = raw(running.port, rcvbuf=65536)
    client.handshake()
    handler.wait("open")
    client.send_frame(TEXT, b"big")
    time.sleep(0.1)  # let the server fill the socket before anything is read
    assert client.read_frame() == (True, BINARY, BIG_MESSAGE)
    assert handler.sockets[0].sends > 2  # the 101, then the message in several writes
    client.send_frame(TEXT, b"after")
    assert client.read_frame() == (True, TEXT, b"after")
    assert running.server.stats["slow_consumers"] == 0


class Flood(Recorder):
    """Floods connections opened on /flood with 64 KiB messages until refused."""

    chunk = b"\xee" * (64 << 10)

    def __init__(self) -> None:
        super().__init__()
        self.max_buffered = 0
        self.sent = 0

    def on_open(self, connection: ServerConnection) -> None:
        super().on_open(connection)
        assert connection.request is not None
        if connection.request.path != "/flood":
            return
        for _ in range(2000):  # 125 MiB if nothing stopped it
            if not connection.send_binary(self.chunk):
                break
            self.sent += 1
            self.max_buffered = max(self.max_buffered, connection.buffered_amount)
        self.events.put(("flooded", connection))


def test_slow_consumer_is_closed_and_others_keep_their_echoes(serve: Serve, raw: Any) -> None:
    handler = Flood()
    limit = 256 << 10
    running = serve(handler, make_config(write_limit=limit, close_timeout=0.3))
    with ws_connect(running.url()) as other:
        slow = raw(running.port, rcvbuf=4096)
        slow.handshake("/flood")  # and then never reads
        _, connection = handler.wait("flooded")
        assert not connection.is_open
        assert 0 < handler.sent < 2000
        assert handler.max_buffered <= limit + len(handler.chunk) + 64  # + headers, close
        for index in range(20):
            other.send(f"echo {index}")
            assert other.recv(timeout=1.0) == f"echo {index}"
        _, closed, code, _ = handler.wait("close")
        assert closed is connection
        assert code == CloseCode.ABNORMAL_CLOSURE
        other.send("still here")
        assert other.recv(timeout=1.0) == "still here"
    assert running.server.stats["slow_consumers"] == 1
    assert connection not in running.server.connections


@pytest.mark.parametrize("code", [CloseCode.TRY_AGAIN_LATER, CloseCode.POLICY_VIOLATION])
def test_slow_consumer_close_code_is_on_the_wire(serve: Serve, raw: Any, code: int) -> None:
    handler = Flood()
    config = make_config(write_limit=256 << 10, close_timeout=3.0, slow_consumer_code=code)
    running = serve(handler, config)
    slow = raw(running.port, rcvbuf=4096)
    slow.handshake("/flood")
    handler.wait("flooded")
    # It reads at last: the messages queued before the verdict, then the close frame.
    messages = 0
    while True:
        _, opcode, payload = slow.read_frame()
        if opcode == CLOSE:
            break
        assert (opcode, payload) == (BINARY, handler.chunk)
        messages += 1
    assert int.from_bytes(payload[:2], "big") == code
    assert payload[2:] == b"slow consumer"
    assert messages == handler.sent
    slow.send_frame(CLOSE, payload[:2])
    assert slow.expect_eof() == b""
    _, _, closed_code, _ = handler.wait("close")
    assert closed_code == code


def test_buffered_amount_and_is_open(serve: Serve) -> None:
    seen: list[tuple[int, bool]] = []

    class Inspect(Recorder):
        def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
            seen.append((connection.buffered_amount, connection.is_open))
            connection.send_text("x" * 100)
            seen.append((connection.buffered_amount, connection.is_open))
            connection.close()
            seen.append((connection.buffered_amount, connection.is_open))

    running = serve(Inspect())
    with ws_connect(running.url()) as ws:
        ws.send("go")
        assert ws.recv(timeout=TIMEOUT) == "x" * 100
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT)
    assert seen == [(0, True), (102, True), (106, False)]


# --- lifecycle --------------------------------------------------------------------------


def test_on_close_once_with_the_peers_code(serve: Serve) -> None:
    handler = Recorder()
    running = serve(handler)
    with ws_connect(running.url()) as ws:
        ws.send("x")
        ws.recv(timeout=TIMEOUT)
        ws.close(4321, "done here")
    _, _, code, reason = handler.wait("close")
    assert (code, reason) == (4321, "done here")
    with ws_connect(running.url()):
        pass
    _, _, code, reason = handler.wait("close")
    assert (code, reason) == (1000, "")
    running.stop()
    assert [(code, reason) for _, code, reason in handler.closes] == [
        (4321, "done here"),
        (1000, ""),
    ]
    assert len({id(connection) for connection, _, _ in handler.closes}) == 2
    assert running.server.stats["closed"] == 2


def test_on_close_1006_when_the_client_just_disconnects(serve: Serve, raw: Any) -> None:
    handler = Recorder()
    running = serve(handler)
    client = raw(running.port)
    client.handshake()
    handler.wait("open")
    client.close()
    _, _, code, reason = handler.wait("close")
    assert (code, reason) == (CloseCode.ABNORMAL_CLOSURE, "")
    running.stop()
    assert len(handler.closes) == 1


def test_connection_reset_by_the_client(
    serve: Serve, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rfc6455.server")
    handler = Recorder()
    running = serve(handler)
    client = raw(running.port)
    client.handshake()
    handler.wait("open")
    client.reset()
    _, _, code, _ = handler.wait("close")
    assert code == CloseCode.ABNORMAL_CLOSURE
    assert "recv failed" in caplog.text
    assert "Traceback" not in caplog.text


def test_send_failure_drops_the_connection(
    serve: Serve, raw: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class HalfClose(Recorder):
        def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
            # Our own side stops writing: the next send fails with EPIPE, for real.
            connection.sock.shutdown(socket.SHUT_WR)
            connection.send_text("lost")

    caplog.set_level(logging.INFO, logger="rfc6455.server")
    handler = HalfClose()
    running = serve(handler)
    client = raw(running.port)
    client.handshake()
    client.send_frame(TEXT, b"go")
    assert client.expect_eof() == b""
    _, _, code, _ = handler.wait("close")
    assert code == CloseCode.ABNORMAL_CLOSURE
    assert "send failed" in caplog.text


def test_protocol_error_closes_with_1002(serve: Serve, raw: Any) -> None:
    handler = Recorder()
    running = serve(handler)
    client = raw(running.port)
    client.handshake()
    client.send_frame(TEXT, b"unmasked", mask=False)
    code, _ = client.read_close()
    assert code == CloseCode.PROTOCOL_ERROR
    assert client.expect_eof() == b""
    _, _, closed_code, _ = handler.wait("close")
    assert closed_code == CloseCode.PROTOCOL_ERROR


def test_messages_before_a_violation_are_answered(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.handshake()
    client.send(frame(TEXT, b"fine") + frame(0x3, b"reserved opcode"))
    assert client.read_frame() == (True, TEXT, b"fine")
    code, _ = client.read_close()
    assert code == CloseCode.PROTOCOL_ERROR
    assert client.expect_eof() == b""


def test_invalid_utf8_closes_with_1007(serve: Serve, raw: Any) -> None:
    running = serve()
    client = raw(running.port)
    client.handshake()
    client.send_frame(TEXT, b"\xff\xfe")
    assert client.read_close()[0] == CloseCode.INVALID_FRAME_PAYLOAD_DATA


def test_message_too_big_closes_with_1009(serve: Serve, raw: Any) -> None:
    running = serve(config=make_config(max_message_size=1000))
    client = raw(running.port)
    client.handshake()
    client.send_frame(BINARY, b"x" * 1001)
    assert client.read_close()[0] == CloseCode.MESSAGE_TOO_BIG


def test_handler_exception_drops_only_that_connection(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    class Fragile(Recorder):
        def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
            if message == "boom":
                raise RuntimeError("handler bug")
            super().on_message(connection, message)

    caplog.set_level(logging.INFO, logger="rfc6455.server")
    handler = Fragile()
    running = serve(handler)
    with ws_connect(running.url()) as healthy, ws_connect(running.url()) as doomed:
        doomed.send("boom")
        with pytest.raises(ConnectionClosed):
            doomed.recv(timeout=TIMEOUT)
        healthy.send("fine")
        assert healthy.recv(timeout=TIMEOUT) == "fine"
    assert "handler bug" in caplog.text
    assert "unexpected error, dropping the connection" in caplog.text
    _, _, code, _ = handler.wait("close")
    assert code == CloseCode.ABNORMAL_CLOSURE


def test_on_close_failure_is_logged(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Recorder):
        def on_close(self, connection: ServerConnection, code: int, reason: str) -> None:
            super().on_close(connection, code, reason)
            raise RuntimeError("on_close is broken")

    caplog.set_level(logging.ERROR, logger="rfc6455.server")
    handler = Broken()
    running = serve(handler)
    with ws_connect(running.url()) as ws:
        ws.send("x")
        ws.recv(timeout=TIMEOUT)
    handler.wait("close")
    with ws_connect(running.url()) as ws:  # the server goes on
        ws.send("y")
        assert ws.recv(timeout=TIMEOUT) == "y"
    wait_until(lambda: "on_close is broken" in caplog.text)


def test_timer_callback_failure_does_not_stop_the_server(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    fired = threading.Event()

    class Timed(Recorder):
        def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
            def broken() -> None:
                fired.set()
                raise RuntimeError("timer is broken")

            connection.server.call_later(0, broken)
            super().on_message(connection, message)

    caplog.set_level(logging.ERROR)
    running = serve(Timed())
    with ws_connect(running.url()) as ws:
        ws.send("a")
        assert ws.recv(timeout=TIMEOUT) == "a"
        assert fired.wait(TIMEOUT)
        ws.send("b")
        assert ws.recv(timeout=TIMEOUT) == "b"
    assert "timer is broken" in caplog.text


def test_graceful_shutdown(serve: Serve, raw: Any) -> None:
    handler = Recorder()
    running = serve(handler, make_config(close_timeout=0.3), shutdown_timeout=3.0)
    port = running.port
    with ws_connect(running.url()) as polite:
        handler.wait("open")
        silent = raw(port)
        silent.handshake()
        handler.wait("open")
        pending = raw(port)  # still in the opening handshake
        pending.send(b"GET / HTTP/1.1\r\n")
        wait_until(lambda: running.server.stats["accepted"] == 3)

        running.server.request_shutdown()
        with pytest.raises(ConnectionClosed) as closed:
            polite.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "server shutting down")
        assert silent.read_close() == (1001, "server shutting down")
        assert pending.expect_eof() == b""
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        running.thread.join(TIMEOUT)  # the silent client never answers: close_timeout ends it
        assert not running.thread.is_alive()
        assert silent.expect_eof() == b""
    codes = sorted(code for _, code, _ in handler.closes)
    assert codes == [1001, 1006]
    assert running.server.connections == set()


def test_shutdown_deadline_drops_what_is_left(raw: Any) -> None:
    handler = Recorder()
    server = Server(handler, make_config(close_timeout=30.0))
    server.listen("127.0.0.1", 0)
    port = server.addresses[0][1]
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            server.run_once(0.01)
        server.shutdown(timeout=0.3)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    client = raw(port)
    client.handshake()
    handler.wait("open")
    stop.set()
    assert client.read_close() == (1001, "server shutting down")
    thread.join(TIMEOUT)  # close_timeout is 30 s: the shutdown deadline is what ends it
    assert not thread.is_alive()
    assert client.expect_eof() == b""
    assert [code for _, code, _ in handler.closes] == [CloseCode.ABNORMAL_CLOSURE]


def test_request_shutdown_wakes_a_waiting_loop() -> None:
    server = Server(Recorder(), make_config())
    server.listen("127.0.0.1", 0)
    done = threading.Event()

    def run() -> None:
        server.run_once(None)  # nothing to do and no timers: waits until woken
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.05)
    assert not done.is_set()
    server.request_shutdown()
    assert done.wait(TIMEOUT)
    thread.join(TIMEOUT)
    server.shutdown(timeout=0.1)


def test_server_close_drops_everything(raw: Any) -> None:
    handler = Recorder()
    server = Server(handler, make_config())
    server.listen("127.0.0.1", 0)
    port = server.addresses[0][1]
    client = raw(port)
    client.send(upgrade_request())
    deadline = time.monotonic() + TIMEOUT
    while not handler.opens and time.monotonic() < deadline:
        server.run_once(0.01)
    assert client.read_http().status == 101
    server.close()
    assert client.expect_eof() == b""
    assert [code for _, code, _ in handler.closes] == [CloseCode.ABNORMAL_CLOSURE]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()


def test_broadcast_reaches_every_open_connection(serve: Serve, raw: Any) -> None:
    counts: list[int] = []

    class Broadcast(Recorder):
        def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
            server = connection.server
            counts.append(server.broadcast(server.connections, message))

    handler = Broadcast()
    running = serve(handler, make_config(deflate=DeflateOptions(), fragment_size=1000))
    pending = raw(running.port)  # not open: no broadcast for it
    pending.send(b"GET / HTTP/1.1\r\n")
    with (
        ws_connect(running.url(), compression=None) as first,
        ws_connect(running.url()) as compressed,
        ws_connect(running.url(), compression=None) as third,
    ):
        for _ in range(3):
            handler.wait("open")
        first.send("to everyone")
        for ws in (first, compressed, third):
            assert ws.recv(timeout=TIMEOUT) == "to everyone"
        large = bytes(range(256)) * 20
        third.send(large)
        for ws in (first, compressed, third):
            assert ws.recv(timeout=TIMEOUT) == large
    assert counts == [3, 3]


def test_prepared_batch_reaches_plain_and_compressed_connections_in_order(
    serve: Serve,
) -> None:
    # Several messages prepared as one: a plain connection takes the frames as they are
    # (the fast path), a compressed one compresses each message itself.
    batches: list[int] = []

    class Batch(Recorder):
        def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
            server = connection.server
            prepared = server.prepare_many(["one", b"\x02" * 300, "three " * 50])
            assert [opcode for opcode, _ in prepared.messages] == [
                Opcode.TEXT,
                Opcode.BINARY,
                Opcode.TEXT,
            ]
            batches.append(server.send_prepared_many(server.connections, prepared))

    handler = Batch()
    running = serve(handler, make_config(deflate=DeflateOptions()))
    with (
        ws_connect(running.url(), compression=None) as plain,
        ws_connect(running.url()) as compressed,
    ):
        handler.wait("open")
        handler.wait("open")
        plain.send("go")
        for ws in (plain, compressed):
            assert ws.recv(timeout=TIMEOUT) == "one"
            assert ws.recv(timeout=TIMEOUT) == b"\x02" * 300
            assert ws.recv(timeout=TIMEOUT) == "three " * 50
    assert batches == [2]


def test_broadcast_flood_closes_the_slow_consumer_only(serve: Serve, raw: Any) -> None:
    # The broadcast fast path stops at the write limit: past it, the general path sends
    # early and then judges the peer, as for any other send.
    limit = 256 << 10
    chunk = b"\xee" * (16 << 10)
    results: list[int] = []

    class FloodAll(Recorder):
        def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
            server = connection.server
            prepared = server.prepare(chunk)
            for _ in range(200):  # 3 MiB each: far past the limit for a peer that never reads
                results.append(server.send_prepared_many(list(server.connections), prepared))

    handler = FloodAll()
    running = serve(handler, make_config(write_limit=limit, close_timeout=0.3))
    slow = raw(running.port, rcvbuf=4096)
    slow.handshake("/")  # and then never reads
    _, slow_connection = handler.wait("open")
    with ws_connect(running.url(), compression=None, max_size=None) as reader:
        handler.wait("open")
        reader.send("flood")
        for _ in range(200):
            assert reader.recv(timeout=TIMEOUT) == chunk
        _, closed, code, _ = handler.wait("close")
        assert closed is slow_connection
        assert code == CloseCode.ABNORMAL_CLOSURE
    assert running.server.stats["slow_consumers"] == 1
    assert results[0] == 2 and results[-1] == 1


def test_send_prepared_without_extensions(serve: Serve) -> None:
    class Prepared(Recorder):
        def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
            prepared = connection.server.prepare(message)
            assert connection.send_prepared(prepared)

    running = serve(Prepared())
    with ws_connect(running.url(), compression=None) as ws:
        ws.send("prepared text")
        assert ws.recv(timeout=TIMEOUT) == "prepared text"
        ws.send(b"prepared bytes")
        assert ws.recv(timeout=TIMEOUT) == b"prepared bytes"


def test_sending_on_a_closed_connection_returns_false(serve: Serve) -> None:
    handler = Recorder()
    running = serve(handler)
    with ws_connect(running.url()):
        _, connection = handler.wait("open")
    handler.wait("close")
    assert connection.closed
    assert not connection.is_open
    assert not connection.send_text("x")
    assert not connection.send_binary(b"x")
    assert not connection.ping()
    assert not connection.send_prepared(running.server.prepare("x"))
    connection.close()  # harmless


def test_add_socket_with_an_already_listening_socket(serve: Serve) -> None:
    # What systemd hands over with socket activation: bound, listening, blocking.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    running = serve(sock=sock)
    assert running.server.addresses == [sock.getsockname()]
    with ws_connect(running.url()) as ws:
        ws.send("handed over")
        assert ws.recv(timeout=TIMEOUT) == "handed over"


def test_add_socket_with_a_unix_socket(serve: Serve, tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(16)
    handler = Recorder()
    serve(handler, sock=sock)
    with unix_connect(path, "ws://localhost/", open_timeout=TIMEOUT, ping_interval=None) as ws:
        ws.send("over a unix socket")
        assert ws.recv(timeout=TIMEOUT) == "over a unix socket"
        _, connection = handler.wait("open")
        assert isinstance(connection.peer, str)


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback")
def test_listen_on_ipv6(raw: Any) -> None:
    handler = Recorder()
    server = Server(handler, make_config())
    server.listen("::1", 0)
    port = server.addresses[0][1]
    thread = threading.Thread(target=server.serve_forever, args=(1.0,), daemon=True)
    thread.start()
    try:
        client = raw(port, family=socket.AF_INET6)
        client.handshake()
        _, connection = handler.wait("open")
        assert connection.peer == f"[::1]:{client.sock.getsockname()[1]}"
        client.send_frame(TEXT, b"v6")
        assert client.read_frame() == (True, TEXT, b"v6")
        client.close()
    finally:
        server.request_shutdown()
        thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_listen_on_a_port_in_use_fails() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        server = Server(Recorder())
        with pytest.raises(OSError):
            server.listen("127.0.0.1", taken.getsockname()[1])
        assert server.addresses == []
        server.close()


def test_connection_repr_and_peer(serve: Serve, raw: Any) -> None:
    handler = Recorder()
    running = serve(handler)
    client = raw(running.port)
    client.handshake()
    _, connection = handler.wait("open")
    port = client.sock.getsockname()[1]
    assert connection.peer == f"127.0.0.1:{port}"
    assert repr(connection) == f"<ServerConnection 127.0.0.1:{port} OPEN>"
    assert connection.context is None
    assert connection.request is not None
    assert connection.request.path == "/"


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="slow_consumer_code"):
        ServerConfig(slow_consumer_code=1000)
    with pytest.raises(ValueError, match="handshake_timeout"):
        ServerConfig(handshake_timeout=0)
    with pytest.raises(ValueError, match="close_timeout"):
        ServerConfig(close_timeout=-1)
    with pytest.raises(ValueError, match="write_limit"):
        ServerConfig(write_limit=100)


# --- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made for this run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rfc6455 test")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


@pytest.fixture
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def client_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificate[0]))
    # websockets' sync client reads and writes one TLS socket from two threads, which
    # OpenSSL does not allow; with TLS 1.3 session tickets arriving during its first
    # write it fails about once in a thousand connections (a client-side bug, see
    # tests/test_interop.py). TLS 1.2 sends no post-handshake tickets.
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def tls_handshake(
    sock: socket.socket, context: ssl.SSLContext
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """Run a client TLS handshake over ``sock`` through memory BIOs; return the TLS
    object and its incoming and outgoing BIOs.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                sock.sendall(outgoing.read())
            data = sock.recv(65536)
            if not data:
                raise EOFError("the server closed the connection") from None
            incoming.write(data)
    if outgoing.pending:
        sock.sendall(outgoing.read())
    return tls, incoming, outgoing


def test_wss_echo_with_websockets(
    serve: Serve, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    config = make_config(deflate=DeflateOptions(), max_message_size=4 << 20, write_limit=8 << 20)
    running = serve(config=config, ssl_context=server_tls)
    with ws_connect(running.url(scheme="wss"), ssl=client_tls, max_size=None) as ws:
        ws.send("over TLS")
        assert ws.recv(timeout=TIMEOUT) == "over TLS"
        big = os.urandom(3 << 20)
        ws.send(big)
        assert ws.recv(timeout=TIMEOUT) == big
        ws.send([b"frag", b"ments"])
        assert ws.recv(timeout=TIMEOUT) == b"fragments"


def test_wss_large_message_to_a_slow_reader(
    serve: Serve, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    handler = Counting()
    running = serve(handler, make_config(write_limit=16 << 20), ssl_context=server_tls)
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    with client_tls.wrap_socket(sock, server_hostname="127.0.0.1") as tls_sock:
        client = RawClient(running.port, sock=tls_sock)  # type: ignore[arg-type]
        client.handshake()
        handler.wait("open")
        client.send_frame(TEXT, b"big")
        time.sleep(0.1)
        assert client.read_frame() == (True, BINARY, BIG_MESSAGE)
        assert handler.sockets[0].sends > 2  # the 101, then SSLWantWriteError, then more
        client.send_frame(TEXT, b"after")
        assert client.read_frame() == (True, TEXT, b"after")


def test_plain_tcp_on_the_tls_port_is_dropped_without_hurting_others(
    serve: Serve, raw: Any, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    running = serve(ssl_context=server_tls)
    with ws_connect(running.url(scheme="wss"), ssl=client_tls) as ws:
        ws.send("before")
        assert ws.recv(timeout=TIMEOUT) == "before"
        plain = raw(running.port)
        plain.send(upgrade_request())
        plain.expect_eof()  # whatever TLS alert came first, the connection is gone
        ws.send("after")
        assert ws.recv(timeout=TIMEOUT) == "after"
    wait_until(lambda: running.server.stats["tls_failures"] == 1)


def test_tls_handshake_timeout(serve: Serve, raw: Any, server_tls: ssl.SSLContext) -> None:
    running = serve(config=make_config(handshake_timeout=0.2), ssl_context=server_tls)
    client = raw(running.port)  # connects, never says hello
    started = time.monotonic()
    assert client.expect_eof() == b""
    assert time.monotonic() - started > 0.1
    assert running.server.stats["handshake_timeouts"] == 1


def test_tls_request_timeout_after_the_tls_handshake(
    serve: Serve, raw: Any, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    running = serve(config=make_config(handshake_timeout=0.3), ssl_context=server_tls)
    client = raw(running.port)
    tls, _, outgoing = tls_handshake(client.sock, client_tls)
    tls.write(b"GET / HTTP/1.1\r\n")  # half a request, encrypted
    client.send(outgoing.read())
    client.expect_eof()
    assert running.server.stats["handshake_timeouts"] == 1
    assert running.server.stats["tls_failures"] == 0


def test_tls_garbage_after_the_handshake_is_dropped(
    serve: Serve,
    raw: Any,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="rfc6455.server")
    running = serve(ssl_context=server_tls)
    client = raw(running.port)
    tls_handshake(client.sock, client_tls)
    client.send(b"\x17\x03\x03\x00\x20" + os.urandom(32))  # a record that cannot decrypt
    client.expect_eof()
    wait_until(lambda: "TLS error" in caplog.text)
    assert not running.server.connections


def test_client_closes_during_the_tls_handshake(
    serve: Serve, raw: Any, server_tls: ssl.SSLContext
) -> None:
    running = serve(ssl_context=server_tls)
    client = raw(running.port)
    client.send(b"\x16\x03\x01")  # the start of a ClientHello
    time.sleep(0.05)
    client.close()
    wait_until(lambda: running.server.stats["accepted"] == 1 and not running.server.connections)


# --- more of the runtime's paths ------------------------------------------------------------


def test_default_handler_accepts_upgrades_and_drops_messages(serve: Serve) -> None:
    running = serve(Handler(), make_config(server_header=None))
    with ws_connect(running.url()) as ws:
        assert ws.response is not None
        assert "Server" not in ws.response.headers
        ws.send("into the void")
        assert ws.ping().wait(TIMEOUT)  # the pong proves the message was read and ignored
    assert running.server.stats["messages_received"] == 1


def test_http_10_large_response_to_a_slow_reader_is_sent_whole_then_closed(
    serve: Serve, raw: Any
) -> None:
    class Big(Recorder):
        def on_http(self, request: Request, body: bytes) -> HttpResponse:
            return HttpResponse(200, BIG_MESSAGE, "application/octet-stream")

    running = serve(Big())
    client = raw(running.port, rcvbuf=65536)
    client.send(b"GET /big HTTP/1.0\r\n\r\n")
    time.sleep(0.1)  # the kernel fills up; the rest waits for EVENT_WRITE
    reply = client.read_http()
    assert (reply.status, len(reply.body)) == (200, len(BIG_MESSAGE))
    assert reply.body == BIG_MESSAGE
    assert client.expect_eof() == b""


def test_http_over_tls(
    serve: Serve, raw: Any, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    running = serve(ssl_context=server_tls)
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=TIMEOUT)
    with client_tls.wrap_socket(sock, server_hostname="127.0.0.1") as tls_sock:
        client = RawClient(running.port, sock=tls_sock)  # type: ignore[arg-type]
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.read_http().status == 200
        client.send(b"GET /missing HTTP/1.0\r\n\r\n")
        assert client.read_http().status == 404
        assert client.expect_eof() == b""
    wait_until(lambda: not running.server.connections)


def test_tls_record_split_across_reads(
    serve: Serve, raw: Any, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    running = serve(ssl_context=server_tls)
    client = raw(running.port)
    tls, incoming, outgoing = tls_handshake(client.sock, client_tls)
    tls.write(upgrade_request())
    record = outgoing.read()
    client.send(record[:7])  # the server can decrypt nothing yet: SSLWantReadError
    time.sleep(0.05)
    client.send(record[7:])
    response = b""
    while b"\r\n\r\n" not in response:
        try:
            response += tls.read(65536)
        except ssl.SSLWantReadError:
            data = client.sock.recv(65536)
            assert data, "the server closed the connection"
            incoming.write(data)
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")


def test_accepts_are_batched_per_tick(raw: Any) -> None:
    server = Server(Recorder(), make_config())
    server.listen("127.0.0.1", 0)
    port = server.addresses[0][1]
    try:
        clients = [raw(port) for _ in range(70)]  # the kernel completes them in the backlog
        server.run_once(0)
        assert server.stats["accepted"] == 64  # a connection storm cannot starve the rest
        deadline = time.monotonic() + TIMEOUT
        while server.stats["accepted"] < 70 and time.monotonic() < deadline:
            server.run_once(0.01)
        assert server.stats["accepted"] == 70
        assert len(clients) == 70
    finally:
        server.close()


def test_accepts_pause_when_out_of_file_descriptors(
    raw: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    resource = pytest.importorskip("resource")
    monkeypatch.setattr("rfc6455.server.ACCEPT_RETRY_DELAY", 0.3)
    caplog.set_level(logging.WARNING, logger="rfc6455.server")
    server = Server(Recorder(), make_config())
    server.listen("127.0.0.1", 0)
    port = server.addresses[0][1]
    clients = [raw(port) for _ in range(3)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        # Fill every free descriptor below the highest one in use, then cap the limit
        # there: the next accept() fails with EMFILE, for real.
        highest = max(int(name) for name in os.listdir("/proc/self/fd"))
        while True:
            fd = os.open(os.devnull, os.O_RDONLY)
            fillers.append(fd)
            if fd > highest:
                break
        resource.setrlimit(resource.RLIMIT_NOFILE, (fillers[-1], hard))
        for _ in range(5):
            server.run_once(0)
        assert server.stats["accepted"] == 0
        assert caplog.text.count("out of resources") == 1  # paused, not spinning
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
    try:
        deadline = time.monotonic() + TIMEOUT
        while server.stats["accepted"] < 3 and time.monotonic() < deadline:
            server.run_once(0.01)
        assert server.stats["accepted"] == 3
        assert len(clients) == 3
    finally:
        server.close()


def test_pings_continue_while_a_pong_is_overdue(serve: Serve, raw: Any) -> None:
    running = serve(config=make_config(ping_interval=0.1, ping_timeout=0.35, close_timeout=0.2))
    client = raw(running.port)
    client.handshake()
    opcodes = []
    while (received := client.read_frame())[1] != CLOSE:
        opcodes.append(received[1])
    assert len(opcodes) >= 2
    assert set(opcodes) == {PING}
    assert received[2][:2] == b"\x03\xf3"  # 1011
    assert client.expect_eof() == b""


def test_message_and_close_in_one_read_are_answered_in_order(serve: Serve, raw: Any) -> None:
    handler = Recorder()
    running = serve(handler)
    client = raw(running.port)
    client.handshake()
    client.send(frame(PING, b"p") + frame(TEXT, b"last words") + frame(CLOSE, close_payload(1000)))
    assert client.read_frame() == (True, PONG, b"p")
    assert client.read_frame() == (True, TEXT, b"last words")
    assert client.read_frame() == (True, CLOSE, close_payload(1000))
    assert client.expect_eof() == b""
    _, _, code, _ = handler.wait("close")
    assert code == 1000


class BioTlsSocket:
    """A client TLS connection over a raw socket through memory BIOs, so that an RST from
    the server surfaces as ConnectionResetError (an SSLSocket reports it as an EOF).
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.raw = sock
        self.tls, self.incoming, self.outgoing = tls_handshake(sock, context)

    def sendall(self, data: bytes) -> None:
        self.tls.write(data)
        self.raw.sendall(self.outgoing.read())

    def recv(self, size: int) -> bytes:
        while True:
            try:
                return self.tls.read(size)
            except ssl.SSLWantReadError:
                data = self.raw.recv(65536)
                if not data:
                    return b""
                self.incoming.write(data)
            except ssl.SSLZeroReturnError:
                return b""

    def settimeout(self, timeout: float) -> None:
        self.raw.settimeout(timeout)

    def close(self) -> None:
        self.raw.close()


def test_tls_close_with_data_after_it_still_delivers_the_reply(
    serve: Serve, raw: Any, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    # Bytes after the peer's close stay unread: closing the socket over them at once
    # would send an RST, which can destroy the close reply still in flight.
    handler = Recorder()
    running = serve(handler, ssl_context=server_tls)
    plain = raw(running.port)
    client = RawClient(running.port, sock=BioTlsSocket(plain.sock, client_tls))  # type: ignore[arg-type]
    client.handshake()
    client.send(
        frame(TEXT, b"x" * 50_000)
        + frame(CLOSE, close_payload(1000))
        + frame(TEXT, b"after the close" * 4000)
    )
    assert client.read_frame() == (True, TEXT, b"x" * 50_000)
    assert client.read_frame() == (True, CLOSE, close_payload(1000))
    assert client.expect_eof(allow_reset=False) == b""
    _, _, code, _ = handler.wait("close")
    assert code == 1000


def test_pings_do_not_count_as_activity_for_the_idle_timer(serve: Serve, raw: Any) -> None:
    # Keepalive traffic proves a peer is alive, not that it is using the connection.
    running = serve(config=make_config(idle_timeout=0.25))
    client = raw(running.port)
    client.handshake()
    deadline = time.monotonic() + 0.6
    closed = None
    while time.monotonic() < deadline and closed is None:
        client.send_frame(PING, b"alive")
        fin, opcode, payload = client.read_frame()
        if opcode == CLOSE:
            closed = (int.from_bytes(payload[:2], "big"), payload[2:].decode())
        else:
            assert (fin, opcode, payload) == (True, PONG, b"alive")
            time.sleep(0.05)
    assert closed == (1001, "idle timeout")
