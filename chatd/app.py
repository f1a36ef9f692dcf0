"""chatd's application layer: the WebSocket handler and the HTTP routes on one port.

``ChatHandler`` plugs the hub into ``rfc6455.server``: upgrades on ``/ws`` become hub
sessions; everything else is plain HTTP (the UI, static files, health and the JSON API).
It never parses frames or HTTP itself: the runtime hands it requests and messages.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from chatd import protocol
from chatd.config import ChatSettings
from chatd.hub import Hub, Session
from chatd.limits import ConnectionLimiter, MessageGate, Verdict
from chatd.origins import OriginPolicy
from chatd.storage import Storage
from rfc6455.errors import InvalidHandshake
from rfc6455.http import Request
from rfc6455.server import Handler, HttpResponse, Server, ServerConfig, ServerConnection

__all__ = ["STATIC_DIR", "ChatHandler", "ChatServer"]

logger = logging.getLogger("chatd")

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


@dataclass(slots=True)
class _Pending:
    """What ``on_connect`` learned from the upgrade request, for ``on_open``."""

    name: str
    room: str | None
    session_id: str | None
    ip: str


@dataclass(slots=True)
class _Live:
    """An open chat connection: its session, its rate gate, the address it counts for."""

    session: Session
    gate: MessageGate
    ip: str


#: Close code and reason for a client that keeps sending past its rate limit.
CLOSE_RATE_LIMITED = 1008


def _ip(connection: ServerConnection) -> str:
    address = connection.remote_address
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address)


def _json(status: int, body: Any) -> HttpResponse:
    return HttpResponse(
        status,
        (json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n").encode(),
        "application/json",
        [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")],
    )


def _error(status: int, code: str, message: str) -> HttpResponse:
    return _json(status, {"error": {"code": code, "message": message}})


def _query_int(value: str | None) -> int | None:
    """A query parameter of ASCII digits only (``int()`` would also take ``" 1_0"``)."""
    if not value or not value.isascii() or not value.isdigit() or len(value) > 20:
        return None
    return int(value)


class ChatHandler(Handler):
    """The chat service behind ``rfc6455.server.Server``."""

    def __init__(
        self,
        hub: Hub,
        static_dir: Path = STATIC_DIR,
        settings: ChatSettings | None = None,
    ) -> None:
        self.hub = hub
        self.static_dir = static_dir.resolve()
        self.settings = settings or ChatSettings()
        self.origins = OriginPolicy.from_config(
            self.settings.allowed_origins, allow_missing=self.settings.allow_missing_origin
        )
        limits = self.settings.limits
        self.connections = ConnectionLimiter(limits.max_connections, limits.max_connections_per_ip)
        self.rate_limited = 0

    # --- WebSocket ---------------------------------------------------------------------------

    def on_connect(
        self, connection: ServerConnection, request: Request
    ) -> Sequence[tuple[str, str]]:
        if request.path != "/ws":
            raise InvalidHandshake("no WebSocket endpoint here; use /ws", 404)
        # Section 10.2: a browser names the page that opens the socket; a page of another
        # origin must not chat with the visitor's credentials.
        origins = request.headers.get_all("Origin")
        if len(origins) > 1:
            raise InvalidHandshake("more than one Origin header", 403)
        refusal = self.origins.check(
            origins[0] if origins else None, request.headers.get("Host"), tls=connection.tls
        )
        if refusal is not None:
            logger.warning("%s: upgrade refused: %s (%s)", connection.peer, refusal, origins[:1])
            raise InvalidHandshake(refusal, 403)
        query = request.query
        name = query.get("name") or "guest"
        if not protocol.is_valid_name(name):
            raise InvalidHandshake("a name is 1-50 letters, digits, '-', '_' or '.'", 400)
        room = query.get("room") or None
        if room is not None and not protocol.is_valid_room(room):
            raise InvalidHandshake("a room name is 1-64 letters, digits, '-', '_' or '.'", 400)
        ip = _ip(connection)
        full = self.connections.admit(ip)
        if full is not None:
            logger.warning("%s: upgrade refused: %s", connection.peer, full)
            raise InvalidHandshake(full.replace("_", " "), 503)
        connection.context = _Pending(name, room, query.get("session") or None, ip)
        return ()

    def on_open(self, connection: ServerConnection) -> None:
        pending = connection.context
        assert isinstance(pending, _Pending)
        session = self.hub.connect(
            connection, pending.name, room=pending.room, session_id=pending.session_id
        )
        limits = self.settings.limits
        gate = MessageGate(
            limits.message_rate,
            limits.message_burst,
            strikes=limits.rate_strikes,
            window=limits.strike_window,
        )
        connection.context = _Live(session, gate, pending.ip)
        logger.info("%s: %s connected (session %s)", connection.peer, session.user, session.id)

    def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
        live = connection.context
        if not isinstance(live, _Live) or live.session.peer is not connection:
            return  # replaced by a newer connection, or closing for its rate
        # The rate is checked on the raw frame, before any JSON parsing: a flood costs
        # a counter per message, not a parse.
        verdict = live.gate.check()
        if verdict is not Verdict.PASS:
            self.rate_limited += 1
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
        live = connection.context
        if isinstance(live, _Live):
            self.connections.release(live.ip)
            if live.session.peer is connection:
                self.hub.disconnect(live.session)
                logger.info("%s: %s disconnected (%d)", connection.peer, live.session.user, code)

    # --- HTTP ----------------------------------------------------------------------------------

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
        if path == "/ws":
            # RFC 9110 section 15.5.22: say which protocol this resource needs.
            response = _error(426, "upgrade_required", "/ws is a WebSocket endpoint")
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
                "members": len({s.user for s in self.hub.rooms.get(room.name, ())}),
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
        self.hub = Hub(
            self.storage,
            prepare=Server.prepare_many,
            max_rooms=settings.limits.max_rooms_per_connection,
        )
        # One chat message is a JSON object of a few KiB at most: refuse bigger messages
        # with 1009 before they are buffered (DESIGN.md: 4,000 characters of text).
        config = dataclasses.replace(
            config or ServerConfig(), max_message_size=settings.limits.max_message_bytes
        )
        self.handler = ChatHandler(self.hub, static_dir, settings)
        self.server = Server(self.handler, config)
        self.hub.deliver = self.server.send_prepared_many
        # One transaction per loop tick, then the acks and broadcasts it allows.
        self.server.add_tick_callback(self._flush)
        self._expiry = self.server.call_later(30.0, self._expire)

    def _flush(self) -> None:
        self.hub.flush()

    def _expire(self) -> None:
        self.hub.expire_sessions()
        self._expiry = self.server.call_later(30.0, self._expire)

    def close(self) -> None:
        """Commit what is pending and close the database (after the server stopped)."""
        self.hub.flush()
        self.storage.close()
