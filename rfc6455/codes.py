"""Opcodes and close codes: the numbers RFC 6455 puts on the wire.

RFC 6455 section 5.2 defines the opcodes, section 7.4 the close status codes; the IANA
"WebSocket Close Code Number Registry" adds 1012-1014.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CloseCode", "Opcode", "is_sendable_close_code"]


class Opcode(IntEnum):
    """Frame opcodes (RFC 6455 section 5.2). 3-7 and 0xB-0xF are reserved."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA

    @property
    def is_control(self) -> bool:
        """Control frames have the high bit of the opcode set (section 5.5)."""
        return self >= 0x8


class CloseCode(IntEnum):
    """Close status codes (RFC 6455 section 7.4.1 and the IANA registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # never on the wire: "no code was present"
    ABNORMAL_CLOSURE = 1006  # never on the wire: "closed without a close frame"
    INVALID_FRAME_PAYLOAD_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never on the wire: "the TLS handshake failed"


# Section 7.4.1 and the registry: the codes in 1000-2999 an endpoint may put in a close
# frame. 1004 is reserved, 1005, 1006 and 1015 "MUST NOT be set as a status code in a
# Close control frame by an endpoint".
_SENDABLE_PROTOCOL_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)


def is_sendable_close_code(code: int) -> bool:
    """Tell whether ``code`` may appear in a close frame (RFC 6455 section 7.4).

    1000-2999 are the protocol's own (only the registered ones are valid), 3000-3999 are
    for libraries and frameworks, 4000-4999 for applications; everything else is invalid.
    """
    return code in _SENDABLE_PROTOCOL_CODES or 3000 <= code <= 4999
