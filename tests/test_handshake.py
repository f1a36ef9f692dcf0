"""Tests for rfc6455.handshake: the RFC 6455 section 4 opening handshake, both roles."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.protocol import OPEN
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from rfc6455.errors import InvalidHandshake
from rfc6455.handshake import (
    GUID,
    accept_key,
    build_accept_response,
    build_reject_response,
    build_request,
    generate_key,
    is_websocket_upgrade,
    parse_extensions,
    parse_subprotocols,
    select_subprotocol,
    serialize_extension,
    validate_request,
    validate_response,
)
from rfc6455.http import Headers, Request, Response, parse_request_head, parse_response_head

# RFC 6455 section 1.3.
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

RFC_REQUEST = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)

RFC_RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Protocol: chat\r\n"
    b"\r\n"
)

BROWSER_REQUEST = (
    b"GET /ws?room=lobby HTTP/1.1\r\n"
    b"Host: localhost:8080\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Pragma: no-cache\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"upgrade: WebSocket\r\n"
    b"Origin: http://localhost:8080\r\n"
    b"sec-websocket-version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
    b"\r\n"
)


def parse_request(data: bytes) -> Request:
    result = parse_request_head(data)
    assert result is not None
    assert result[1] == len(data)
    return result[0]


def parse_response(data: bytes) -> Response:
    result = parse_response_head(data)
    assert result is not None
    assert result[1] == len(data)
    return result[0]


def request_with(
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    remove: tuple[str, ...] = (),
    replace: dict[str, str] | None = None,
    add: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """Return the RFC request with some header fields removed, replaced or added."""
    replace = replace or {}
    lines = [f"{method} /chat {version}".encode()]
    for line in RFC_REQUEST.split(b"\r\n")[1:-2]:
        name, _, value = line.decode().partition(": ")
        if name in remove:
            continue
        lines.append(f"{name}: {replace.get(name, value)}".encode())
    lines.extend(f"{name}: {value}".encode() for name, value in add)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def handshake_error(data: bytes) -> InvalidHandshake:
    request = parse_request(data)
    with pytest.raises(InvalidHandshake) as info:
        validate_request(request)
    return info.value


# --- Keys -----------------------------------------------------------------------------------


def test_accept_key_rfc_example() -> None:
    assert GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    assert accept_key(RFC_KEY) == RFC_ACCEPT


def test_generate_key_is_16_random_bytes_in_base64() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert len(key) == 24
        assert len(base64.b64decode(key, validate=True)) == 16


# --- Server side ----------------------------------------------------------------------------


def test_rfc_request_is_accepted() -> None:
    request = parse_request(RFC_REQUEST)
    assert is_websocket_upgrade(request)
    assert validate_request(request) == RFC_KEY
    offered = parse_subprotocols(request.headers.get_all("Sec-WebSocket-Protocol"))
    assert offered == ["chat", "superchat"]
    subprotocol = select_subprotocol(offered, ["chat"])
    assert build_accept_response(RFC_KEY, subprotocol=subprotocol) == RFC_RESPONSE


def test_browser_request_is_accepted_with_exact_101() -> None:
    request = parse_request(BROWSER_REQUEST)
    key = validate_request(request)
    assert key == "x3JJHMbDL1EzLkh9GBhXDw=="
    assert request.path == "/ws"
    assert request.query == {"room": "lobby"}
    assert parse_extensions(request.headers.get_all("Sec-WebSocket-Extensions")) == [
        ("permessage-deflate", [])
    ]
    response = build_accept_response(
        key,
        extensions="permessage-deflate; server_no_context_takeover",
        extra_headers=[("Server", "chatd")],
    )
    assert response == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: HSmrc0sMlYUkAGmm5OPpG2HaGWk=\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n"
        b"Server: chatd\r\n"
        b"\r\n"
    )


@pytest.mark.parametrize(
    "data",
    [
        request_with(replace={"Connection": "keep-alive, Upgrade"}),
        request_with(replace={"Connection": "upgrade"}),
        request_with(replace={"Connection": "keep-alive"}, add=(("Connection", "Upgrade"),)),
        request_with(replace={"Upgrade": "WEBSOCKET"}),
        request_with(replace={"Upgrade": "h2c, websocket"}),
        request_with(version="HTTP/1.2"),
        request_with(replace={"Host": ""}),
        RFC_REQUEST.lower()
        .replace(b"get /chat http/1.1", b"GET /chat HTTP/1.1")
        .replace(b"dghlihnhbxbszsbub25jzq==", RFC_KEY.encode()),
    ],
)
def test_valid_variants_are_accepted(data: bytes) -> None:
    assert validate_request(parse_request(data)) == RFC_KEY


UPGRADE_REQUIRED = (
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
)


@pytest.mark.parametrize(
    ("data", "status", "reason", "headers"),
    [
        (
            request_with(method="POST"),
            405,
            "WebSocket handshake must use GET, not POST",
            (("Allow", "GET"),),
        ),
        (
            request_with(method="get"),
            405,
            "WebSocket handshake must use GET, not get",
            (("Allow", "GET"),),
        ),
        (
            request_with(version="HTTP/1.0"),
            400,
            "WebSocket needs HTTP/1.1 or higher, not HTTP/1.0",
            (),
        ),
        (request_with(remove=("Host",)), 400, "missing Host header", ()),
        (request_with(add=(("Host", "evil.example"),)), 400, "multiple Host headers", ()),
        (request_with(remove=("Upgrade",)), 426, "missing Upgrade header", UPGRADE_REQUIRED),
        (
            request_with(replace={"Upgrade": "h2c"}),
            426,
            "Upgrade header does not include websocket",
            UPGRADE_REQUIRED,
        ),
        (
            request_with(replace={"Upgrade": ""}),
            426,
            "Upgrade header does not include websocket",
            UPGRADE_REQUIRED,
        ),
        (
            request_with(remove=("Connection",)),
            400,
            "Connection header does not include Upgrade",
            (),
        ),
        (
            request_with(replace={"Connection": "keep-alive"}),
            400,
            "Connection header does not include Upgrade",
            (),
        ),
        (
            request_with(replace={"Connection": "keep-alive Upgrade"}),
            400,
            "Connection header does not include Upgrade",
            (),
        ),
        (request_with(remove=("Sec-WebSocket-Key",)), 400, "missing Sec-WebSocket-Key header", ()),
        (
            request_with(add=(("Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw=="),)),
            400,
            "multiple Sec-WebSocket-Key headers",
            (),
        ),
        (
            request_with(replace={"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ="}),
            400,
            "Sec-WebSocket-Key is not 16 bytes in base64",
            (),
        ),
        (
            request_with(replace={"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==="}),
            400,
            "Sec-WebSocket-Key is not 16 bytes in base64",
            (),
        ),
        (
            # 24 characters without padding decode to 18 bytes.
            request_with(replace={"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQAA"}),
            400,
            "Sec-WebSocket-Key is not 16 bytes in base64",
            (),
        ),
        (
            request_with(replace={"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZ!=="}),
            400,
            "Sec-WebSocket-Key is not 16 bytes in base64",
            (),
        ),
        (
            request_with(replace={"Sec-WebSocket-Key": "\xe9" * 24}),
            400,
            "Sec-WebSocket-Key is not 16 bytes in base64",
            (),
        ),
        (
            request_with(remove=("Sec-WebSocket-Version",)),
            426,
            "missing Sec-WebSocket-Version header",
            UPGRADE_REQUIRED,
        ),
        (
            request_with(replace={"Sec-WebSocket-Version": "8"}),
            426,
            "unsupported Sec-WebSocket-Version '8', expected 13",
            UPGRADE_REQUIRED,
        ),
        (
            request_with(replace={"Sec-WebSocket-Version": "13, 8"}),
            426,
            "unsupported Sec-WebSocket-Version '13, 8', expected 13",
            UPGRADE_REQUIRED,
        ),
        (
            request_with(add=(("Sec-WebSocket-Version", "13"),)),
            426,
            "unsupported Sec-WebSocket-Version '13, 13', expected 13",
            UPGRADE_REQUIRED,
        ),
        (
            # Version is checked before the key: an old client learns what to speak.
            request_with(remove=("Sec-WebSocket-Key",), replace={"Sec-WebSocket-Version": "8"}),
            426,
            "unsupported Sec-WebSocket-Version '8', expected 13",
            UPGRADE_REQUIRED,
        ),
    ],
)
def test_invalid_request_is_rejected(
    data: bytes, status: int, reason: str, headers: tuple[tuple[str, str], ...]
) -> None:
    error = handshake_error(data)
    assert (error.status, error.reason, error.headers) == (status, reason, headers)


def test_unparsable_version_is_rejected() -> None:
    request = Request("GET", "/", "HTTP/one", Headers())
    with pytest.raises(InvalidHandshake) as info:
        validate_request(request)
    assert (info.value.status, info.value.reason) == (
        400,
        "WebSocket needs HTTP/1.1 or higher, not HTTP/one",
    )


def test_is_websocket_upgrade() -> None:
    assert is_websocket_upgrade(parse_request(BROWSER_REQUEST))
    assert not is_websocket_upgrade(parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert not is_websocket_upgrade(parse_request(request_with(replace={"Upgrade": "h2c"})))


def test_reject_response_bytes() -> None:
    error = handshake_error(request_with(replace={"Sec-WebSocket-Version": "8"}))
    assert build_reject_response(error, [("Server", "chatd")]) == (
        b"HTTP/1.1 426 Upgrade Required\r\n"
        b"Upgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Connection: Upgrade, close\r\n"
        b"Server: chatd\r\n"
        b"Content-Length: 51\r\n"
        b"\r\n"
        b"unsupported Sec-WebSocket-Version '8', expected 13\n"
    )


def test_reject_response_for_a_parse_error() -> None:
    with pytest.raises(InvalidHandshake) as info:
        parse_request_head(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 65 + b"\r\n")
    assert build_reject_response(info.value) == (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Connection: close\r\n"
        b"Content-Length: 27\r\n"
        b"\r\n"
        b"more than 64 header fields\n"
    )


# --- Subprotocols ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], []),
        (["chat"], ["chat"]),
        (["chat, superchat"], ["chat", "superchat"]),
        (["chat", "v2.Chat.example.com"], ["chat", "v2.Chat.example.com"]),
        ([" ,chat ,, \tsuperchat, "], ["chat", "superchat"]),
        ([""], []),
    ],
)
def test_parse_subprotocols(values: list[str], expected: list[str]) -> None:
    assert parse_subprotocols(values) == expected


@pytest.mark.parametrize("value", ["chat superchat", "chat;v=1", "chat/1", '"chat"'])
def test_parse_subprotocols_rejects_non_tokens(value: str) -> None:
    with pytest.raises(InvalidHandshake) as info:
        parse_subprotocols([value])
    assert info.value.status == 400
    assert info.value.reason.startswith("invalid subprotocol ")


def test_select_subprotocol_prefers_the_server_order() -> None:
    assert select_subprotocol(["chat", "superchat"], ["superchat", "chat"]) == "superchat"
    assert select_subprotocol(["chat", "superchat"], ["json", "chat"]) == "chat"
    assert select_subprotocol(["chat"], ["Chat"]) is None
    assert select_subprotocol([], ["chat"]) is None
    assert select_subprotocol(["chat"], []) is None


# --- Extensions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], []),
        (["permessage-deflate"], [("permessage-deflate", [])]),
        (
            ["permessage-deflate; client_max_window_bits"],
            [("permessage-deflate", [("client_max_window_bits", None)])],
        ),
        (
            # RFC 7692 section 5.2, offers in order of preference.
            [
                "permessage-deflate; client_max_window_bits=10; server_no_context_takeover,"
                " permessage-deflate"
            ],
            [
                (
                    "permessage-deflate",
                    [("client_max_window_bits", "10"), ("server_no_context_takeover", None)],
                ),
                ("permessage-deflate", []),
            ],
        ),
        (
            ["permessage-deflate ;client_max_window_bits = 10 ;\tx", "foo", "bar; baz=1"],
            [
                ("permessage-deflate", [("client_max_window_bits", "10"), ("x", None)]),
                ("foo", []),
                ("bar", [("baz", "1")]),
            ],
        ),
        (['x; a="10"'], [("x", [("a", "10")])]),
        (['x; a="1\\0"; b=""'.replace('""', '"\\b"')], [("x", [("a", "10"), ("b", "b")])]),
        ([", foo ,, bar ,"], [("foo", []), ("bar", [])]),
    ],
)
def test_parse_extensions(
    values: list[str], expected: list[tuple[str, list[tuple[str, str | None]]]]
) -> None:
    assert parse_extensions(values) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty Sec-WebSocket-Extensions header"),
        (" , ", "empty Sec-WebSocket-Extensions header"),
        ("foo bar", "malformed Sec-WebSocket-Extensions header at character 4: 'bar'"),
        ("foo;", "malformed Sec-WebSocket-Extensions header at character 3: ';'"),
        ("foo; =1", "malformed Sec-WebSocket-Extensions header at character 3: '; =1'"),
        ("foo; a=", "malformed Sec-WebSocket-Extensions header at character 6: '='"),
        ("foo; a=b c", "malformed Sec-WebSocket-Extensions header at character 9: 'c'"),
        ('foo; a="b', "malformed Sec-WebSocket-Extensions header at character 6: '=\"b'"),
        ("@foo", "malformed Sec-WebSocket-Extensions header at character 0: '@foo'"),
        ("foo, ;a", "malformed Sec-WebSocket-Extensions header at character 5: ';a'"),
        ('foo; a="b c"', "Sec-WebSocket-Extensions parameter a is not a token once unquoted"),
        ('foo; a=""', "Sec-WebSocket-Extensions parameter a is not a token once unquoted"),
        ('foo; a="\\""', "Sec-WebSocket-Extensions parameter a is not a token once unquoted"),
    ],
)
def test_parse_extensions_rejects_malformed_values(value: str, reason: str) -> None:
    with pytest.raises(InvalidHandshake) as info:
        parse_extensions(["permessage-deflate", value])
    assert (info.value.status, info.value.reason) == (400, reason)


def test_serialize_extension() -> None:
    assert serialize_extension("permessage-deflate") == "permessage-deflate"
    params = [("client_max_window_bits", "12"), ("server_no_context_takeover", None)]
    value = serialize_extension("permessage-deflate", params)
    assert value == "permessage-deflate; client_max_window_bits=12; server_no_context_takeover"
    assert parse_extensions([value]) == [("permessage-deflate", params)]


@pytest.mark.parametrize(
    ("name", "params"),
    [("a b", []), ("x", [("a b", None)]), ("x", [("a", "b c")]), ("x", [("a", "")])],
)
def test_serialize_extension_refuses_non_tokens(
    name: str, params: list[tuple[str, str | None]]
) -> None:
    with pytest.raises(ValueError, match="not a token in an extension header"):
        serialize_extension(name, params)


tokens = st.text(alphabet=st.sampled_from("!#$%&'*+-.^_`|~abcXYZ019"), min_size=1, max_size=8)
extensions = st.lists(
    st.tuples(tokens, st.lists(st.tuples(tokens, st.none() | tokens), max_size=4)),
    min_size=1,
    max_size=4,
)


@given(extensions)
def test_extensions_round_trip(offer: list[tuple[str, list[tuple[str, str | None]]]]) -> None:
    value = ", ".join(serialize_extension(name, params) for name, params in offer)
    assert parse_extensions([value]) == offer


@given(st.text(max_size=40))
def test_parse_extensions_raises_only_invalid_handshake(value: str) -> None:
    try:
        parse_extensions([value])
    except InvalidHandshake as error:
        assert error.status == 400


# --- Client side ----------------------------------------------------------------------------


def test_build_request_bytes() -> None:
    assert build_request("server.example.com", "/chat", RFC_KEY) == (
        b"GET /chat HTTP/1.1\r\n"
        b"Host: server.example.com\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"\r\n"
    )
    assert build_request(
        "localhost:8080",
        "/ws?room=a",
        RFC_KEY,
        origin="http://localhost:8080",
        subprotocols=["chat", "superchat"],
        extensions="permessage-deflate; client_max_window_bits",
        extra_headers=[("Cookie", "token=abc")],
    ) == (
        b"GET /ws?room=a HTTP/1.1\r\n"
        b"Host: localhost:8080\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Origin: http://localhost:8080\r\n"
        b"Sec-WebSocket-Protocol: chat, superchat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        b"Cookie: token=abc\r\n"
        b"\r\n"
    )


def test_round_trip_client_and_server() -> None:
    key = generate_key()
    data = build_request(
        "localhost:8080",
        "/ws",
        key,
        subprotocols=["superchat", "chat"],
        extensions="permessage-deflate; client_max_window_bits",
    )
    # Server side.
    request = parse_request(data)
    assert validate_request(request) == key
    offered = parse_subprotocols(request.headers.get_all("Sec-WebSocket-Protocol"))
    subprotocol = select_subprotocol(offered, ["chat", "json"])
    offer = parse_extensions(request.headers.get_all("Sec-WebSocket-Extensions"))
    assert offer == [("permessage-deflate", [("client_max_window_bits", None)])]
    accepted = serialize_extension("permessage-deflate", [("client_max_window_bits", "12")])
    answer = build_accept_response(key, subprotocol=subprotocol, extensions=accepted)
    # Client side.
    response = parse_response(answer)
    assert validate_response(response, key, subprotocols=["superchat", "chat"]) == (
        "chat",
        [("permessage-deflate", [("client_max_window_bits", "12")])],
    )


def test_rfc_response_is_accepted() -> None:
    response = parse_response(RFC_RESPONSE)
    assert validate_response(response, RFC_KEY, subprotocols=["chat", "superchat"]) == ("chat", [])


def accepted_response(
    *, remove: tuple[str, ...] = (), add: tuple[tuple[str, str], ...] = ()
) -> Response:
    headers = [
        (name, value)
        for name, value in [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", RFC_ACCEPT),
        ]
        if name not in remove
    ]
    return Response(101, "Switching Protocols", "HTTP/1.1", Headers([*headers, *add]))


@pytest.mark.parametrize(
    ("response", "status", "reason"),
    [
        (
            parse_response(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\n",
            ),
            403,
            "server rejected the WebSocket handshake: 403 Forbidden",
        ),
        (
            Response(200, "", "HTTP/1.1", Headers()),
            200,
            "server rejected the WebSocket handshake: 200",
        ),
        (
            accepted_response(remove=("Upgrade",)),
            101,
            "missing or invalid Upgrade header in the 101 response",
        ),
        (
            accepted_response(remove=("Upgrade",), add=(("Upgrade", "websocket, h2c"),)),
            101,
            "missing or invalid Upgrade header in the 101 response",
        ),
        (
            accepted_response(remove=("Connection",)),
            101,
            "Connection header in the 101 response lacks Upgrade",
        ),
        (
            accepted_response(remove=("Sec-WebSocket-Accept",)),
            101,
            "missing Sec-WebSocket-Accept header",
        ),
        (
            accepted_response(
                remove=("Sec-WebSocket-Accept",),
                add=(("Sec-WebSocket-Accept", accept_key(generate_key())),),
            ),
            101,
            "Sec-WebSocket-Accept does not match the key",
        ),
        (
            accepted_response(add=(("Sec-WebSocket-Accept", RFC_ACCEPT),)),
            101,
            "Sec-WebSocket-Accept does not match the key",
        ),
        (
            accepted_response(add=(("Sec-WebSocket-Protocol", "superchat"),)),
            101,
            "server selected subprotocol 'superchat' not offered",
        ),
        (
            accepted_response(add=(("Sec-WebSocket-Protocol", "Chat"),)),
            101,
            "server selected subprotocol 'Chat' not offered",
        ),
        (
            accepted_response(add=(("Sec-WebSocket-Protocol", "chat, json"),)),
            101,
            "server selected more than one subprotocol",
        ),
        (
            accepted_response(
                add=(("Sec-WebSocket-Protocol", "chat"), ("Sec-WebSocket-Protocol", "chat"))
            ),
            101,
            "server selected more than one subprotocol",
        ),
        (
            accepted_response(add=(("Sec-WebSocket-Extensions", "permessage-deflate;"),)),
            101,
            "malformed Sec-WebSocket-Extensions header at character 18: ';'",
        ),
    ],
)
def test_invalid_response_is_rejected(response: Response, status: int, reason: str) -> None:
    with pytest.raises(InvalidHandshake) as info:
        validate_response(response, RFC_KEY, subprotocols=["chat", "json"])
    assert (info.value.status, info.value.reason) == (status, reason)


def test_response_variants_are_accepted() -> None:
    response = parse_response(
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"upgrade: WebSocket\r\n"
        b"connection: keep-alive, upgrade\r\n"
        b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"Sec-WebSocket-Extensions: x-custom; a=1\r\n"
        b"\r\n"
    )
    assert validate_response(response, RFC_KEY) == (
        None,
        [("permessage-deflate", []), ("x-custom", [("a", "1")])],
    )


# --- Interoperability with websockets (an independent implementation) -----------------------


def test_websockets_client_request_is_accepted_and_our_101_is_accepted_by_it() -> None:
    client = ClientProtocol(
        parse_uri("ws://localhost:8080/ws?room=lobby"),
        origin="http://localhost:8080",  # type: ignore[arg-type]
        subprotocols=["superchat", "chat"],  # type: ignore[list-item]
        extensions=[ClientPerMessageDeflateFactory(client_max_window_bits=True)],
    )
    client.send_request(client.connect())
    (data,) = client.data_to_send()
    request = parse_request(data)
    assert request.path == "/ws"
    assert request.query == {"room": "lobby"}
    key = validate_request(request)
    assert key == client.key
    offered = parse_subprotocols(request.headers.get_all("Sec-WebSocket-Protocol"))
    assert offered == ["superchat", "chat"]
    assert parse_extensions(request.headers.get_all("Sec-WebSocket-Extensions")) == [
        ("permessage-deflate", [("client_max_window_bits", None)])
    ]
    answer = build_accept_response(
        key,
        subprotocol=select_subprotocol(offered, ["chat"]),
        extensions="permessage-deflate; client_max_window_bits=12",
    )
    client.receive_data(answer + b"\x81\x02hi")
    assert client.handshake_exc is None
    assert client.state is OPEN
    assert client.subprotocol == "chat"
    assert [type(extension).__name__ for extension in client.extensions] == ["PerMessageDeflate"]
    event_types = [type(event).__name__ for event in client.events_received()]
    assert event_types == ["Response", "Frame"]


def test_websockets_client_rejects_a_bad_accept() -> None:
    client = ClientProtocol(parse_uri("ws://localhost/"))
    client.send_request(client.connect())
    client.receive_data(build_accept_response(generate_key()))
    assert client.handshake_exc is not None
    assert client.state is not OPEN


def test_our_request_is_accepted_by_websockets_server() -> None:
    key = generate_key()
    server = ServerProtocol(subprotocols=["chat"])  # type: ignore[list-item]
    server.receive_data(
        build_request("localhost", "/ws", key, origin="http://localhost", subprotocols=["chat"])
    )
    (request,) = server.events_received()
    server.send_response(server.accept(request))  # type: ignore[arg-type]
    (data,) = server.data_to_send()
    assert validate_response(parse_response(data), key, subprotocols=["chat"]) == ("chat", [])
