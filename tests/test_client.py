"""Tests for rfc6455.client: the blocking Client against real peers on 127.0.0.1.

Two kinds of peer, both independent of our sans-I/O core:

* the ``websockets`` library's threaded server, for everything a correct server does;
* ``ScriptedPeer``, a raw TCP socket that plays byte literals, for what a correct server
  never does (dropping the connection, breaking the protocol, staying silent) and for
  exact orderings of frames on the wire.

Every server thread is stopped by a fixture, and every wait is bounded.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http
import ipaddress
import json
import queue
import re
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from websockets.exceptions import ConnectionClosed as WebSocketsConnectionClosed
from websockets.http11 import Request
from websockets.sync.server import ServerConnection, serve

from rfc6455 import (
    DEFAULT_MAX_MESSAGE_SIZE,
    BinaryMessage,
    CloseReceived,
    DeflateOptions,
    InvalidHandshake,
    LocalProtocolError,
    Ping,
    Pong,
    RemoteProtocolError,
    State,
    TextMessage,
)
from rfc6455.client import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_TIMEOUT,
    Client,
    ConnectionClosed,
    _parse_url,
    connect,
)

# Bounds for the test peers: nothing here should ever wait this long.
PEER_TIMEOUT = 10.0
# A short timeout for the tests that expect one to expire.
SHORT = 0.3

Handler = Callable[[ServerConnection], None]


# --- websockets servers ------------------------------------------------------------------


@pytest.fixture
def serve_ws() -> Iterator[Callable[..., int]]:
    """Start ``websockets`` servers on 127.0.0.1 (port 0); return each one's port."""
    running: list[tuple[Any, threading.Thread]] = []

    def start(handler: Handler, **options: Any) -> int:
        options.setdefault("close_timeout", 2)
        options.setdefault("open_timeout", 5)
        options.setdefault("ping_interval", None)
        server = serve(_quiet(handler), "127.0.0.1", 0, **options)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))
        port: int = server.socket.getsockname()[1]
        return port

    yield start
    for server, thread in running:
        server.shutdown()
        thread.join(PEER_TIMEOUT)
        assert not thread.is_alive()


def _quiet(handler: Handler) -> Handler:
    """A handler whose connection closing under it is the normal end, not an error."""

    def run(ws: ServerConnection) -> None:
        with contextlib.suppress(WebSocketsConnectionClosed):
            handler(ws)

    return run


def echo(ws: ServerConnection) -> None:
    for message in ws:
        ws.send(message)


class Seen(NamedTuple):
    """What a server handler observed, handed to the test through a queue."""

    close_code: int | None
    close_reason: str | None
    subprotocol: str | None = None
    extensions: tuple[str, ...] = ()


def recording_echo(seen: queue.Queue[Seen]) -> Handler:
    """Echo, then report the close code and reason the server saw."""

    def handler(ws: ServerConnection) -> None:
        try:
            for message in ws:
                ws.send(message)
        finally:
            extensions = tuple(type(e).__name__ for e in ws.protocol.extensions)
            seen.put(Seen(ws.close_code, ws.close_reason, ws.subprotocol, extensions))

    return handler


def url(port: int, path: str = "/", scheme: str = "ws", host: str = "127.0.0.1") -> str:
    return f"{scheme}://{host}:{port}{path}"


# --- echo --------------------------------------------------------------------------------


MESSAGE_SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20]


@pytest.mark.parametrize("size", MESSAGE_SIZES)
def test_text_echo(serve_ws: Callable[..., int], size: int) -> None:
    port = serve_ws(echo)
    text = ("héllo wörld ✓ " * (size // 10 + 1)).encode()[:size].decode("utf-8", "ignore")
    with Client.connect(url(port)) as client:
        client.send(text)
        assert client.recv() == text


@pytest.mark.parametrize("size", MESSAGE_SIZES)
def test_binary_echo(serve_ws: Callable[..., int], size: int) -> None:
    port = serve_ws(echo)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    with Client.connect(url(port)) as client:
        client.send(data)
        assert client.recv() == data


def test_send_text_and_binary_explicitly(serve_ws: Callable[..., int]) -> None:
    port = serve_ws(echo)
    with connect(url(port)) as client:
        client.send_text("text")
        client.send_binary(bytearray(b"bytearray"))
        client.send(memoryview(b"memoryview"))
        client.send(bytearray(b"\x00\xff"))
        assert [client.recv() for _ in range(4)] == ["text", b"bytearray", b"memoryview", b"\0\xff"]


def test_send_refuses_other_types(serve_ws: Callable[..., int]) -> None:
    port = serve_ws(echo)
    with Client.connect(url(port)) as client, pytest.raises(TypeError, match="int"):
        client.send(42)  # type: ignore[arg-type]


def test_many_messages_in_a_row(serve_ws: Callable[..., int]) -> None:
    port = serve_ws(echo)
    with Client.connect(url(port)) as client:
        for number in range(200):
            client.send(f"message {number}")
        assert [client.recv() for _ in range(200)] == [f"message {n}" for n in range(200)]


def test_fragmented_messages_reach_the_server_as_fragments(
    serve_ws: Callable[..., int],
) -> None:
    def count_fragments(ws: ServerConnection) -> None:
        while True:
            fragments = list(ws.recv_streaming())
            joined: str | bytes
            if isinstance(fragments[0], str):
                joined = "".join(str(fragment) for fragment in fragments)
            else:
                joined = b"".join(f for f in fragments if isinstance(f, bytes))
            ws.send(json.dumps({"fragments": len(fragments), "size": len(joined)}))
            ws.send(joined)

    port = serve_ws(count_fragments)
    with Client.connect(url(port), fragment_size=1000) as client:
        data = bytes(range(256)) * 40  # 10,240 bytes: 11 frames
        client.send(data)
        assert json.loads(client.recv()) == {"fragments": 11, "size": 10240}
        assert client.recv() == data
        text = "é" * 3000  # 6,000 bytes of UTF-8: 6 frames, split inside characters
        client.send(text)
        assert json.loads(client.recv()) == {"fragments": 6, "size": 3000}
        assert client.recv() == text
        client.send("short")
        assert json.loads(client.recv()) == {"fragments": 1, "size": 5}
        assert client.recv() == "short"


def test_receives_fragmented_messages(serve_ws: Callable[..., int]) -> None:
    def send_fragments(ws: ServerConnection) -> None:
        ws.send(["frag", "mented ", "tëxt"])
        ws.send([b"\x00\x01", b"", b"\x02"])
        ws.recv()

    port = serve_ws(send_fragments)
    with Client.connect(url(port)) as client:
        assert client.recv() == "fragmented tëxt"
        assert client.recv() == b"\x00\x01\x02"


def test_iteration_ends_with_a_normal_close(serve_ws: Callable[..., int]) -> None:
    def three_then_close(ws: ServerConnection) -> None:
        for message in ("one", b"two", "three"):
            ws.send(message)
        ws.close()

    port = serve_ws(three_then_close)
    with Client.connect(url(port)) as client:
        assert list(client) == ["one", b"two", "three"]
        assert client.close_code == 1000


def test_iteration_raises_on_an_abnormal_close(serve_ws: Callable[..., int]) -> None:
    def one_then_error(ws: ServerConnection) -> None:
        ws.send("one")
        ws.close(1011, "oops")

    port = serve_ws(one_then_error)
    with Client.connect(url(port)) as client:
        received: list[str | bytes] = []
        with pytest.raises(ConnectionClosed) as raised:
            received.extend(client)
        assert received == ["one"]
        assert (raised.value.code, raised.value.reason) == (1011, "oops")
        assert not raised.value.ok


@pytest.mark.parametrize(
    ("limit", "size"), [(DEFAULT_MAX_MESSAGE_SIZE, (1 << 20) + 1), (1000, 1001)]
)
def test_messages_over_the_size_limit_fail_with_1009(
    serve_ws: Callable[..., int], limit: int, size: int
) -> None:
    seen: queue.Queue[Seen] = queue.Queue()

    def send_too_much(ws: ServerConnection) -> None:
        try:
            ws.send(bytes(size - 1))  # just within the limit
            ws.send(bytes(size))
            ws.recv()
        finally:
            seen.put(Seen(ws.close_code, ws.close_reason))

    port = serve_ws(send_too_much, compression=None)
    with Client.connect(url(port), max_message_size=limit) as client:
        assert client.recv() == bytes(size - 1)
        with pytest.raises(ConnectionClosed) as raised:
            client.recv()
        assert raised.value.code == 1009
    assert seen.get(timeout=PEER_TIMEOUT).close_code == 1009


# --- ping and pong -----------------------------------------------------------------------


def test_ping_waits_for_its_pong(serve_ws: Callable[..., int]) -> None:
    port = serve_ws(echo)
    with Client.connect(url(port)) as client:
        client.ping(wait=True)
        client.ping(b"payload", wait=True, timeout=5)
        client.send("still open")
        assert client.recv() == "still open"


def test_ping_without_wait_leaves_the_pong_to_recv_event(serve_ws: Callable[..., int]) -> None:
    port = serve_ws(echo)
    with Client.connect(url(port)) as client:
        client.ping(b"abc")
        assert client.recv_event() == Pong(b"abc")


def test_ping_payload_limit(serve_ws: Callable[..., int]) -> None:
    port = serve_ws(echo)
    with Client.connect(url(port)) as client, pytest.raises(LocalProtocolError):
        client.ping(bytes(126))


def test_server_ping_is_answered(serve_ws: Callable[..., int]) -> None:
    pongs: queue.Queue[bool] = queue.Queue()

    def ping_client(ws: ServerConnection) -> None:
        ws.recv()
        pongs.put(ws.ping(b"from server").wait(PEER_TIMEOUT))
        ws.send("pinged")
        ws.recv()

    port = serve_ws(ping_client)
    with Client.connect(url(port)) as client:
        client.send("go")
        # The Ping event is skipped by recv(); the pong went out when it was read.
        assert client.recv() == "pinged"
        assert pongs.get(timeout=PEER_TIMEOUT)


# --- closing -----------------------------------------------------------------------------


def test_client_close_code_and_reason_reach_the_server(serve_ws: Callable[..., int]) -> None:
    seen: queue.Queue[Seen] = queue.Queue()
    port = serve_ws(recording_echo(seen))
    client = Client.connect(url(port))
    client.send("hi")
    assert client.recv() == "hi"
    client.close(4000, "client says bye")
    assert seen.get(timeout=PEER_TIMEOUT)[:2] == (4000, "client says bye")
    # websockets echoes the code and the reason.
    assert (client.close_code, client.close_reason) == (4000, "client says bye")
    assert client.state is State.CLOSED
    client.close()  # idempotent
    client.close(1001)
    with pytest.raises(ConnectionClosed) as raised:
        client.recv()
    assert raised.value.code == 4000
    assert raised.value.reason == "client says bye"
    with pytest.raises(ConnectionClosed):
        client.send("too late")
    with pytest.raises(ConnectionClosed):
        client.ping()


def test_context_manager_closes_normally(serve_ws: Callable[..., int]) -> None:
    seen: queue.Queue[Seen] = queue.Queue()
    port = serve_ws(recording_echo(seen))
    with Client.connect(url(port)) as client:
        assert repr(client) == "<Client OPEN>"
        assert client.close_code is None
    assert seen.get(timeout=PEER_TIMEOUT)[:2] == (1000, "")
    assert client.close_code == 1000
    assert repr(client) == "<Client CLOSED>"


def test_close_refuses_invalid_codes(serve_ws: Callable[..., int]) -> None:
    port = serve_ws(echo)
    with Client.connect(url(port)) as client:
        for code in (1005, 1006, 999, 5000):
            with pytest.raises(LocalProtocolError):
                client.close(code)
        with pytest.raises(LocalProtocolError):
            client.close(1000, "x" * 124)
        assert client.state is State.OPEN


def test_server_initiated_close(serve_ws: Callable[..., int]) -> None:
    seen: queue.Queue[Seen] = queue.Queue()

    def close_with_code(ws: ServerConnection) -> None:
        ws.recv()
        ws.close(4321, "server says bye")
        seen.put(Seen(ws.close_code, ws.close_reason))

    port = serve_ws(close_with_code)
    client = Client.connect(url(port))
    client.send("close please")
    with pytest.raises(ConnectionClosed) as raised:
        client.recv()
    assert (raised.value.code, raised.value.reason) == (4321, "server says bye")
    assert str(raised.value) == "connection closed: 4321 server says bye"
    assert repr(raised.value) == "ConnectionClosed(4321, 'server says bye')"
    assert (client.close_code, client.close_reason) == (4321, "server says bye")
    assert client.state is State.CLOSED
    # Our reply echoed the code (section 5.5.1).
    assert seen.get(timeout=PEER_TIMEOUT).close_code == 4321
    with pytest.raises(ConnectionClosed):
        client.send("too late")
    client.close()  # nothing left to do


def test_server_close_as_events(serve_ws: Callable[..., int]) -> None:
    def close_going_away(ws: ServerConnection) -> None:
        ws.send("last words")
        ws.close(1001)

    port = serve_ws(close_going_away)
    with Client.connect(url(port)) as client:
        assert client.recv_event() == TextMessage("last words")
        assert client.recv_event() == CloseReceived(1001, "")
        with pytest.raises(ConnectionClosed) as raised:
            client.recv_event()
        assert raised.value.ok


# --- opening handshake -------------------------------------------------------------------


def test_rejected_handshake_raises_with_the_status(serve_ws: Callable[..., int]) -> None:
    def forbid(ws: ServerConnection, request: Request) -> Any:
        return ws.respond(http.HTTPStatus.FORBIDDEN, "Forbidden\n")

    port = serve_ws(echo, process_request=forbid)
    with pytest.raises(InvalidHandshake) as raised:
        Client.connect(url(port))
    assert raised.value.status == 403
    assert "403" in raised.value.reason


def test_request_target_host_origin_and_extra_headers(serve_ws: Callable[..., int]) -> None:
    requests: queue.Queue[Request] = queue.Queue()

    def record(ws: ServerConnection, request: Request) -> None:
        requests.put(request)

    port = serve_ws(echo, process_request=record)
    with Client.connect(
        url(port, "/chat room/ü?room=lobby&name=a b"),
        origin="http://example.com",
        extra_headers=[("Authorization", "Bearer token"), ("X-Trace", "1")],
    ) as client:
        client.send("ok")
        assert client.recv() == "ok"
        assert client.response is not None
        assert client.response.status == 101
    request = requests.get(timeout=PEER_TIMEOUT)
    assert request.path == "/chat%20room/%C3%BC?room=lobby&name=a%20b"
    assert request.headers["Host"] == f"127.0.0.1:{port}"
    assert request.headers["Origin"] == "http://example.com"
    assert request.headers["Authorization"] == "Bearer token"
    assert request.headers["X-Trace"] == "1"


def test_subprotocol_negotiation(serve_ws: Callable[..., int]) -> None:
    def tell_subprotocol(ws: ServerConnection) -> None:
        ws.send(str(ws.subprotocol))
        ws.recv()

    port = serve_ws(tell_subprotocol, subprotocols=["chat", "superchat"])
    with Client.connect(url(port), subprotocols=["superchat", "other"]) as client:
        assert client.subprotocol == "superchat"
        assert client.recv() == "superchat"
    # websockets refuses a client that offers none of its subprotocols.
    with pytest.raises(InvalidHandshake) as raised:
        Client.connect(url(port), subprotocols=["other"])
    assert raised.value.status == 400


def test_no_subprotocol_when_none_offered(serve_ws: Callable[..., int]) -> None:
    port = serve_ws(echo)
    with Client.connect(url(port)) as client:
        assert client.subprotocol is None
        assert client.extension is None


def test_ipv6_literal(serve_ws: Callable[..., int]) -> None:
    requests: queue.Queue[Request] = queue.Queue()

    def record(ws: ServerConnection, request: Request) -> None:
        requests.put(request)

    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    server = serve(
        _quiet(echo), sock=listener, process_request=record, close_timeout=2, ping_interval=None
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.socket.getsockname()[1]
        with Client.connect(f"ws://[::1]:{port}/v6") as client:
            client.send("over IPv6")
            assert client.recv() == "over IPv6"
        assert requests.get(timeout=PEER_TIMEOUT).headers["Host"] == f"[::1]:{port}"
    finally:
        server.shutdown()
        thread.join(PEER_TIMEOUT)


# --- permessage-deflate ------------------------------------------------------------------


def test_permessage_deflate_with_websockets(serve_ws: Callable[..., int]) -> None:
    seen: queue.Queue[Seen] = queue.Queue()
    port = serve_ws(recording_echo(seen))  # websockets enables compression by default
    with Client.connect(url(port), deflate=True) as client:
        assert client.extension is not None
        assert client.response is not None
        accepted = client.response.headers.get("Sec-WebSocket-Extensions")
        assert accepted is not None
        assert accepted.startswith("permessage-deflate")
        text = "compressible chat message " * 40_000  # ~1 MB
        client.send(text)
        assert client.recv() == text
        data = b"\x00" * (1 << 20)
        client.send(data)
        assert client.recv() == data
        for number in range(50):  # context takeover across messages
            client.send(f"message number {number} " * 10)
            assert client.recv() == f"message number {number} " * 10
        client.send("tiny")  # under min_size: sent uncompressed
        assert client.recv() == "tiny"
    assert seen.get(timeout=PEER_TIMEOUT).extensions == ("PerMessageDeflate",)


def test_permessage_deflate_options(serve_ws: Callable[..., int]) -> None:
    port = serve_ws(echo)
    options = DeflateOptions(
        client_no_context_takeover=True, server_no_context_takeover=True, min_size=0
    )
    with Client.connect(url(port), deflate=options, fragment_size=100) as client:
        extension = client.extension
        assert extension is not None
        assert extension.local_no_context_takeover
        assert extension.remote_no_context_takeover
        for text in ("a", "repeat " * 1000, "é" * 500):
            client.send(text)
            assert client.recv() == text


def test_permessage_deflate_declined(serve_ws: Callable[..., int]) -> None:
    port = serve_ws(echo, compression=None)
    with Client.connect(url(port), deflate=True) as client:
        assert client.extension is None
        client.send("plain " * 100)
        assert client.recv() == "plain " * 100


# --- timeouts ----------------------------------------------------------------------------


def test_recv_timeout_keeps_the_connection(serve_ws: Callable[..., int]) -> None:
    port = serve_ws(echo)
    with Client.connect(url(port), timeout=SHORT) as client:
        assert client.timeout == SHORT
        with pytest.raises(TimeoutError):
            client.recv()
        with pytest.raises(TimeoutError):
            client.recv_event(timeout=0.05)
        with pytest.raises(TimeoutError):
            client.recv(timeout=0)
        client.send("still there")
        assert client.recv(timeout=5) == "still there"


def test_iteration_timeout(serve_ws: Callable[..., int]) -> None:
    port = serve_ws(echo)
    with Client.connect(url(port), timeout=SHORT) as client, pytest.raises(TimeoutError):
        next(iter(client))


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A listening socket that completes TCP handshakes (the backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as listener:
        yield listener.getsockname()[1]


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_connect_timeout_on_a_silent_server(silent_listener: int, scheme: str) -> None:
    # ws: the opening handshake times out; wss: the TLS handshake does.
    with pytest.raises(TimeoutError):
        Client.connect(url(silent_listener, scheme=scheme), timeout=SHORT)


def test_connect_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        Client.connect(url(port), timeout=5)


def test_defaults() -> None:
    assert DEFAULT_TIMEOUT == 10.0
    assert DEFAULT_CLOSE_TIMEOUT == 5.0


# --- TLS ---------------------------------------------------------------------------------


@dataclass
class Certificates:
    ca_path: Path
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A throwaway CA and a certificate it signed for localhost, 127.0.0.1 and ::1."""
    pytest.importorskip("cryptography")
    from cryptography import x509  # noqa: PLC0415 - optional test dependency
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("rfc6455 test CA"))
        .issuer_name(name("rfc6455 test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    paths = Certificates(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths.ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_wss_with_a_trusted_certificate(
    serve_ws: Callable[..., int], certificates: Certificates, host: str
) -> None:
    seen: queue.Queue[Seen] = queue.Queue()
    port = serve_ws(recording_echo(seen), ssl=certificates.server_context())
    with Client.connect(
        url(port, "/secure", scheme="wss", host=host),
        ssl_context=certificates.client_context(),
        deflate=True,
    ) as client:
        for message in ("over TLS", b"\x00" * 200_000, "x" * (1 << 20)):
            client.send(message)
            assert client.recv() == message
        client.ping(b"tls", wait=True)
        client.close(4001, "tls bye")
    assert seen.get(timeout=PEER_TIMEOUT)[:2] == (4001, "tls bye")
    assert client.close_code == 4001


def test_wss_server_close(serve_ws: Callable[..., int], certificates: Certificates) -> None:
    def close_at_once(ws: ServerConnection) -> None:
        ws.close(4002, "tls server bye")

    port = serve_ws(close_at_once, ssl=certificates.server_context())
    with Client.connect(
        url(port, scheme="wss"), ssl_context=certificates.client_context()
    ) as client:
        with pytest.raises(ConnectionClosed) as raised:
            client.recv()
        assert raised.value.code == 4002


def test_wss_default_context_checks_the_certificate(
    serve_ws: Callable[..., int], certificates: Certificates
) -> None:
    port = serve_ws(echo, ssl=certificates.server_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        Client.connect(url(port, scheme="wss"), timeout=5)


def test_ssl_context_needs_wss() -> None:
    with pytest.raises(ValueError, match="wss"):
        Client.connect("ws://127.0.0.1:1/", ssl_context=ssl.create_default_context())


# --- URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("ws://example.com", (False, "example.com", 80, "example.com", "/")),
        ("ws://example.com/", (False, "example.com", 80, "example.com", "/")),
        ("WS://Example.COM:80/chat", (False, "example.com", 80, "example.com", "/chat")),
        ("wss://example.com", (True, "example.com", 443, "example.com", "/")),
        ("wss://example.com:443/a?b=c", (True, "example.com", 443, "example.com", "/a?b=c")),
        ("ws://example.com:443/", (False, "example.com", 443, "example.com:443", "/")),
        ("wss://example.com:80/", (True, "example.com", 80, "example.com:80", "/")),
        ("ws://example.com:8080/ws", (False, "example.com", 8080, "example.com:8080", "/ws")),
        ("ws://example.com?room=x", (False, "example.com", 80, "example.com", "/?room=x")),
        ("ws://h/a%20b?q=%2F&x", (False, "h", 80, "h", "/a%20b?q=%2F&x")),
        ("ws://h/ü b?n=é f", (False, "h", 80, "h", "/%C3%BC%20b?n=%C3%A9%20f")),
        ("ws://127.0.0.1:9000", (False, "127.0.0.1", 9000, "127.0.0.1:9000", "/")),
        ("ws://[::1]:9000/v6", (False, "::1", 9000, "[::1]:9000", "/v6")),
        ("wss://[2001:DB8::1]/", (True, "2001:db8::1", 443, "[2001:db8::1]", "/")),
        (
            "ws://bücher.example/",
            (False, "xn--bcher-kva.example", 80, "xn--bcher-kva.example", "/"),
        ),
    ],
)
def test_parse_url(given: str, expected: tuple[object, ...]) -> None:
    assert tuple(_parse_url(given)) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("http://example.com/", "not a ws"),
        ("example.com:80", "not a ws"),
        ("ws://example.com/#fragment", "fragment"),
        ("ws://example.com/#", "fragment"),
        ("ws://user:secret@example.com/", "user information"),
        ("ws://user@example.com/", "user information"),
        ("ws:///path", "no host"),
        ("ws://example.com:99999/", "out of range"),
        ("ws://example.com:http/", "[Pp]ort"),
        ("ws://[::1/", "IPv6"),
    ],
)
def test_parse_url_refuses(given: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _parse_url(given)


def test_connect_refuses_a_bad_url_before_any_io() -> None:
    with pytest.raises(ValueError):
        Client.connect("https://example.com/")


# --- a raw peer for what correct servers never do ------------------------------------------


GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_head(conn: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("client went away during the handshake")
        head += chunk
    return head


def switching_protocols(request: bytes, accept: bytes | None = None) -> bytes:
    """The 101 answer to ``request``, computed here, independently of rfc6455.handshake."""
    match = re.search(rb"\r\nSec-WebSocket-Key: *([^\r]+)\r\n", request, re.IGNORECASE)
    assert match is not None
    if accept is None:
        accept = base64.b64encode(hashlib.sha1(match[1] + GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes = b"") -> bytes:
    """A server frame, unmasked unless ``mask`` is given (which a server must not do)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if mask else 0
    if len(payload) < 126:
        head += bytes([mask_bit | len(payload)])
    elif len(payload) < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", len(payload))
    if mask:
        payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return head + mask + payload


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(0x8, struct.pack("!H", code) + reason)


def receive_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def read_client_frame(conn: socket.socket) -> tuple[int, bytes]:
    """Read one frame from the client, checking that it is masked (section 5.3)."""
    first, second = receive_exactly(conn, 2)
    assert second & 0x80, "client frames are masked"
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", receive_exactly(conn, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", receive_exactly(conn, 8))
    mask = receive_exactly(conn, 4)
    payload = receive_exactly(conn, length)
    return first & 0x0F, bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


def wait_for_eof(conn: socket.socket) -> bytes:
    """Read until the client closes; return what it sent meanwhile."""
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
    return data


def reset(conn: socket.socket) -> None:
    """Close with SO_LINGER 0: the client gets a TCP RST instead of a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


Script = Callable[[socket.socket, bytes], None]


class ScriptedPeer:
    """Accept one connection, read the request head, then run ``script(conn, head)``."""

    def __init__(self, script: Script, *, receive_buffer: int | None = None) -> None:
        self.script = script
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(PEER_TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self.error: BaseException | None = None
        self.done = threading.Event()  # the script has finished
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return url(self.port)

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(PEER_TIMEOUT)
            try:
                self.script(conn, read_head(conn))
            finally:
                conn.close()
        except BaseException as error:  # reported by stop()
            self.error = error
        finally:
            self.done.set()

    def stop(self) -> None:
        self.listener.close()
        self.thread.join(PEER_TIMEOUT)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


@pytest.fixture
def peer() -> Iterator[Callable[..., ScriptedPeer]]:
    peers: list[ScriptedPeer] = []

    def start(script: Script, **options: Any) -> ScriptedPeer:
        peers.append(ScriptedPeer(script, **options))
        return peers[-1]

    yield start
    for started in peers:
        started.stop()


def test_frames_that_arrive_with_the_101(peer: Callable[..., ScriptedPeer]) -> None:
    pongs: queue.Queue[tuple[int, bytes]] = queue.Queue()

    def script(conn: socket.socket, request: bytes) -> None:
        # The 101, a message and a ping in one segment.
        conn.sendall(switching_protocols(request) + frame(0x1, b"welcome") + frame(0x9, b"hb"))
        pongs.put(read_client_frame(conn))
        assert read_client_frame(conn) == (0x8, struct.pack("!H", 1000))
        conn.sendall(close_frame(1000))

    client = Client.connect(peer(script).url)
    assert client.recv_event() == TextMessage("welcome")
    assert client.recv_event() == Ping(b"hb")
    # The pong left as soon as the ping was read: during connect().
    assert pongs.get(timeout=PEER_TIMEOUT) == (0xA, b"hb")
    client.close()
    assert client.close_code == 1000


def test_close_that_arrives_with_the_101(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request) + close_frame(1013, b"busy"))
        assert read_client_frame(conn) == (0x8, struct.pack("!H", 1013))

    with Client.connect(peer(script).url) as client:
        assert client.state is State.CLOSED  # the socket is already closed too
        with pytest.raises(ConnectionClosed) as raised:
            client.recv()
        assert (raised.value.code, raised.value.reason) == (1013, "busy")


def test_101_in_pieces(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        response = switching_protocols(request)
        conn.sendall(response[:20])
        threading.Event().wait(0.1)
        conn.sendall(response[20:])
        wait_for_eof(conn)

    client = Client.connect(peer(script).url)
    client.close(timeout=SHORT)
    assert client.close_code == 1006  # the peer never answered the close


@pytest.mark.parametrize(
    ("response", "status", "message"),
    [
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 404, "404 Not Found"),
        (b"not http at all\r\n\r\n", 0, "invalid HTTP response"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", 101, "Upgrade"),
    ],
)
def test_refused_handshakes(
    peer: Callable[..., ScriptedPeer], response: bytes, status: int, message: str
) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(response)
        wait_for_eof(conn)

    with pytest.raises(InvalidHandshake, match=message) as raised:
        Client.connect(peer(script).url)
    assert raised.value.status == status


def test_wrong_accept_key(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request, accept=b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="))
        wait_for_eof(conn)

    with pytest.raises(InvalidHandshake, match="Accept") as raised:
        Client.connect(peer(script).url)
    assert raised.value.status == 101


def test_server_hangs_up_during_the_handshake(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        pass  # close without answering

    with pytest.raises(InvalidHandshake, match="closed the connection") as raised:
        Client.connect(peer(script).url)
    assert raised.value.status == 0


def test_server_drops_tcp_without_a_close_frame(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request) + frame(0x2, b"last"))

    with Client.connect(peer(script).url) as client:
        assert client.recv() == b"last"
        with pytest.raises(ConnectionClosed) as raised:
            client.recv()
        assert raised.value.code == 1006
        assert not raised.value.ok
        assert client.close_code == 1006
        assert client.state is State.CLOSED


def test_server_resets_the_connection(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request))
        read_client_frame(conn)  # wait until the client is connected and sent "hi"
        reset(conn)

    with Client.connect(peer(script).url) as client:
        client.send("hi")
        with pytest.raises(ConnectionClosed) as raised:
            client.recv()
        assert raised.value.code == 1006


def test_send_after_a_reset(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request))
        reset(conn)

    with Client.connect(peer(script).url) as client:
        sock = client._sock
        assert sock is not None
        # The RST makes the socket readable; until then a send might still be buffered.
        assert select.select([sock], [], [], PEER_TIMEOUT)[0]
        with pytest.raises(ConnectionClosed) as raised:
            client.send(b"x" * 100_000)
        assert raised.value.code == 1006
        assert isinstance(raised.value.__cause__, OSError)


def test_close_after_a_reset(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request))
        reset(conn)

    client = Client.connect(peer(script).url)
    sock = client._sock
    assert sock is not None
    assert select.select([sock], [], [], PEER_TIMEOUT)[0]
    client.close()
    assert client.close_code == 1006
    assert client.state is State.CLOSED


def test_protocol_violation_fails_the_connection(peer: Callable[..., ScriptedPeer]) -> None:
    replies: queue.Queue[tuple[int, bytes]] = queue.Queue()

    def script(conn: socket.socket, request: bytes) -> None:
        # Section 5.1: "A client MUST close a connection if it detects a masked frame."
        conn.sendall(switching_protocols(request) + frame(0x1, b"masked", mask=b"abcd"))
        replies.put(read_client_frame(conn))

    with Client.connect(peer(script).url) as client:
        with pytest.raises(ConnectionClosed) as raised:
            client.recv()
        assert raised.value.code == 1002
        assert isinstance(raised.value.__cause__, RemoteProtocolError)
        opcode, payload = replies.get(timeout=PEER_TIMEOUT)
        assert opcode == 0x8
        assert payload[:2] == struct.pack("!H", 1002)


def test_invalid_utf8_fails_with_1007(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request) + frame(0x1, b"\xff\xfe"))
        opcode, payload = read_client_frame(conn)
        assert (opcode, payload[:2]) == (0x8, struct.pack("!H", 1007))

    with Client.connect(peer(script).url) as client, pytest.raises(ConnectionClosed) as raised:
        client.recv()
    assert raised.value.code == 1007


def test_recv_skips_control_frames(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(
            switching_protocols(request)
            + frame(0x9, b"ping")
            + frame(0xA, b"unsolicited")
            + frame(0x1, b"mess", fin=False)
            + frame(0x9, b"mid-message ping")  # section 5.4: control frames interleave
            + frame(0x0, b"age")
        )
        assert read_client_frame(conn) == (0xA, b"ping")
        assert read_client_frame(conn) == (0xA, b"mid-message ping")
        assert read_client_frame(conn)[0] == 0x8
        conn.sendall(close_frame(1000))

    with Client.connect(peer(script).url) as client:
        assert client.recv() == "message"


def test_ping_wait_queues_other_events(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request))
        assert read_client_frame(conn) == (0x9, b"mine")
        conn.sendall(
            frame(0xA, b"other")
            + frame(0x1, b"news")
            + frame(0xA, b"mine")
            + frame(0xA, b"mine")  # a duplicate stays queued
            + frame(0x2, b"more")
        )
        assert read_client_frame(conn)[0] == 0x8
        conn.sendall(close_frame(1000))

    with Client.connect(peer(script).url) as client:
        client.ping(b"mine", wait=True)
        assert client.recv_event() == Pong(b"other")
        assert client.recv_event() == TextMessage("news")
        assert client.recv_event() == Pong(b"mine")
        assert client.recv_event() == BinaryMessage(b"more")


def test_messages_received_before_close_stay_readable(
    peer: Callable[..., ScriptedPeer],
) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request))
        assert read_client_frame(conn) == (0x9, b"")
        conn.sendall(frame(0x1, b"before close") + frame(0xA))
        assert read_client_frame(conn) == (0x8, struct.pack("!H", 1000))
        conn.sendall(close_frame(1000))

    client = Client.connect(peer(script).url)
    client.ping(wait=True)  # the message is queued by now
    client.close()
    assert client.recv() == "before close"
    with pytest.raises(ConnectionClosed):
        client.recv()


def test_ping_wait_times_out(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request))
        assert read_client_frame(conn) == (0x9, b"")  # no pong for this one
        assert read_client_frame(conn) == (0x1, b"still open")
        conn.sendall(frame(0x1, b"yes"))
        assert read_client_frame(conn)[0] == 0x8
        conn.sendall(close_frame(1000))

    with Client.connect(peer(script).url) as client:
        with pytest.raises(TimeoutError):
            client.ping(wait=True, timeout=SHORT)
        client.send("still open")
        assert client.recv() == "yes"


def test_ping_wait_ends_when_the_server_closes(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request))
        assert read_client_frame(conn) == (0x9, b"")
        conn.sendall(close_frame(1001, b"going away"))
        assert read_client_frame(conn) == (0x8, struct.pack("!H", 1001))

    with Client.connect(peer(script).url) as client:
        with pytest.raises(ConnectionClosed) as raised:
            client.ping(wait=True)
        assert (raised.value.code, raised.value.reason) == (1001, "going away")
        assert client.recv_event() == CloseReceived(1001, "going away")


def test_close_when_the_server_never_answers(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request))
        assert read_client_frame(conn) == (0x8, struct.pack("!H", 1000) + b"bye")
        wait_for_eof(conn)

    client = Client.connect(peer(script).url, close_timeout=SHORT)
    assert client.close_timeout == SHORT
    client.close(reason="bye")
    assert client.close_code == 1006
    assert client.state is State.CLOSED


def test_close_when_the_server_answers_but_keeps_tcp_open(
    peer: Callable[..., ScriptedPeer],
) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request))
        assert read_client_frame(conn)[0] == 0x8
        # Data after a close frame is discarded by the client (section 5.5.1).
        conn.sendall(close_frame(1000) + frame(0x1, b"ignored"))
        conn.sendall(frame(0x1, b"ignored too"))
        wait_for_eof(conn)  # the client gives up waiting and closes

    client = Client.connect(peer(script).url)
    client.close(timeout=SHORT)
    assert client.close_code == 1000


def test_close_when_the_server_hangs_up_instead_of_answering(
    peer: Callable[..., ScriptedPeer],
) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request))
        assert read_client_frame(conn)[0] == 0x8

    client = Client.connect(peer(script).url)
    client.close()
    assert client.close_code == 1006


def test_send_timeout_aborts_the_connection(peer: Callable[..., ScriptedPeer]) -> None:
    release = threading.Event()

    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request))
        release.wait(PEER_TIMEOUT)  # read nothing until the client has given up

    client = Client.connect(peer(script, receive_buffer=4096).url, timeout=SHORT)
    try:
        with pytest.raises(TimeoutError):
            client.send(bytes(32 << 20))
        # Part of a frame may have left: the connection cannot go on.
        assert client.state is State.CLOSED
        assert client.close_code == 1006
        with pytest.raises(ConnectionClosed):
            client.send("after")
    finally:
        release.set()


def test_a_failed_automatic_reply_closes_the_connection(
    peer: Callable[..., ScriptedPeer],
) -> None:
    go = threading.Event()

    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request))
        go.wait(PEER_TIMEOUT)
        conn.sendall(frame(0x9, b"ping"))
        wait_for_eof(conn)

    client = Client.connect(peer(script).url)
    client.timeout = 0  # the pong cannot be written in no time at all
    go.set()
    with pytest.raises(ConnectionClosed) as raised:
        client.recv(timeout=5)
    assert raised.value.code == 1006


def test_connection_property(peer: Callable[..., ScriptedPeer]) -> None:
    def script(conn: socket.socket, request: bytes) -> None:
        conn.sendall(switching_protocols(request) + close_frame(1000))
        read_client_frame(conn)

    with Client.connect(peer(script).url) as client:
        assert client.connection.close_received
        assert client.connection.state is State.CLOSED
