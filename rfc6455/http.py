"""A strict, bounded HTTP/1.1 message-head parser and serializer (RFC 7230 section 3).

RFC 6455 section 4.1: "The handshake MUST be a valid HTTP request as specified by
[RFC2616]." The opening handshake is therefore plain HTTP/1.1, and the same parser
serves chatd's ordinary HTTP API on the WebSocket port. Only the *head* is parsed:

    HTTP-message   = start-line *( header-field CRLF ) CRLF [ message-body ]
    request-line   = method SP request-target SP HTTP-version CRLF
    status-line    = HTTP-version SP status-code SP reason-phrase CRLF
    header-field   = field-name ":" OWS field-value OWS

The parser is sans-I/O: hand it the bytes received so far and it answers ``None``
("incomplete, read more") or the parsed head plus the number of bytes it used, so the
caller keeps whatever follows (a request body, or the first WebSocket frames).

It is strict where leniency has been a source of request-smuggling bugs: lines end in
CRLF (never a bare LF), obsolete line folding is refused ("A server that receives an
obs-fold in a request message ... MUST either reject the message by sending a 400",
section 3.2.4), and so is whitespace between a field name and its colon ("A server MUST
reject any received request message that contains whitespace between a header
field-name and colon with a response code of 400", section 3.2.4). It is bounded: the
head size, the number of header fields and the length of each line are capped
(``HttpLimits``), and a call costs time linear in the bytes it is given.

Header text is decoded as ISO-8859-1: "Historically, HTTP has allowed field content with
text in the ISO-8859-1 charset ... a recipient SHOULD treat other octets in field
content (obs-text) as opaque data" (section 3.2.4), and ISO-8859-1 maps every octet to
exactly one character, so nothing is lost.

A head the server must refuse raises ``InvalidHandshake`` carrying the status to answer
with: 400 for malformed syntax, 414 for a request line that is too long, 431 for too many
or too large header fields, 505 for an HTTP major version other than 1. A malformed
*response* head raises ``InvalidHandshake`` with status 0: there is nobody to answer.
"""

from __future__ import annotations

import http
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import parse_qsl, urlsplit

from rfc6455.errors import InvalidHandshake

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEAD_SIZE",
    "DEFAULT_MAX_LINE_LENGTH",
    "TOKEN",
    "Headers",
    "HttpLimits",
    "Request",
    "Response",
    "parse_request_head",
    "parse_response_head",
    "request_body_length",
    "serialize_request",
    "serialize_response",
]

# Limits (DESIGN.md, "Defaults"): an 8 KiB head with at most 64 header fields. 8190 bytes
# per line is Apache's LimitRequestLine / LimitRequestFieldSize default.
DEFAULT_MAX_HEAD_SIZE = 8192
DEFAULT_MAX_HEADERS = 64
DEFAULT_MAX_LINE_LENGTH = 8190

# The longest Content-Length we read: 18 digits is just under an exabyte.
_MAX_CONTENT_LENGTH_DIGITS = 18

_END_OF_HEAD = b"\r\n\r\n"

# RFC 7230 section 3.2.6 (TOKEN is public for the other header grammars, e.g. section 9.1):
#     token = 1*tchar
#     tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#             "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
TOKEN = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
# field-value = *( field-content / obs-fold ), of VCHAR, SP, HTAB and obs-text (%x80-FF).
# Possessive quantifiers (*+) keep a failing match linear: no backtracking.
_FIELD_VALUE = r"[\t\x20-\x7e\x80-\xff]*+"
# request-target: h11's rule, one or more VCHAR (no spaces, no controls, no obs-text).
_REQUEST_TARGET = r"[\x21-\x7e]+"
_HTTP_VERSION = r"HTTP/([0-9])\.([0-9])"

_token_re = re.compile(TOKEN)
_request_line_re = re.compile(rf"({TOKEN}) ({_REQUEST_TARGET}) ({_HTTP_VERSION})")
# The SP before an empty reason-phrase is often left out; like h11 we accept that.
_status_line_re = re.compile(rf"({_HTTP_VERSION}) ([0-9]{{3}})(?: ({_FIELD_VALUE}))?")
_header_line_re = re.compile(rf"({TOKEN}):[ \t]*+({_FIELD_VALUE})")
_field_value_re = re.compile(_FIELD_VALUE)
_request_target_re = re.compile(_REQUEST_TARGET)
_http_version_re = re.compile(_HTTP_VERSION)
_bad_value_char_re = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
# The bytes a request head may start with: a method (a token), then a space.
_method_prefix_re = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]*")
_STATUS_LINE_PREFIX = b"HTTP/"


class Headers:
    """An ordered, multi-valued collection of header fields with case-insensitive names.

    RFC 7230 section 3.2: "Each header field consists of a case-insensitive field name".
    The original spelling of each name is kept for serialization; lookups use a
    lower-cased index, so ``get`` and ``get_all`` cost one dictionary access.
    """

    __slots__ = ("_index", "_items")
    # Mutable, hence unhashable (defining __eq__ already sets __hash__ to None at runtime).
    __hash__: ClassVar[None]  # type: ignore[assignment]

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        self._index: dict[str, list[str]] = {}
        for name, value in items:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        """Append a header field, after any with the same name."""
        self._items.append((name, value))
        self._index.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of ``name``, or ``default`` when it is absent."""
        values = self._index.get(name.lower())
        return default if values is None else values[0]

    def get_all(self, name: str) -> list[str]:
        """Return every value of ``name`` in order (an empty list when absent)."""
        return list(self._index.get(name.lower(), ()))

    def tokens(self, name: str) -> list[str]:
        """Return the comma-separated elements of every ``name`` field, lower-cased.

        RFC 7230 section 7 (the ``#rule``): "a recipient MUST accept lists that satisfy
        the following syntax: #element => [ ( "," / element ) *( OWS "," [ OWS element ]
        ) ]", i.e. empty elements are skipped. Section 3.2.2 allows a list to be split
        over several fields of the same name. Use it for case-insensitive token lists
        such as ``Connection`` and ``Upgrade``.
        """
        return [
            element
            for value in self._index.get(name.lower(), ())
            for element in (part.strip(" \t").lower() for part in value.split(","))
            if element
        ]

    def items(self) -> list[tuple[str, str]]:
        """Return the (name, value) pairs in order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return _lower_names(self._items) == _lower_names(other._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def _lower_names(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in items]


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Hard limits on a message head; anything larger is refused (431 or 414).

    ``max_head_size`` counts every byte of the head including the final CRLF CRLF;
    ``max_line_length`` counts a line's bytes without its CRLF.
    """

    max_head_size: int = DEFAULT_MAX_HEAD_SIZE
    max_headers: int = DEFAULT_MAX_HEADERS
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH


DEFAULT_LIMITS = HttpLimits()


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request head: ``GET /chat?room=lobby HTTP/1.1`` and its header fields."""

    method: str
    target: str
    version: str  # "HTTP/1.1"
    headers: Headers

    @property
    def path(self) -> str:
        """The request target without its query (percent-escapes are kept).

        For the absolute-form (``GET http://example.com/chat HTTP/1.1``, RFC 7230
        section 5.3.2) this is the URI's path, ``/`` when it has none.
        """
        if self.target.startswith("/"):
            return self.target.partition("?")[0]
        if "://" in self.target:
            return urlsplit(self.target).path or "/"
        return self.target  # asterisk-form "*" or authority-form "host:port"

    @property
    def query(self) -> dict[str, str]:
        """The query parameters, percent-decoded; when a name repeats, the last wins.

        Blank values are kept: ``?before=&limit=10`` gives ``{"before": "", "limit": "10"}``.
        """
        if self.target.startswith("/"):
            query = self.target.partition("?")[2]
        else:
            query = urlsplit(self.target).query
        return dict(parse_qsl(query, keep_blank_values=True))


@dataclass(frozen=True, slots=True)
class Response:
    """A parsed response head: ``HTTP/1.1 101 Switching Protocols`` and its header fields."""

    status: int
    reason: str
    version: str  # "HTTP/1.1"
    headers: Headers


# --- Parsing ------------------------------------------------------------------------------


def parse_request_head(
    data: bytes | bytearray | memoryview, limits: HttpLimits = DEFAULT_LIMITS
) -> tuple[Request, int] | None:
    """Parse the head of an HTTP/1.x request from the start of ``data``.

    Return ``None`` while the head is incomplete (and still within ``limits``), else the
    request and the number of bytes the head used, including its final CRLF CRLF.
    Raise ``InvalidHandshake`` with status 400, 414, 431 or 505 for a head to refuse.
    """
    text = _complete_head(data, limits, request=True)
    if text is None:
        return None
    lines = text.split("\r\n")
    request_line = lines[0]
    if len(request_line) > limits.max_line_length:
        raise InvalidHandshake(f"request line longer than {limits.max_line_length} bytes", 414)
    match = _request_line_re.fullmatch(request_line)
    if match is None:
        raise _request_line_error(request_line)
    method, target, version, major, _ = match.groups()
    _check_major_version(major)
    headers = _parse_header_lines(lines, limits)
    return Request(method, target, version, headers), len(text) + len(_END_OF_HEAD)


def parse_response_head(
    data: bytes | bytearray | memoryview, limits: HttpLimits = DEFAULT_LIMITS
) -> tuple[Response, int] | None:
    """Parse the head of an HTTP/1.x response from the start of ``data``.

    Return ``None`` while the head is incomplete, else the response and the number of
    bytes the head used. A malformed or oversized head raises ``InvalidHandshake`` with
    status 0 (the response had no usable status).
    """
    try:
        text = _complete_head(data, limits, request=False)
        if text is None:
            return None
        lines = text.split("\r\n")
        status_line = lines[0]
        if len(status_line) > limits.max_line_length:
            raise InvalidHandshake(f"status line longer than {limits.max_line_length} bytes")
        match = _status_line_re.fullmatch(status_line)
        if match is None:
            raise _status_line_error(status_line)
        version, major, _, status, reason = match.groups()
        _check_major_version(major)
        headers = _parse_header_lines(lines, limits)
    except InvalidHandshake as exc:
        raise InvalidHandshake(f"invalid HTTP response: {exc.reason}", 0) from None
    response = Response(int(status), reason or "", version, headers)
    return response, len(text) + len(_END_OF_HEAD)


def _complete_head(
    data: bytes | bytearray | memoryview, limits: HttpLimits, *, request: bool
) -> str | None:
    """Return the head (without its final CRLF CRLF) decoded, or None if incomplete.

    The end of the head is searched for only within ``max_head_size`` bytes, so a call
    costs O(max_head_size) however much data the caller has buffered.
    """
    buffer = data[: limits.max_head_size].tobytes() if isinstance(data, memoryview) else data
    end = buffer.find(_END_OF_HEAD, 0, limits.max_head_size)
    if end != -1:
        return buffer[:end].decode("latin-1")
    _check_incomplete_start_line(buffer, limits, request=request)
    if len(data) >= limits.max_head_size:
        raise InvalidHandshake(f"head larger than {limits.max_head_size} bytes", 431)
    return None


def _check_incomplete_start_line(
    data: bytes | bytearray, limits: HttpLimits, *, request: bool
) -> None:
    """Refuse an incomplete head early when its first line already cannot be valid.

    A bare LF after the start line would leave us waiting for a CRLF CRLF that never
    comes; an over-long request line deserves its own status (414), which a head-size
    check alone would turn into 431.
    """
    # Garbage without a line ending (a TLS ClientHello on the plain port, a binary
    # protocol) is refused at its first byte that cannot start a head, not after the
    # handshake timeout.
    if not request:
        if not _STATUS_LINE_PREFIX.startswith(bytes(data[:5])):
            raise InvalidHandshake("invalid HTTP response: not an HTTP status line", 0)
    elif data[:1] not in (b"\r", b"\n"):  # a line break first is judged below
        method = _method_prefix_re.match(data)
        assert method is not None  # the pattern matches the empty string
        if method.end() < len(data) and (method.end() == 0 or data[method.end()] != 0x20):
            raise InvalidHandshake("not an HTTP request")
    line_end = data.find(b"\n", 0, limits.max_line_length + 2)
    if line_end == -1:
        if len(data) >= limits.max_line_length + 2:
            start_line = "request line" if request else "status line"
            raise InvalidHandshake(f"{start_line} longer than {limits.max_line_length} bytes", 414)
    elif data[line_end - 1 : line_end] != b"\r":
        raise InvalidHandshake("line ends in a bare LF instead of CRLF")


def _check_major_version(major: str) -> None:
    # RFC 7230 section 2.6: "The 505 (HTTP Version Not Supported) status code [...]
    # when it does not support the major version".
    if major != "1":
        raise InvalidHandshake(f"HTTP/{major}.x is not supported", 505)


def _parse_header_lines(lines: list[str], limits: HttpLimits) -> Headers:
    """Parse ``lines[1:]``, each a ``field-name ":" OWS field-value OWS`` line."""
    if len(lines) - 1 > limits.max_headers:
        raise InvalidHandshake(f"more than {limits.max_headers} header fields", 431)
    headers = Headers()
    match_line = _header_line_re.fullmatch
    for line in lines[1:]:
        if len(line) > limits.max_line_length:
            raise InvalidHandshake(f"header line longer than {limits.max_line_length} bytes", 431)
        match = match_line(line)
        if match is None:
            raise _header_line_error(line)
        name, value = match.groups()
        # The leading OWS is outside the value group; strip the trailing OWS here.
        headers.add(name, value.rstrip(" \t"))
    return headers


# Precise error messages are worked out only once a fast match has failed.


def _request_line_error(line: str) -> InvalidHandshake:
    if "\r" in line or "\n" in line:
        return InvalidHandshake("bare CR or LF in request line")
    parts = line.split(" ")
    if len(parts) != 3:
        return InvalidHandshake("malformed request line")
    method, target, version = parts
    if not _token_re.fullmatch(method):
        return InvalidHandshake("invalid method in request line")
    if not _request_target_re.fullmatch(target):
        return InvalidHandshake("invalid request target")
    return InvalidHandshake(f"invalid HTTP version {version!r}")


def _status_line_error(line: str) -> InvalidHandshake:
    version, _, rest = line.partition(" ")
    if not _http_version_re.fullmatch(version):
        return InvalidHandshake(f"invalid HTTP version {version[:16]!r}")
    status, _, reason = rest.partition(" ")
    if not (len(status) == 3 and status.isdigit() and status.isascii()):
        return InvalidHandshake(f"invalid status code {status[:16]!r}")
    return InvalidHandshake(_bad_character_reason(reason, "reason phrase"))


def _header_line_error(line: str) -> InvalidHandshake:
    if line[:1] in (" ", "\t"):
        return InvalidHandshake("obsolete line folding in header line")
    name, colon, value = line.partition(":")
    if not colon:
        return InvalidHandshake("header line without a colon")
    if not name:
        return InvalidHandshake("empty header name")
    if name[-1] in " \t":
        return InvalidHandshake("whitespace between header name and colon")
    if not _token_re.fullmatch(name):
        return InvalidHandshake("invalid character in header name")
    return InvalidHandshake(_bad_character_reason(value, f"{name} header"))


def _bad_character_reason(text: str, where: str) -> str:
    bad = _bad_value_char_re.search(text)
    assert bad is not None, "called only for text that failed to match"
    char = bad.group()
    if char in "\r\n":
        return f"bare CR or LF in {where}"
    return f"invalid character {char!r} in {where}"


def request_body_length(headers: Headers) -> int:
    """Return the length of a request's body from its ``Content-Length`` (0 when absent).

    RFC 7230 section 3.3.3 decides how a request body is delimited. We do not read
    chunked bodies, so a ``Transfer-Encoding`` is refused: "A server MAY reject a
    request that contains a message body but not a Content-Length by responding with 411
    (Length Required)", and "If a Transfer-Encoding header field is present in a request
    and the chunked transfer coding is not the final encoding, [...] the server MUST
    respond with the 400 (Bad Request) status code". Repeated, identical lengths are
    accepted, differing ones refused: "If a message is received [...] with multiple
    Content-Length header fields having differing field-values, [...] the recipient MUST
    treat it as an unrecoverable error".
    """
    transfer_codings = headers.tokens("Transfer-Encoding")
    if transfer_codings:
        if transfer_codings[-1] == "chunked":
            raise InvalidHandshake("chunked request bodies are not supported", 411)
        raise InvalidHandshake("request body length cannot be determined")
    lengths = set(headers.tokens("Content-Length"))
    if not lengths:
        return 0
    if len(lengths) > 1:
        raise InvalidHandshake("conflicting Content-Length values")
    length = lengths.pop()
    if not (length.isdigit() and length.isascii()) or len(length) > _MAX_CONTENT_LENGTH_DIGITS:
        raise InvalidHandshake("invalid Content-Length")
    return int(length)


# --- Serialization ----------------------------------------------------------------------


def serialize_request(method: str, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """Return the bytes of an HTTP/1.1 request head.

    Raise ``ValueError`` for a method, target or header field that would not parse back,
    in particular one that smuggles CR or LF (header injection).
    """
    if not _token_re.fullmatch(method):
        raise ValueError(f"invalid HTTP method: {method!r}")
    if not _request_target_re.fullmatch(target):
        raise ValueError(f"invalid request target: {target!r}")
    return _serialize_head(f"{method} {target} HTTP/1.1", headers)


def serialize_response(
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes = b"",
    reason: str | None = None,
) -> bytes:
    """Return the bytes of an HTTP/1.1 response: status line, headers and body.

    ``reason`` defaults to the standard phrase (``http.HTTPStatus``). A ``Content-Length``
    is added unless one is given, when there is a body or the status allows one (RFC 7230
    section 3.3.2: not for 1xx, 204 and 304). Raise ``ValueError`` for a status outside
    100-999 or a field containing CR or LF.
    """
    if not 100 <= status <= 999:
        raise ValueError(f"invalid HTTP status: {status!r}")
    if reason is None:
        reason = _standard_reason(status)
    elif not _field_value_re.fullmatch(reason):
        raise ValueError(f"invalid reason phrase: {reason!r}")
    header_list = list(headers)
    body_allowed = not (status < 200 or status in (204, 304))
    if (body or body_allowed) and not any(
        name.lower() == "content-length" for name, _ in header_list
    ):
        header_list.append(("Content-Length", str(len(body))))
    return _serialize_head(f"HTTP/1.1 {status} {reason}", header_list) + body


def _standard_reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _serialize_head(start_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [start_line]
    for name, value in headers:
        if not _token_re.fullmatch(name):
            raise ValueError(f"invalid header name: {name!r}")
        if not _field_value_re.fullmatch(value):
            raise ValueError(f"invalid value for header {name}: {value!r}")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")
