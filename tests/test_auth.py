"""chatd.auth: the signing secret file, JWTs with real PyJWT, cookies, login throttling."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest

from chatd.auth import (
    COOKIE_NAME,
    AuthError,
    LoginThrottle,
    Token,
    TokenIssuer,
    clear_cookie,
    load_or_create_secret,
    session_cookie,
    token_from_headers,
)

SECRET = b"k" * 32
OTHER_SECRET = b"o" * 32
NOW = 1_700_000_000.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "alice",
        "iss": "chatd",
        "iat": int(NOW),
        "exp": int(NOW) + 3600,
        "jti": "j1",
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def issuer(clock: Clock) -> TokenIssuer:
    return TokenIssuer(SECRET, ttl=3600.0, clock=clock)


# --- the secret file ---------------------------------------------------------------------------


def test_secret_is_created_with_mode_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "chatd" / "token-secret"
    secret = load_or_create_secret(path)
    assert len(secret) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == secret.hex() + "\n"  # hexadecimal text
    assert load_or_create_secret(path) == secret
    assert os.listdir(path.parent) == ["token-secret"]  # no temporary file left behind
    assert load_or_create_secret(tmp_path / "other") != secret


def test_secret_creation_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_or_create_secret(tmp_path / "secret")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_secret_readable_or_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "secret"
    load_or_create_secret(path)
    path.chmod(mode)
    with pytest.raises(AuthError, match=rf"accessible to group or others \(mode 0{mode:o}\)"):
        load_or_create_secret(path)


def test_a_short_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("ab" * 31 + "\n")
    path.chmod(0o600)
    with pytest.raises(AuthError, match="is 31 bytes; it must be at least 32"):
        load_or_create_secret(path)


def test_a_longer_secret_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("cd" * 64)
    path.chmod(0o600)
    assert load_or_create_secret(path) == b"\xcd" * 64


@pytest.mark.parametrize("content", [b"not hex at all, surely", b"\xff\xfe" * 40])
def test_a_secret_that_is_not_hex_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(AuthError, match="not hexadecimal"):
        load_or_create_secret(path)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.mkdir(mode=0o700)
    with pytest.raises(AuthError, match="secret"):
        load_or_create_secret(path)


# --- tokens ------------------------------------------------------------------------------------


def test_round_trip(issuer: TokenIssuer) -> None:
    token = issuer.issue("alice")
    assert token.expires == NOW + 3600
    assert issuer.verify(token.value) == "alice"
    assert issuer.verify_reason(token.value) == ("alice", "ok")


def test_claims_and_header(issuer: TokenIssuer) -> None:
    token = issuer.issue("alice")
    header = jwt.get_unverified_header(token.value)
    assert header == {"alg": "HS256", "typ": "JWT"}
    payload = jwt.decode(token.value, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert payload.keys() == {"sub", "iss", "iat", "exp", "jti"}
    assert payload["sub"] == "alice"
    assert payload["iss"] == "chatd"
    assert payload["iat"] == int(NOW)
    assert payload["exp"] == int(NOW) + 3600
    assert issuer.issue("alice").value != token.value  # a new jti every time


def test_expired(issuer: TokenIssuer, clock: Clock) -> None:
    token = issuer.issue("alice")
    clock.now = NOW + 3599
    assert issuer.verify(token.value) == "alice"
    clock.now = NOW + 3600  # RFC 7519 4.1.4: valid only *before* exp
    assert issuer.verify_reason(token.value) == (None, "expired")


def test_leeway(clock: Clock) -> None:
    issuer = TokenIssuer(SECRET, ttl=60.0, clock=clock, leeway=10.0)
    token = issuer.issue("alice")
    clock.now = NOW + 69
    assert issuer.verify(token.value) == "alice"
    clock.now = NOW + 70
    assert issuer.verify(token.value) is None


def test_issued_in_the_future(issuer: TokenIssuer, clock: Clock) -> None:
    token = issuer.issue("alice")
    clock.now = NOW - 60
    assert issuer.verify_reason(token.value) == (None, "issued in the future")


def test_tampered_payload(issuer: TokenIssuer) -> None:
    header, payload, signature = issuer.issue("alice").value.split(".")
    forged = json.loads(unb64url(payload))
    forged["sub"] = "admin"
    token = f"{header}.{b64url(json.dumps(forged).encode())}.{signature}"
    assert issuer.verify_reason(token) == (None, "bad signature")


def test_tampered_signature(issuer: TokenIssuer) -> None:
    header, payload, signature = issuer.issue("alice").value.split(".")
    raw = bytearray(unb64url(signature))
    raw[0] ^= 1
    assert issuer.verify_reason(f"{header}.{payload}.{b64url(bytes(raw))}") == (
        None,
        "bad signature",
    )
    assert issuer.verify_reason(f"{header}.{payload}.") == (None, "bad signature")


def test_wrong_issuer(clock: Clock) -> None:
    token = TokenIssuer(SECRET, issuer="elsewhere", clock=clock).issue("alice")
    assert TokenIssuer(SECRET, clock=clock).verify_reason(token.value) == (None, "wrong issuer")


def test_another_secret(issuer: TokenIssuer, clock: Clock) -> None:
    token = TokenIssuer(OTHER_SECRET, ttl=3600.0, clock=clock).issue("alice")
    assert issuer.verify_reason(token.value) == (None, "bad signature")


def test_alg_none_is_refused(issuer: TokenIssuer) -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    assert issuer.verify_reason(f"{header}.{payload}.") == (None, "algorithm not allowed")


@pytest.mark.parametrize("algorithm", ["HS512", "HS384"])
@pytest.mark.filterwarnings("ignore:The HMAC key is 32 bytes long")  # as an attacker would
def test_other_hmac_algorithms_are_refused(issuer: TokenIssuer, algorithm: str) -> None:
    token = jwt.encode(claims(), SECRET, algorithm=algorithm)
    assert issuer.verify_reason(token) == (None, "algorithm not allowed")


def test_a_hand_built_hs256_token_is_accepted(issuer: TokenIssuer) -> None:
    """The check above is on the algorithm, not on the way the token was made."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    signature = hmac.new(SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert issuer.verify(f"{header}.{payload}.{b64url(signature)}") == "alice"


@pytest.mark.parametrize("claim", ["sub", "iss", "iat", "exp"])
def test_required_claims(issuer: TokenIssuer, claim: str) -> None:
    token = jwt.encode(claims(**{claim: None}), SECRET, algorithm="HS256")
    user, reason = issuer.verify_reason(token)
    assert user is None
    assert claim in reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"sub": "not a name!"}, "bad subject"),
        ({"sub": "x" * 51}, "bad subject"),
        ({"exp": "tomorrow"}, "malformed times"),
        ({"iat": True}, "malformed times"),
    ],
)
def test_bad_claim_values(issuer: TokenIssuer, changes: dict[str, Any], reason: str) -> None:
    token = jwt.encode(claims(**changes), SECRET, algorithm="HS256")
    assert issuer.verify_reason(token) == (None, reason)


@pytest.mark.parametrize("token", ["", "junk", "a.b.c", "a.b", "é.é.é", "x" * 5000])
def test_junk_is_refused(issuer: TokenIssuer, token: str) -> None:
    user, reason = issuer.verify_reason(token)
    assert user is None
    assert reason in {"malformed", "too long"}


def test_only_user_names_get_tokens(issuer: TokenIssuer) -> None:
    with pytest.raises(ValueError, match="not a user name"):
        issuer.issue("not a name!")


def test_a_short_secret_cannot_sign() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenIssuer(b"short")


# --- cookies -----------------------------------------------------------------------------------


def test_session_cookie() -> None:
    token = Token("aaa.bbb.ccc", NOW + 3600)
    assert session_cookie(token, secure=False, now=NOW) == (
        "chatd_token=aaa.bbb.ccc; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600"
    )
    assert session_cookie(token, secure=True, now=NOW + 0.5) == (
        "chatd_token=aaa.bbb.ccc; Path=/; HttpOnly; SameSite=Lax; Max-Age=3599; Secure"
    )
    assert session_cookie(token, secure=False, now=NOW + 7200).endswith("Max-Age=0")


def test_session_cookie_of_a_real_token(issuer: TokenIssuer) -> None:
    token = issuer.issue("alice")
    cookie = session_cookie(token, secure=True)  # the real clock: the token looks expired
    assert cookie.startswith(f"{COOKIE_NAME}={token.value}; ")
    assert token_from_headers([cookie.split(";")[0]], {}) == token.value


def test_clear_cookie() -> None:
    assert clear_cookie(secure=False) == "chatd_token=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"
    assert clear_cookie(secure=True) == (
        "chatd_token=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0; Secure"
    )


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        (["chatd_token=abc"], {}, "abc"),
        (["theme=dark; chatd_token=abc; lang=en"], {}, "abc"),
        (["theme=dark", "chatd_token=abc"], {}, "abc"),  # several Cookie headers
        (["chatd_token=abc"], {"token": "from-query"}, "abc"),  # the cookie wins
        ([], {"token": "from-query"}, "from-query"),
        (["theme=dark"], {"token": "from-query"}, "from-query"),
        (["chatd_token="], {"token": "from-query"}, "from-query"),  # a cleared cookie
        ([], {}, None),
        ([], {"token": ""}, None),
        (['chatd_token="abc"'], {}, "abc"),  # RFC 6265 allows a quoted value
        (["  chatd_token = abc  "], {}, "abc"),
        (["a.b=c=d; chatd_token=x.y.z"], {}, "x.y.z"),  # '=' in another cookie's value
        (["x_chatd_token=nope; chatd_tokens=nope"], {}, None),
        # Junk that makes SimpleCookie give up does not hide the token.
        (['junk"; ,,, ;;; =; name only; \x00\x7f; chatd_token=abc'], {}, "abc"),
        (["\u00e9t\u00e9=\u2603; chatd_token=abc"], {}, "abc"),
        (["chatd_token=first", "chatd_token=second"], {}, "first"),
    ],
)
def test_token_from_headers(
    headers: list[str], query: dict[str, str], expected: str | None
) -> None:
    assert token_from_headers(headers, query) == expected


# --- login throttling --------------------------------------------------------------------------


def test_throttle_blocks_after_n_failures_and_recovers(clock: Clock) -> None:
    throttle = LoginThrottle(3, 60.0, clock)
    for second in range(3):
        assert throttle.allowed("192.0.2.1")
        clock.now = NOW + second * 10
        throttle.failed("192.0.2.1")
    assert not throttle.allowed("192.0.2.1")  # failures at +0, +10, +20
    assert throttle.retry_after("192.0.2.1") == 40.0
    assert throttle.allowed("192.0.2.2")  # another client is not affected
    clock.now = NOW + 59.9
    assert not throttle.allowed("192.0.2.1")
    clock.now = NOW + 60  # the first failure aged out: one more try
    assert throttle.allowed("192.0.2.1")
    assert throttle.retry_after("192.0.2.1") == 0.0
    throttle.failed("192.0.2.1")
    assert not throttle.allowed("192.0.2.1")  # +10, +20, +60
    clock.now = NOW + 70
    assert throttle.allowed("192.0.2.1")


def test_throttle_success_takes_back_only_its_own_attempt(clock: Clock) -> None:
    # The daemon counts every attempt when it starts; a success takes that one back and
    # leaves the earlier failures standing.
    throttle = LoginThrottle(2, 60.0, clock)
    throttle.failed("192.0.2.1")  # a wrong password
    throttle.failed("192.0.2.1")  # the next attempt, counted as it starts
    assert not throttle.allowed("192.0.2.1")
    throttle.succeeded("192.0.2.1")  # it was right
    assert throttle.allowed("192.0.2.1")
    throttle.failed("192.0.2.1")
    assert not throttle.allowed("192.0.2.1")  # the first failure still counts
    throttle.succeeded("192.0.2.9")  # never seen: nothing to do
    assert len(throttle) == 1


def test_throttle_counts_ipv6_by_64_network(clock: Clock) -> None:
    throttle = LoginThrottle(2, 60.0, clock)
    throttle.failed("2001:db8:1:2::1")
    throttle.failed("2001:db8:1:2:ffff::9")
    assert not throttle.allowed("2001:db8:1:2::77")
    assert throttle.allowed("2001:db8:1:3::1")
    throttle.failed("::ffff:192.0.2.1")  # an IPv4 client on a dual-stack socket
    throttle.failed("192.0.2.1")
    assert not throttle.allowed("192.0.2.1")
    throttle.failed("unix-socket-peer")
    assert len(throttle) == 3


def test_throttle_forgets_clients_whose_failures_aged_out(clock: Clock) -> None:
    throttle = LoginThrottle(5, 60.0, clock)
    for n in range(100):
        throttle.failed(f"10.0.0.{n}")
    assert len(throttle) == 100
    clock.now = NOW + 61
    throttle.failed("10.0.1.1")
    assert len(throttle) == 1


def test_throttle_table_is_bounded(clock: Clock) -> None:
    throttle = LoginThrottle(2, 60.0, clock, max_clients=100)
    throttle.failed("192.0.2.1")
    throttle.failed("192.0.2.1")
    for n in range(1000):
        clock.now = NOW + n / 1000
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
        assert len(throttle) <= 100
    assert len(throttle) == 100
    # The least recently failed went first; the newest are all still counted.
    assert throttle.allowed("192.0.2.1")
    throttle.failed("10.0.3.231")
    assert not throttle.allowed("10.0.3.231")


def test_throttle_default_table_cap() -> None:
    assert LoginThrottle().max_clients == 10_000
