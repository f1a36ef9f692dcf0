"""The WebSocket opening handshake (RFC 6455 section 4), both roles, as pure functions.

Section 1.3: "The opening handshake is intended to be compatible with HTTP-based
server-side software and intermediaries". The client sends an HTTP/1.1 ``GET`` with
``Upgrade: websocket``, ``Connection: Upgrade``, a random ``Sec-WebSocket-Key`` and
``Sec-WebSocket-Version: 13``; the server proves that it understood by answering
``101 Switching Protocols`` with ``Sec-WebSocket-Accept``, the base64 SHA-1 of the key
and a GUID. Subprotocols (``Sec-WebSocket-Protocol``) and extensions
(``Sec-WebSocket-Extensions``, section 9.1) are negotiated in the same exchange.

Server side::

    request, used = parse_request_head(buffer)           # rfc6455.http
    key = validate_request(request)                      # section 4.2.1
    subprotocol = select_subprotocol(
        parse_subprotocols(request.headers.get_all("Sec-WebSocket-Protocol")), supported)
    send(build_accept_response(key, subprotocol=subprotocol))   # section 4.2.2
    # or, on InvalidHandshake as error: send(build_reject_response(error))

Client side::

    key = generate_key()
    send(build_request(host, "/chat", key))              # section 4.1
    response, used = parse_response_head(buffer)
    subprotocol, extensions = validate_response(response, key)

Nothing here does I/O. Every refusal is an ``InvalidHandshake`` carrying the HTTP status
to answer with (server side) or the status the server answered (client side).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Sequence

from rfc6455.errors import InvalidHandshake
from rfc6455.http import TOKEN, Request, Response, serialize_request, serialize_response

__all__ = [
    "GUID",
    "SUPPORTED_VERSION",
    "ExtensionHeader",
    "ExtensionParameter",
    "accept_key",
    "build_accept_response",
    "build_reject_response",
    "build_request",
    "generate_key",
    "is_websocket_upgrade",
    "parse_extensions",
    "parse_subprotocols",
    "select_subprotocol",
    "serialize_extension",
    "validate_request",
    "validate_response",
]

# Section 1.3: "the server has to take the value (as present in the header field, e.g.,
# the base64-encoded [RFC4648] version minus any leading and trailing whitespace) and
# concatenate this with the Globally Unique Identifier (GUID, [RFC4122]) "258EAFA5-E914-
# 47DA-95CA-C5AB0DC85B11" in string form".
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Section 4.1: "The value of this header field MUST be 13."
SUPPORTED_VERSION = "13"

# Section 4.1: the key is "a randomly selected 16-byte value that has been base64-encoded";
# 16 bytes encode to 24 characters, the last two being "==".
_KEY_BYTES = 16
_KEY_LENGTH = 24

_token_re = re.compile(TOKEN)
_http_version_re = re.compile(r"HTTP/([0-9])\.([0-9])")

ExtensionParameter = tuple[str, str | None]
"""One extension parameter: ``("client_max_window_bits", "10")`` or ``("x", None)``."""
ExtensionHeader = tuple[str, list[ExtensionParameter]]
"""One offered or accepted extension: its name and its parameters, in order."""

# Section 4.4: the server "MUST abort the WebSocket handshake [...] and instead send an
# appropriate HTTP error code (such as 426 Upgrade Required) and a
# |Sec-WebSocket-Version| header field indicating the version(s) the server is capable of
# understanding."
_VERSION_HEADERS = (("Sec-WebSocket-Version", SUPPORTED_VERSION),)
# RFC 7231 section 6.5.15: "The server MUST send an Upgrade header field in a 426
# response to indicate the required protocol(s)".
_UPGRADE_REQUIRED_HEADERS = (("Upgrade", "websocket"), *_VERSION_HEADERS)


# --- Keys -------------------------------------------------------------------------------


def accept_key(key: str) -> str:
    """Return the ``Sec-WebSocket-Accept`` value that answers ``key``.

    Section 4.2.2: "A |Sec-WebSocket-Accept| header field. The value of this header
    field is constructed by concatenating /key/, defined above in step 4 in Section
    4.2.2, with the string "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", taking the SHA-1 hash
    of this concatenated value to obtain a 20-byte value and base64-encoding (see Section
    4 of [RFC4648]) this 20-byte hash."
    """
    digest = hashlib.sha1((key + GUID).encode("latin-1"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def generate_key() -> str:
    """Return a fresh ``Sec-WebSocket-Key``.

    Section 4.1: "The value of this header field MUST be a nonce consisting of a randomly
    selected 16-byte value that has been base64-encoded [...]. The nonce MUST be selected
    randomly for each connection."
    """
    return base64.b64encode(os.urandom(_KEY_BYTES)).decode("ascii")


def _is_valid_key(key: str) -> bool:
    # Section 11.3.1: "The |Sec-WebSocket-Key| header field [...] a base64-encoded value
    # that, when decoded, is 16 bytes in length."
    if len(key) != _KEY_LENGTH:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == _KEY_BYTES
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        return False


# --- Server side ------------------------------------------------------------------------


def is_websocket_upgrade(request: Request) -> bool:
    """Tell whether ``request`` asks to be upgraded to a WebSocket connection.

    A runtime serving plain HTTP on the same port routes on this, then calls
    ``validate_request`` for the full checks.
    """
    return "websocket" in request.headers.tokens("Upgrade")


def validate_request(request: Request) -> str:
    """Check a client's opening handshake (section 4.2.1) and return its key.

    Section 4.2.1: "If the server, while reading the handshake, finds that the client did
    not send a handshake that matches the description below [...], the server MUST stop
    processing the client's handshake and return an HTTP response with an appropriate
    error code (such as 400 Bad Request)." Raise ``InvalidHandshake`` with that status
    and the headers the response needs.
    """
    # 1. "An HTTP/1.1 or higher GET request, including a "Request-URI" [RFC2616]"
    if request.method != "GET":
        # RFC 7231 section 6.5.5: "The origin server MUST generate an Allow header field
        # in a 405 response containing a list of the target resource's currently
        # supported methods."
        raise InvalidHandshake(
            f"WebSocket handshake must use GET, not {request.method}", 405, (("Allow", "GET"),)
        )
    if _version_tuple(request.version) < (1, 1):
        raise InvalidHandshake(f"WebSocket needs HTTP/1.1 or higher, not {request.version}")
    # 2. "A |Host| header field containing the server's authority."
    # RFC 7230 section 5.4: "A server MUST respond with a 400 (Bad Request) status code to
    # any HTTP/1.1 request message that lacks a Host header field and to any that
    # contains more than one Host header field".
    hosts = request.headers.get_all("Host")
    if not hosts:
        raise InvalidHandshake("missing Host header")
    if len(hosts) > 1:
        raise InvalidHandshake("multiple Host headers")
    # 3. "An |Upgrade| header field containing the value "websocket", treated as an ASCII
    # case-insensitive value."
    if "Upgrade" not in request.headers:
        raise InvalidHandshake("missing Upgrade header", 426, _UPGRADE_REQUIRED_HEADERS)
    if not is_websocket_upgrade(request):
        raise InvalidHandshake(
            "Upgrade header does not include websocket", 426, _UPGRADE_REQUIRED_HEADERS
        )
    # 4. "A |Connection| header field that includes the token "Upgrade", treated as an
    # ASCII case-insensitive value."
    if "upgrade" not in request.headers.tokens("Connection"):
        raise InvalidHandshake("Connection header does not include Upgrade")
    # 6. "A |Sec-WebSocket-Version| header field, with a value of 13." Checked before the
    # key so that a client speaking an older draft (which may send no key, or another
    # key header) learns which version to use (section 4.4).
    _check_version(request.headers.get_all("Sec-WebSocket-Version"))
    # 5. "A |Sec-WebSocket-Key| header field with a base64-encoded (see Section 4 of
    # [RFC4648]) value that, when decoded, is 16 bytes in length."
    # Section 11.3.1: "The |Sec-WebSocket-Key| header field MUST NOT appear more than
    # once in an HTTP request."
    keys = request.headers.get_all("Sec-WebSocket-Key")
    if not keys:
        raise InvalidHandshake("missing Sec-WebSocket-Key header")
    if len(keys) > 1:
        raise InvalidHandshake("multiple Sec-WebSocket-Key headers")
    if not _is_valid_key(keys[0]):
        raise InvalidHandshake("Sec-WebSocket-Key is not 16 bytes in base64")
    return keys[0]


def _version_tuple(version: str) -> tuple[int, int]:
    match = _http_version_re.fullmatch(version)
    if match is None:
        return (0, 0)
    return int(match[1]), int(match[2])


def _check_version(versions: list[str]) -> None:
    # Section 11.3.5: "The |Sec-WebSocket-Version| header field MUST NOT appear more than
    # once in an HTTP request."
    if not versions:
        raise InvalidHandshake(
            "missing Sec-WebSocket-Version header", 426, _UPGRADE_REQUIRED_HEADERS
        )
    if versions != [SUPPORTED_VERSION]:
        shown = ", ".join(versions)
        raise InvalidHandshake(
            f"unsupported Sec-WebSocket-Version {shown[:32]!r}, expected 13",
            426,
            _UPGRADE_REQUIRED_HEADERS,
        )


def build_accept_response(
    key: str,
    *,
    subprotocol: str | None = None,
    extensions: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """Return the ``101 Switching Protocols`` response that accepts the handshake.

    Section 4.2.2: "If the server chooses to accept the incoming connection, it MUST
    reply with a valid HTTP response indicating the following": the status line "HTTP/1.1
    101 Switching Protocols", "An |Upgrade| header field with value "websocket"", "A
    |Connection| header field with value "Upgrade"", and the |Sec-WebSocket-Accept|
    computed by ``accept_key``. ``subprotocol`` is the one selected from the client's
    offer; ``extensions`` is the accepted ``Sec-WebSocket-Extensions`` value.
    """
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(key)),
    ]
    if subprotocol is not None:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    if extensions is not None:
        headers.append(("Sec-WebSocket-Extensions", extensions))
    headers.extend(extra_headers)
    return serialize_response(101, headers)


def build_reject_response(
    error: InvalidHandshake, extra_headers: Iterable[tuple[str, str]] = ()
) -> bytes:
    """Return the HTTP error response for a refused handshake, then close.

    The status and headers come from ``error``; the body is its reason as plain text.
    RFC 7230 section 6.7: a response that carries ``Upgrade`` (a 426) also names it in
    ``Connection``.
    """
    upgrade = any(name.lower() == "upgrade" for name, _ in error.headers)
    headers = [
        *error.headers,
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Connection", "Upgrade, close" if upgrade else "close"),
        *extra_headers,
    ]
    return serialize_response(error.status, headers, f"{error.reason}\n".encode())


# --- Subprotocols -------------------------------------------------------------------------


def parse_subprotocols(values: Sequence[str]) -> list[str]:
    """Parse ``Sec-WebSocket-Protocol`` values into subprotocol names, in order.

    Section 4.1: the header holds "one or more comma-separated subprotocol the client
    wishes to speak, ordered by preference. The elements that comprise this value MUST be
    non-empty strings with characters in the range U+0021 to U+007E not including
    separator characters as defined in [RFC2616]", i.e. tokens. Names are compared
    case-sensitively, so their case is kept. Raise ``InvalidHandshake`` (400) otherwise.
    """
    subprotocols = []
    for value in values:
        for element in value.split(","):
            name = element.strip(" \t")
            if not name:
                continue  # RFC 7230 section 7: empty list elements are ignored
            if not _token_re.fullmatch(name):
                raise InvalidHandshake(f"invalid subprotocol {name[:32]!r}")
            subprotocols.append(name)
    return subprotocols


def select_subprotocol(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """Return the server's most preferred subprotocol that the client offered, or None.

    Section 4.2.2: "The value chosen MUST be derived from the client's handshake,
    specifically by selecting one of the values from the |Sec-WebSocket-Protocol| field
    that the server is willing to use for this connection (if any)." ``supported`` is in
    the server's order of preference.
    """
    return next((name for name in supported if name in offered), None)


# --- Extensions (section 9.1) ---------------------------------------------------------------
#
#     Sec-WebSocket-Extensions = extension-list
#     extension-list = 1#extension
#     extension = extension-token *( ";" extension-param )
#     extension-token = registered-token
#     registered-token = token
#     extension-param = token [ "=" (token | quoted-string) ]
#
# With RFC 7230 optional whitespace (OWS) around the separators.

# RFC 7230 section 3.2.6: quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE, where
# qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text and
# quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text ).
_QUOTED_STRING = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*+"'
_extension_name_re = re.compile(rf"[ \t]*+({TOKEN})[ \t]*+")
_extension_param_re = re.compile(
    rf";[ \t]*+({TOKEN})[ \t]*+(?:=[ \t]*+(?:({TOKEN})|({_QUOTED_STRING}))[ \t]*+)?"
)
_list_separators_re = re.compile(r"[ \t,]*+")
_quoted_pair_re = re.compile(r"\\(.)", re.DOTALL)


def parse_extensions(values: Sequence[str]) -> list[ExtensionHeader]:
    """Parse ``Sec-WebSocket-Extensions`` values into (name, parameters) pairs, in order.

    Section 9.1: "Note that like other HTTP header fields, this header field MAY be split
    or combined across multiple lines." A parameter without a value has ``None``; quoted
    values are unquoted. Raise ``InvalidHandshake`` (400) on a malformed value.
    """
    extensions = []
    for value in values:
        extensions.extend(_parse_extension_list(value))
    return extensions


def _parse_extension_list(value: str) -> list[ExtensionHeader]:
    # RFC 7230 section 7: "1#element => *( "," OWS ) element *( OWS "," [ OWS element ] )"
    extensions = []
    position = _skip_list_separators(value, 0)
    while position < len(value):
        name_match = _extension_name_re.match(value, position)
        if name_match is None:
            raise _extension_error(value, position)
        position = name_match.end()
        params = []
        while param_match := _extension_param_re.match(value, position):
            params.append(_extension_param(*param_match.groups()))
            position = param_match.end()
        extensions.append((name_match[1], params))
        if position < len(value):
            if value[position] != ",":
                raise _extension_error(value, position)
            position = _skip_list_separators(value, position)
    if not extensions:
        raise InvalidHandshake("empty Sec-WebSocket-Extensions header")
    return extensions


def _skip_list_separators(value: str, position: int) -> int:
    """Return the position after any commas and whitespace from ``position`` on."""
    match = _list_separators_re.match(value, position)
    assert match is not None, "the pattern matches the empty string"
    return match.end()


def _extension_param(name: str, token: str | None, quoted: str | None) -> ExtensionParameter:
    if quoted is None:
        return name, token
    # Section 9.1: "When using the quoted-string syntax variant, the value after
    # quoted-string unescaping MUST conform to the 'token' ABNF."
    unquoted = _quoted_pair_re.sub(r"\1", quoted[1:-1])
    if not _token_re.fullmatch(unquoted):
        raise InvalidHandshake(
            f"Sec-WebSocket-Extensions parameter {name} is not a token once unquoted"
        )
    return name, unquoted


def _extension_error(value: str, position: int) -> InvalidHandshake:
    return InvalidHandshake(
        f"malformed Sec-WebSocket-Extensions header at character {position}: "
        f"{value[position : position + 16]!r}"
    )


def serialize_extension(name: str, params: Sequence[ExtensionParameter] = ()) -> str:
    """Return one ``Sec-WebSocket-Extensions`` element: ``name; param=value; flag``.

    The inverse of ``parse_extensions`` for one extension. Values are written as bare
    tokens (quoting never helps: an unquoted value must be a token anyway); raise
    ``ValueError`` for a name or value that is not a token.
    """
    parts = [_require_token(name)]
    for param, value in params:
        if value is None:
            parts.append(_require_token(param))
        else:
            parts.append(f"{_require_token(param)}={_require_token(value)}")
    return "; ".join(parts)


def _require_token(text: str) -> str:
    if not _token_re.fullmatch(text):
        raise ValueError(f"not a token in an extension header: {text!r}")
    return text


# --- Client side ----------------------------------------------------------------------------


def build_request(
    host: str,
    target: str,
    key: str,
    *,
    origin: str | None = None,
    subprotocols: Sequence[str] = (),
    extensions: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """Return the client's opening handshake request (section 4.1).

    ``host`` is the ``Host`` value ("host" or "host:port"), ``target`` the resource name
    ("/chat?room=lobby"), ``key`` a fresh ``generate_key()`` to check the answer with.
    Section 4.1: "The request MUST contain an |Origin| header field if the request is
    coming from a browser client"; other clients may send one with ``origin``.
    """
    headers = [
        ("Host", host),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", SUPPORTED_VERSION),
    ]
    if origin is not None:
        headers.append(("Origin", origin))
    if subprotocols:
        headers.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
    if extensions is not None:
        headers.append(("Sec-WebSocket-Extensions", extensions))
    headers.extend(extra_headers)
    return serialize_request("GET", target, headers)


def validate_response(
    response: Response, key: str, *, subprotocols: Sequence[str] = ()
) -> tuple[str | None, list[ExtensionHeader]]:
    """Check the server's answer to our handshake (section 4.1).

    Return the subprotocol the server selected (or None) and the extensions it accepted,
    parsed; checking those against what was offered is the caller's job. Raise
    ``InvalidHandshake`` whose ``status`` is the response's status. Section 4.1: "If
    the server's response does not conform to the requirements for the server's handshake
    as defined in this section and in Section 4.2.2, the client MUST _Fail the WebSocket
    Connection_."
    """
    status = response.status
    # "If the status code received from the server is not 101, the client handles the
    # response per HTTP [RFC2616] procedures."
    if status != 101:
        raise InvalidHandshake(
            f"server rejected the WebSocket handshake: {status} {response.reason}".rstrip(),
            status,
        )
    headers = response.headers
    # "If the response lacks an |Upgrade| header field or the |Upgrade| header field
    # contains a value that is not an ASCII case-insensitive match for the value
    # "websocket", the client MUST _Fail the WebSocket Connection_."
    if headers.tokens("Upgrade") != ["websocket"]:
        raise InvalidHandshake("missing or invalid Upgrade header in the 101 response", status)
    # "If the response lacks a |Connection| header field or the |Connection| header field
    # doesn't contain a token that is an ASCII case-insensitive match for the value
    # "Upgrade", the client MUST _Fail the WebSocket Connection_."
    if "upgrade" not in headers.tokens("Connection"):
        raise InvalidHandshake("Connection header in the 101 response lacks Upgrade", status)
    # "If the response lacks a |Sec-WebSocket-Accept| header field or the
    # |Sec-WebSocket-Accept| contains a value other than the base64-encoded SHA-1 of the
    # concatenation of the |Sec-WebSocket-Key| (as a string, not base64-decoded) with the
    # string "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" but ignoring any leading and trailing
    # whitespace, the client MUST _Fail the WebSocket Connection_."
    accepts = headers.get_all("Sec-WebSocket-Accept")
    if not accepts:
        raise InvalidHandshake("missing Sec-WebSocket-Accept header", status)
    if accepts != [accept_key(key)]:
        raise InvalidHandshake("Sec-WebSocket-Accept does not match the key", status)
    return (
        _selected_subprotocol(headers.get_all("Sec-WebSocket-Protocol"), subprotocols, status),
        _accepted_extensions(headers.get_all("Sec-WebSocket-Extensions"), status),
    )


def _selected_subprotocol(values: list[str], offered: Sequence[str], status: int) -> str | None:
    # "If the response includes a |Sec-WebSocket-Protocol| header field and this header
    # field indicates the use of a subprotocol that was not present in the client's
    # handshake (the server has indicated a subprotocol not requested by the client), the
    # client MUST _Fail the WebSocket Connection_." Section 4.2.2 lets the server send
    # "a single value representing the subprotocol".
    if not values:
        return None
    if len(values) > 1 or "," in values[0]:
        raise InvalidHandshake("server selected more than one subprotocol", status)
    if values[0] not in offered:
        raise InvalidHandshake(
            f"server selected subprotocol {values[0][:32]!r} not offered", status
        )
    return values[0]


def _accepted_extensions(values: list[str], status: int) -> list[ExtensionHeader]:
    if not values:
        return []
    try:
        return parse_extensions(values)
    except InvalidHandshake as exc:
        raise InvalidHandshake(exc.reason, status) from None
