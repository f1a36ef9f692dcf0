"""Tests for rfc6455.http: byte literals in, exact values out."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rfc6455.errors import InvalidHandshake
from rfc6455.http import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_HEAD_SIZE,
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_LINE_LENGTH,
    Headers,
    HttpLimits,
    Request,
    Response,
    parse_request_head,
    parse_response_head,
    request_body_length,
    serialize_request,
    serialize_response,
)

BROWSER_REQUEST = (
    b"GET /ws?room=lobby&name=ada HTTP/1.1\r\n"
    b"Host: chat.example.com:8080\r\n"
    b"Connection: Upgrade\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: no-cache\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    b" Chrome/120.0.0.0 Safari/537.36\r\n"
    b"Upgrade: websocket\r\n"
    b"Origin: https://chat.example.com\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"\r\n"
)

SIMPLE_REQUEST = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def parse_request(data: bytes, limits: HttpLimits = DEFAULT_LIMITS) -> tuple[Request, int]:
    result = parse_request_head(data, limits)
    assert result is not None
    return result


def parse_response(data: bytes, limits: HttpLimits = DEFAULT_LIMITS) -> tuple[Response, int]:
    result = parse_response_head(data, limits)
    assert result is not None
    return result


def request_error(data: bytes, limits: HttpLimits = DEFAULT_LIMITS) -> InvalidHandshake:
    with pytest.raises(InvalidHandshake) as info:
        parse_request_head(data, limits)
    return info.value


def response_error(data: bytes, limits: HttpLimits = DEFAULT_LIMITS) -> InvalidHandshake:
    with pytest.raises(InvalidHandshake) as info:
        parse_response_head(data, limits)
    return info.value


# --- Headers ------------------------------------------------------------------------------


def test_headers_are_ordered_multi_valued_and_case_insensitive() -> None:
    headers = Headers([("Host", "a"), ("X-Tag", "1")])
    headers.add("x-tag", "2")
    assert headers.get("HOST") == "a"
    assert headers.get("x-TAG") == "1"
    assert headers.get_all("X-Tag") == ["1", "2"]
    assert headers.get_all("Missing") == []
    assert headers.get("Missing") is None
    assert headers.get("Missing", "default") == "default"
    assert "host" in headers
    assert "Missing" not in headers
    assert 42 not in headers
    assert len(headers) == 3
    assert list(headers) == [("Host", "a"), ("X-Tag", "1"), ("x-tag", "2")]
    assert headers.items() == [("Host", "a"), ("X-Tag", "1"), ("x-tag", "2")]
    assert repr(headers) == "Headers([('Host', 'a'), ('X-Tag', '1'), ('x-tag', '2')])"


def test_headers_returned_lists_are_copies() -> None:
    headers = Headers([("A", "1")])
    headers.get_all("a").append("2")
    headers.items().append(("B", "2"))
    assert headers.items() == [("A", "1")]


def test_headers_tokens_follow_the_list_rule() -> None:
    headers = Headers([("Connection", "keep-alive, Upgrade"), ("connection", " ,, CLOSE\t,")])
    assert headers.tokens("Connection") == ["keep-alive", "upgrade", "close"]
    assert headers.tokens("Upgrade") == []


def test_headers_equality_ignores_name_case_but_not_order() -> None:
    assert Headers([("Host", "a"), ("X", "1")]) == Headers([("host", "a"), ("x", "1")])
    assert Headers([("Host", "a"), ("X", "1")]) != Headers([("X", "1"), ("Host", "a")])
    assert Headers([("Host", "a")]) != Headers([("Host", "A")])
    assert Headers() != [("Host", "a")]


def test_headers_are_not_hashable() -> None:
    with pytest.raises(TypeError):
        hash(Headers())


# --- Requests -------------------------------------------------------------------------------


def test_parse_browser_request() -> None:
    request, used = parse_request(BROWSER_REQUEST)
    assert used == len(BROWSER_REQUEST)
    assert request.method == "GET"
    assert request.target == "/ws?room=lobby&name=ada"
    assert request.version == "HTTP/1.1"
    assert request.path == "/ws"
    assert request.query == {"room": "lobby", "name": "ada"}
    assert request.headers.get("sec-websocket-key") == "dGhlIHNhbXBsZSBub25jZQ=="
    assert request.headers.tokens("connection") == ["upgrade"]
    assert len(request.headers) == 12
    assert request.headers.items()[4] == (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/120.0.0.0 Safari/537.36",
    )


def test_parse_request_counts_only_the_head() -> None:
    frames = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    request, used = parse_request(SIMPLE_REQUEST + frames)
    assert used == len(SIMPLE_REQUEST)
    assert request == Request("GET", "/", "HTTP/1.1", Headers([("Host", "a")]))


def test_parse_request_without_headers() -> None:
    request, used = parse_request(b"OPTIONS * HTTP/1.0\r\n\r\n")
    assert request == Request("OPTIONS", "*", "HTTP/1.0", Headers())
    assert used == 22
    assert request.path == "*"


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_parse_request_accepts_any_bytes_like(kind: type) -> None:
    data = kind(SIMPLE_REQUEST + b"body")
    assert parse_request_head(data) == parse_request(SIMPLE_REQUEST)
    assert parse_request_head(kind(SIMPLE_REQUEST[:-1])) is None


def test_incomplete_request_returns_none_then_parses() -> None:
    assert parse_request_head(b"") is None
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n") is None
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r") is None
    assert parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n") is not None


def test_request_fed_one_byte_at_a_time() -> None:
    data = BROWSER_REQUEST + b"\x88\x80"
    buffer = bytearray()
    results = []
    for byte in data:
        buffer.append(byte)
        result = parse_request_head(buffer)
        if result is not None:
            results.append(len(buffer))
            assert result == parse_request(BROWSER_REQUEST)
    assert results == [len(BROWSER_REQUEST), len(BROWSER_REQUEST) + 1, len(data)]


def test_header_values_are_trimmed_and_decoded_as_latin_1() -> None:
    request, _ = parse_request(
        b"GET / HTTP/1.1\r\nX-A:   padded  value \t\r\nX-Empty:\r\nX-Blank: \t \r\n"
        b"X-Text: caf\xe9\r\nX-Tab:\ta\tb\r\n\r\n"
    )
    assert request.headers.items() == [
        ("X-A", "padded  value"),
        ("X-Empty", ""),
        ("X-Blank", ""),
        ("X-Text", "café"),
        ("X-Tab", "a\tb"),
    ]


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/", "/", {}),
        ("/ws?room=a&room=b", "/ws", {"room": "b"}),
        (
            "/api/rooms/x/messages?before=&limit=10",
            "/api/rooms/x/messages",
            {"before": "", "limit": "10"},
        ),
        ("/s?name=Ada%20L&x=%E2%9C%93", "/s", {"name": "Ada L", "x": "\u2713"}),
        ("http://example.com/chat?room=a", "/chat", {"room": "a"}),
        ("http://example.com", "/", {}),
        ("example.com:443", "example.com:443", {}),
    ],
)
def test_request_path_and_query(target: str, path: str, query: dict[str, str]) -> None:
    request = Request("GET", target, "HTTP/1.1", Headers())
    assert request.path == path
    assert request.query == query


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        # Request line.
        (b"\r\n\r\n", 400, "malformed request line"),
        (b"\r\nGET / HTTP/1.1\r\n\r\n", 400, "malformed request line"),
        (b"GET /\r\n\r\n", 400, "malformed request line"),
        (b"GET / a HTTP/1.1\r\n\r\n", 400, "malformed request line"),
        (b"GET  / HTTP/1.1\r\n\r\n", 400, "malformed request line"),
        (b"G(T / HTTP/1.1\r\n\r\n", 400, "invalid method in request line"),
        (b"GET /\x7f HTTP/1.1\r\n\r\n", 400, "invalid request target"),
        (b"GET /caf\xe9 HTTP/1.1\r\n\r\n", 400, "invalid request target"),
        (b"GET / HTTP/1.1.1\r\n\r\n", 400, "invalid HTTP version 'HTTP/1.1.1'"),
        (b"GET / http/1.1\r\n\r\n", 400, "invalid HTTP version 'http/1.1'"),
        (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "bare CR or LF in request line"),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.x is not supported"),
        (b"GET / HTTP/0.9\r\n\r\n", 505, "HTTP/0.x is not supported"),
        # Header lines.
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            400,
            "obsolete line folding in header line",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n",
            400,
            "obsolete line folding in header line",
        ),
        (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", 400, "header line without a colon"),
        (b"GET / HTTP/1.1\r\n: a\r\n\r\n", 400, "empty header name"),
        (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "whitespace between header name and colon"),
        (b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 400, "whitespace between header name and colon"),
        (b"GET / HTTP/1.1\r\nHo(st: a\r\n\r\n", 400, "invalid character in header name"),
        (b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400, "invalid character '\\x00' in X header"),
        (b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n", 400, "invalid character '\\x7f' in X header"),
        (b"GET / HTTP/1.1\r\nX: a\x1bb\r\n\r\n", 400, "invalid character '\\x1b' in X header"),
        (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", 400, "bare CR or LF in X header"),
        (b"GET / HTTP/1.1\r\nX: a\nY: b\r\n\r\n", 400, "bare CR or LF in X header"),
        # Incomplete heads that can never become valid.
        (b"GET / HTTP/1.1\n", 400, "line ends in a bare LF instead of CRLF"),
        (b"\nGET / HTTP/1.1", 400, "line ends in a bare LF instead of CRLF"),
    ],
)
def test_malformed_request_is_rejected(data: bytes, status: int, reason: str) -> None:
    error = request_error(data)
    assert (error.status, error.reason, error.headers) == (status, reason, ())


def test_long_request_line_is_rejected_with_414() -> None:
    target = b"/" + b"a" * DEFAULT_MAX_LINE_LENGTH
    # The head is incomplete, but the request line is already too long.
    error = request_error(b"GET " + target)
    assert (error.status, error.reason) == (414, "request line longer than 8190 bytes")
    # A request line of exactly the limit is fine while the head is incomplete.
    line = b"GET /" + b"a" * (DEFAULT_MAX_LINE_LENGTH - 14) + b" HTTP/1.1"
    assert len(line) == DEFAULT_MAX_LINE_LENGTH
    assert parse_request_head(line + b"\r") is None
    # A complete head with a request line over a smaller limit.
    limits = HttpLimits(max_line_length=19)
    assert parse_request(b"GET /12345 HTTP/1.1\r\n\r\n", limits)[0].target == "/12345"
    error = request_error(b"GET /123456 HTTP/1.1\r\n\r\n", limits)
    assert (error.status, error.reason) == (414, "request line longer than 19 bytes")


def test_long_header_line_is_rejected_with_431() -> None:
    limits = HttpLimits(max_line_length=20)
    assert parse_request(b"GET / HTTP/1.1\r\nX: 34567890123456789\r\n\r\n", limits)
    error = request_error(b"GET / HTTP/1.1\r\nX: 345678901234567890\r\n\r\n", limits)
    assert (error.status, error.reason) == (431, "header line longer than 20 bytes")


def test_too_many_headers_are_rejected_with_431() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * DEFAULT_MAX_HEADERS
    assert len(parse_request(head + b"\r\n")[0].headers) == 64
    error = request_error(head + b"X: y\r\n\r\n")
    assert (error.status, error.reason) == (431, "more than 64 header fields")


def test_oversized_head_is_rejected_with_431() -> None:
    start = b"GET / HTTP/1.1\r\n"
    # Exactly DEFAULT_MAX_HEAD_SIZE bytes including the final CRLF CRLF is accepted...
    filler = b"X: " + b"a" * (DEFAULT_MAX_HEAD_SIZE - len(start) - 7) + b"\r\n\r\n"
    limits = HttpLimits(max_headers=1)
    assert len(start + filler) == DEFAULT_MAX_HEAD_SIZE
    assert parse_request(start + filler, limits)[1] == DEFAULT_MAX_HEAD_SIZE
    # ...one more byte is not, whether the head is complete or not.
    error = request_error(start + b"X" + filler, limits)
    assert (error.status, error.reason) == (431, "head larger than 8192 bytes")
    error = request_error(start + b"X: y\r\n" * 2000)
    assert (error.status, error.reason) == (431, "head larger than 8192 bytes")
    # A huge buffer is refused by looking at its first max_head_size bytes only.
    error = request_error(start + b"X: y\r\n" * 2_000_000)
    assert error.status == 431
    # Below the limit, an unfinished head is simply incomplete.
    assert parse_request_head((start + b"X: y\r\n" * 2000)[: DEFAULT_MAX_HEAD_SIZE - 1]) is None


# --- Responses ------------------------------------------------------------------------------


def test_parse_response() -> None:
    data = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi"
    )
    response, used = parse_response(data)
    assert used == len(data) - 4
    assert response == Response(
        101,
        "Switching Protocols",
        "HTTP/1.1",
        Headers(
            [
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            ]
        ),
    )


@pytest.mark.parametrize(
    ("status_line", "status", "reason"),
    [
        (b"HTTP/1.1 200 OK", 200, "OK"),
        (b"HTTP/1.0 404 Not Found", 404, "Not Found"),
        (b"HTTP/1.1 101", 101, ""),
        (b"HTTP/1.1 101 ", 101, ""),
        (b"HTTP/1.1 599 caf\xe9\tau lait", 599, "café\tau lait"),
    ],
)
def test_parse_status_line(status_line: bytes, status: int, reason: str) -> None:
    response, _ = parse_response(status_line + b"\r\n\r\n")
    assert (response.status, response.reason) == (status, reason)


def test_incomplete_response_returns_none() -> None:
    assert parse_response_head(b"HTTP/1.1 101 Switching Protocols\r\n") is None
    assert parse_response_head(memoryview(b"HTTP/1.1 101 Switching Protocols\r\n")) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"HTTP/1.1 10 Short\r\n\r\n", "invalid status code '10'"),
        (b"HTTP/1.1 1010 Long\r\n\r\n", "invalid status code '1010'"),
        (b"HTTP/1.1 \xb2\xb2\xb2 Odd\r\n\r\n", "invalid status code '\xb2\xb2\xb2'"),
        (b"HTTP/1.1  101\r\n\r\n", "invalid status code ''"),
        (b"HTTP/1.1 200 O\x00K\r\n\r\n", "invalid character '\\x00' in reason phrase"),
        (b"HTTP/1.1 200 OK\nX: y\r\n\r\n", "bare CR or LF in reason phrase"),
        (b"HTTP/1.1\r\n\r\n", "invalid status code ''"),
        (b"ICY 200 OK\r\n\r\n", "invalid HTTP version 'ICY'"),
        (b"HTTP/2 200 OK\r\n\r\n", "invalid HTTP version 'HTTP/2'"),
        (b"HTTP/2.0 200 OK\r\n\r\n", "HTTP/2.x is not supported"),
        (b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n", "whitespace between header name and colon"),
        (b"HTTP/1.1 200 OK\n", "line ends in a bare LF instead of CRLF"),
        (b"HTTP/1.1 200 " + b"x" * 9000, "status line longer than 8190 bytes"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 2000, "head larger than 8192 bytes"),
    ],
)
def test_malformed_response_is_rejected_with_status_0(data: bytes, reason: str) -> None:
    error = response_error(data)
    assert (error.status, error.reason) == (0, f"invalid HTTP response: {reason}")


def test_response_limits() -> None:
    limits = HttpLimits(max_headers=1, max_line_length=12)
    assert parse_response(b"HTTP/1.1 200\r\nX: 345678901\r\n\r\n", limits)
    error = response_error(b"HTTP/1.1 200 OK\r\n\r\n", limits)
    assert error.reason == "invalid HTTP response: status line longer than 12 bytes"
    error = response_error(b"HTTP/1.1 200\r\nX: 3456789012\r\n\r\n", limits)
    assert error.reason == "invalid HTTP response: header line longer than 12 bytes"
    error = response_error(b"HTTP/1.1 200\r\nX: 1\r\nY: 2\r\n\r\n", limits)
    assert error.reason == "invalid HTTP response: more than 1 header fields"


# --- Request bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "length"),
    [
        ([], 0),
        ([("Content-Length", "0")], 0),
        ([("Content-Length", "42")], 42),
        ([("content-length", "42"), ("Content-Length", "42")], 42),
        ([("Content-Length", "42, 42")], 42),
        ([("Content-Length", "9" * 18)], 10**18 - 1),
    ],
)
def test_request_body_length(headers: list[tuple[str, str]], length: int) -> None:
    assert request_body_length(Headers(headers)) == length


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        (
            [("Content-Length", "1"), ("Content-Length", "2")],
            400,
            "conflicting Content-Length values",
        ),
        ([("Content-Length", "1, 2")], 400, "conflicting Content-Length values"),
        ([("Content-Length", "+1")], 400, "invalid Content-Length"),
        ([("Content-Length", "-1")], 400, "invalid Content-Length"),
        ([("Content-Length", "0x10")], 400, "invalid Content-Length"),
        ([("Content-Length", "\u0661")], 400, "invalid Content-Length"),
        ([("Content-Length", "1" * 19)], 400, "invalid Content-Length"),
        ([("Transfer-Encoding", "chunked")], 411, "chunked request bodies are not supported"),
        (
            [("Transfer-Encoding", "gzip, chunked"), ("Content-Length", "3")],
            411,
            "chunked request bodies are not supported",
        ),
        ([("Transfer-Encoding", "gzip")], 400, "request body length cannot be determined"),
    ],
)
def test_request_body_length_rejects(
    headers: list[tuple[str, str]], status: int, reason: str
) -> None:
    with pytest.raises(InvalidHandshake) as info:
        request_body_length(Headers(headers))
    assert (info.value.status, info.value.reason) == (status, reason)


# --- Serialization ------------------------------------------------------------------------------


def test_serialize_request() -> None:
    data = serialize_request("GET", "/chat?x=1", [("Host", "example.com"), ("X-Text", "café")])
    assert data == b"GET /chat?x=1 HTTP/1.1\r\nHost: example.com\r\nX-Text: caf\xe9\r\n\r\n"
    assert serialize_request("OPTIONS", "*", []) == b"OPTIONS * HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize(
    ("method", "target", "headers", "message"),
    [
        ("GET /", "/", [], "invalid HTTP method"),
        ("", "/", [], "invalid HTTP method"),
        ("GET", "", [], "invalid request target"),
        ("GET", "/a b", [], "invalid request target"),
        ("GET", "/\r\nX: y", [], "invalid request target"),
        ("GET", "/", [("X: y\r\nZ", "v")], "invalid header name"),
        ("GET", "/", [("X Y", "v")], "invalid header name"),
        ("GET", "/", [("X", "v\r\nSet-Cookie: a=b")], "invalid value for header X"),
        ("GET", "/", [("X", "v\nY: z")], "invalid value for header X"),
        ("GET", "/", [("X", "v\x00")], "invalid value for header X"),
        ("GET", "/", [("X", "\u2713")], "invalid value for header X"),
    ],
)
def test_serialize_request_refuses_injection(
    method: str, target: str, headers: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        serialize_request(method, target, headers)


@pytest.mark.parametrize(
    ("status", "headers", "body", "reason", "expected"),
    [
        (
            200,
            [("Content-Type", "text/plain")],
            b"ok\n",
            None,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n",
        ),
        (404, [], b"", None, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        (204, [], b"", None, b"HTTP/1.1 204 No Content\r\n\r\n"),
        (304, [("ETag", '"x"')], b"", None, b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n'),
        (
            101,
            [("Upgrade", "websocket")],
            b"",
            None,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ),
        (103, [], b"", None, b"HTTP/1.1 103 Early Hints\r\n\r\n"),
        (
            200,
            [("content-length", "10")],
            b"",
            None,
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
        ),
        (299, [], b"", None, b"HTTP/1.1 299 \r\nContent-Length: 0\r\n\r\n"),
        (200, [], b"", "Fine", b"HTTP/1.1 200 Fine\r\nContent-Length: 0\r\n\r\n"),
    ],
)
def test_serialize_response(
    status: int, headers: list[tuple[str, str]], body: bytes, reason: str | None, expected: bytes
) -> None:
    assert serialize_response(status, headers, body, reason) == expected


def test_serialize_response_round_trips() -> None:
    data = serialize_response(400, [("Connection", "close")], b"bad\n")
    response, used = parse_response(data)
    assert (response.status, response.reason, data[used:]) == (400, "Bad Request", b"bad\n")
    assert response.headers.items() == [("Connection", "close"), ("Content-Length", "4")]


@pytest.mark.parametrize(
    ("status", "headers", "reason", "message"),
    [
        (99, [], None, "invalid HTTP status"),
        (1000, [], None, "invalid HTTP status"),
        (200, [], "OK\r\nX: y", "invalid reason phrase"),
        (200, [("X", "a\rb")], None, "invalid value for header X"),
        (200, [("", "a")], None, "invalid header name"),
    ],
)
def test_serialize_response_refuses_injection(
    status: int, headers: list[tuple[str, str]], reason: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        serialize_response(status, headers, b"", reason)


# --- Properties -------------------------------------------------------------------------------

SMALL_LIMITS = HttpLimits(max_head_size=64, max_headers=3, max_line_length=24)

# Fragments that make random input look enough like HTTP to reach every branch.
http_fragments = st.lists(
    st.sampled_from(
        [
            b"GET",
            b"HTTP/1.1",
            b"HTTP/2.0",
            b"HTTP/1.1 101",
            b" ",
            b"/",
            b"\r\n",
            b"\r",
            b"\n",
            b":",
            b"Host",
            b"X",
            b"\t",
            b"\x00",
            b"\xe9",
            b"(",
            b"a" * 30,
        ]
    )
    | st.binary(max_size=4),
    max_size=40,
).map(b"".join)


@given(
    st.one_of(st.binary(max_size=300), http_fragments),
    st.sampled_from([DEFAULT_LIMITS, SMALL_LIMITS]),
)
@example(b"GET / HTTP/1.1\r\n\r\n", DEFAULT_LIMITS)
def test_parsers_raise_only_invalid_handshake(data: bytes, limits: HttpLimits) -> None:
    for parse in (parse_request_head, parse_response_head):
        try:
            result = parse(data, limits)
        except InvalidHandshake as error:
            assert error.reason
        else:
            if result is not None:
                assert 0 < result[1] <= min(len(data), limits.max_head_size)
                assert data[result[1] - 4 : result[1]] == b"\r\n\r\n"


tokens = st.text(
    alphabet="!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits, min_size=1, max_size=12
)
targets = st.text(alphabet=[chr(c) for c in range(0x21, 0x7F)], min_size=1, max_size=40)
field_values = st.text(
    alphabet=st.sampled_from("\t " + "".join(chr(c) for c in range(0x21, 0x7F)) + "\xe9\xff"),
    max_size=30,
).map(lambda value: value.strip(" \t"))


@given(
    tokens, targets, st.lists(st.tuples(tokens, field_values), max_size=10), st.binary(max_size=10)
)
def test_valid_requests_round_trip(
    method: str, target: str, header_list: list[tuple[str, str]], rest: bytes
) -> None:
    data = serialize_request(method, target, header_list)
    request, used = parse_request(data + rest)
    assert used == len(data)
    assert request == Request(method, target, "HTTP/1.1", Headers(header_list))
    assert request.headers.items() == header_list


@given(
    st.integers(100, 999),
    st.lists(st.tuples(tokens, field_values), max_size=10),
    st.binary(max_size=10),
)
def test_valid_responses_round_trip(
    status: int, header_list: list[tuple[str, str]], body: bytes
) -> None:
    data = serialize_response(status, header_list, body)
    response, used = parse_response(data)
    assert response.status == status
    assert response.headers.items()[: len(header_list)] == header_list
    assert data[used:] == body


@given(st.data())
def test_any_chunking_gives_the_same_request(data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(BROWSER_REQUEST)))
    prefix = BROWSER_REQUEST[:cut]
    expected = None if cut < len(BROWSER_REQUEST) else parse_request(BROWSER_REQUEST)
    assert parse_request_head(prefix) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello, no line end
        b"\x00\x00\x00\x00",
        b"GET\x00/",
        b" GET / HTTP/1.1",
    ],
)
def test_binary_garbage_is_refused_before_any_line_ending(data: bytes) -> None:
    # Without this, a TLS client on the plain port would wait for the handshake timeout.
    with pytest.raises(InvalidHandshake) as info:
        parse_request_head(data)
    assert (info.value.status, info.value.reason) == (400, "not an HTTP request")


def test_a_method_still_arriving_is_not_refused() -> None:
    assert parse_request_head(b"GE") is None
    assert parse_request_head(b"GET") is None
    assert parse_request_head(b"GET /cha") is None


def test_a_response_that_is_not_http_is_refused_at_once() -> None:
    with pytest.raises(InvalidHandshake) as info:
        parse_response_head(b"SSH-2.0-OpenSSH")
    assert info.value.status == 0
    assert "not an HTTP status line" in info.value.reason
    assert parse_response_head(b"HTT") is None
