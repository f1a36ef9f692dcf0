"""chatd's Prometheus metrics: plain counters on the hot path, read at scrape time.

One event-loop thread runs chatd, and a message can be delivered to a thousand peers: a
``prometheus_client.Counter`` per delivery would take a lock each time. So what happens
per message or per delivery is a plain ``int`` in a dict (``ChatMetrics.count_*``, the
runtime's ``Server.stats``, the hub's ``messages_in``), and a custom collector turns those
into metric families only when Prometheus scrapes. ``prometheus_client.Histogram`` is
used only for rare events whose distribution matters: event-loop lag, sampled twice a
second, and database commits, at most one per loop tick.

Render on the loop thread (``GET /metrics`` served by the handler): the collector reads
the loop's live state (connections, sessions, rooms) without locks.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from rfc6455.codes import CloseCode
from rfc6455.server import Server
from rfc6455.timers import Timer

if TYPE_CHECKING:  # chatd.app will import this module: no cycle at run time
    from chatd.app import ChatHandler
    from chatd.hub import Hub

__all__ = [
    "APPLICATION_CLOSE_CODES",
    "CLIENT_MESSAGE_TYPES",
    "CLOSE_DIRECTIONS",
    "CLOSE_SENT_PREFIX",
    "COMMIT_BUCKETS",
    "HANDSHAKE_OUTCOMES",
    "LOGIN_OUTCOMES",
    "LOOP_LAG_BUCKETS",
    "RATE_LIMIT_ACTIONS",
    "SERVER_MESSAGE_TYPES",
    "ChatMetrics",
    "EventLoopLag",
]

#: What a client may send (docs/protocol.md, "Client → server"), plus ``invalid`` (not
#: JSON, no known ``type``) and ``binary`` (binary frames, refused). Anything else counts
#: as ``other``: a label value never comes straight from the peer, so a client cannot
#: create series without end.
CLIENT_MESSAGE_TYPES: Final = (
    "join",
    "leave",
    "message",
    "dm",
    "typing",
    "history",
    "resume",
    "receipt",
    "ping",
    "invalid",
    "binary",
)
#: What the server sends (docs/protocol.md, "Server → client").
SERVER_MESSAGE_TYPES: Final = (
    "welcome",
    "joined",
    "left",
    "message",
    "dm",
    "ack",
    "history",
    "presence",
    "typing",
    "receipt",
    "system",
    "pong",
    "error",
)
#: Why an upgrade on ``/ws`` ended as it did (``ChatHandler.on_connect``/``on_open``).
HANDSHAKE_OUTCOMES: Final = (
    "accepted",
    "rejected_origin",
    "rejected_auth",
    "rejected_limit",
    "rejected_other",
)
#: How a ``POST /api/auth/login`` ended.
LOGIN_OUTCOMES: Final = ("succeeded", "failed", "throttled", "busy")
#: What the per-connection rate gate did to a message over the limit.
RATE_LIMIT_ACTIONS: Final = ("refused", "closed")
#: Whether chatd put a close code in a close frame, or the peer did.
CLOSE_DIRECTIONS: Final = ("sent", "received")
#: chatd's own close codes (4000-4999 are the application's): the hub's "replaced by a
#: newer connection" and the handler's "token expired". Other codes in 3000-4999 are
#: counted as ``3xxx``/``4xxx``, so a peer cannot create a series per code.
APPLICATION_CLOSE_CODES: Final = frozenset({4001, 4401})

#: Event-loop lag: 1 ms is a healthy loop, 100 ms is felt by users, seconds is a stall.
LOOP_LAG_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
#: One SQLite transaction per tick: tens of microseconds in memory, milliseconds on disk
#: with fsync, worse on a busy disk.
COMMIT_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


@dataclass(frozen=True, slots=True)
class _Stat:
    """How one key of ``rfc6455.server.Server.stats`` is exported (a counter)."""

    name: str
    help: str
    label: tuple[str, str] | None = None


#: ``Server.stats`` keys and the counter each becomes. A key not listed here is still
#: exported, as ``chatd_server_<key>_total``, so a new runtime counter is never lost.
SERVER_STATS: Final[dict[str, _Stat]] = {
    "accepted": _Stat(
        "chatd_tcp_connections_accepted_total",
        "TCP connections accepted: WebSocket or plain HTTP, before TLS and any handshake.",
    ),
    "handshakes_accepted": _Stat(
        "chatd_server_handshakes_total",
        "WebSocket upgrades the runtime completed or refused, for any reason, including "
        "malformed requests chatd never sees (chatd_handshakes_total says why).",
        ("result", "accepted"),
    ),
    "handshakes_rejected": _Stat(
        "chatd_server_handshakes_total",
        "WebSocket upgrades the runtime completed or refused, for any reason, including "
        "malformed requests chatd never sees (chatd_handshakes_total says why).",
        ("result", "rejected"),
    ),
    "handshake_timeouts": _Stat(
        "chatd_handshake_timeouts_total",
        "Connections dropped for not finishing the opening handshake in time.",
    ),
    "http_requests": _Stat(
        "chatd_http_requests_total",
        "Plain HTTP requests answered on the WebSocket port.",
    ),
    "messages_received": _Stat(
        "chatd_server_messages_received_total",
        "WebSocket messages (text and binary) received on every connection.",
    ),
    "slow_consumers": _Stat(
        "chatd_slow_consumers_total",
        "Connections closed for not reading fast enough (outgoing buffer over write_limit).",
    ),
    "ping_timeouts": _Stat(
        "chatd_ping_timeouts_total",
        "Connections closed for not answering a keepalive ping in time.",
    ),
    "tls_failures": _Stat(
        "chatd_tls_handshake_failures_total",
        "TLS handshakes that failed.",
    ),
    "closed": _Stat(
        "chatd_websocket_connections_closed_total",
        "WebSocket connections that ended after their handshake completed.",
    ),
    "bytes_received": _Stat(
        "chatd_received_bytes_total",
        "Bytes read from client sockets (after TLS).",
    ),
    "bytes_sent": _Stat(
        "chatd_sent_bytes_total",
        "Bytes written to client sockets (before TLS).",
    ),
}

#: ``Server.stats`` keys ``close_sent_<code>``: close frames the runtime sent on its own
#: initiative (chatd's 1008, 4001 and 4401 go through it too; a shutdown's 1001, a ping
#: timeout's 1011, a slow consumer's 1013, a protocol violation's 1002/1007/1009).
#: Exported in ``chatd_close_frames_total{direction="sent"}``, not one counter per key.
CLOSE_SENT_PREFIX: Final = "close_sent_"

_NOT_A_NAME_CHARACTER = re.compile(r"[^a-zA-Z0-9_]")


def _server_stat(key: str) -> _Stat:
    """How a ``Server.stats`` key is exported: as listed, or under a name made from it."""
    stat = SERVER_STATS.get(key)
    if stat is not None:
        return stat
    safe = _NOT_A_NAME_CHARACTER.sub("_", key)
    return _Stat(f"chatd_server_{safe}_total", f"rfc6455 Server.stats[{key!r}].")


def _close_label(code: int) -> str:
    """The label value for a close code: the code itself, or its range for codes chatd
    does not know (3000-4999 are free for anyone to send).
    """
    if CloseCode.NORMAL_CLOSURE <= code <= CloseCode.TLS_HANDSHAKE:
        return str(code)
    if code in APPLICATION_CLOSE_CODES:
        return str(code)
    if 3000 <= code <= 3999:
        return "3xxx"
    if 4000 <= code <= 4999:
        return "4xxx"
    return "other"


def _counts(keys: Iterable[str]) -> dict[str, int]:
    """A table of plain counters, each known key at 0 (a series exists before its first
    event) and ``other`` for values nobody expected.
    """
    return dict.fromkeys((*keys, "other"), 0)


def _bump(counts: dict[str, int], key: str, n: int = 1) -> None:
    # The hot path: one membership test and one add, no lock, no allocation.
    if key in counts:
        counts[key] += n
    else:
        counts["other"] += n


def _labelled(name: str, help_text: str, label: str, counts: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, help_text, labels=(label,))
    for value, count in counts.items():
        family.add_metric((value,), count)
    return family


def _gauge(name: str, help_text: str, value: float) -> Metric:
    return GaugeMetricFamily(name, help_text, value=value)


class ChatMetrics:
    """Every chatd metric, in a registry of its own (not prometheus_client's global one,
    so that tests and several servers in one process do not clash).

    The ``count_*`` methods are for the event-loop thread: each is a dict update, no lock.
    ``attach`` points the collector at the live server, hub and handler; ``render`` is
    the body of ``GET /metrics``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.event_loop_lag = Histogram(
            "chatd_event_loop_lag_seconds",
            "How late a timer fired on the event loop: the time one tick of work kept "
            "every other connection waiting.",
            buckets=LOOP_LAG_BUCKETS,
            registry=self.registry,
        )
        self.db_commit = Histogram(
            "chatd_db_commit_seconds",
            "How long one database commit (one transaction per loop tick) took.",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        #: Samples ``event_loop_lag``; ``loop_lag.start(server)`` once the server exists.
        self.loop_lag = EventLoopLag(self.event_loop_lag.observe)
        # The plain counters, public so that a hot path may bump them inline.
        self.messages_in = _counts(CLIENT_MESSAGE_TYPES)
        self.messages_out = _counts(SERVER_MESSAGE_TYPES)
        self.handshakes = _counts(HANDSHAKE_OUTCOMES)
        self.logins = _counts(LOGIN_OUTCOMES)
        self.rate_limited = _counts(RATE_LIMIT_ACTIONS)
        #: (direction, close code label) -> count
        self.closes: Counter[tuple[str, str]] = Counter()
        self._server: Server | None = None
        self._hub: Hub | None = None
        self._handler: ChatHandler | None = None
        self.registry.register(_ChatCollector(self))

    # --- counting, on the loop thread ------------------------------------------------------

    def count_message_in(self, message_type: str) -> None:
        """A client message arrived; ``message_type`` is its ``type`` once parsed
        (``invalid`` if it did not parse, ``binary`` for a binary frame).
        """
        _bump(self.messages_in, message_type)

    def count_message_out(self, message_type: str, n: int = 1) -> None:
        """``n`` messages of ``message_type`` were handed to connections (a broadcast
        counts one per recipient).
        """
        _bump(self.messages_out, message_type, n)

    def count_close(self, code: int, direction: str) -> None:
        """A close frame with ``code`` was ``sent`` by chatd or ``received`` from a peer.

        Not for close frames sent through ``ServerConnection.close``: the runtime counts
        those (``Server.stats["close_sent_<code>"]``) and a scrape adds them in.
        """
        if direction not in CLOSE_DIRECTIONS:
            raise ValueError(f"direction is 'sent' or 'received', not {direction!r}")
        self.closes[direction, _close_label(code)] += 1

    def count_handshake(self, outcome: str) -> None:
        """An upgrade on ``/ws`` ended with ``outcome`` (one of ``HANDSHAKE_OUTCOMES``)."""
        _bump(self.handshakes, outcome)

    def count_login(self, outcome: str) -> None:
        """A login attempt ended with ``outcome`` (one of ``LOGIN_OUTCOMES``)."""
        _bump(self.logins, outcome)

    def count_rate_limited(self, *, closed: bool = False) -> None:
        """A message over the rate limit was refused, or closed its connection."""
        self.rate_limited["closed" if closed else "refused"] += 1

    def observe_commit(self, seconds: float) -> None:
        """One database commit took ``seconds``."""
        self.db_commit.observe(seconds)

    @contextlib.contextmanager
    def time_commit(self) -> Iterator[None]:
        """Time the block as one database commit (a failed one too: it held the loop)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.db_commit.observe(time.perf_counter() - start)

    # --- scraping ----------------------------------------------------------------------------

    def attach(
        self,
        server: Server,
        hub: Hub | None = None,
        handler: ChatHandler | None = None,
    ) -> None:
        """Read ``server``'s connections and stats, and the hub's and handler's state, at
        every scrape from now on.
        """
        self._server = server
        self._hub = hub
        self._handler = handler

    def render(self, accept_header: str | None) -> tuple[bytes, str]:
        """The exposition body and its Content-Type for a scrape's ``Accept`` header:
        OpenMetrics when asked for, else the Prometheus text format.
        """
        encoder, content_type = choose_encoder(accept_header or "")
        return encoder(self.registry), content_type

    def _collect(self) -> Iterator[Metric]:
        yield _labelled(
            "chatd_messages_received_total",
            "Client messages by type (invalid: not parsed; binary: refused).",
            "type",
            self.messages_in,
        )
        yield _labelled(
            "chatd_messages_sent_total",
            "Server messages handed to connections, by type; a broadcast counts one per recipient.",
            "type",
            self.messages_out,
        )
        yield _labelled(
            "chatd_handshakes_total",
            "WebSocket upgrades on /ws by outcome, as chatd decided them.",
            "outcome",
            self.handshakes,
        )
        yield _labelled(
            "chatd_logins_total",
            "Login attempts by outcome.",
            "outcome",
            self.logins,
        )
        yield _labelled(
            "chatd_rate_limited_total",
            "Messages over a connection's rate limit: refused with an error, or the one "
            "that closed the connection with 1008.",
            "action",
            self.rate_limited,
        )
        closes = CounterMetricFamily(
            "chatd_close_frames_total",
            "Close frames by direction and code: sent, starting a closing handshake "
            "(not the echo of a peer's close); received from the peer.",
            labels=("direction", "code"),
        )
        counts = self.closes.copy()
        if self._server is not None:
            counts.update(_closes_sent(self._server.stats))
        for (direction, code), count in sorted(counts.items()):
            closes.add_metric((direction, code), count)
        yield closes
        if self._server is not None:
            yield from _server_metrics(self._server)
        if self._hub is not None:
            yield from _hub_metrics(self._hub)
        if self._handler is not None:
            yield from _handler_metrics(self._handler)


class _ChatCollector:
    """The registry's view of ``ChatMetrics``' plain counters (a custom collector)."""

    def __init__(self, metrics: ChatMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics._collect()


def _closes_sent(stats: dict[str, int]) -> Counter[tuple[str, str]]:
    """The runtime's ``close_sent_<code>`` counts, by close code label."""
    closes: Counter[tuple[str, str]] = Counter()
    for key, value in stats.items():
        if key.startswith(CLOSE_SENT_PREFIX):
            code = key[len(CLOSE_SENT_PREFIX) :]
            closes["sent", _close_label(int(code)) if code.isdigit() else "other"] += value
    return closes


def _server_metrics(server: Server) -> Iterator[Metric]:
    """The runtime's counters (``Server.stats``) and its connections right now."""
    families: dict[str, CounterMetricFamily] = {}
    for key, value in server.stats.items():
        if key.startswith(CLOSE_SENT_PREFIX):
            continue  # in chatd_close_frames_total
        stat = _server_stat(key)
        family = families.get(stat.name)
        if family is None:
            labels = () if stat.label is None else (stat.label[0],)
            family = families[stat.name] = CounterMetricFamily(stat.name, stat.help, labels=labels)
        family.add_metric(() if stat.label is None else (stat.label[1],), value)
    yield from families.values()
    # One pass over the connections per scrape, not per event.
    open_websockets = 0
    buffered = 0
    for connection in server.connections:
        if connection.is_open:
            open_websockets += 1
        buffered += connection.buffered_amount
    yield _gauge(
        "chatd_connections",
        "Sockets the server holds: WebSocket, plain HTTP and those still in a handshake.",
        len(server.connections),
    )
    yield _gauge(
        "chatd_websocket_connections",
        "WebSocket connections open for messages.",
        open_websockets,
    )
    yield _gauge(
        "chatd_outgoing_buffered_bytes",
        "Bytes queued for peers and not yet taken by the kernel, over all connections.",
        buffered,
    )


def _hub_metrics(hub: Hub) -> Iterator[Metric]:
    """Sessions, users and rooms, from the same figures as ``GET /api/status``."""
    status = hub.status()
    yield _gauge(
        "chatd_start_time_seconds",
        "When the hub started, in seconds since the Unix epoch.",
        hub.started,
    )
    yield _gauge(
        "chatd_sessions",
        "Chat sessions, including detached ones waiting to be resumed.",
        status["sessions"],
    )
    yield _gauge(
        "chatd_sessions_attached",
        "Chat sessions with a live connection.",
        status["connections"],
    )
    yield _gauge(
        "chatd_users_online", "Distinct users with a live connection.", status["users_online"]
    )
    yield _gauge(
        "chatd_rooms_active", "Rooms with at least one live member.", status["rooms_active"]
    )
    yield CounterMetricFamily(
        "chatd_hub_messages_received_total",
        "Text messages the hub handled (after the rate limit, before parsing).",
        value=hub.messages_in,
    )
    for key, what in (
        ("messages", "Room messages"),
        ("dms", "Direct messages"),
        ("rooms", "Rooms"),
        ("users", "Users"),
    ):
        yield _gauge(f"chatd_stored_{key}", f"{what} in the database.", status[f"stored_{key}"])
    bus = status["bus"]
    yield _gauge(
        "chatd_bus_up",
        "1 while the bus takes writes and delivers events (always 1 for --bus local).",
        1 if bus["up"] else 0,
    )
    yield _gauge(
        "chatd_cluster_nodes",
        "Nodes this node knows of, itself included (1 for --bus local).",
        status["nodes"],
    )
    if bus["kind"] == "redis":
        yield _gauge(
            "chatd_bus_outbox",
            "Writes waiting for Redis (numbered and acknowledged once it answers).",
            bus["outbox"],
        )
        yield CounterMetricFamily(
            "chatd_bus_reconnects_total",
            "Times the connection to Redis came up (the first time included).",
            value=bus["reconnects"],
        )
        yield CounterMetricFamily(
            "chatd_bus_writes_refused_total",
            "Writes refused with 'unavailable' because the outbox was full.",
            value=bus["refused"],
        )
        yield CounterMetricFamily(
            "chatd_bus_entries_received_total",
            "Records and events read from the bus stream (and the room logs on catch-up).",
            value=bus["received"],
        )


def _handler_metrics(handler: ChatHandler) -> Iterator[Metric]:
    """What the handler holds: admitted chat connections and password checks."""
    yield _gauge(
        "chatd_chat_connections_admitted",
        "Chat connections counted against the connection limits.",
        handler.connections.total,
    )
    yield _gauge(
        "chatd_password_checks_in_flight",
        "Password checks and hashes queued or running on worker threads.",
        handler._checks_in_flight,
    )


class EventLoopLag:
    """Measures event-loop lag without blocking: a timer asks to fire in ``interval``
    seconds and reports how much later than that it actually ran, then asks again.

    A loop busy with one long tick (a broadcast to thousands, a slow commit) delays every
    timer and every connection by the same amount: this is that delay, sampled.
    """

    def __init__(
        self, observe: Callable[[float], None], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._observe = observe
        self._clock = clock
        self._server: Server | None = None
        self._interval = 0.5
        self._due = 0.0
        self._timer: Timer | None = None

    def start(self, server: Server, interval: float = 0.5) -> None:
        """Sample every ``interval`` seconds on ``server``'s loop (its thread only)."""
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        self.stop()
        self._server = server
        self._interval = interval
        self._schedule()

    def stop(self) -> None:
        """Stop sampling."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._server = None

    def _schedule(self) -> None:
        assert self._server is not None
        self._due = self._clock() + self._interval
        self._timer = self._server.call_later(self._interval, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._server is None:
            return
        lag = max(0.0, self._clock() - self._due)
        self._schedule()  # first: an observer that raises must not stop the sampling
        self._observe(lag)
