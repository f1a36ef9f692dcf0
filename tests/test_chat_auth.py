"""chatd's accounts and tokens over real sockets: login, the cookie, the upgrade in
``required`` mode, bad tokens of every kind, several sessions per user, registration,
logout and token expiry.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as websockets_connect

from chatd.accounts import Accounts
from chatd.auth import TokenIssuer, load_or_create_secret
from chatd.config import ChatSettings
from chatd.limits import Limits
from tests.test_chat import TIMEOUT, RunningChat
from tests.test_chat_http import Reply, request

PASSWORD = "correct horse battery"
NO_RATE = Limits(message_rate=0)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    """Start chatd on a database that has the accounts alice and bob."""
    running: list[RunningChat] = []
    database = tmp_path / "chat.sqlite3"
    with Accounts(database) as accounts:
        accounts.add("alice", PASSWORD)
        accounts.add("bob", PASSWORD)

    def starter(**settings: Any) -> RunningChat:
        settings.setdefault("limits", NO_RATE)
        chat = RunningChat(database, settings=ChatSettings(**settings))
        running.append(chat)
        return chat

    try:
        yield starter
    finally:
        for chat in running:
            chat.stop()


def issuer(tmp_path: Path, **options: Any) -> TokenIssuer:
    """A token issuer with the server's own secret (``chatd-secret`` beside the database)."""
    return TokenIssuer(load_or_create_secret(tmp_path / "chatd-secret"), **options)


def login(port: int, username: str = "alice", password: str = PASSWORD, **headers: str) -> Reply:
    body = json.dumps({"username": username, "password": password}).encode()
    return request(
        port,
        "/api/auth/login",
        "POST",
        body=body,
        headers=(("Content-Type", "application/json"), *headers.items()),
    )


def cookie_of(reply: Reply) -> str:
    """``chatd_token=...`` from a ``Set-Cookie``."""
    return reply.headers["set-cookie"].split(";", 1)[0]


def ws(chat: RunningChat, query: str = "", cookie: str | None = None) -> Any:
    headers = {"Cookie": cookie} if cookie else None
    return websockets_connect(chat.url(query), additional_headers=headers, open_timeout=TIMEOUT)


def recv_type(connection: Any, message_type: str) -> dict[str, Any]:
    for _ in range(50):
        message = json.loads(connection.recv(TIMEOUT))
        if message["type"] == message_type:
            return message  # type: ignore[no-any-return]
    raise AssertionError(f"no {message_type}")


# --- login and the cookie --------------------------------------------------------------------


def test_login_sets_an_httponly_samesite_cookie(start: Any) -> None:
    chat = start(auth="required")
    reply = login(chat.port)
    assert reply.status == 200
    assert reply.json()["user"] == "alice"
    assert reply.json()["expires"] > time.time() + 3600
    attributes = [part.strip() for part in reply.headers["set-cookie"].split(";")]
    assert attributes[0].startswith("chatd_token=")
    assert {"Path=/", "HttpOnly", "SameSite=Lax"} <= set(attributes)
    assert "Secure" not in attributes  # plain http; tests/test_chat_tls.py checks https
    assert any(part.startswith("Max-Age=") for part in attributes)
    me = request(chat.port, "/api/me", headers=(("Cookie", cookie_of(reply)),))
    assert me.status == 200
    assert me.json()["user"] == "alice"
    assert me.json()["auth"] == "required"


def test_failed_logins_look_alike_and_are_throttled(start: Any) -> None:
    chat = start(auth="required", login_attempts=3)
    wrong = login(chat.port, password="not the password")
    unknown = login(chat.port, username="nobody", password="not the password")
    assert wrong.status == unknown.status == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "bad_credentials"
    assert "set-cookie" not in wrong.headers
    login(chat.port, password="third failure")
    refused = login(chat.port)  # even the right password waits now
    assert refused.status == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"not json", "application/json", 400),
        (b'["alice"]', "application/json", 400),
        (b'{"username": "alice", "password": 1}', "application/json", 400),
        (b'{"username": "alice", "password": "x"}', "text/plain", 415),
        (b'{"username": "' + b"a" * 5000 + b'", "password": "x"}', "application/json", 413),
    ],
)
def test_malformed_logins(start: Any, body: bytes, content_type: str, status: int) -> None:
    chat = start(auth="required")
    reply = request(
        chat.port, "/api/auth/login", "POST", body=body, headers=(("Content-Type", content_type),)
    )
    assert reply.status == status


def test_logout_clears_the_cookie(start: Any) -> None:
    chat = start(auth="required")
    reply = request(chat.port, "/api/auth/logout", "POST")
    assert reply.status == 204
    attributes = [part.strip() for part in reply.headers["set-cookie"].split(";")]
    assert attributes[0] == "chatd_token="
    assert "Max-Age=0" in attributes


def test_a_post_from_a_foreign_page_is_refused(start: Any) -> None:
    chat = start(auth="required")
    reply = login(chat.port, Origin="https://evil.example")
    assert reply.status == 403
    assert reply.json()["error"]["code"] == "forbidden_origin"
    assert login(chat.port, Origin=f"http://127.0.0.1:{chat.port}").status == 200


# --- the upgrade in required mode ------------------------------------------------------------


def test_no_token_no_upgrade(start: Any) -> None:
    chat = start(auth="required")
    with pytest.raises(InvalidStatus) as refused:
        ws(chat, "name=alice")
    assert refused.value.response.status_code == 401
    assert request(chat.port, "/api/rooms").status == 401
    assert request(chat.port, "/health").status == 200


def test_the_token_names_the_user_not_the_query(start: Any) -> None:
    chat = start(auth="required")
    cookie = cookie_of(login(chat.port))
    with ws(chat, "name=mallory", cookie) as connection:
        assert recv_type(connection, "welcome")["user"] == "alice"
    token = cookie.split("=", 1)[1]
    with ws(chat, f"token={token}") as connection:
        assert recv_type(connection, "welcome")["user"] == "alice"


def _none_token(subject: str) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"sub": subject, "iss": "chatd", "iat": now, "exp": now + 3600, "jti": "x"}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


@pytest.mark.filterwarnings("ignore:The HMAC key is 32 bytes long")  # the HS512 forgery
def test_bad_tokens_get_no_upgrade(start: Any, tmp_path: Path) -> None:
    chat = start(auth="required")
    good = cookie_of(login(chat.port)).split("=", 1)[1]
    header, payload, signature = good.split(".")
    secret = load_or_create_secret(tmp_path / "chatd-secret")
    now = int(time.time())
    claims = {"sub": "alice", "iss": "chatd", "iat": now, "exp": now + 3600, "jti": "y"}
    forged_claims = base64.urlsafe_b64encode(json.dumps({**claims, "sub": "bob"}).encode()).rstrip(
        b"="
    )
    bad = {
        "tampered payload": f"{header}.{forged_claims.decode()}.{signature}",
        "tampered signature": f"{header}.{payload}.{signature[:-2]}AA",
        "expired": issuer(tmp_path, clock=lambda: time.time() - 86400, ttl=60).issue("alice").value,
        "alg none": _none_token("alice"),
        "HS512": jwt.encode(claims, secret, algorithm="HS512"),
        "another secret": jwt.encode(claims, b"x" * 32, algorithm="HS256"),
        "another issuer": jwt.encode({**claims, "iss": "elsewhere"}, secret, algorithm="HS256"),
    }
    for why, token in bad.items():
        with pytest.raises(InvalidStatus) as refused:
            ws(chat, "", f"chatd_token={token}")
        assert refused.value.response.status_code == 401, why
        assert (
            request(chat.port, "/api/me", headers=(("Cookie", f"chatd_token={token}"),)).status
            == 401
        )


# --- sessions --------------------------------------------------------------------------------


def test_one_user_several_tabs_and_replacement_without_double_delivery(start: Any) -> None:
    chat = start(auth="required")
    alice = cookie_of(login(chat.port))
    bob = cookie_of(login(chat.port, "bob"))
    with ws(chat, "", alice) as tab1, ws(chat, "", alice) as tab2, ws(chat, "", bob) as other:
        first = recv_type(tab1, "welcome")
        assert recv_type(tab2, "welcome")["user"] == "alice"  # no alice-2
        recv_type(other, "welcome")
        # bob presents alice's session id: he gets a session of his own, not hers.
        with ws(chat, f"session={first['session']}", bob) as thief:
            stolen = recv_type(thief, "welcome")
            assert stolen["user"] == "bob"
            assert stolen["session"] != first["session"]
        # alice reconnects with her session id: the old connection is closed at once.
        with ws(chat, f"session={first['session']}", alice) as again:
            assert recv_type(again, "welcome")["session"] == first["session"]
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(50):
                    tab1.recv(TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
            other.send(json.dumps({"type": "message", "room": "lobby", "text": "hi", "id": "m1"}))
            seq = recv_type(other, "ack")["seq"]
            for connection in (again, tab2):
                message = recv_type(connection, "message")
                assert (message["seq"], message["text"]) == (seq, "hi")
            # Exactly once on each: a ping answered means nothing else is on its way.
            again.send(json.dumps({"type": "ping", "id": "p"}))
            assert recv_type(again, "pong")["id"] == "p"


def test_an_expired_token_closes_the_connection_with_4401(start: Any) -> None:
    chat = start(auth="required", token_ttl=1.0)
    cookie = cookie_of(login(chat.port))
    with ws(chat, "", cookie) as connection:
        recv_type(connection, "welcome")
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(50):
                connection.recv(TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401


# --- open mode and registration --------------------------------------------------------------


def test_open_mode_guests_cannot_take_account_names(start: Any) -> None:
    chat = start()
    with pytest.raises(InvalidStatus) as refused:
        ws(chat, "name=alice")
    assert refused.value.response.status_code == 403
    with ws(chat, "name=carol") as guest:
        assert recv_type(guest, "welcome")["user"] == "carol"
    cookie = cookie_of(login(chat.port))
    with ws(chat, "name=whatever", cookie) as member:
        assert recv_type(member, "welcome")["user"] == "alice"
    assert request(chat.port, "/api/me").json() == {
        "user": None,
        "auth": "open",
        "registration": False,
    }


def test_registration_is_off_by_default_and_works_when_on(start: Any) -> None:
    closed = start(auth="required")
    body = json.dumps({"username": "dave", "password": PASSWORD}).encode()
    headers = (("Content-Type", "application/json"),)
    refused = request(closed.port, "/api/auth/register", "POST", body=body, headers=headers)
    assert refused.status == 403
    assert refused.json()["error"]["code"] == "registration_closed"
    closed.stop()
    chat = start(auth="required", registration=True)
    made = request(chat.port, "/api/auth/register", "POST", body=body, headers=headers)
    assert made.status == 201
    assert made.json()["user"] == "dave"
    assert login(chat.port, "dave").status == 200
    again = request(chat.port, "/api/auth/register", "POST", body=body, headers=headers)
    assert again.status == 409
    short = json.dumps({"username": "erin", "password": "short"}).encode()
    assert (
        request(chat.port, "/api/auth/register", "POST", body=short, headers=headers).status == 400
    )


# --- what a review and the fuzzer found -----------------------------------------------------


def test_nick_cannot_take_an_account_name_nor_change_a_login(start: Any) -> None:
    chat = start()
    with ws(chat, "name=carol") as guest:
        recv_type(guest, "welcome")
        guest.send(json.dumps({"type": "message", "room": "lobby", "text": "/nick bob", "id": "n"}))
        assert recv_type(guest, "error")["code"] == "name_taken"
    cookie = cookie_of(login(chat.port))
    with ws(chat, "", cookie) as alice:
        recv_type(alice, "welcome")
        alice.send(json.dumps({"type": "message", "room": "lobby", "text": "/nick al", "id": "n"}))
        assert recv_type(alice, "error")["code"] == "name_taken"


def test_logins_sent_at_once_are_throttled(start: Any) -> None:
    chat = start(auth="required", login_attempts=3)
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda _: login(chat.port, password="wrong!!!"), range(10)))
    statuses = sorted(reply.status for reply in replies)
    assert statuses.count(401) == 3
    assert statuses.count(429) == 7


def test_a_good_login_does_not_launder_failures(start: Any) -> None:
    chat = start(auth="required", login_attempts=3)
    assert login(chat.port, password="wrong one").status == 401
    assert login(chat.port, password="wrong two").status == 401
    assert login(chat.port, "bob").status == 200  # the attacker's own account
    assert login(chat.port, password="wrong three").status == 401
    assert login(chat.port, password="wrong four").status == 429


def test_a_guest_cannot_resume_a_logged_in_session(start: Any) -> None:
    chat = start()
    cookie = cookie_of(login(chat.port))
    with ws(chat, "", cookie) as alice:
        session = recv_type(alice, "welcome")["session"]
        with ws(chat, f"session={session}&name=carol") as guest:
            welcome = recv_type(guest, "welcome")
            assert welcome["session"] != session
            assert welcome["user"] == "carol"
        alice.send(json.dumps({"type": "ping", "id": "still"}))
        assert recv_type(alice, "pong")["id"] == "still"


def test_room_on_connect_respects_the_room_quota(start: Any) -> None:
    chat = start(limits=Limits(message_rate=0, max_rooms_per_connection=1))
    with ws(chat, "name=carol&room=extra") as guest:
        assert recv_type(guest, "welcome")["rooms"] == ["lobby"]


def test_a_lone_surrogate_is_refused_and_chat_goes_on(start: Any) -> None:
    chat = start()
    with ws(chat, "name=carol") as carol, ws(chat, "name=dave") as dave:
        recv_type(carol, "welcome")
        recv_type(dave, "welcome")
        carol.send('{"type":"message","room":"lobby","text":"a\\ud800b","id":"s"}')
        assert recv_type(carol, "error")["code"] == "bad_message"
        dave.send(json.dumps({"type": "message", "room": "lobby", "text": "fine", "id": "d"}))
        assert recv_type(dave, "ack")["seq"] == 1
        assert recv_type(carol, "message")["text"] == "fine"


def test_the_database_file_is_the_owners_only(start: Any, tmp_path: Path) -> None:
    start()
    assert (tmp_path / "chat.sqlite3").stat().st_mode & 0o077 == 0
