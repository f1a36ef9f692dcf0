"""rfc6455: a hand-written, typed, pure-Python WebSocket implementation.

The core is sans-I/O (RFC 6455 framing, the opening and closing handshakes, and RFC 7692
permessage-deflate); it imports only the standard library. This module is its public
face: everything a user needs is importable from ``rfc6455``.
"""

from rfc6455.client import Client, ConnectionClosed, connect
from rfc6455.codes import CloseCode, Opcode, is_sendable_close_code
from rfc6455.connection import DEFAULT_MAX_MESSAGE_SIZE, Connection, Role, State
from rfc6455.deflate import DeflateOptions, PerMessageDeflate
from rfc6455.errors import (
    InvalidHandshake,
    LocalProtocolError,
    RemoteProtocolError,
    WebSocketError,
)
from rfc6455.events import (
    Accepted,
    BinaryMessage,
    CloseReceived,
    Event,
    Ping,
    Pong,
    Rejected,
    RequestReceived,
    TextMessage,
)
from rfc6455.frames import Frame, FrameParser, apply_mask, encode_frame
from rfc6455.handshake import accept_key, is_websocket_upgrade
from rfc6455.http import Headers, HttpLimits, Request, Response

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Accepted",
    "BinaryMessage",
    "Client",
    "CloseCode",
    "CloseReceived",
    "Connection",
    "ConnectionClosed",
    "DeflateOptions",
    "Event",
    "Frame",
    "FrameParser",
    "Headers",
    "HttpLimits",
    "InvalidHandshake",
    "LocalProtocolError",
    "Opcode",
    "PerMessageDeflate",
    "Ping",
    "Pong",
    "Rejected",
    "RemoteProtocolError",
    "Request",
    "RequestReceived",
    "Response",
    "Role",
    "State",
    "TextMessage",
    "WebSocketError",
    "accept_key",
    "apply_mask",
    "connect",
    "encode_frame",
    "is_sendable_close_code",
    "is_websocket_upgrade",
]

__version__ = "0.1.0"
