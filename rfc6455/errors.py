"""The library's exceptions: each says who was wrong and what to answer.

Like h11, we separate misuse of the API by the caller (``LocalProtocolError``) from a
peer that broke the protocol (``RemoteProtocolError``, which carries the close code to
answer with) and from an unacceptable HTTP handshake (``InvalidHandshake``, which
carries the HTTP status to answer with).
"""

from __future__ import annotations

from rfc6455.codes import CloseCode

__all__ = ["InvalidHandshake", "LocalProtocolError", "RemoteProtocolError", "WebSocketError"]


class WebSocketError(Exception):
    """Base class of every exception this library raises on purpose."""


class LocalProtocolError(WebSocketError):
    """The caller asked for something the protocol forbids (e.g. a 200-byte ping)."""


class RemoteProtocolError(WebSocketError):
    """The peer broke RFC 6455 or RFC 7692; answer with ``close_code`` and close.

    ``reason`` is a short, human-readable explanation that fits in a close frame
    (at most 123 bytes of UTF-8, section 5.5.1).
    """

    def __init__(self, reason: str, close_code: CloseCode = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, close_code={self.close_code!r})"


class InvalidHandshake(WebSocketError):
    """An HTTP opening handshake that cannot be accepted (RFC 6455 section 4).

    On the server side, ``status`` is the HTTP status to answer with and ``headers`` the
    extra response headers it needs (426 carries ``Sec-WebSocket-Version: 13``). On the
    client side, ``status`` is the status the server answered (0 when the response itself
    was malformed).
    """

    def __init__(
        self,
        reason: str,
        status: int = 400,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers = headers

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, status={self.status})"
