"""chatd's application layer: the WebSocket handler and the HTTP routes on one port.

``ChatHandler`` plugs the hub into ``rfc6455.server``: upgrades on ``/ws`` become hub
sessions; everything else is plain HTTP (the UI, static files, health, readiness,
metrics, the admin page and the JSON API); upgrades on ``/admin/ws`` feed the admin page
(``AdminFeed``). It never parses frames or HTTP itself: the runtime hands it requests and
messages.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import math
import mimetypes
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from chatd import protocol
from chatd.accounts import AccountError, Accounts, check_password, hash_password, verify_password
from chatd.auth import (
    LoginThrottle,
    TokenIssuer,
    clear_cookie,
    load_or_create_secret,
    session_cookie,
    token_from_headers,
)
from chatd.bus import HEARTBEAT_INTERVAL, Bus, LocalBus
from chatd.config import ChatSettings
from chatd.hub import Hub, Session, now_ms
from chatd.limits import ConnectionLimiter, MessageGate, Verdict
from chatd.metrics import ChatMetrics, EventLoopLag
from chatd.origins import OriginPolicy
from chatd.redis_bus import RedisBus
from chatd.storage import Storage, StorageError
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
from rfc6455.timers import Timer

__all__ = ["ADMIN_PAGE", "ADMIN_WS", "STATIC_DIR", "AdminFeed", "ChatHandler", "ChatServer"]

logger = logging.getLogger("chatd")

T = TypeVar("T")

STATIC_DIR = Path(__file__).parent / "static"
#: Sent with every response of the UI: no inline script, no framing, no sniffing.
SECURITY_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]
#: The admin page (``GET /admin``, not under ``/static/``) and its WebSocket.
ADMIN_PAGE = "admin.html"
ADMIN_WS = "/admin/ws"
#: Seconds between two ``admin`` snapshots.
ADMIN_INTERVAL = 1.0
#: Rooms and users an ``admin`` snapshot lists, at most (the counts are always whole).
ADMIN_LISTED = 200
#: Admin sockets open at once, at most: each is sent every snapshot.
MAX_ADMIN_SOCKETS = 8


@dataclass(slots=True)
class _Pending:
    """What ``on_connect`` learned from the upgrade request, for ``on_open``."""

    name: str
    room: str | None
    session_id: str | None
    ip: str
    #: The token's expiry (epoch seconds) for a logged-in user, None for a guest.
    expires: float | None = None


@dataclass(slots=True)
class _Live:
    """An open chat connection: its session, its rate gate, the address it counts for,
    and the timer that closes it when its token expires.
    """

    session: Session
    gate: MessageGate
    ip: str
    expiry: Timer | None = None


@dataclass(slots=True)
class _Admin:
    """An admin socket (``/admin/ws``): not a chat session, no presence. ``user`` is the
    administrator's account (None for a loopback peer in ``open`` mode).
    """

    user: str | None
    ip: str
    #: The token's expiry (epoch seconds), and the timer that closes the socket then.
    expires: float | None = None
    expiry: Timer | None = None

    @property
    def who(self) -> str:
        return self.user or self.ip


#: Close code and reason for a client that keeps sending past its rate limit.
CLOSE_RATE_LIMITED = 1008
#: Close code for a connection whose access token expired (4000-4999: the application's;
#: 4401 echoes HTTP 401): the client logs in again.
CLOSE_TOKEN_EXPIRED = 4401
#: The largest body of an auth request (a user name and a password, in JSON).
MAX_AUTH_BODY = 4096
#: Password checks and hashes waiting for or running on a worker thread, at most.
MAX_CHECKS_IN_FLIGHT = 32


def _ip(connection: ServerConnection) -> str:
    address = connection.remote_address
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address)


def _is_loopback(ip: str) -> bool:
    """Whether ``ip`` is a loopback address (127.0.0.0/8, ::1, or ::ffff:127.x.y.z).
    A Unix socket's peer has no address and is not counted as one.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _json(status: int, body: Any) -> HttpResponse:
    return HttpResponse(
        status,
        (json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n").encode(),
        "application/json",
        [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")],
    )


def _error(status: int, code: str, message: str) -> HttpResponse:
    return _json(status, {"error": {"code": code, "message": message}})


def _credentials(request: Request, body: bytes) -> tuple[str, str] | HttpResponse:
    """``(username, password)`` from a JSON body, or the error response that says why not."""
    content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return _error(415, "unsupported_media_type", "send JSON (application/json)")
    if len(body) > MAX_AUTH_BODY:
        return _error(413, "too_large", f"at most {MAX_AUTH_BODY} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return _error(400, "bad_request", "the body is not JSON")
    if not isinstance(data, dict):
        return _error(400, "bad_request", "send an object with username and password")
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return _error(400, "bad_request", "username and password are strings")
    return username, password


def _query_int(value: str | None) -> int | None:
    """A query parameter of ASCII digits only (``int()`` would also take ``" 1_0"``)."""
    if not value or not value.isascii() or not value.isdigit() or len(value) > 20:
        return None
    return int(value)


class AdminFeed:
    """The admin page's live figures: while at least one admin socket is open, a repeating
    timer on the loop builds one ``admin`` snapshot every ``interval`` seconds and sends
    that same text to each of them (docs/protocol.md, "The admin feed").

    A snapshot costs one pass over the live rooms and users, and lists at most ``limit``
    of each; nothing runs while nobody watches.
    """

    def __init__(
        self,
        hub: Hub,
        metrics: ChatMetrics,
        *,
        interval: float = ADMIN_INTERVAL,
        limit: int = ADMIN_LISTED,
    ) -> None:
        self.hub = hub
        self.metrics = metrics
        self.interval = interval
        self.limit = limit
        #: The admin sockets open now.
        self.sockets: set[ServerConnection] = set()
        #: Event-loop lag (seconds): the last sample and the largest since start, fed by
        #: the same ``EventLoopLag`` sampler as ``chatd_event_loop_lag_seconds``.
        self.lag_last: float | None = None
        self.lag_max = 0.0
        self._server: Server | None = None
        self._timer: Timer | None = None
        #: Message totals at the last sample, when it was taken, and the rates since.
        self._totals = (0, 0)
        self._sampled = 0.0
        self._rates: tuple[float, float] | None = None
        self._slow_seen = 0

    @property
    def running(self) -> bool:
        """Whether the snapshot timer is scheduled (only while an admin socket is open)."""
        return self._timer is not None

    def observe_lag(self, seconds: float) -> None:
        """One loop-lag sample (``EventLoopLag``'s observer)."""
        self.lag_last = seconds
        self.lag_max = max(self.lag_max, seconds)

    def add(self, connection: ServerConnection) -> None:
        """An admin socket opened: it gets a snapshot now, then one per interval."""
        self.sockets.add(connection)
        if self._timer is None:
            self._server = connection.server
            self._totals = self._message_totals()
            self._sampled = time.monotonic()
            self._rates = None  # unknown until one interval has passed
            self._timer = connection.server.call_later(self.interval, self._tick)
        connection.send_text(protocol.encode(self.snapshot(connection.server)))

    def remove(self, connection: ServerConnection) -> None:
        """An admin socket closed; the timer stops with the last one."""
        self.sockets.discard(connection)
        if not self.sockets and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def note_slow_consumers(self, server: Server) -> None:
        """Record the connections the runtime closed as slow consumers since last time
        (it counts them in ``Server.stats``; chatd learns of each only from its close).
        """
        seen = server.stats.get("slow_consumers", 0)
        for _ in range(min(seen - self._slow_seen, 100)):
            self.hub.events.record("slow_consumer", detail="closed: not reading")
        self._slow_seen = seen

    def _tick(self) -> None:
        self._timer = None
        server = self._server
        if server is None or not self.sockets:
            return
        self._timer = server.call_later(self.interval, self._tick)  # first: a failure
        # below must not stop the feed
        self.note_slow_consumers(server)
        self._sample_rates()
        text = protocol.encode(self.snapshot(server))
        for connection in list(self.sockets):
            if connection.is_open:
                connection.send_text(text)

    def _message_totals(self) -> tuple[int, int]:
        return sum(self.metrics.messages_in.values()), sum(self.metrics.messages_out.values())

    def _sample_rates(self) -> None:
        now = time.monotonic()
        totals = self._message_totals()
        elapsed = now - self._sampled
        if elapsed > 0:
            self._rates = (
                (totals[0] - self._totals[0]) / elapsed,
                (totals[1] - self._totals[1]) / elapsed,
            )
        self._totals, self._sampled = totals, now

    def snapshot(self, server: Server) -> dict[str, Any]:
        """The ``admin`` message: the server's figures now."""
        status = self.hub.status()
        rates = self._rates
        totals = self._message_totals()
        snapshot: dict[str, Any] = {
            "type": "admin",
            "ts": now_ms(),
            "uptime": status["uptime"],
            "connections": status["connections"],
            "sockets": len(server.connections),
            "admins": len(self.sockets),
            "sessions": status["sessions"],
            "users_online": status["users_online"],
            "users": self.hub.online_users(self.limit),
            "rooms_active": status["rooms_active"],
            "rooms_stored": status["stored_rooms"],
            "rooms": self.hub.active_rooms(self.limit),
            "messages": {
                "in_total": totals[0],
                "out_total": totals[1],
                "in_per_second": None if rates is None else round(rates[0], 2),
                "out_per_second": None if rates is None else round(rates[1], 2),
            },
            "events": self.hub.events.to_wire(),
        }
        if self.lag_last is not None:
            snapshot["loop_lag"] = {
                "last": round(self.lag_last, 6),
                "max": round(self.lag_max, 6),
            }
        return snapshot


class ChatHandler(Handler):
    """The chat service behind ``rfc6455.server.Server``."""

    def __init__(
        self,
        hub: Hub,
        static_dir: Path = STATIC_DIR,
        settings: ChatSettings | None = None,
    ) -> None:
        self.hub = hub
        #: The hub's counters: one set per server, rendered by ``GET /metrics``.
        self.metrics: ChatMetrics = hub.metrics
        self.static_dir = static_dir.resolve()
        self.settings = settings or ChatSettings()
        #: Set by ``ChatServer``: accounts and tokens (None: guests only, no logins).
        self.accounts: Accounts | None = None
        self.tokens: TokenIssuer | None = None
        self.throttle = LoginThrottle(self.settings.login_attempts, self.settings.login_window)
        self._checks_in_flight = 0
        self.origins = OriginPolicy.from_config(
            self.settings.allowed_origins, allow_missing=self.settings.allow_missing_origin
        )
        limits = self.settings.limits
        self.connections = ConnectionLimiter(limits.max_connections, limits.max_connections_per_ip)
        self.rate_limited = 0
        #: The admin page's snapshots, sent over ``/admin/ws``.
        self.admin = AdminFeed(hub, self.metrics)

    # --- WebSocket ---------------------------------------------------------------------------

    def on_connect(
        self, connection: ServerConnection, request: Request
    ) -> Sequence[tuple[str, str]]:
        if request.path not in ("/ws", ADMIN_WS):
            raise self._refusal("rejected_other", "no WebSocket endpoint here; use /ws", 404)
        # Section 10.2: a browser names the page that opens the socket; a page of another
        # origin must not chat (or watch the admin feed) with the visitor's credentials.
        origins = request.headers.get_all("Origin")
        if len(origins) > 1:
            raise self._refusal("rejected_origin", "more than one Origin header", 403)
        refusal = self.origins.check(
            origins[0] if origins else None, request.headers.get("Host"), tls=connection.tls
        )
        if refusal is not None:
            logger.warning("%s: upgrade refused: %s (%s)", connection.peer, refusal, origins[:1])
            raise self._refusal("rejected_origin", refusal, 403)
        if request.path == ADMIN_WS:
            connection.context = self._admin_upgrade(connection, request)
            return ()
        query = request.query
        user, expires = self._authenticated(connection, request)
        if user is None and self.settings.auth == "required":
            raise self._refusal("rejected_auth", "authentication required: log in first", 401)
        name = user or query.get("name") or "guest"
        if not protocol.is_valid_name(name):
            raise self._refusal(
                "rejected_other", "a name is 1-50 letters, digits, '-', '_' or '.'", 400
            )
        if user is None and self.accounts is not None and self.accounts.exists(name):
            raise self._refusal(
                "rejected_auth", "this name belongs to an account: log in to use it", 403
            )
        room = query.get("room") or None
        if room is not None and not protocol.is_valid_room(room):
            raise self._refusal(
                "rejected_other", "a room name is 1-64 letters, digits, '-', '_' or '.'", 400
            )
        ip = _ip(connection)
        full = self.connections.admit(ip)
        if full is not None:
            logger.warning("%s: upgrade refused: %s", connection.peer, full)
            self.hub.events.record("connection_refused", name, detail=full.replace("_", " "))
            raise self._refusal("rejected_limit", full.replace("_", " "), 503)
        # Counted for real in on_open: the upgrade may still fail (a malformed
        # Sec-WebSocket-Protocol), and then no on_close would give the slot back.
        self.connections.release(ip)
        connection.context = _Pending(name, room, query.get("session") or None, ip, expires)
        return ()

    def _refusal(self, outcome: str, reason: str, status: int) -> InvalidHandshake:
        """The refusal of an upgrade, counted by why (``HANDSHAKE_OUTCOMES``)."""
        self.metrics.count_handshake(outcome)
        return InvalidHandshake(reason, status)

    def _authenticated(
        self, connection: ServerConnection, request: Request
    ) -> tuple[str | None, float | None]:
        """The logged-in user a request's token names, and when the token expires; a bad
        token is logged with why (RFC 7519 section 7.2) and counts as none.
        """
        if self.tokens is None:
            return None, None
        token = token_from_headers(request.headers.get_all("Cookie"), request.query)
        if token is None:
            return None, None
        user, reason = self.tokens.verify_reason(token)
        if user is None:
            logger.info("%s: token refused: %s", connection.peer, reason)
            return None, None
        return user, self.tokens.expiry(token)

    def _admin_upgrade(self, connection: ServerConnection, request: Request) -> _Admin:
        """Admit an upgrade on ``/admin/ws`` by the admin page's rule, or refuse it with
        401 or 403 before the upgrade (503 when too many admin sockets are open).
        """
        access = self._admin_access(connection, request)
        if not isinstance(access, _Admin):
            status, _, message = access
            logger.warning("%s: admin upgrade refused: %s", connection.peer, message)
            raise self._refusal("rejected_auth", message, status)
        if len(self.admin.sockets) >= MAX_ADMIN_SOCKETS:
            raise self._refusal(
                "rejected_limit", f"at most {MAX_ADMIN_SOCKETS} admin connections", 503
            )
        return access

    def _admin_access(
        self, connection: ServerConnection, request: Request
    ) -> _Admin | tuple[int, str, str]:
        """Who may see the admin page and its feed: in ``open`` mode a loopback peer
        (127.0.0.0/8, ::1), else 403; in ``required`` mode a logged-in administrator
        (``chatd user add --admin``): 401 without a valid token, 403 for anyone else.
        Returns the admitted ``_Admin``, or the refusal's (status, code, message).
        """
        ip = _ip(connection)
        if self.settings.auth == "open":
            if _is_loopback(ip):
                return _Admin(None, ip)
            return 403, "forbidden", "the admin page is served to loopback only"
        user, expires = self._authenticated(connection, request)
        if user is None:
            return 401, "unauthenticated", "log in as an administrator first"
        account = self.accounts.get(user) if self.accounts is not None else None
        if account is None or not account.is_admin:
            return 403, "forbidden", "the admin page is for administrators"
        return _Admin(user, ip, expires)

    def on_open(self, connection: ServerConnection) -> None:
        if isinstance(connection.context, _Admin):
            self._open_admin(connection, connection.context)
            return
        pending = connection.context
        assert isinstance(pending, _Pending)
        session = self.hub.connect(
            connection,
            pending.name,
            room=pending.room,
            session_id=pending.session_id,
            authenticated=pending.expires is not None,
        )
        limits = self.settings.limits
        gate = MessageGate(
            limits.message_rate,
            limits.message_burst,
            strikes=limits.rate_strikes,
            window=limits.strike_window,
        )
        self.connections.admit(pending.ip)  # checked in on_connect, this same tick
        live = _Live(session, gate, pending.ip)
        if pending.expires is not None:
            # A token is checked at the upgrade; a connection must not outlive it.
            live.expiry = connection.server.call_later(
                max(0.0, pending.expires - time.time()),
                lambda: connection.close(CLOSE_TOKEN_EXPIRED, "token expired: log in again"),
            )
        connection.context = live
        self.metrics.count_handshake("accepted")
        # Not the session id: it is a bearer secret (it takes the session over).
        logger.info("%s: %s connected", connection.peer, session.user)

    def _open_admin(self, connection: ServerConnection, admin: _Admin) -> None:
        if admin.expires is not None:
            admin.expiry = connection.server.call_later(
                max(0.0, admin.expires - time.time()),
                lambda: connection.close(CLOSE_TOKEN_EXPIRED, "token expired: log in again"),
            )
        self.metrics.count_handshake("accepted")
        self.hub.events.record("admin", admin.user, detail=f"watching from {admin.ip}")
        logger.info("%s: admin feed opened for %s", connection.peer, admin.who)
        self.admin.add(connection)

    def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
        live = connection.context
        if not isinstance(live, _Live) or live.session.peer is not connection:
            return  # replaced by a newer connection
        if not connection.is_open:
            return  # closing (its rate, its token): what it still sends is not read
        # The rate is checked on the raw frame, before any JSON parsing: a flood costs
        # a counter per message, not a parse.
        verdict = live.gate.check()
        if verdict is not Verdict.PASS:
            self.rate_limited += 1
            self.metrics.count_rate_limited(closed=verdict is Verdict.CLOSE)
            self.hub.events.record(
                "rate_limited",
                live.session.user,
                detail="closed" if verdict is Verdict.CLOSE else "refused",
            )
            if verdict is Verdict.CLOSE:
                logger.warning(
                    "%s: %s closed: over the rate limit", connection.peer, live.session.user
                )
                connection.close(CLOSE_RATE_LIMITED, "rate limit exceeded")
                return
            live.session.send(
                protocol.ProtocolError("rate_limited", "too many messages: slow down").to_wire()
            )
            return
        if isinstance(message, str):
            self.hub.receive(live.session, message)
        else:
            self.hub.refuse_binary(live.session)

    def on_close(self, connection: ServerConnection, code: int, reason: str) -> None:
        # Close frames chatd sent are counted by the runtime (Server.stats).
        if connection.protocol.close_received:
            self.metrics.count_close(code, "received")
        self.admin.note_slow_consumers(connection.server)
        live = connection.context
        if isinstance(live, _Admin):
            if live.expiry is not None:
                live.expiry.cancel()
            self.admin.remove(connection)
            logger.info("%s: admin feed closed for %s (%d)", connection.peer, live.who, code)
        if isinstance(live, _Live):
            self.connections.release(live.ip)
            if live.expiry is not None:
                live.expiry.cancel()
            if live.session.peer is connection:
                self.hub.disconnect(live.session)
                self.hub.events.record("disconnect", live.session.user, detail=str(code))
                logger.info("%s: %s disconnected (%d)", connection.peer, live.session.user, code)

    # --- HTTP ----------------------------------------------------------------------------------

    def on_http_request(
        self, connection: ServerConnection, request: Request, body: bytes
    ) -> HttpResponse | DeferredResponse:
        """Auth routes, CORS for the API, then the read-only routes of ``on_http``."""
        path = request.path
        origins = request.headers.get_all("Origin")
        origin = origins[0] if len(origins) == 1 else None
        host = request.headers.get("Host")
        cors = (
            self.origins.cors_headers(origin, host, tls=connection.tls)
            if path.startswith("/api/")
            else []
        )
        if (
            request.method == "OPTIONS"
            and path.startswith("/api/")
            and origin is not None
            and request.headers.get("Access-Control-Request-Method") is not None
        ):
            # A CORS preflight (Fetch standard): only allowed origins get the grant.
            if not cors:
                return _error(403, "forbidden_origin", "this origin may not call the API")
            response = HttpResponse(204)
            response.headers += [
                *cors,
                ("Access-Control-Allow-Methods", "GET, POST"),
                ("Access-Control-Allow-Headers", "Content-Type"),
                ("Access-Control-Max-Age", "600"),
            ]
            return response
        if request.method == "POST":
            # A request that changes state, sent by a page of another origin, is refused
            # (cross-site request forgery), whatever its cookies say.
            if origins and self.origins.check(origin, host, tls=connection.tls) is not None:
                logger.warning("%s: POST %s refused: foreign Origin", connection.peer, path)
                return _error(403, "forbidden_origin", "this origin may not call the API")
            result = self._post(connection, request, body, cors)
            if isinstance(result, HttpResponse):
                result.headers += cors
            return result
        if (
            self.settings.auth == "required"
            and path.startswith("/api/")
            and path != "/api/me"
            and self._authenticated(connection, request)[0] is None
        ):
            response = _error(401, "unauthenticated", "log in first")
        elif path == "/api/me":
            response = self._me(connection, request)
        elif path == "/metrics" and request.method in ("GET", "HEAD"):
            response = self._metrics(connection, request)
        elif path == "/ready" and request.method in ("GET", "HEAD"):
            response = self._ready(connection.server)
        elif path == "/admin" and request.method in ("GET", "HEAD"):
            response = self._admin_page(connection, request)
        else:
            response = self.on_http(request, body)
        response.headers += cors
        return response

    # --- operations: metrics and readiness -----------------------------------------------------

    def _metrics(self, connection: ServerConnection, request: Request) -> HttpResponse:
        """``GET /metrics``: the Prometheus exposition (OpenMetrics when asked for)."""
        if not self._may_read_metrics(connection, request):
            return _error(403, "forbidden", "metrics are served to loopback and to administrators")
        body, content_type = self.metrics.render(request.headers.get("Accept"))
        return HttpResponse(
            200,
            body,
            content_type,
            [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")],
        )

    def _may_read_metrics(self, connection: ServerConnection, request: Request) -> bool:
        """In ``open`` mode, anyone; in ``required`` mode, a loopback peer (a scraper on
        this host) or a logged-in administrator. Behind a reverse proxy on this host,
        every request comes from loopback: the proxy must not pass ``/metrics`` on.
        """
        if self.settings.auth == "open" or _is_loopback(_ip(connection)):
            return True
        user, _ = self._authenticated(connection, request)
        if user is None or self.accounts is None:
            return False
        account = self.accounts.get(user)
        return account is not None and account.is_admin

    def _admin_page(self, connection: ServerConnection, request: Request) -> HttpResponse:
        """``GET /admin``: the monitoring page, to whom ``_admin_access`` admits (the page
        holds no data: its feed, ``/admin/ws``, checks the same rule again).
        """
        access = self._admin_access(connection, request)
        if not isinstance(access, _Admin):
            return _error(*access)
        page = self.static_dir / ADMIN_PAGE
        if not page.is_file():
            return _error(404, "not_found", "this server has no admin page")
        return self._file(page)

    def _ready(self, server: Server) -> HttpResponse:
        """``GET /ready``: 200 while the server takes connections, the database answers
        and the bus is connected; 503 once a shutdown began (``/health`` only says the
        process lives).
        """
        if server.stopping:
            return _json(503, {"status": "stopping"})
        try:
            self.hub.storage.schema_version()  # a read of the database file
        except (sqlite3.Error, StorageError) as error:
            logger.warning("not ready: the database does not answer: %s", error)
            return _json(503, {"status": "database_unavailable"})
        if not self.hub.bus.up:
            # Its clients are still served, but a load balancer should send new ones to a
            # node that can store their messages.
            return _json(503, {"status": "bus_unavailable"})
        return _json(200, {"status": "ready"})

    # --- accounts and tokens -------------------------------------------------------------------

    def _me(self, connection: ServerConnection, request: Request) -> HttpResponse:
        user, expires = self._authenticated(connection, request)
        about = {"auth": self.settings.auth, "registration": self._registration_open()}
        if user is not None:
            return _json(200, {"user": user, **about, "expires": expires})
        if self.settings.auth == "required":
            return _json(
                401, {"error": {"code": "unauthenticated", "message": "log in first"}, **about}
            )
        return _json(200, {"user": None, **about})

    def _registration_open(self) -> bool:
        return self.settings.registration and self.accounts is not None

    def _post(
        self,
        connection: ServerConnection,
        request: Request,
        body: bytes,
        cors: list[tuple[str, str]],
    ) -> HttpResponse | DeferredResponse:
        path = request.path
        if path == "/api/auth/logout":
            response = HttpResponse(204)
            response.headers.append(("Set-Cookie", clear_cookie(secure=self._secure(connection))))
            response.headers.append(("Cache-Control", "no-store"))
            return response
        if path not in ("/api/auth/login", "/api/auth/register"):
            if self._is_get_route(path):
                response = _error(405, "method_not_allowed", "POST is not allowed here")
                response.headers.append(("Allow", "GET, HEAD"))
                return response
            return _error(404, "not_found", f"no such resource: {path[:100]}")
        if self.accounts is None or self.tokens is None:
            return _error(404, "not_found", "this server has no accounts")
        credentials = _credentials(request, body)
        if isinstance(credentials, HttpResponse):
            return credentials
        username, password = credentials
        ip = _ip(connection)
        login = path == "/api/auth/login"  # registrations are not counted as logins
        if not self.throttle.allowed(ip):
            if login:
                self.metrics.count_login("throttled")
            wait = math.ceil(self.throttle.retry_after(ip))
            logger.warning("%s: login refused: too many failures", connection.peer)
            response = _error(429, "rate_limited", f"too many attempts: retry in {wait} s")
            response.headers.append(("Retry-After", str(wait)))
            return response
        if self._checks_in_flight >= MAX_CHECKS_IN_FLIGHT:
            if login:
                self.metrics.count_login("busy")
            # Each check is tens of milliseconds of a worker: bound the queue.
            response = _error(503, "busy", "too many logins at once: retry in a moment")
            response.headers.append(("Retry-After", "1"))
            return response
        if not login:
            return self._register(connection, username, password, cors)
        return self._login(connection, username, password, cors)

    def _login(
        self,
        connection: ServerConnection,
        username: str,
        password: str,
        cors: list[tuple[str, str]],
    ) -> DeferredResponse:
        """Check the password on a worker thread (scrypt takes tens of milliseconds: not
        on the loop). An unknown user is checked against a dummy hash, so that a failure
        takes the same time whether or not the user exists.
        """
        assert self.accounts is not None
        known = protocol.is_valid_name(username) and self.accounts.exists(username)
        stored = self.accounts.password_hash(username if known else "")
        deferred = DeferredResponse()
        ip = _ip(connection)
        secure = self._secure(connection)
        # Counted before the check, so that attempts sent all at once are throttled too.
        self.throttle.failed(ip)

        def done(result: bool | BaseException) -> None:
            if result is True and known:
                self.metrics.count_login("succeeded")
                self.throttle.succeeded(ip)
                self.hub.events.record("login", username, detail=ip)
                logger.info("%s: %s logged in", connection.peer, username)
                response = self._token_response(200, username, secure)
            else:
                self.metrics.count_login("failed")
                self.hub.events.record("login_failed", username if known else None, detail=ip)
                logger.warning("%s: failed login for %r", connection.peer, username[:50])
                response = _error(401, "bad_credentials", "wrong user name or password")
            response.headers += cors
            deferred.complete(response)

        self._run_check(connection, lambda: verify_password(password, stored), done)
        return deferred

    def _register(
        self,
        connection: ServerConnection,
        username: str,
        password: str,
        cors: list[tuple[str, str]],
    ) -> HttpResponse | DeferredResponse:
        """Create an account (when registration is open), hashing on a worker thread."""
        assert self.accounts is not None
        if not self._registration_open():
            return _error(403, "registration_closed", "accounts are made by an administrator")
        # Every attempt counts against the address, so that nobody mass-creates accounts.
        ip = _ip(connection)
        self.throttle.failed(ip)
        if not protocol.is_valid_name(username):
            return _error(400, "bad_name", "a name is 1-50 letters, digits, '-', '_' or '.'")
        try:
            check_password(password)
        except AccountError as error:
            return _error(400, "bad_password", str(error))
        if self.accounts.exists(username) or username in self.hub.users:
            return _error(409, "name_taken", f"the name {username} is taken")
        deferred = DeferredResponse()
        secure = self._secure(connection)

        def done(result: str | BaseException) -> None:
            assert self.accounts is not None
            if isinstance(result, BaseException):
                response = _error(500, "internal_error", "the account could not be made")
            else:
                try:
                    self.accounts.add_hashed(username, result)
                except AccountError:
                    response = _error(409, "name_taken", f"the name {username} is taken")
                else:
                    self.hub.events.record("register", username, detail=_ip(connection))
                    logger.info("%s: account %s registered", connection.peer, username)
                    response = self._token_response(201, username, secure)
            response.headers += cors
            deferred.complete(response)

        self._run_check(connection, lambda: hash_password(password), done)
        return deferred

    def _run_check(
        self,
        connection: ServerConnection,
        work: Callable[[], T],
        done: Callable[[T | BaseException], None],
    ) -> None:
        """Run a password check or hash on a worker, counting it while it is in flight."""
        self._checks_in_flight += 1

        def finished(result: T | BaseException) -> None:
            self._checks_in_flight -= 1
            done(result)

        connection.server.run_in_thread(work, finished)

    def _token_response(self, status: int, user: str, secure: bool) -> HttpResponse:
        assert self.tokens is not None
        token = self.tokens.issue(user)
        response = _json(status, {"user": user, "expires": token.expires})
        response.headers.append(("Set-Cookie", session_cookie(token, secure=secure)))
        return response

    def _secure(self, connection: ServerConnection) -> bool:
        return connection.tls or self.settings.tls

    @staticmethod
    def _is_get_route(path: str) -> bool:
        return path in {
            "/",
            "/index.html",
            "/health",
            "/metrics",
            "/ready",
            "/ws",
            "/admin",
            ADMIN_WS,
            "/api/status",
            "/api/rooms",
            "/api/me",
        } or path.startswith(("/static/", "/api/rooms/"))

    def on_http(self, request: Request, body: bytes) -> HttpResponse:
        path = request.path
        if request.method not in ("GET", "HEAD"):
            response = _error(405, "method_not_allowed", f"{request.method} is not allowed here")
            response.headers.append(("Allow", "GET, HEAD"))
            return response
        if path in {"/", "/index.html"}:
            return self._static("index.html")
        if path.startswith("/static/"):
            return self._static(path[len("/static/") :])
        if path == "/health":
            return _json(200, {"status": "ok"})
        if path in ("/ws", ADMIN_WS):
            # RFC 9110 section 15.5.22: say which protocol this resource needs.
            response = _error(426, "upgrade_required", f"{path} is a WebSocket endpoint")
            response.headers.append(("Upgrade", "websocket"))
            return response
        if path == "/api/status":
            return _json(200, self.hub.status())
        if path == "/api/rooms":
            return _json(200, {"rooms": self._rooms()})
        if path.startswith("/api/rooms/") and path.endswith("/messages"):
            return self._room_messages(
                unquote(path[len("/api/rooms/") : -len("/messages")]), request
            )
        return _error(404, "not_found", f"no such resource: {path[:100]}")

    def _rooms(self) -> list[dict[str, Any]]:
        return [
            {
                "name": room.name,
                "last_seq": room.last_seq,
                "messages": room.messages,
                "members": len(self.hub.members(room.name)),
            }
            for room in self.hub.storage.rooms()
        ]

    def _room_messages(self, room: str, request: Request) -> HttpResponse:
        if not protocol.is_valid_room(room):
            return _error(400, "bad_room", "not a valid room name")
        if room not in {info.name for info in self.hub.storage.rooms()}:
            return _error(404, "no_such_room", f"no room called {room}")
        query = request.query
        before = _query_int(query.get("before"))
        limit = _query_int(query.get("limit"))
        if query.get("before") and (before is None or before > protocol.MAX_SEQ):
            return _error(
                400, "bad_request", f"'before' is an integer from 0 to {protocol.MAX_SEQ}"
            )
        if query.get("limit") and (limit is None or not 1 <= limit <= protocol.MAX_HISTORY):
            return _error(
                400, "bad_request", f"'limit' is an integer from 1 to {protocol.MAX_HISTORY}"
            )
        if limit is None:
            limit = protocol.HISTORY_PAGE
        messages, has_more = self.hub.storage.history(room, before, limit)
        return _json(
            200,
            {
                "room": room,
                "messages": [
                    {"seq": m.seq, "ts": m.ts, "from": m.sender, "text": m.text, "kind": m.kind}
                    for m in messages
                ],
                "has_more": has_more,
            },
        )

    def _static(self, name: str) -> HttpResponse:
        """Serve a file from ``static_dir``; anything that resolves outside it is a 404."""
        name = unquote(name)
        if "\0" in name:  # Path.resolve raises ValueError on it
            return _error(404, "not_found", "no such file")
        candidate = (self.static_dir / name).resolve()
        if not candidate.is_relative_to(self.static_dir) or not candidate.is_file():
            return _error(404, "not_found", "no such file")
        if candidate == self.static_dir / ADMIN_PAGE:
            return _error(404, "not_found", "the admin page is at /admin")
        return self._file(candidate)

    @staticmethod
    def _file(candidate: Path) -> HttpResponse:
        """A static file, with the UI's security headers."""
        content_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        return HttpResponse(
            200,
            candidate.read_bytes(),
            content_type,
            [*SECURITY_HEADERS, ("Cache-Control", "no-cache")],
        )


class ChatServer:
    """chatd in one object: storage, hub, handler and the WebSocket server."""

    def __init__(
        self,
        database: str | Path,
        config: ServerConfig | None = None,
        *,
        static_dir: Path = STATIC_DIR,
        settings: ChatSettings | None = None,
    ) -> None:
        settings = settings or ChatSettings()
        settings.validate()
        self.settings = settings
        self.storage = Storage(database)
        #: Every chatd metric; ``GET /metrics`` renders them.
        self.metrics = ChatMetrics()
        node = settings.node_id or f"{socket.gethostname()}-{os.getpid()}"
        self.bus: Bus = LocalBus(self.storage, node)
        if settings.bus != "local":
            self.bus = RedisBus(
                settings.bus,
                node,
                last_seqs=self.storage.last_seqs(),
                last_dm_id=self.storage.last_dm_id,
            )
        self.hub = Hub(
            self.storage,
            prepare=Server.prepare_many,
            max_rooms=settings.limits.max_rooms_per_connection,
            history_page=settings.history_on_join,
            metrics=self.metrics,
            bus=self.bus,
        )
        # One chat message is a JSON object of a few KiB at most: refuse bigger messages
        # with 1009 before they are buffered (DESIGN.md: 4,000 characters of text).
        config = dataclasses.replace(
            config or ServerConfig(), max_message_size=settings.limits.max_message_bytes
        )
        self.handler = ChatHandler(self.hub, static_dir, settings)
        self.accounts = Accounts(self.storage.connection)
        self.hub.reserved = self.accounts.exists
        if settings.secret is not None:
            secret = settings.secret.encode()
        else:
            secret_file = Path(settings.secret_file or Path(database).parent / "chatd-secret")
            secret = load_or_create_secret(secret_file)
        self.handler.accounts = self.accounts
        self.handler.tokens = TokenIssuer(secret, ttl=settings.token_ttl)
        self.server = Server(self.handler, config)
        self.metrics.attach(self.server, self.hub, self.handler)
        # Each loop-lag sample feeds the histogram and the admin page's last/max.
        self.metrics.loop_lag = EventLoopLag(self._observe_loop_lag)
        self.metrics.loop_lag.start(self.server)
        self.hub.deliver = self.server.send_prepared_many
        # One transaction per loop tick, then the acks and broadcasts it allows.
        self.server.add_tick_callback(self._flush)
        self._expiry = self.server.call_later(30.0, self._expire)
        self._heartbeat: Timer | None = None
        if isinstance(self.bus, RedisBus):
            self.bus.start(self.server.call_soon_threadsafe, self.hub.apply_bus)
            self._heartbeat = self.server.call_later(HEARTBEAT_INTERVAL, self._beat)

    def apply(self, settings: ChatSettings) -> None:
        """Take new settings while running (SIGHUP): origins, limits, auth and login
        rules apply to what comes next; open connections stay open. The TLS mode and
        the signing secret stay as they were at start.
        """
        settings = dataclasses.replace(
            settings,
            tls=self.settings.tls,
            secret=self.settings.secret,
            secret_file=self.settings.secret_file,
        )
        settings.validate()
        self.settings = settings
        handler = self.handler
        handler.settings = settings
        handler.origins = OriginPolicy.from_config(
            settings.allowed_origins, allow_missing=settings.allow_missing_origin
        )
        limits = settings.limits
        handler.connections.max_total = limits.max_connections
        handler.connections.max_per_ip = limits.max_connections_per_ip
        handler.throttle.attempts = settings.login_attempts
        handler.throttle.per = settings.login_window
        self.hub.max_rooms = limits.max_rooms_per_connection
        self.hub.history_page = settings.history_on_join
        if handler.tokens is not None:
            handler.tokens.ttl = settings.token_ttl  # for logins from now on

    def _observe_loop_lag(self, seconds: float) -> None:
        self.metrics.event_loop_lag.observe(seconds)
        self.handler.admin.observe_lag(seconds)

    def _flush(self) -> None:
        self.hub.flush()

    def _expire(self) -> None:
        self.hub.expire_sessions()
        self._expiry = self.server.call_later(30.0, self._expire)

    def _beat(self) -> None:
        self.hub.heartbeat()
        self._heartbeat = self.server.call_later(HEARTBEAT_INTERVAL, self._beat)

    def close(self) -> None:
        """Commit what is pending, say goodbye on the bus and close the database (after
        the server stopped).
        """
        self.metrics.loop_lag.stop()
        self.hub.flush()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self.hub.leave_cluster()
        self.bus.close()
        self.storage.close()
