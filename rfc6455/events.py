"""Events: what ``Connection.receive_data`` tells its caller the peer did.

Events are values (frozen, slotted dataclasses): the same type whichever role produced
it, printable in logs and comparable in tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from rfc6455.http import Request, Response

__all__ = [
    "Accepted",
    "BinaryMessage",
    "CloseReceived",
    "Event",
    "Ping",
    "Pong",
    "Rejected",
    "RequestReceived",
    "TextMessage",
]


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A complete text message (opcode 0x1 and its continuations), decoded from UTF-8."""

    data: str


@dataclass(frozen=True, slots=True)
class BinaryMessage:
    """A complete binary message (opcode 0x2 and its continuations)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping (section 5.5.2). The pong is already queued in ``data_to_send()``."""

    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong (section 5.5.3), solicited or not."""

    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer's close frame (section 5.5.1).

    ``code`` is 1005 (``NO_STATUS_RCVD``) when the frame carried no code. When the peer
    started the close, the reply is already queued in ``data_to_send()``.
    """

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """Server side: a complete HTTP request head arrived (section 4.2.1).

    Answer with ``Connection.accept()`` or ``Connection.reject()``; a request that is not
    a WebSocket upgrade (``handshake.is_websocket_upgrade``) is plain HTTP for the
    application to serve.
    """

    request: Request


@dataclass(frozen=True, slots=True)
class Accepted:
    """Client side: the server's 101 response was valid (section 4.1); the connection is open."""

    response: Response
    subprotocol: str | None
    extensions: str | None


@dataclass(frozen=True, slots=True)
class Rejected:
    """Client side: the server refused the upgrade; ``reason`` says why."""

    response: Response | None
    reason: str


Event = (
    TextMessage
    | BinaryMessage
    | Ping
    | Pong
    | CloseReceived
    | RequestReceived
    | Accepted
    | Rejected
)
