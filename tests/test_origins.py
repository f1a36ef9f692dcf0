"""Tests for chatd.origins: which pages may open a WebSocket or call the API."""

from __future__ import annotations

import pytest

from chatd.origins import OriginPolicy, normalize_origin


@pytest.mark.parametrize(
    ("origin", "normalized"),
    [
        ("http://example.com", "http://example.com"),
        ("HTTPS://Example.COM:443", "https://example.com"),
        ("http://example.com:80/", "http://example.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://[::1]:8443", "https://[::1]:8443"),
        ("null", None),
        ("", None),
        ("file:///etc/passwd", None),
        ("ftp://example.com", None),
        ("http://example.com/path", None),
        ("http://user@example.com", None),
        ("http://example.com:99999", None),
        ("http://", None),
        ("example.com", None),
    ],
)
def test_normalize_origin(origin: str, normalized: str | None) -> None:
    assert normalize_origin(origin) == normalized


def test_same_origin_is_allowed_and_a_foreign_one_is_not() -> None:
    policy = OriginPolicy()
    assert policy.check("http://127.0.0.1:8080", "127.0.0.1:8080", tls=False) is None
    assert policy.check("https://chat.example:8443", "chat.example:8443", tls=True) is None
    # The scheme is part of the origin: an http page may not talk to the https server.
    assert policy.check("http://chat.example:8443", "chat.example:8443", tls=True) is not None
    assert policy.check("http://evil.example", "127.0.0.1:8080", tls=False) is not None
    assert policy.check("null", "127.0.0.1:8080", tls=False) is not None
    assert policy.check("http://127.0.0.1:8080", None, tls=False) is not None


def test_allow_list_and_missing_origin() -> None:
    policy = OriginPolicy.from_config(("https://app.example",), allow_missing=False)
    assert policy.check("https://app.example:443", "chat.example", tls=True) is None
    assert policy.check(None, "chat.example", tls=True) == "no Origin header"
    assert OriginPolicy().check(None, "chat.example", tls=True) is None


def test_a_malformed_configured_origin_stops_the_start() -> None:
    with pytest.raises(ValueError, match="not an origin"):
        OriginPolicy.from_config(("app.example",), allow_missing=True)


def test_cors_headers_only_for_allowed_foreign_origins() -> None:
    policy = OriginPolicy.from_config(
        ("https://app.example", "http://127.0.0.1:8080"), allow_missing=True
    )
    assert policy.cors_headers("https://app.example", "chat.example", tls=True) == [
        ("Access-Control-Allow-Origin", "https://app.example"),
        ("Access-Control-Allow-Credentials", "true"),
        ("Vary", "Origin"),
    ]
    assert policy.cors_headers("https://evil.example", "chat.example", tls=True) == []
    assert policy.cors_headers(None, "chat.example", tls=True) == []
    # The same origin needs no CORS headers, even when listed.
    assert policy.cors_headers("http://127.0.0.1:8080", "127.0.0.1:8080", tls=False) == []
