"""chatd's protections over real sockets: Origin checks, rate limits, connection limits,
message size and room quotas. Each refusal is precise (a status before the upgrade, an
``error`` code, or a close code) and the other clients keep chatting.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as websockets_connect

from chatd.config import ChatSettings
from chatd.limits import Limits
from tests.test_chat import TIMEOUT, RfcChatter, RunningChat

DEFAULTS = Limits()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[type[RunningChat]]:
    """Start a chat server with the settings a test gives; stop every one afterwards."""
    running: list[RunningChat] = []

    class Started(RunningChat):
        def __init__(self, settings: ChatSettings) -> None:
            super().__init__(tmp_path / f"chat{len(running)}.sqlite3", settings=settings)
            running.append(self)

    try:
        yield Started
    finally:
        for server in running:
            server.stop()


def upgrade(port: int, *, origin: str | None, name: str = "eve") -> str:
    """Send a handshake by hand and return the response head's status line."""
    lines = [
        f"GET /ws?name={name} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 16384:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return head.split(b"\r\n", 1)[0].decode()


# --- Origin ----------------------------------------------------------------------------------


def test_a_foreign_origin_is_refused_before_the_upgrade(start: type[RunningChat]) -> None:
    chat = start(ChatSettings())
    assert upgrade(chat.port, origin="http://evil.example") == "HTTP/1.1 403 Forbidden"
    assert upgrade(chat.port, origin="null") == "HTTP/1.1 403 Forbidden"
    # chatd's own pages, and clients that are not browsers, get in.
    own = f"http://127.0.0.1:{chat.port}"
    assert upgrade(chat.port, origin=own) == "HTTP/1.1 101 Switching Protocols"
    assert upgrade(chat.port, origin=None) == "HTTP/1.1 101 Switching Protocols"
    with pytest.raises(InvalidStatus) as refused:
        websockets_connect(
            chat.url("name=eve"), origin="https://evil.example", open_timeout=TIMEOUT
        )
    assert refused.value.response.status_code == 403


def test_allowed_origins_and_refusing_missing_ones(start: type[RunningChat]) -> None:
    settings = ChatSettings(allowed_origins=("https://app.example",), allow_missing_origin=False)
    chat = start(settings)
    assert upgrade(chat.port, origin="https://app.example") == "HTTP/1.1 101 Switching Protocols"
    assert upgrade(chat.port, origin=None) == "HTTP/1.1 403 Forbidden"
    assert upgrade(chat.port, origin="https://other.example") == "HTTP/1.1 403 Forbidden"


# --- rate limit --------------------------------------------------------------------------------


def test_over_the_rate_refused_then_closed_with_1008(start: type[RunningChat]) -> None:
    limits = dataclasses.replace(DEFAULTS, message_rate=1.0, message_burst=3, rate_strikes=5)
    chat = start(ChatSettings(limits=limits))
    flooder = RfcChatter(chat.url("name=flooder"))
    bystander = RfcChatter(chat.url("name=bystander"))
    for number in range(3):  # the burst: stored and acknowledged
        assert flooder.say("lobby", f"ok {number}", f"ok{number}")["seq"] == number + 1
    flooder.send(type="message", room="lobby", text="too fast", id="x1")
    refused = flooder.expect("error", code="rate_limited")
    assert refused["message"]
    # It keeps going: more refusals, then the server closes it with 1008.
    for number in range(10):
        try:
            flooder.send(type="message", room="lobby", text="spam", id=f"s{number}")
        except OSError:
            break
    with pytest.raises(Exception):  # noqa: B017 - the close, however the client reports it
        for _ in range(50):
            flooder.recv_text(TIMEOUT)
    assert flooder.client.close_code == 1008
    # Nothing of the flood was stored; the bystander still chats.
    assert bystander.say("lobby", "still here", "b1")["seq"] == 4
    bystander.close()


# --- connection limits -------------------------------------------------------------------------


def test_connections_per_ip_and_in_total(start: type[RunningChat]) -> None:
    limits = dataclasses.replace(DEFAULTS, max_connections_per_ip=2, max_connections=3)
    chat = start(ChatSettings(limits=limits))
    first, second = RfcChatter(chat.url("name=a")), RfcChatter(chat.url("name=b"))
    assert upgrade(chat.port, origin=None) == "HTTP/1.1 503 Service Unavailable"
    first.close()
    # The slot is released when the connection ends.
    deadline_ok = False
    for _ in range(50):
        if upgrade(chat.port, origin=None, name="c") == "HTTP/1.1 101 Switching Protocols":
            deadline_ok = True
            break
        socket.socket().close()
    assert deadline_ok
    second.close()


def test_connections_in_total(start: type[RunningChat]) -> None:
    limits = dataclasses.replace(DEFAULTS, max_connections_per_ip=0, max_connections=2)
    chat = start(ChatSettings(limits=limits))
    first, second = RfcChatter(chat.url("name=a")), RfcChatter(chat.url("name=b"))
    assert upgrade(chat.port, origin=None) == "HTTP/1.1 503 Service Unavailable"
    assert second.say("lobby", "still fine", "s")["seq"] == 1
    first.close()
    second.close()


# --- sizes and rooms ---------------------------------------------------------------------------


def test_an_oversized_message_is_closed_with_1009(start: type[RunningChat]) -> None:
    chat = start(ChatSettings(limits=dataclasses.replace(DEFAULTS, message_rate=0)))
    big = RfcChatter(chat.url("name=big"))
    other = RfcChatter(chat.url("name=other"))
    big.send_text(json.dumps({"type": "message", "room": "lobby", "text": "x" * 70000}))
    with pytest.raises(Exception):  # noqa: B017 - the close, however the client reports it
        for _ in range(10):
            big.recv_text(TIMEOUT)
    assert big.client.close_code == 1009
    assert other.say("lobby", "fine", "o1")["seq"] == 1


def test_too_long_names_are_refused_before_the_upgrade(start: type[RunningChat]) -> None:
    chat = start(ChatSettings())
    assert upgrade(chat.port, origin=None, name="n" * 51) == "HTTP/1.1 400 Bad Request"


def test_rooms_per_connection(start: type[RunningChat]) -> None:
    limits = dataclasses.replace(DEFAULTS, max_rooms_per_connection=3, message_rate=0)
    chat = start(ChatSettings(limits=limits))
    client = RfcChatter(chat.url("name=roamer"))  # in lobby
    for room in ("a", "b"):
        client.send(type="join", room=room)
        client.expect("joined", room=room)
    client.send(type="join", room="c", id="j3")
    error = client.expect("error", code="too_many_rooms")
    assert error["id"] == "j3"
    client.send(type="join", room="a", id="again")  # already in: not a new room
    client.expect("joined", room="a")
    client.close()


def test_websockets_peer_sees_1008_reason(start: type[RunningChat]) -> None:
    limits = dataclasses.replace(DEFAULTS, message_rate=0.5, message_burst=1, rate_strikes=1)
    chat = start(ChatSettings(limits=limits))
    with websockets_connect(chat.url("name=w"), open_timeout=TIMEOUT) as ws:
        ws.recv(TIMEOUT)  # welcome
        for number in range(5):
            try:
                ws.send(json.dumps({"type": "ping", "id": str(number)}))
            except ConnectionClosed:
                break
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(20):
                ws.recv(TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == "rate limit exceeded"


def test_a_client_that_stops_reading_is_dropped_and_the_others_keep_chatting(
    start: type[RunningChat],
) -> None:
    chat = start(ChatSettings(limits=dataclasses.replace(DEFAULTS, message_rate=0)))
    # A client that joins and then never reads, with a small receive buffer.
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", chat.port))
    stuck.sendall(
        (
            f"GET /ws?name=stuck HTTP/1.1\r\nHost: 127.0.0.1:{chat.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    alice = RfcChatter(chat.url("name=alice"))
    bob = RfcChatter(chat.url("name=bob"))
    text = "z" * 3900
    try:
        # 2,000 messages of about 4 KB: 8 MB for the stuck client, past what the kernel
        # buffers on loopback (up to 4 MB) and its 1 MiB write limit. The others read as
        # they go, in batches of 100, so that only the stuck one falls behind.
        for batch in range(20):
            numbers = range(batch * 100, batch * 100 + 100)
            for number in numbers:
                ack = alice.say("lobby", text, f"m{number}")
                assert ack["seq"] == number + 1
            for number in numbers:
                assert bob.expect("message", id=f"m{number}")["seq"] == number + 1
            alice.inbox.clear()
        server = chat.server
        assert server is not None
        assert server.stats["slow_consumers"] == 1
        assert bob.say("lobby", "after", "after")["seq"] == 2001
    finally:
        stuck.close()
        alice.close()
        bob.close()
