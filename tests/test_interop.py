"""Interop: independent client libraries against the echo server, over ws and wss.

The peers are the ``websockets`` library (its asyncio and its threading client, each with
and without permessage-deflate) and ``websocket-client`` (which has no permessage-deflate).
Every peer runs every case: ASCII and multi-byte UTF-8 text, binary with all 256 byte
values, 1 MiB text and binary messages, fragmented messages, a ping answered by a pong,
and a clean close whose code the server sees. With compression on, the tests check that
permessage-deflate was negotiated on both sides and that a repetitive message crossed the
wire compressed, in both directions.

A raw client (``tests/wire.py``) covers what no library can do: a handshake trickled
one byte at a time, and a half-open peer that never answers pings.

One echo server serves the matrix, on a plain and a TLS listener, in a daemon thread.
Every wait is bounded by ``TIMEOUT``; time bounds guard correctness (a timer fires, and
not at once), never performance.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import websocket
import websockets.asyncio.client
import websockets.sync.client
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.protocol import Protocol
from wire import CLOSE, PING, WireClient

from rfc6455.codes import CloseCode
from rfc6455.deflate import DeflateOptions
from rfc6455.echo import EchoHandler
from rfc6455.server import Server, ServerConfig, ServerConnection

T = TypeVar("T")

TIMEOUT = 5.0
"""Seconds any single wait may take before the test fails."""

#: The clients' close timeout. A close that takes half of it means the client waited for
#: a TCP close from the server that never came (section 7.1.1: the server closes first).
CLIENT_CLOSE_TIMEOUT = 4.0

#: How late a server timer may fire on a busy test machine.
SLACK = 0.75

MEBIBYTE = 1 << 20

#: The echo server's limits, as ``python -m rfc6455.echo`` sets them.
ECHO_MAX_MESSAGE = 64 * MEBIBYTE

#: What the clients accept: a 1 MiB message plus what deflate adds to incompressible data.
CLIENT_MAX_SIZE = 2 * MEBIBYTE

ASCII_TEXT = "Hello, interop!"
#: 2-byte (é), 3-byte (☃, 日, 本) and 4-byte (𝄞) UTF-8 characters.
UTF8_TEXT = "héllo ☃ 𝄞 日本"
ALL_BYTES = bytes(range(256))


def mebibyte_of_text() -> str:
    """Exactly 1 MiB of UTF-8, mostly multi-byte characters, ending on a whole one."""
    unit = (UTF8_TEXT + " ").encode()
    data = (unit * (MEBIBYTE // len(unit) + 1))[:MEBIBYTE]
    text = data.decode(errors="ignore")  # drops the cut character at the end
    return text + "." * (MEBIBYTE - len(text.encode()))


MEBIBYTE_TEXT = mebibyte_of_text()
#: Incompressible, so it is 1 MiB on the wire with or without compression.
MEBIBYTE_BINARY = random.Random(6455).randbytes(MEBIBYTE)
#: Compresses to a few hundred bytes.
REPETITIVE_TEXT = "chat message, chat message, chat message\n" * 8000


# --- TLS -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext
    #: For websockets' threading client, which reads an SSLSocket in one thread while
    #: it writes in another. OpenSSL does not allow that on one SSL object, and with
    #: TLS 1.3 the session tickets the server sends after its handshake are processed
    #: by that read while the opening handshake's request is written: about one
    #: connection in a thousand fails ("[SSL] internal error" on the client's write, a
    #: handshake timeout) or crashes the test process (SIGSEGV in ssl.py). See CPython
    #: gh-151508 and gh-143756. TLS 1.2 has no post-handshake messages; the server is
    #: tested with both versions that way.
    client_tls12: ssl.SSLContext

    def client_for(self, kind: str) -> ssl.SSLContext:
        """The client context for the peer library ``kind``."""
        return self.client_tls12 if kind == "websockets-sync" else self.client


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made for this run; return (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rfc6455 interop")])
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
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
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


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    certfile, keyfile = make_certificate(tmp_path_factory.mktemp("interop-tls"))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(certfile, keyfile)
    # The clients verify the certificate and the host name (an IP address SAN).
    client = ssl.create_default_context(cafile=str(certfile))
    client_tls12 = ssl.create_default_context(cafile=str(certfile))
    client_tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    return Tls(server, client, client_tls12)


# --- the server ----------------------------------------------------------------------------


def client_port(connection: ServerConnection) -> int:
    return int(connection.remote_address[1])


class RecordingEcho(EchoHandler):
    """The echo handler, remembering each connection by the client's port, and its close."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.opened: dict[int, ServerConnection] = {}
        self.closed: dict[ServerConnection, tuple[int, str]] = {}

    def on_open(self, connection: ServerConnection) -> None:
        super().on_open(connection)
        with self._changed:
            self.opened[client_port(connection)] = connection
            self._changed.notify_all()

    def on_close(self, connection: ServerConnection, code: int, reason: str) -> None:
        super().on_close(connection, code, reason)
        with self._changed:
            self.closed[connection] = (code, reason)
            self._changed.notify_all()

    def connection_of(self, port: int) -> ServerConnection:
        """The server side of the client whose local port is ``port``."""
        with self._changed:
            if not self._changed.wait_for(lambda: port in self.opened, TIMEOUT):
                raise AssertionError(f"the server did not open a connection from port {port}")
            return self.opened[port]

    def close_seen(self, port: int) -> tuple[int, str]:
        """The (code, reason) ``on_close`` reported for the client on ``port``."""
        connection = self.connection_of(port)
        with self._changed:
            if not self._changed.wait_for(lambda: connection in self.closed, TIMEOUT):
                raise AssertionError(f"the server did not report a close for port {port}")
            return self.closed[connection]

    def forget(self, port: int) -> None:
        """Drop what was recorded for ``port``, which the next client may reuse."""
        with self._changed:
            connection = self.opened.pop(port, None)
            if connection is not None:
                self.closed.pop(connection, None)


class _ErrorCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Serving:
    """A server in a daemon thread, listening on a plain and a TLS socket."""

    server: Server
    handler: RecordingEcho
    ports: dict[str, int]
    errors: list[logging.LogRecord]

    def url(self, scheme: str) -> str:
        return f"{scheme}://127.0.0.1:{self.ports[scheme]}/"


@contextlib.contextmanager
def serving(config: ServerConfig, tls: Tls) -> Iterator[Serving]:
    """Serve ``RecordingEcho`` with ``config`` on ws and wss until the block ends."""
    handler = RecordingEcho()
    server = Server(handler, config)
    plain = server.listen("127.0.0.1", 0)
    secure = server.listen("127.0.0.1", 0, ssl_context=tls.server)
    ports = {"ws": plain.getsockname()[1], "wss": secure.getsockname()[1]}
    collector = _ErrorCollector()
    logging.getLogger("rfc6455").addHandler(collector)
    thread = threading.Thread(
        target=server.serve_forever, args=(2.0,), name="interop-server", daemon=True
    )
    thread.start()
    try:
        yield Serving(server, handler, ports, collector.records)
    finally:
        server.request_shutdown()
        thread.join(TIMEOUT)
        logging.getLogger("rfc6455").removeHandler(collector)
        assert not thread.is_alive(), "the server did not stop"


def echo_config() -> ServerConfig:
    """``python -m rfc6455.echo``'s configuration, without keepalive pings (so that every
    frame a client reads answers what it sent) and with a short close timeout.
    """
    return ServerConfig(
        max_message_size=ECHO_MAX_MESSAGE,
        deflate=DeflateOptions(),
        write_limit=ECHO_MAX_MESSAGE + MEBIBYTE,
        ping_interval=None,
        close_timeout=2.0,
    )


@pytest.fixture(scope="module")
def echo(tls: Tls) -> Iterator[Serving]:
    """One echo server for the whole matrix."""
    with serving(echo_config(), tls) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_server_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Whatever the peers do, the echo server logs no ERROR (no handler failed)."""
    if "echo" not in request.fixturenames:
        yield
        return
    running: Serving = request.getfixturevalue("echo")
    running.errors.clear()
    yield
    assert not running.errors, [record.getMessage() for record in running.errors]


# --- the peers -----------------------------------------------------------------------------


@dataclass
class WireCount:
    """WebSocket bytes (frames, after TLS) a websockets client sent and received."""

    sent: int = 0
    received: int = 0


def count_wire_bytes(protocol: Protocol) -> WireCount:
    """Count what crosses the wire from now on, at the seam between the websockets
    client's sans-I/O protocol and its I/O layer (the same in asyncio and threading).
    """
    count = WireCount()
    receive_data, data_to_send = protocol.receive_data, protocol.data_to_send

    def counting_receive_data(data: bytes | bytearray) -> None:
        count.received += len(data)
        receive_data(data)

    def counting_data_to_send() -> list[bytes]:
        chunks = data_to_send()
        count.sent += sum(len(chunk) for chunk in chunks)
        return chunks

    protocol.receive_data = counting_receive_data  # type: ignore[method-assign]
    protocol.data_to_send = counting_data_to_send  # type: ignore[method-assign]
    return count


class Peer(abc.ABC):
    """What the tests ask of a client library; one subclass per library."""

    def __init__(self, compression: bool) -> None:
        self.compression = compression

    @property
    @abc.abstractmethod
    def local_port(self) -> int:
        """The client's port, which names its connection on the server."""

    @abc.abstractmethod
    def extensions(self) -> str | None:
        """The 101 response's Sec-WebSocket-Extensions header."""

    @abc.abstractmethod
    def send(self, message: str | bytes) -> None:
        """Send one unfragmented message."""

    @abc.abstractmethod
    def send_fragments(self, fragments: Sequence[bytes], *, text: bool) -> None:
        """Send one message in one frame per fragment (section 5.4)."""

    @abc.abstractmethod
    def recv(self) -> str | bytes:
        """The next message."""

    @abc.abstractmethod
    def ping(self, payload: bytes) -> None:
        """Send a ping; return once its pong arrived, fail if it does not."""

    @abc.abstractmethod
    def close(self, code: int, reason: str) -> tuple[int | None, str | None]:
        """Run the closing handshake; return the code and reason the server answered."""

    @abc.abstractmethod
    def count_wire_bytes(self) -> WireCount:
        """Start counting WebSocket bytes on the wire (websockets only)."""

    @abc.abstractmethod
    def finish(self) -> None:
        """Close (bounded) if still open and release everything."""


def websockets_options(compression: bool, ssl_context: ssl.SSLContext | None) -> dict[str, Any]:
    return {
        "compression": "deflate" if compression else None,
        "ssl": ssl_context,
        "open_timeout": TIMEOUT,
        "close_timeout": CLIENT_CLOSE_TIMEOUT,
        "ping_interval": None,
        "max_size": CLIENT_MAX_SIZE,
        "proxy": None,
    }


class WebsocketsSyncPeer(Peer):
    """``websockets.sync.client``: threads and blocking calls."""

    def __init__(self, url: str, compression: bool, ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(compression)
        self._exit_stack = contextlib.ExitStack()  # connect() is a context manager
        self.ws = self._exit_stack.enter_context(
            websockets.sync.client.connect(url, **websockets_options(compression, ssl_context))
        )

    @property
    def local_port(self) -> int:
        return int(self.ws.local_address[1])

    def extensions(self) -> str | None:
        assert self.ws.response is not None
        return self.ws.response.headers.get("Sec-WebSocket-Extensions")

    def send(self, message: str | bytes) -> None:
        self.ws.send(message)

    def send_fragments(self, fragments: Sequence[bytes], *, text: bool) -> None:
        self.ws.send(fragments, text=text)

    def recv(self) -> str | bytes:
        return self.ws.recv(timeout=TIMEOUT)

    def ping(self, payload: bytes) -> None:
        assert self.ws.ping(payload).wait(TIMEOUT), "no pong"

    def close(self, code: int, reason: str) -> tuple[int | None, str | None]:
        self.ws.close(code, reason)
        return self.ws.close_code, self.ws.close_reason

    def count_wire_bytes(self) -> WireCount:
        return count_wire_bytes(self.ws.protocol)

    def finish(self) -> None:
        self._exit_stack.close()


class WebsocketsAsyncioPeer(Peer):
    """``websockets.asyncio.client`` on an event loop of its own in the test's thread.

    ``asyncio.Runner`` is what ``asyncio.run`` is made of: each call runs one coroutine,
    bounded by ``asyncio.timeout``, on the same loop (the connection lives across calls).
    """

    def __init__(self, url: str, compression: bool, ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(compression)
        self._runner = asyncio.Runner()
        try:
            self.ws = self._run(
                websockets.asyncio.client.connect(
                    url, **websockets_options(compression, ssl_context)
                )
            )
        except BaseException:
            self._runner.close()
            raise

    def _run(self, awaitable: Awaitable[T]) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(TIMEOUT):
                return await awaitable

        return self._runner.run(bounded())

    @property
    def local_port(self) -> int:
        return int(self.ws.local_address[1])

    def extensions(self) -> str | None:
        assert self.ws.response is not None
        return self.ws.response.headers.get("Sec-WebSocket-Extensions")

    def send(self, message: str | bytes) -> None:
        self._run(self.ws.send(message))

    def send_fragments(self, fragments: Sequence[bytes], *, text: bool) -> None:
        self._run(self.ws.send(fragments, text=text))

    def recv(self) -> str | bytes:
        return self._run(self.ws.recv())

    def ping(self, payload: bytes) -> None:
        async def ping_and_wait() -> None:
            pong_received = await self.ws.ping(payload)
            await pong_received

        self._run(ping_and_wait())

    def close(self, code: int, reason: str) -> tuple[int | None, str | None]:
        self._run(self.ws.close(code, reason))
        return self.ws.close_code, self.ws.close_reason

    def count_wire_bytes(self) -> WireCount:
        return count_wire_bytes(self.ws.protocol)

    def finish(self) -> None:
        try:
            self._run(self.ws.close())
        finally:
            self._runner.close()


class WebsocketClientPeer(Peer):
    """``websocket-client``: one blocking socket, frames by hand where needed."""

    def __init__(self, url: str, compression: bool, ssl_context: ssl.SSLContext | None) -> None:
        assert not compression, "websocket-client has no permessage-deflate"
        super().__init__(compression)
        sslopt = {"context": ssl_context} if ssl_context is not None else None
        self.ws = websocket.create_connection(url, timeout=TIMEOUT, sslopt=sslopt)

    @property
    def local_port(self) -> int:
        return int(self.ws.sock.getsockname()[1])

    def extensions(self) -> str | None:
        headers = self.ws.getheaders()  # names in lower case
        assert headers is not None
        value = headers.get("sec-websocket-extensions")
        return None if value is None else str(value)

    def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self.ws.send_text(message)
        else:
            self.ws.send_binary(message)

    def send_fragments(self, fragments: Sequence[bytes], *, text: bool) -> None:
        opcode = websocket.ABNF.OPCODE_TEXT if text else websocket.ABNF.OPCODE_BINARY
        last = len(fragments) - 1
        for index, fragment in enumerate(fragments):
            frame_opcode = opcode if index == 0 else websocket.ABNF.OPCODE_CONT
            self.ws.send_frame(
                websocket.ABNF.create_frame(fragment, frame_opcode, fin=int(index == last))
            )

    def recv(self) -> str | bytes:
        opcode, data = self.ws.recv_data()
        if opcode == websocket.ABNF.OPCODE_TEXT:
            return bytes(data).decode()
        assert opcode == websocket.ABNF.OPCODE_BINARY, f"unexpected opcode {opcode}"
        return bytes(data)

    def ping(self, payload: bytes) -> None:
        self.ws.ping(payload)
        opcode, frame = self.ws.recv_data_frame(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_PONG, f"expected a pong, got opcode {opcode}"
        assert frame.data == payload

    def close(self, code: int, reason: str) -> tuple[int | None, str | None]:
        self.ws.send_close(code, reason.encode())
        # recv_frame, not recv_data_frame: the latter answers a close with a second close.
        frame = self.ws.recv_frame()
        assert frame.opcode == websocket.ABNF.OPCODE_CLOSE, f"got opcode {frame.opcode}"
        # Section 7.1.1: the server closes the TCP connection first, without more frames.
        assert self.ws.sock.recv(1) == b"", "data after the server's close frame"
        self.ws.shutdown()
        payload = bytes(frame.data)
        return int.from_bytes(payload[:2], "big"), payload[2:].decode()

    def count_wire_bytes(self) -> WireCount:
        raise NotImplementedError("only the websockets clients are counted")

    def finish(self) -> None:
        if self.ws.connected:
            self.ws.close(timeout=TIMEOUT)
        self.ws.shutdown()


PEER_TYPES: dict[str, Callable[[str, bool, ssl.SSLContext | None], Peer]] = {
    "websockets-asyncio": WebsocketsAsyncioPeer,
    "websockets-sync": WebsocketsSyncPeer,
    "websocket-client": WebsocketClientPeer,
}


def matrix(*kinds: str) -> list[Any]:
    """(peer, scheme, compression) for ``kinds``; websocket-client only without deflate."""
    return [
        pytest.param(
            (kind, scheme, compression),
            id=f"{kind}-{scheme}-{'deflate' if compression else 'plain'}",
        )
        for kind in kinds
        for scheme in ("ws", "wss")
        for compression in (True, False)
        if compression is False or kind != "websocket-client"
    ]


ALL_PEERS = matrix(*PEER_TYPES)
WEBSOCKETS_PEERS = matrix("websockets-asyncio", "websockets-sync")


@pytest.fixture(params=ALL_PEERS)
def peer(request: pytest.FixtureRequest, echo: Serving, tls: Tls) -> Iterator[Peer]:
    """A client of the given library, connected to the echo server."""
    kind, scheme, compression = request.param
    ssl_context = tls.client_for(kind) if scheme == "wss" else None
    opened = PEER_TYPES[kind](echo.url(scheme), compression, ssl_context)
    port = opened.local_port
    try:
        yield opened
    finally:
        opened.finish()
        # The server lets go of the connection too before the next test (and the next
        # client on the same port) starts.
        echo.handler.close_seen(port)
        echo.handler.forget(port)


def assert_echoed(peer: Peer, message: str | bytes) -> None:
    peer.send(message)
    received = peer.recv()
    assert type(received) is type(message)
    assert received == message


# --- the matrix ------------------------------------------------------------------------------


def test_permessage_deflate_is_negotiated_when_offered(peer: Peer, echo: Serving) -> None:
    extensions = peer.extensions()
    connection = echo.handler.connection_of(peer.local_port)
    if peer.compression:
        assert extensions is not None
        assert extensions.startswith("permessage-deflate")
        assert connection.protocol.extension is not None
    else:
        assert extensions is None
        assert connection.protocol.extension is None


def test_ascii_text(peer: Peer) -> None:
    assert_echoed(peer, ASCII_TEXT)
    assert_echoed(peer, "")


def test_multibyte_utf8_text(peer: Peer) -> None:
    assert [len(character.encode()) for character in "é☃𝄞日"] == [2, 3, 4, 3]
    assert_echoed(peer, UTF8_TEXT)


def test_binary_with_every_byte_value(peer: Peer) -> None:
    assert_echoed(peer, ALL_BYTES)
    assert_echoed(peer, b"")


def test_one_mebibyte_text(peer: Peer) -> None:
    assert len(MEBIBYTE_TEXT.encode()) == MEBIBYTE
    assert_echoed(peer, MEBIBYTE_TEXT)


def test_one_mebibyte_binary(peer: Peer) -> None:
    assert_echoed(peer, MEBIBYTE_BINARY)


def test_fragmented_text_splitting_characters(peer: Peer) -> None:
    # Three-byte fragments cut the 2-, 3- and 4-byte characters between frames: the
    # server decodes UTF-8 across fragments (section 5.6), not per frame.
    encoded = UTF8_TEXT.encode()
    fragments = [encoded[start : start + 3] for start in range(0, len(encoded), 3)]
    peer.send_fragments(fragments, text=True)
    assert peer.recv() == UTF8_TEXT


def test_fragmented_binary(peer: Peer) -> None:
    # A 7-bit, a 16-bit and a 64-bit payload length, and an empty fragment.
    fragments = [ALL_BYTES[:100], ALL_BYTES * 100, b"", b"\xff" * 70_000]
    peer.send_fragments(fragments, text=False)
    assert peer.recv() == b"".join(fragments)


def test_ping_is_answered_with_a_pong(peer: Peer) -> None:
    peer.ping(b"interop ping")
    assert_echoed(peer, "still open after the pong")


def test_clean_close_with_a_code_the_server_sees(peer: Peer, echo: Serving) -> None:
    port = peer.local_port
    started = time.monotonic()
    answered = peer.close(4000, "bye")
    elapsed = time.monotonic() - started
    # Section 5.5.1: the endpoint "typically echos the status code it received"; the
    # reason is its own to choose.
    assert answered[0] == 4000
    # The server closed the TCP connection: the client did not wait for its close timeout.
    assert elapsed < CLIENT_CLOSE_TIMEOUT / 2
    assert echo.handler.close_seen(port) == (4000, "bye")


@pytest.mark.parametrize("peer", WEBSOCKETS_PEERS, indirect=True)
def test_repetitive_message_is_compressed_on_the_wire(peer: Peer, echo: Serving) -> None:
    connection = echo.handler.connection_of(peer.local_port)
    size = len(REPETITIVE_TEXT)
    count = peer.count_wire_bytes()
    assert_echoed(peer, REPETITIVE_TEXT)
    if peer.compression:
        assert connection.protocol.extension is not None
        assert count.sent < size // 10  # the client compressed, and the server inflated
        assert count.received < size // 10  # the server compressed its echo
    else:
        assert connection.protocol.extension is None
        assert count.sent > size
        assert count.received > size


# --- a message of exactly the default limit, compressed by the peer ------------------------


def test_message_of_exactly_the_default_limit_is_accepted_compressed(tls: Tls) -> None:
    # DESIGN.md: "max message (rfc6455): 1 MiB". websockets compresses every message once
    # permessage-deflate is negotiated (its default), and deflate makes incompressible
    # data a little larger: the limit is on the message, not on its compressed form.
    config = ServerConfig(deflate=DeflateOptions(), ping_interval=None, close_timeout=2.0)
    assert config.max_message_size == MEBIBYTE
    with serving(config, tls) as running:
        options = websockets_options(True, None)
        with websockets.sync.client.connect(running.url("ws"), **options) as ws:
            ws.send(MEBIBYTE_BINARY)
            assert ws.recv(timeout=TIMEOUT) == MEBIBYTE_BINARY
            ws.send(MEBIBYTE_TEXT)
            assert ws.recv(timeout=TIMEOUT) == MEBIBYTE_TEXT
        assert ws.close_code == CloseCode.NORMAL_CLOSURE


# --- what only a raw client can do -----------------------------------------------------------


def open_socket(running: Serving, scheme: str, tls: Tls) -> socket.socket:
    """A TCP connection to ``scheme``'s listener, with the TLS handshake done for wss."""
    sock = socket.create_connection(("127.0.0.1", running.ports[scheme]), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if scheme == "wss":
        return tls.client.wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


def trickle(
    sock: socket.socket, data: bytes, interval: float, deadline: float
) -> tuple[int, bytes]:
    """Send ``data`` one byte every ``interval`` seconds until the server closes the
    connection (or ``deadline``); return how many bytes were sent and what came back.
    """
    received = bytearray()
    sent = 0
    sock.settimeout(interval)
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sock.sendall(data[sent : sent + 1])
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += 1
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue  # nothing yet: the next byte
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return sent, bytes(received)


UPGRADE_REQUEST = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_trickled_handshake_is_cut_off_at_the_handshake_timeout(scheme: str, tls: Tls) -> None:
    handshake_timeout, interval = 0.5, 0.1
    config = ServerConfig(handshake_timeout=handshake_timeout, ping_interval=None)
    with serving(config, tls) as running:
        started = time.monotonic()
        with open_socket(running, scheme, tls) as sock:
            sent, received = trickle(
                sock, UPGRADE_REQUEST, interval, started + handshake_timeout + SLACK + 1.0
            )
        elapsed = time.monotonic() - started
        assert running.server.stats["handshake_timeouts"] == 1
        assert running.server.stats["handshakes_accepted"] == 0
    # Bytes kept arriving, and the request was far from complete, when the server hung up.
    assert 2 <= sent < len(UPGRADE_REQUEST)
    assert handshake_timeout - 0.05 <= elapsed < handshake_timeout + SLACK
    # Nothing, or at most a 408, came back.
    assert received == b"" or received.startswith(b"HTTP/1.1 408 "), received


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_half_open_client_is_dropped_after_the_pong_timeout(scheme: str, tls: Tls) -> None:
    ping_interval, ping_timeout, close_timeout = 0.2, 0.3, 0.5
    config = ServerConfig(
        ping_interval=ping_interval, ping_timeout=ping_timeout, close_timeout=close_timeout
    )
    with serving(config, tls) as running:
        client = WireClient(open_socket(running, scheme, tls), timeout=TIMEOUT)
        with client:
            assert client.handshake().status == 101
            opened = time.monotonic()
            port = client.sock.getsockname()[1]
            # The client reads but never answers: a peer whose application is gone.
            first = client.recv_frame()
            pinged = time.monotonic()
            assert first.opcode == PING
            while (frame := client.recv_frame()).opcode == PING:
                pass  # the next keepalive ping may come before the pong timeout
            closing = time.monotonic()
            assert frame.opcode == CLOSE
            assert int.from_bytes(frame.payload[:2], "big") == CloseCode.INTERNAL_ERROR
            client.expect_eof()  # nothing after the close frame, then the TCP close
            dropped = time.monotonic()
        # No close frame came back: the server reports 1006 (section 7.1.5).
        assert running.handler.close_seen(port) == (CloseCode.ABNORMAL_CLOSURE, "")
        assert running.server.stats["ping_timeouts"] == 1
        assert not running.server.connections
    assert ping_interval - 0.05 <= pinged - opened < ping_interval + SLACK
    assert ping_timeout - 0.05 <= closing - pinged < ping_timeout + SLACK
    assert close_timeout - 0.05 <= dropped - closing < close_timeout + SLACK
