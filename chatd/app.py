"""chatd's application layer: the WebSocket handler and the HTTP routes on one port.

``ChatHandler`` plugs the hub into ``rfc6455.server``: upgrades on ``/ws`` become hub
sessions; everything else is plain HTTP (the UI, static files, health and the JSON API).
It never parses frames or HTTP itself: the runtime hands it requests and messages.
"""

from __future__ import annotations

import json
import logging
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from chatd import protocol
from chatd.hub import Hub, Session
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

    def __init__(self, hub: Hub, static_dir: Path = STATIC_DIR) -> None:
        self.hub = hub
        self.static_dir = static_dir.resolve()

    # --- WebSocket ---------------------------------------------------------------------------

    def on_connect(
        self, connection: ServerConnection, request: Request
    ) -> Sequence[tuple[str, str]]:
        if request.path != "/ws":
            raise InvalidHandshake("no WebSocket endpoint here; use /ws", 404)
        query = request.query
        name = query.get("name") or "guest"
        if not protocol.is_valid_name(name):
            raise InvalidHandshake("a name is 1-50 letters, digits, '-', '_' or '.'", 400)
        room = query.get("room") or None
        if room is not None and not protocol.is_valid_room(room):
            raise InvalidHandshake("a room name is 1-64 letters, digits, '-', '_' or '.'", 400)
        connection.context = _Pending(name, room, query.get("session") or None)
        return ()

    def on_open(self, connection: ServerConnection) -> None:
        pending = connection.context
        assert isinstance(pending, _Pending)
        session = self.hub.connect(
            connection, pending.name, room=pending.room, session_id=pending.session_id
        )
        connection.context = session
        logger.info("%s: %s connected (session %s)", connection.peer, session.user, session.id)

    def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
        session = connection.context
        if not isinstance(session, Session) or session.peer is not connection:
            return  # replaced by a newer connection
        if isinstance(message, str):
            self.hub.receive(session, message)
        else:
            self.hub.refuse_binary(session)

    def on_close(self, connection: ServerConnection, code: int, reason: str) -> None:
        session = connection.context
        if isinstance(session, Session) and session.peer is connection:
            self.hub.disconnect(session)
            logger.info("%s: %s disconnected (%d)", connection.peer, session.user, code)

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
    ) -> None:
        self.storage = Storage(database)
        self.hub = Hub(self.storage, prepare=Server.prepare_many)
        self.server = Server(ChatHandler(self.hub, static_dir), config or ServerConfig())
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
