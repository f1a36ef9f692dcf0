"""chatd's metrics as the running daemon counts them, and ``GET /metrics`` and ``/ready``.

The main test does a known set of things over real sockets (connections, messages, a bad
frame, a refused upgrade, a rate-limited client, a close, logins), scrapes ``/metrics``
and reads the exposition with prometheus_client's own parser: every counter must say
exactly what the test did. The access rule of ``/metrics`` in ``required`` mode and the
``/ready`` answers that no loopback socket can reach (another address, a server that is
stopping, a database that is gone) are checked by calling the handler directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chatd.accounts import Accounts
from chatd.app import ChatServer, _is_loopback
from chatd.auth import COOKIE_NAME
from chatd.config import ChatSettings
from chatd.limits import Limits
from chatd.metrics import ChatMetrics
from rfc6455.client import Client, ConnectionClosed
from rfc6455.errors import InvalidHandshake
from rfc6455.http import Headers, Request
from rfc6455.server import Handler, HttpResponse, Server, ServerConnection
from tests.test_chat import TIMEOUT, UNLIMITED, RfcChatter, RunningChat
from tests.test_chat_http import Reply, request
from tests.wire import CLOSE, TEXT, WireClient

PASSWORD = "correct horse battery"
#: Messages a connection may send at once; none come back (the rate is all but zero), so
#: a client that sends one more is refused, and the one after that is closed with 1008.
BURST = 20
FEW_MESSAGES = ChatSettings(
    limits=Limits(message_rate=0.001, message_burst=BURST, rate_strikes=1, strike_window=60.0)
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A chat database with the account dora (not an administrator) and root (one)."""
    database = tmp_path / "chat.sqlite3"
    with Accounts(database) as accounts:
        accounts.add("dora", PASSWORD)
        accounts.add("root", PASSWORD, admin=True)
    return database


def parse(body: bytes) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(port: int) -> Samples:
    reply = request(port, "/metrics")
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert reply.headers["cache-control"] == "no-store"
    return parse(reply.body)


def scrape_until(port: int, condition: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``condition`` holds: a connection is counted as closed once its TCP
    connection is gone, a moment after the client returned from its close.
    """
    deadline = time.monotonic() + TIMEOUT
    while True:
        samples = scrape(port)
        if condition(samples):
            return samples
        assert time.monotonic() < deadline, f"not reached in time: {samples}"
        time.sleep(0.02)


def login(port: int, username: str, password: str) -> Reply:
    return request(
        port,
        "/api/auth/login",
        "POST",
        body=json.dumps({"username": username, "password": password}).encode(),
        headers=(("Content-Type", "application/json"),),
    )


# --- what the running daemon counts --------------------------------------------------------


def test_metrics_count_exactly_what_the_clients_did(database: Path) -> None:
    with RunningChat(database, settings=FEW_MESSAGES) as chat:
        alice = RfcChatter(chat.url("name=alice"))
        bob = RfcChatter(chat.url("name=bob"))
        try:
            for n in (1, 2, 3):
                alice.say("lobby", f"hello {n}", f"m{n}")
                bob.expect("message", id=f"m{n}")
            alice.send(type="dm", to="bob", text="psst", id="d1")
            alice.expect("ack", id="d1")
            bob.expect("dm", id="d1")
            alice.send_text("{not json")
            alice.expect("error", code="bad_json")
            alice.send_binary(b"\x00")
            alice.expect("error", code="unsupported")
            with pytest.raises(InvalidHandshake) as refused:
                Client.connect(
                    chat.url("name=mallory"), timeout=TIMEOUT, origin="http://evil.example"
                )
            assert refused.value.status == 403

            # carol sends her whole burst, one refused message and one that closes her.
            carol = RfcChatter(chat.url("name=carol"))
            for n in range(BURST + 2):
                carol.send(type="ping", id=f"p{n}")
            for n in range(BURST):
                carol.expect("pong", id=f"p{n}")
            carol.expect("error", code="rate_limited")
            with pytest.raises(ConnectionClosed) as closed:
                carol.recv_text(TIMEOUT)
            assert closed.value.code == 1008  # and the client echoed it

            bob.close()  # 1000
            assert login(chat.port, "dora", "not the password").status == 401
            assert login(chat.port, "dora", PASSWORD).status == 200

            samples = scrape_until(
                chat.port,
                lambda s: (
                    value(s, "chatd_websocket_connections") == 1
                    and value(s, "chatd_close_frames_total", direction="received", code="1000") == 1
                    and value(s, "chatd_close_frames_total", direction="received", code="1008") == 1
                ),
            )
        finally:
            alice.close()

    def received(message_type: str) -> float:
        return value(samples, "chatd_messages_received_total", type=message_type)

    def sent(message_type: str) -> float:
        return value(samples, "chatd_messages_sent_total", type=message_type)

    assert {t: received(t) for t in ("message", "dm", "invalid", "binary", "ping")} == {
        "message": 3,
        "dm": 1,
        "invalid": 1,
        "binary": 1,
        "ping": BURST,
    }
    for message_type in ("join", "leave", "typing", "history", "resume", "receipt", "other"):
        assert received(message_type) == 0, message_type
    # Text messages that reached the hub: all of the above but the binary one.
    assert value(samples, "chatd_hub_messages_received_total") == 3 + 1 + 1 + BURST

    assert sent("welcome") == sent("joined") == 3
    assert sent("message") == 3 * 2  # three messages to alice and bob
    assert sent("ack") == 3 + 1
    assert sent("dm") == 2  # to bob, and a copy to alice
    assert sent("pong") == BURST
    assert sent("error") == 3  # bad_json, unsupported, rate_limited
    assert sent("presence") >= 3  # at least each one coming online
    for message_type in ("left", "history", "receipt", "system", "other"):
        assert sent(message_type) == 0, message_type

    handshakes = {
        outcome: value(samples, "chatd_handshakes_total", outcome=outcome)
        for outcome in (
            "accepted",
            "rejected_origin",
            "rejected_auth",
            "rejected_limit",
            "rejected_other",
        )
    }
    assert handshakes == {
        "accepted": 3,
        "rejected_origin": 1,
        "rejected_auth": 0,
        "rejected_limit": 0,
        "rejected_other": 0,
    }
    assert value(samples, "chatd_server_handshakes_total", result="accepted") == 3
    assert value(samples, "chatd_server_handshakes_total", result="rejected") == 1

    logins = {
        outcome: value(samples, "chatd_logins_total", outcome=outcome)
        for outcome in ("succeeded", "failed", "throttled", "busy")
    }
    assert logins == {"succeeded": 1, "failed": 1, "throttled": 0, "busy": 0}
    assert value(samples, "chatd_rate_limited_total", action="refused") == 1
    assert value(samples, "chatd_rate_limited_total", action="closed") == 1

    closes = {
        labels: count
        for (name, labels), count in samples.items()
        if name == "chatd_close_frames_total"
    }
    # bob's 1000 and carol's echo of the 1008 that chatd sent her; chatd's echo of bob's
    # 1000 is an answer, not a close chatd started.
    assert closes == {
        (("code", "1000"), ("direction", "received")): 1,
        (("code", "1008"), ("direction", "received")): 1,
        (("code", "1008"), ("direction", "sent")): 1,
    }
    assert not any(name.startswith("chatd_server_close_sent") for name, _ in samples)

    assert value(samples, "chatd_db_commit_seconds_count") > 0
    assert value(samples, "chatd_websocket_connections") == 1  # alice
    assert value(samples, "chatd_sessions_attached") == 1
    assert value(samples, "chatd_received_bytes_total") > 0
    assert value(samples, "chatd_sent_bytes_total") > 0


def test_closes_the_runtime_starts_are_counted_as_sent(database: Path) -> None:
    chat = RunningChat(database, settings=UNLIMITED)
    server = chat.server
    assert server is not None
    try:
        # A protocol violation: the server fails the connection with 1007.
        with WireClient.connect(("127.0.0.1", chat.port)) as eve:
            assert eve.handshake(path="/ws?name=eve").status == 101
            eve.send_frame(TEXT, b"\xff not UTF-8")
            while (frame := eve.recv_frame()).opcode != CLOSE:
                pass  # welcome, joined
            assert int.from_bytes(frame.payload[:2], "big") == 1007
            eve.expect_eof()
        samples = scrape(chat.port)
        assert value(samples, "chatd_close_frames_total", direction="sent", code="1007") == 1
        # A shutdown: 1001 to everyone still connected.
        alice = RfcChatter(chat.url("name=alice"))
        server.request_shutdown()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                alice.recv_text(TIMEOUT)
        assert closed.value.code == 1001
    finally:
        chat.stop()
    assert server.stats["close_sent_1007"] == 1
    assert server.stats["close_sent_1001"] == 1
    assert server.stopping


# --- the routes over sockets ----------------------------------------------------------------


def test_ready_and_health_while_running(database: Path) -> None:
    with RunningChat(database) as chat:
        ready = request(chat.port, "/ready")
        assert ready.status == 200
        assert ready.json() == {"status": "ready"}
        assert ready.headers["cache-control"] == "no-store"
        assert request(chat.port, "/health").json() == {"status": "ok"}


def test_metrics_route_formats_and_methods(database: Path) -> None:
    with RunningChat(database, settings=ChatSettings(auth="required")) as chat:
        # required mode, but this peer is on loopback: a local scraper needs no login.
        plain = request(chat.port, "/metrics")
        assert plain.status == 200
        assert b"# TYPE chatd_messages_received_total counter" in plain.body
        openmetrics = request(
            chat.port,
            "/metrics",
            headers=(("Accept", "application/openmetrics-text; version=1.0.0"),),
        )
        assert openmetrics.headers["content-type"].startswith(
            "application/openmetrics-text; version=1.0.0"
        )
        assert openmetrics.body.endswith(b"# EOF\n")
        head = request(chat.port, "/metrics", "HEAD")
        assert head.status == 200
        assert head.body == b""
        for route in ("/metrics", "/ready"):
            refused = request(chat.port, route, "POST")
            assert refused.status == 405
            assert refused.headers["allow"] == "GET, HEAD"


# --- the access rule and readiness, called directly ---------------------------------------------


@dataclass
class FakeConnection:
    """What the HTTP routes read of a ``ServerConnection``."""

    server: Server
    remote_address: tuple[str, int] = ("192.0.2.7", 40000)
    tls: bool = False
    context: Any = field(default=None)

    @property
    def peer(self) -> str:
        return f"{self.remote_address[0]}:{self.remote_address[1]}"


@pytest.fixture
def chat_server(database: Path) -> Iterator[ChatServer]:
    chat = ChatServer(database, settings=ChatSettings(auth="required"))
    try:
        yield chat
    finally:
        chat.server.close()
        chat.close()


def get(
    chat: ChatServer, path: str, *, address: str = "192.0.2.7", user: str | None = None
) -> HttpResponse:
    """``GET path`` from ``address``, logged in as ``user``, through the handler."""
    headers = Headers([("Host", "chat.example")])
    if user is not None:
        assert chat.handler.tokens is not None
        headers.add("Cookie", f"{COOKIE_NAME}={chat.handler.tokens.issue(user).value}")
    connection = cast(ServerConnection, FakeConnection(chat.server, (address, 40000)))
    response = chat.handler.on_http_request(
        connection, Request("GET", path, "HTTP/1.1", headers), b""
    )
    assert isinstance(response, HttpResponse)
    return response


def test_metrics_in_required_mode_are_for_loopback_and_administrators(
    chat_server: ChatServer,
) -> None:
    assert get(chat_server, "/metrics").status == 403
    assert get(chat_server, "/metrics", user="dora").status == 403  # not an administrator
    assert get(chat_server, "/metrics", user="root").status == 200
    assert get(chat_server, "/metrics", address="127.0.0.1").status == 200
    assert get(chat_server, "/metrics", address="::1").status == 200
    refused = get(chat_server, "/metrics", address="::ffff:192.0.2.7")
    assert refused.status == 403
    assert json.loads(refused.body)["error"]["code"] == "forbidden"


def test_metrics_in_open_mode_are_for_everyone(database: Path) -> None:
    chat = ChatServer(database)
    try:
        response = get(chat, "/metrics")
        assert response.status == 200
        assert response.content_type.startswith("text/plain; version=0.0.4")
    finally:
        chat.server.close()
        chat.close()


def test_ready_is_503_once_a_shutdown_was_asked_for(chat_server: ChatServer) -> None:
    assert get(chat_server, "/ready").status == 200  # no login needed, even in required mode
    chat_server.server.request_shutdown()
    stopping = get(chat_server, "/ready")
    assert stopping.status == 503
    assert json.loads(stopping.body) == {"status": "stopping"}


def test_ready_is_503_when_the_database_does_not_answer(chat_server: ChatServer) -> None:
    chat_server.storage.close()
    unavailable = get(chat_server, "/ready")
    assert unavailable.status == 503
    assert json.loads(unavailable.body) == {"status": "database_unavailable"}


def test_server_stopping_once_a_shutdown_is_asked_for() -> None:
    server = Server(Handler())
    try:
        assert not server.stopping
        server.request_shutdown()
        assert server.stopping
    finally:
        server.close()


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("192.0.2.1", False),
        ("::ffff:192.0.2.1", False),
        ("2001:db8::1", False),
        ("", False),  # a Unix socket's peer
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert _is_loopback(address) is loopback


# --- the runtime's close counts in the exposition --------------------------------------------


def test_runtime_close_counts_merge_with_chatds_own() -> None:
    server = Server(Handler())
    try:
        metrics = ChatMetrics()
        metrics.attach(server)
        server.stats["close_sent_1001"] = 2
        server.stats["close_sent_4001"] = 1
        server.stats["close_sent_3123"] = 1
        metrics.count_close(1001, "sent")
        body, _ = metrics.render(None)
        samples = parse(body)
        assert value(samples, "chatd_close_frames_total", direction="sent", code="1001") == 3
        assert value(samples, "chatd_close_frames_total", direction="sent", code="4001") == 1
        assert value(samples, "chatd_close_frames_total", direction="sent", code="3xxx") == 1
        assert not any("close_sent" in name for name, _ in samples)
    finally:
        server.close()
