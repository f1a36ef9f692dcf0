"""Tests for chatd.metrics: counters, gauges and histograms as a scrape sees them.

Every test renders the registry and parses the exposition with prometheus_client's own
parsers, so a value is checked the way Prometheus would read it, not through our own
attributes. The servers here never run in a thread: a test drives ``run_once`` itself,
for a bounded time.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from chatd import protocol
from chatd.app import ChatServer
from chatd.metrics import (
    CLIENT_MESSAGE_TYPES,
    ChatMetrics,
    EventLoopLag,
    _server_stat,
)
from rfc6455.server import Handler, Server
from rfc6455.timers import Timer

OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0"

UPGRADE = (
    b"GET / HTTP/1.1\r\n"
    b"Host: 127.0.0.1\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


def scrape(metrics: ChatMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Render in the Prometheus text format and index every sample by name and labels."""
    body, content_type = metrics.render(None)
    assert content_type.startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        assert family.documentation, f"{family.name} has no help text"
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples[name, tuple(sorted(labels.items()))]


@pytest.fixture
def server() -> Iterator[Server]:
    server = Server(Handler())
    yield server
    server.close()


def run_until(server: Server, condition: Callable[[], bool], timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        server.run_once(max_wait=0.01)


# --- counters ------------------------------------------------------------------------------


def test_counters_are_rendered_with_exact_values() -> None:
    metrics = ChatMetrics()
    for _ in range(3):
        metrics.count_message_in("message")
    metrics.count_message_in("typing")
    metrics.count_message_in("no-such-type")
    metrics.count_message_out("message", n=5)
    metrics.count_message_out("ack")
    metrics.count_close(1000, "sent")
    metrics.count_close(1000, "sent")
    metrics.count_close(1001, "received")
    metrics.count_handshake("accepted")
    metrics.count_handshake("rejected_origin")
    metrics.count_handshake("rejected_origin")
    metrics.count_login("succeeded")
    metrics.count_login("throttled")
    metrics.count_rate_limited()
    metrics.count_rate_limited(closed=True)
    metrics.count_rate_limited(closed=True)

    samples = scrape(metrics)

    assert value(samples, "chatd_messages_received_total", type="message") == 3
    assert value(samples, "chatd_messages_received_total", type="typing") == 1
    assert value(samples, "chatd_messages_received_total", type="join") == 0
    assert value(samples, "chatd_messages_received_total", type="other") == 1
    assert ("chatd_messages_received_total", (("type", "no-such-type"),)) not in samples
    assert value(samples, "chatd_messages_sent_total", type="message") == 5
    assert value(samples, "chatd_messages_sent_total", type="ack") == 1
    assert value(samples, "chatd_close_frames_total", direction="sent", code="1000") == 2
    assert value(samples, "chatd_close_frames_total", direction="received", code="1001") == 1
    assert ("chatd_close_frames_total", (("code", "1000"), ("direction", "received"))) not in (
        samples
    )
    assert value(samples, "chatd_handshakes_total", outcome="accepted") == 1
    assert value(samples, "chatd_handshakes_total", outcome="rejected_origin") == 2
    assert value(samples, "chatd_handshakes_total", outcome="rejected_limit") == 0
    assert value(samples, "chatd_logins_total", outcome="succeeded") == 1
    assert value(samples, "chatd_logins_total", outcome="throttled") == 1
    assert value(samples, "chatd_logins_total", outcome="failed") == 0
    assert value(samples, "chatd_rate_limited_total", action="refused") == 1
    assert value(samples, "chatd_rate_limited_total", action="closed") == 2


@pytest.mark.parametrize(
    ("code", "label"),
    [
        (1000, "1000"),
        (1006, "1006"),
        (1013, "1013"),
        (4001, "4001"),
        (4401, "4401"),
        (3000, "3xxx"),
        (3999, "3xxx"),
        (4000, "4xxx"),
        (4999, "4xxx"),
        (2999, "other"),
    ],
)
def test_close_codes_a_peer_picks_share_one_series(code: int, label: str) -> None:
    metrics = ChatMetrics()
    metrics.count_close(code, "received")
    samples = scrape(metrics)
    assert value(samples, "chatd_close_frames_total", direction="received", code=label) == 1


def test_count_close_refuses_an_unknown_direction() -> None:
    with pytest.raises(ValueError, match="direction"):
        ChatMetrics().count_close(1000, "both")


def test_client_message_types_match_the_protocol() -> None:
    # A type added to the protocol and not here would be counted as "other".
    assert set(CLIENT_MESSAGE_TYPES) - {"invalid", "binary"} == set(protocol._PARSERS)


def test_each_chat_metrics_has_its_own_registry() -> None:
    first, second = ChatMetrics(), ChatMetrics()  # no DuplicateTimeseries between them
    first.count_message_in("join")
    first.observe_commit(0.01)
    samples = scrape(second)
    assert value(samples, "chatd_messages_received_total", type="join") == 0
    assert value(samples, "chatd_db_commit_seconds_count") == 0


# --- gauges from the server, the hub and the handler -----------------------------------------


def test_server_stats_and_connections_are_read_at_scrape_time(server: Server) -> None:
    metrics = ChatMetrics()
    metrics.attach(server)
    host, port = server.listen("127.0.0.1", 0).getsockname()[:2]
    samples = scrape(metrics)
    assert value(samples, "chatd_connections") == 0
    assert value(samples, "chatd_tcp_connections_accepted_total") == 0

    with (
        socket.create_connection((host, port), timeout=1) as idle,
        socket.create_connection((host, port), timeout=1) as upgraded,
    ):
        upgraded.sendall(UPGRADE)
        run_until(server, lambda: server.stats["handshakes_accepted"] == 1)
        samples = scrape(metrics)
        assert idle.fileno() >= 0
        assert value(samples, "chatd_connections") == 2
        assert value(samples, "chatd_websocket_connections") == 1
        assert value(samples, "chatd_outgoing_buffered_bytes") == 0
        assert value(samples, "chatd_tcp_connections_accepted_total") == 2
        assert value(samples, "chatd_server_handshakes_total", result="accepted") == 1
        assert value(samples, "chatd_server_handshakes_total", result="rejected") == 0


def test_every_server_stats_key_is_exported(server: Server) -> None:
    metrics = ChatMetrics()
    metrics.attach(server)
    server.stats["slow_consumers"] = 4
    server.stats["bytes_sent"] = 1234
    server.stats["frames.dropped"] = 7  # a key nobody named yet: still exported
    samples = scrape(metrics)
    assert value(samples, "chatd_slow_consumers_total") == 4
    assert value(samples, "chatd_sent_bytes_total") == 1234
    assert value(samples, "chatd_server_frames_dropped_total") == 7
    exported = {name for name, _ in samples}
    for key in server.stats:
        assert _server_stat(key).name in exported, key
    assert "chatd_ping_timeouts_total" in exported


class FakePeer:
    """A connection for the hub: counts what it is sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_text(self, text: str) -> bool:
        self.sent.append(json.loads(text))
        return True

    def send_prepared(self, prepared: Any) -> bool:
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        pass


def test_chat_server_gauges(tmp_path: Path) -> None:
    chat = ChatServer(tmp_path / "chat.db")
    try:
        chat.hub.deliver = lambda peers, prepared: len(peers)  # fake peers, no sockets
        metrics = ChatMetrics()
        metrics.attach(chat.server, chat.hub, chat.handler)
        alice = chat.hub.connect(FakePeer(), "alice", room="dev")
        bob = chat.hub.connect(FakePeer(), "bob")
        chat.hub.receive(alice, json.dumps({"type": "message", "room": "dev", "text": "hi"}))
        chat.hub.flush()
        chat.handler.connections.admit("192.0.2.1")

        samples = scrape(metrics)
        assert value(samples, "chatd_sessions") == 2
        assert value(samples, "chatd_sessions_attached") == 2
        assert value(samples, "chatd_users_online") == 2
        assert value(samples, "chatd_rooms_active") == 2  # lobby and dev
        assert value(samples, "chatd_hub_messages_received_total") == 1
        assert value(samples, "chatd_stored_messages") == 1
        assert value(samples, "chatd_stored_rooms") == 2
        assert value(samples, "chatd_chat_connections_admitted") == 1
        assert value(samples, "chatd_password_checks_in_flight") == 0
        assert value(samples, "chatd_start_time_seconds") == pytest.approx(time.time(), abs=60)

        chat.hub.disconnect(bob)
        samples = scrape(metrics)
        assert value(samples, "chatd_sessions") == 2  # bob's may be resumed
        assert value(samples, "chatd_sessions_attached") == 1
        assert value(samples, "chatd_users_online") == 1
        assert value(samples, "chatd_rooms_active") == 2  # alice is in both
    finally:
        chat.server.close()
        chat.close()


# --- histograms and encodings ------------------------------------------------------------------


def test_commit_histogram_has_buckets_count_and_sum() -> None:
    metrics = ChatMetrics()
    metrics.observe_commit(0.003)
    metrics.observe_commit(0.2)
    with metrics.time_commit():
        pass
    samples = scrape(metrics)
    assert value(samples, "chatd_db_commit_seconds_count") == 3
    assert value(samples, "chatd_db_commit_seconds_sum") == pytest.approx(0.203, abs=0.005)
    assert value(samples, "chatd_db_commit_seconds_bucket", le="0.0025") == 1  # the timed one
    assert value(samples, "chatd_db_commit_seconds_bucket", le="0.005") == 2
    assert value(samples, "chatd_db_commit_seconds_bucket", le="0.25") == 3
    assert value(samples, "chatd_db_commit_seconds_bucket", le="+Inf") == 3


def test_time_commit_observes_a_failed_commit_too() -> None:
    metrics = ChatMetrics()
    with pytest.raises(RuntimeError), metrics.time_commit():
        raise RuntimeError("disk full")
    assert value(scrape(metrics), "chatd_db_commit_seconds_count") == 1


def test_openmetrics_is_chosen_when_asked_for() -> None:
    metrics = ChatMetrics()
    metrics.count_message_in("message")
    metrics.event_loop_lag.observe(0.002)
    body, content_type = metrics.render(OPENMETRICS_ACCEPT)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    # The OpenMetrics parser has no annotations in prometheus_client 0.26.
    parsed = openmetrics_families(body.decode())  # type: ignore[no-untyped-call]
    families = {family.name: family for family in parsed}
    received = families["chatd_messages_received"]
    assert received.type == "counter"
    assert {s.labels["type"]: s.value for s in received.samples if s.name.endswith("_total")}[
        "message"
    ] == 1
    lag = families["chatd_event_loop_lag_seconds"]
    assert lag.type == "histogram"
    assert [s.value for s in lag.samples if s.name.endswith("_count")] == [1]


def test_prometheus_text_format_without_an_accept_header() -> None:
    body, content_type = ChatMetrics().render(None)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# EOF" not in body
    assert b"# TYPE chatd_messages_received_total counter" in body


# --- event-loop lag ----------------------------------------------------------------------------


class FakeLoop:
    """Just ``call_later``, on a clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0
        self.scheduled: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        self.scheduled.append((delay, callback))
        return cast(Timer, _NoTimer())


class _NoTimer:
    def cancel(self) -> None:
        pass


def test_loop_lag_is_how_late_the_timer_fired() -> None:
    loop = FakeLoop()
    observed: list[float] = []
    lag = EventLoopLag(observed.append, clock=lambda: loop.now)
    lag.start(cast(Server, loop), interval=0.5)
    assert [delay for delay, _ in loop.scheduled] == [0.5]
    loop.now += 0.5 + 0.25  # the loop was busy for a quarter second past the deadline
    loop.scheduled[-1][1]()
    assert observed == [pytest.approx(0.25)]
    assert len(loop.scheduled) == 2  # sampling goes on
    loop.now += 0.5
    loop.scheduled[-1][1]()
    assert observed[-1] == pytest.approx(0.0)
    lag.stop()
    loop.scheduled[-1][1]()  # a timer that fires after stop() observes nothing
    assert len(observed) == 2


def test_loop_lag_samples_a_real_loop_and_sees_a_stall(server: Server) -> None:
    metrics = ChatMetrics()
    metrics.loop_lag.start(server, interval=0.02)
    server.call_later(0.1, lambda: time.sleep(0.15))  # one tick that blocks the loop
    deadline = time.monotonic() + 0.45
    while time.monotonic() < deadline:
        server.run_once(max_wait=0.02)
    metrics.loop_lag.stop()
    samples = scrape(metrics)
    count = value(samples, "chatd_event_loop_lag_seconds_count")
    assert count >= 5
    # The stall delayed one sample by most of its 150 ms; the others were on time.
    assert value(samples, "chatd_event_loop_lag_seconds_bucket", le="0.05") < count
    assert value(samples, "chatd_event_loop_lag_seconds_sum") >= 0.1
