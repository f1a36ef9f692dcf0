"""chatd's admin page: ``GET /admin`` and its live feed on ``/admin/ws``.

Over real sockets: who may load the page and open the feed (loopback in ``open`` mode; a
logged-in administrator in ``required`` mode, 401 without a token and 403 for anyone
else, refused before the upgrade; closed with 4401 when the token expires), and
``admin`` snapshots that say what the test did (two chat clients in rooms: their
connections, rooms, users and events). An address no loopback socket can have is checked
by calling the handler directly. Last, the page itself in headless Chromium: its figures
appear and change when a chat client connects (the same browser rules as
tests/test_ui_e2e.py: Debian's chromium, skipped when missing unless ``CI=true``, waits
by ``page.evaluate`` under the page's CSP).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as websockets_connect

from chatd.accounts import Accounts
from chatd.app import ChatHandler, ChatServer
from chatd.auth import COOKIE_NAME
from chatd.config import ChatSettings
from chatd.hub import RecentEvents
from chatd.limits import Limits
from rfc6455.http import Headers, Request
from rfc6455.server import HttpResponse, Server, ServerConnection
from tests.test_chat import TIMEOUT, RunningChat
from tests.test_chat_http import Reply, request
from tests.test_ui_e2e import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, _unavailable

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # reported by the `browser` fixture
    sync_playwright = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

PASSWORD = "correct horse battery"
NO_RATE = Limits(message_rate=0)
#: Snapshots come once a second: a few seconds covers any change the tests wait for.
SNAPSHOT_WAIT = 6.0


@pytest.fixture
def database(tmp_path: Path) -> Path:
    """A chat database with the accounts alice (not an administrator) and root (one)."""
    database = tmp_path / "chat.sqlite3"
    with Accounts(database) as accounts:
        accounts.add("alice", PASSWORD)
        accounts.add("root", PASSWORD, admin=True)
    return database


@pytest.fixture
def start(database: Path) -> Iterator[Callable[..., RunningChat]]:
    """Start chatd on ``database`` with the given settings; stopped afterwards."""
    running: list[RunningChat] = []

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


def handler_of(chat: RunningChat) -> ChatHandler:
    assert chat.server is not None
    handler = chat.server.handler
    assert isinstance(handler, ChatHandler)
    return handler


def login(port: int, username: str) -> str:
    """Log in over HTTP; the ``chatd_token=...`` cookie."""
    body = json.dumps({"username": username, "password": PASSWORD}).encode()
    reply = request(
        port,
        "/api/auth/login",
        "POST",
        body=body,
        headers=(("Content-Type", "application/json"),),
    )
    assert reply.status == 200, reply.body
    return reply.headers["set-cookie"].split(";", 1)[0]


def get_admin(port: int, cookie: str | None = None, method: str = "GET") -> Reply:
    headers = (("Cookie", cookie),) if cookie else ()
    return request(port, "/admin", method, headers=headers)


def open_feed(chat: RunningChat, cookie: str | None = None, **headers: str) -> Any:
    if cookie:
        headers["Cookie"] = cookie
    return websockets_connect(
        f"ws://127.0.0.1:{chat.port}/admin/ws", additional_headers=headers, open_timeout=TIMEOUT
    )


def chat_client(chat: RunningChat, query: str) -> Any:
    return websockets_connect(chat.url(query), open_timeout=TIMEOUT)


def snapshot_until(feed: Any, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Read ``admin`` snapshots until one satisfies ``done`` (bounded)."""
    deadline = time.monotonic() + SNAPSHOT_WAIT
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        message = json.loads(feed.recv(SNAPSHOT_WAIT))
        assert message["type"] == "admin", message
        last = message
        if done(message):
            return message
    raise AssertionError(f"no such snapshot; the last one was {last}")


def assert_page(reply: Reply) -> None:
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in reply.headers["content-security-policy"]
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["x-content-type-options"] == "nosniff"


# --- who may see it ------------------------------------------------------------------------------


def test_open_mode_serves_the_page_to_loopback(start: Callable[..., RunningChat]) -> None:
    chat = start()
    page = get_admin(chat.port)
    assert_page(page)
    assert b'src="/static/admin.js"' in page.body
    assert get_admin(chat.port, method="HEAD").status == 200
    refused = get_admin(chat.port, method="POST")
    assert refused.status == 405
    assert refused.headers["allow"] == "GET, HEAD"
    # One way in: not as a static file, which would skip the access rule.
    assert request(chat.port, "/static/admin.html").status == 404
    assert request(chat.port, "/static/admin%2Ehtml").status == 404
    assert request(chat.port, "/static/admin.js").status == 200
    assert request(chat.port, "/static/admin.css").status == 200
    plain = request(chat.port, "/admin/ws")
    assert plain.status == 426
    assert plain.headers["upgrade"] == "websocket"


def test_required_mode_serves_the_page_to_administrators_only(
    start: Callable[..., RunningChat],
) -> None:
    chat = start(auth="required")
    anonymous = get_admin(chat.port)  # from loopback, which is not enough here
    assert anonymous.status == 401
    assert anonymous.json()["error"]["code"] == "unauthenticated"
    not_admin = get_admin(chat.port, login(chat.port, "alice"))
    assert not_admin.status == 403
    assert not_admin.json()["error"]["code"] == "forbidden"
    assert get_admin(chat.port, f"{COOKIE_NAME}=not.a.token").status == 401
    assert_page(get_admin(chat.port, login(chat.port, "root")))


def test_the_feed_is_refused_before_the_upgrade(start: Callable[..., RunningChat]) -> None:
    chat = start(auth="required")
    for cookie, status in ((None, 401), (login(chat.port, "alice"), 403)):
        with pytest.raises(InvalidStatus) as refused:
            open_feed(chat, cookie)
        assert refused.value.response.status_code == status
    with open_feed(chat, login(chat.port, "root")) as feed:
        first = json.loads(feed.recv(TIMEOUT))
        assert first["type"] == "admin"
        assert first["admins"] == 1
    # A page of another origin may not read the feed with the visitor's cookie.
    with pytest.raises(InvalidStatus) as foreign:
        open_feed(chat, login(chat.port, "root"), Origin="https://evil.example")
    assert foreign.value.response.status_code == 403


def test_the_feed_closes_when_the_token_expires(start: Callable[..., RunningChat]) -> None:
    chat = start(auth="required", token_ttl=1.0)
    with (
        open_feed(chat, login(chat.port, "root")) as feed,
        pytest.raises(ConnectionClosed) as closed,
    ):
        for _ in range(10):
            feed.recv(TIMEOUT)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401


@dataclass
class FakeConnection:
    """What the HTTP routes read of a ``ServerConnection``."""

    server: Server
    remote_address: tuple[str, int]
    tls: bool = False
    context: Any = field(default=None)

    @property
    def peer(self) -> str:
        return f"{self.remote_address[0]}:{self.remote_address[1]}"


@pytest.mark.parametrize(
    ("address", "status"),
    [
        ("127.0.0.1", 200),
        ("127.8.9.10", 200),
        ("::1", 200),
        ("::ffff:127.0.0.1", 200),
        ("192.0.2.7", 403),
        ("::ffff:192.0.2.7", 403),
        ("2001:db8::7", 403),
    ],
)
def test_open_mode_is_for_loopback_addresses(database: Path, address: str, status: int) -> None:
    chat = ChatServer(database)
    try:
        connection = cast(ServerConnection, FakeConnection(chat.server, (address, 40000)))
        headers = Headers([("Host", "chat.example")])
        response = chat.handler.on_http_request(
            connection, Request("GET", "/admin", "HTTP/1.1", headers), b""
        )
        assert isinstance(response, HttpResponse)
        assert response.status == status
    finally:
        chat.server.close()
        chat.close()


# --- what it shows ------------------------------------------------------------------------------


def test_a_snapshot_reflects_what_happened(start: Callable[..., RunningChat]) -> None:
    chat = start()
    feed_of = handler_of(chat).admin
    with open_feed(chat) as feed:
        first = json.loads(feed.recv(TIMEOUT))
        assert first["type"] == "admin"  # no welcome, no presence: not a chat session
        assert first["connections"] == 0
        assert first["sessions"] == 0
        assert first["admins"] == 1
        assert first["messages"]["in_per_second"] is None  # not one interval yet
        with chat_client(chat, "name=amy&room=dev") as amy, chat_client(chat, "name=ben") as ben:
            welcome = json.loads(amy.recv(TIMEOUT))
            assert welcome["online"] == ["amy"]  # the admin is nobody's presence
            ben.send(json.dumps({"type": "join", "room": "dev"}))
            for n in range(5):
                amy.send(json.dumps({"type": "message", "room": "dev", "text": f"hi {n}"}))

            def both_in_dev(snapshot: dict[str, Any]) -> bool:
                rooms = {room["name"]: room for room in snapshot["rooms"]}
                return (
                    "dev" in rooms
                    and rooms["dev"]["members"] == 2
                    and (rooms["dev"]["last_seq"] == 5)
                )

            now = snapshot_until(feed, both_in_dev)
            assert now["connections"] == 2
            assert now["sessions"] == 2
            assert now["users_online"] == 2
            assert now["sockets"] >= 3  # the two chat sockets and the feed
            assert now["users"] == [
                {"name": "amy", "connections": 1, "account": False},
                {"name": "ben", "connections": 1, "account": False},
            ]
            rooms = {room["name"]: room for room in now["rooms"]}
            assert rooms["dev"] == {"name": "dev", "members": 2, "last_seq": 5, "messages": 5}
            assert rooms["lobby"]["members"] == 2
            assert now["rooms_active"] == 2
            events = [(e["kind"], e["user"], e["room"]) for e in now["events"]]
            for expected in (
                ("connect", "amy", None),
                ("connect", "ben", None),
                ("join", "amy", "dev"),
                ("join", "ben", "dev"),
            ):
                assert expected in events
            assert events.index(("connect", "amy", None)) < events.index(("join", "ben", "dev"))
            assert now["messages"]["in_total"] >= 6  # a join and five messages
            assert "loop_lag" in now
            assert 0 <= now["loop_lag"]["last"] <= now["loop_lag"]["max"]

            later = snapshot_until(feed, lambda s: s["messages"]["in_per_second"] is not None)
            assert later["messages"]["in_per_second"] >= 0
            assert later["messages"]["out_per_second"] >= 0
        gone = snapshot_until(feed, lambda s: s["connections"] == 0)
        kinds = [(e["kind"], e["user"]) for e in gone["events"]]
        assert ("disconnect", "amy") in kinds
        assert ("disconnect", "ben") in kinds
        assert gone["sessions"] == 2  # resumable for a while
    deadline = time.monotonic() + TIMEOUT
    while feed_of.running or feed_of.sockets:
        assert time.monotonic() < deadline, "the snapshot timer outlived the last admin socket"
        time.sleep(0.02)


def test_snapshots_list_a_bounded_number_of_rooms_and_users(
    start: Callable[..., RunningChat],
) -> None:
    chat = start()
    handler_of(chat).admin.limit = 2
    with contextlib.ExitStack() as clients:
        for n in range(4):
            clients.enter_context(chat_client(chat, f"name=user{n}&room=room{n}"))
        with open_feed(chat) as feed:
            snapshot = snapshot_until(feed, lambda s: s["users_online"] == 4)
    assert [user["name"] for user in snapshot["users"]] == ["user0", "user1"]
    # lobby (four people) first, then the busiest others by name
    assert [room["name"] for room in snapshot["rooms"]] == ["lobby", "room0"]
    assert snapshot["rooms_active"] == 5


def test_rate_limit_refusals_are_events(start: Callable[..., RunningChat]) -> None:
    # One message passes, the next is refused, the one after closes the connection.
    chat = start(limits=Limits(message_rate=0.001, message_burst=1, rate_strikes=1))
    with open_feed(chat) as feed, chat_client(chat, "name=flood") as flood:
        for n in range(3):
            flood.send(json.dumps({"type": "ping", "id": str(n)}))
        with pytest.raises(ConnectionClosed):
            for _ in range(10):
                flood.recv(TIMEOUT)

        def refused(snapshot: dict[str, Any]) -> bool:
            return any(e["kind"] == "rate_limited" for e in snapshot["events"])

        events = snapshot_until(feed, refused)["events"]
        limited = [(e["detail"], e["count"]) for e in events if e["kind"] == "rate_limited"]
        assert limited == [("refused", 1), ("closed", 1)]


def test_recent_events_are_bounded_and_runs_are_counted() -> None:
    events = RecentEvents(size=3)
    events.record("connect", "amy")
    for _ in range(5):
        events.record("rate_limited", "amy", detail="refused")
    events.record("join", "amy", room="dev")
    events.record("disconnect", "amy", detail="1000")
    wire = events.to_wire()
    assert len(events) == 3
    assert [(e["kind"], e["count"]) for e in wire] == [
        ("rate_limited", 5),
        ("join", 1),
        ("disconnect", 1),
    ]
    assert wire[1]["room"] == "dev"
    assert all(isinstance(e["ts"], int) for e in wire)


# --- the page in a browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.is_file():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=15_000
        )
        try:
            yield launched
        finally:
            launched.close()


def wait_page(page: Page, expression: str, expected: Any) -> None:
    """Poll ``expression`` in the page until it equals ``expected`` (bounded; the CSP
    forbids the ``eval`` that ``page.wait_for_function`` needs).
    """
    deadline = time.monotonic() + SNAPSHOT_WAIT
    while (value := page.evaluate(f"() => {expression}")) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{expression} is {value!r}, not {expected!r}")
        page.wait_for_timeout(50)


def test_the_page_shows_live_figures(
    browser: Browser, start: Callable[..., RunningChat], tmp_path: Path
) -> None:
    chat = start()
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
    context.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    try:
        page = context.new_page()
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on(
            "console",
            lambda message: (
                problems.append(message.text) if "Content Security Policy" in message.text else None
            ),
        )
        websockets: list[str] = []
        page.on("websocket", lambda websocket: websockets.append(websocket.url))
        page.goto(f"http://127.0.0.1:{chat.port}/admin")
        expect(page.get_by_test_id("admin-conn")).to_have_attribute("data-state", "open")
        expect(page.get_by_test_id("stat-connections")).to_have_text("0")
        expect(page.get_by_test_id("stat-uptime")).to_have_text(re.compile(r"^\d+ s$"))
        assert websockets == [f"ws://127.0.0.1:{chat.port}/admin/ws"]

        with chat_client(chat, "name=carol&room=ops"):
            expect(page.get_by_test_id("stat-connections")).to_have_text("1")
            expect(page.get_by_test_id("stat-users")).to_have_text("1")
            carol = page.locator('[data-testid="user-row"][data-user="carol"]')
            expect(carol).to_contain_text("guest")
            ops = page.locator('[data-testid="room-row"][data-room="ops"]')
            expect(ops.locator("td").nth(1)).to_have_text("1")
            expect(
                page.locator('[data-testid="event"][data-kind="connect"][data-user="carol"]')
            ).to_have_count(1)
            snapshots = page.evaluate("() => window.chatdAdmin.state.snapshots")
            wait_page(page, f"window.chatdAdmin.state.snapshots > {snapshots}", True)
            expect(page.get_by_test_id("stat-lag")).to_contain_text("ms")
            page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
        expect(page.get_by_test_id("stat-connections")).to_have_text("0")
        expect(
            page.locator('[data-testid="event"][data-kind="disconnect"][data-user="carol"]')
        ).to_have_count(1)
        assert problems == []
    finally:
        context.close()
