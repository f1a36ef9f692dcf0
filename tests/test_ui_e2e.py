"""End-to-end test of the web UI: two people chat in headless Chromium.

Debian's ``chromium`` (``/usr/bin/chromium``) is driven by Playwright through
``executable_path``: no browser is ever downloaded (never run ``playwright install``).
Without chromium or the ``playwright`` package the tests are skipped with the reason in
the summary, except under ``CI=true``, where that is a failure: CI must not pass without
having run them.

One ``ChatServer`` (``RunningChat`` from ``test_chat``, a SQLite file in ``tmp_path``)
serves two browser contexts, alice and bob, who enter their names in the name form, see
each other online, chat in ``lobby`` and exchange a direct message. Then bob goes offline
(``set_offline`` *and* his WebSocket is closed: Chromium's offline emulation refuses new
connections but leaves an open socket alone), alice writes while he is away and bob
types a message of his own; when he is back, his room holds every message exactly once, in
``seq`` order, without gaps, and his message was delivered once. A message written as
HTML is shown as text. A narrow phone viewport keeps the message box on screen.

With ``--auth required`` the UI is tested against ``python -m chatd`` in a process of
its own (the way it is deployed), with an account made by ``python -m chatd user add``:
the login form, a wrong and a right password, the cookie that keeps alice logged in
across a reload, logging out, the login throttle, and a login that ends (the server's
close 4401 at the token's expiry, or a reconnect refused for want of a cookie), which
brings the form back without losing what was typed; with ``--registration``, creating an
account. A page served over ``https`` opens its WebSocket with ``wss://``.

The UI's Content Security Policy forbids ``eval``, so ``page.wait_for_function`` (which
polls with ``eval`` in the page) cannot be used: waits are locator assertions
(``expect``) or ``page.evaluate`` in a bounded loop. Every wait is bounded.

``docs/screenshot-chat.png`` (for the README) is written with ``UPDATE_SCREENSHOT=1``;
otherwise the screenshot goes to ``tmp_path`` so that a normal run leaves the repository
clean.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from test_chat import RunningChat

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # reported by the `browser` fixture
    sync_playwright = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page, Route, ViewportSize

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO_ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO_ROOT / "docs" / "screenshot-chat.png"
PHONE_SCREENSHOT = REPO_ROOT / "docs" / "screenshot-phone.png"
DESKTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}

TIMEOUT_MS = 5_000
"""Milliseconds any single wait (an action, an ``expect``, a poll) may take."""
TEST_BUDGET = 30.0
"""Seconds the whole scenario may take."""

XSS = "<img src=x onerror=alert(1)>"

PASSWORD = "correct horse battery staple"
SERVER_START_TIMEOUT = 15.0
"""Seconds ``python -m chatd`` may take to listen (or to stop after SIGTERM)."""


# --- the browser -----------------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    """Skip, loudly; under CI=true fail instead, so that CI cannot pass without the test."""
    message = f"UI end-to-end test NOT RUN: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: a missing browser is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.is_file() or not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS, timeout=15_000
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def chat(tmp_path: Path) -> Iterator[RunningChat]:
    with RunningChat(tmp_path / "chat.sqlite3") as running:
        yield running


@dataclass
class User:
    """One person in their own browser context, with what their page reported."""

    name: str
    context: BrowserContext
    page: Page
    dialogs: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)
    """The URL of every WebSocket the page opened (or tried to), in order."""
    api_calls: list[str] = field(default_factory=list)
    """Every request of the page to /api/..., as "METHOD /path", in order."""

    def testid(self, testid: str, **data: str) -> Locator:
        selector = f'[data-testid="{testid}"]'
        selector += "".join(f'[data-{key}="{value}"]' for key, value in data.items())
        return self.page.locator(selector)

    def online(self, name: str) -> Locator:
        """``name`` in the "Online" list (the "In this room" list uses the same testid)."""
        return self.testid("online-list").locator(
            f'[data-testid="online-user"][data-user="{name}"]'
        )

    def messages(self) -> Locator:
        return self.page.locator('[data-testid="message-list"] [data-testid="message"]')

    def log(self) -> list[tuple[int, str, str, str]]:
        """The messages shown, in page order: (seq, sender, kind, text as sent)."""
        rows = self.messages().evaluate_all(
            """nodes => nodes.map(node => {
                const text = node.querySelector('.msg-text').textContent;
                // "/me waves" is shown as "* alice waves": the text follows the name
                const prefix = node.dataset.kind === 'me' ? `* ${node.dataset.from} ` : '';
                return [Number(node.dataset.seq), node.dataset.from, node.dataset.kind,
                        text.startsWith(prefix) ? text.slice(prefix.length) : text];
            })"""
        )
        return [tuple(row) for row in rows]

    def say(self, text: str) -> None:
        """Type into the message box and press Enter, as a person would."""
        composer = self.testid("composer")
        composer.fill(text)
        composer.press("Enter")
        expect(composer).to_have_value("")

    def state(self, expression: str) -> Any:
        """A value of the page's ``window.chatd.state`` (the UI's test hook)."""
        return self.page.evaluate(
            f"() => {{ const state = window.chatd.state; return {expression}; }}"
        )

    def wait_state(self, expression: str, expected: Any) -> None:
        """Poll ``state(expression)`` until it equals ``expected`` (bounded)."""
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while (value := self.state(expression)) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {expression} is {value!r}, not {expected!r}")
            self.page.wait_for_timeout(50)  # lets Playwright dispatch page events meanwhile

    def no_problems(self) -> None:
        """Nothing went wrong in the page: no dialog, no error, no CSP violation."""
        assert self.dialogs == [], f"{self.name}: a dialog opened: {self.dialogs}"
        assert self.page_errors == [], f"{self.name}: errors in the page: {self.page_errors}"
        assert self.csp_violations == [], f"{self.name}: CSP violations: {self.csp_violations}"


@pytest.fixture
def new_user(browser: Browser) -> Iterator[Callable[[str, str], User]]:
    """``new_user(name, url)``: a person in a fresh browser context (no cookies) with the
    page at ``url`` open; every context is closed afterwards.
    """
    contexts: list[BrowserContext] = []

    def new_user_(name: str, url: str) -> User:
        context = browser.new_context(
            viewport=DESKTOP, locale="en-GB", color_scheme="light", reduced_motion="reduce"
        )
        contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        user = User(name, context, page)

        def on_dialog(dialog: Any) -> None:
            user.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        def on_console(message: Any) -> None:
            if "Content Security Policy" in message.text:
                user.csp_violations.append(message.text)

        page.on("dialog", on_dialog)
        page.on("pageerror", lambda error: user.page_errors.append(str(error)))
        page.on("console", on_console)
        page.on("websocket", lambda websocket: user.websockets.append(websocket.url))

        def on_request(request: Any) -> None:
            path = urllib.parse.urlsplit(request.url).path
            if path.startswith("/api/"):
                user.api_calls.append(f"{request.method} {path}")

        page.on("request", on_request)
        page.goto(url)
        return user

    yield new_user_
    for context in contexts:
        context.close()


@pytest.fixture
def open_user(new_user: Callable[[str, str], User], chat: RunningChat) -> Callable[[str], User]:
    """Open the UI of the in-process ``chat`` server for a new person."""
    return lambda name: new_user(name, f"http://127.0.0.1:{chat.port}/")


def sign_in(user: User) -> None:
    """Enter the name in the name form and wait for the connection."""
    expect(user.testid("name-form")).to_be_visible()
    user.testid("name-input").fill(user.name)
    user.testid("name-submit").click()
    expect(user.testid("name-form")).to_be_hidden()
    expect(user.testid("conn-state")).to_have_attribute("data-state", "open")
    expect(user.testid("me-name")).to_have_text(user.name)
    expect(user.testid("room-item", room="lobby")).to_be_visible()
    expect(user.testid("conv-title")).to_have_text("# lobby")


def stored_messages(chat: RunningChat, room: str) -> list[tuple[int, str, str, str]]:
    """What the server stored in ``room``, from its HTTP API: (seq, sender, kind, text)."""
    url = f"http://127.0.0.1:{chat.port}/api/rooms/{room}/messages?limit=200"
    with urllib.request.urlopen(url, timeout=TIMEOUT_MS / 1000) as reply:
        body = json.load(reply)
    return [(m["seq"], m["from"], m["kind"], m["text"]) for m in body["messages"]]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def screenshot_path(tmp_path: Path, committed: Path) -> Path:
    """The committed file with UPDATE_SCREENSHOT=1, else a file in ``tmp_path``."""
    return committed if os.environ.get("UPDATE_SCREENSHOT") == "1" else tmp_path / committed.name


# --- the scenario ------------------------------------------------------------------------------


def test_two_people_chat_go_offline_and_catch_up(
    open_user: Callable[[str], User], chat: RunningChat, tmp_path: Path
) -> None:
    started = time.monotonic()
    alice, bob = open_user("alice"), open_user("bob")

    # Names through the name form; each sees the other online.
    sign_in(alice)
    sign_in(bob)
    for user, other in ((alice, bob), (bob, alice)):
        expect(user.online(other.name)).to_be_visible()
        expect(user.online(user.name)).to_have_text(f"{user.name} (you)")

    # alice writes; bob sees the message with its sender and time.
    alice.say("Morning Bob! Is the 1.4 release still on for today?")
    first = bob.testid("message", seq="1")
    expect(first).to_contain_text("Is the 1.4 release still on for today?")
    expect(first.locator(".msg-from")).to_have_text("alice")
    expect(first.locator("time")).to_have_text(re.compile(r"^\d\d:\d\d$"))
    sent_at = datetime.fromisoformat(first.locator("time").get_attribute("datetime") or "")
    assert abs((datetime.now(UTC) - sent_at).total_seconds()) < 60
    bob.say("Yes, CI is green on main. I'm tagging it after lunch.")
    alice.say("/me does a little dance")
    bob.say("Could you look over the changelog first? https://example.com/chatd/pull/42")
    alice.say("On it, and I'll write the release notes too.")
    expected = [
        (1, "alice", "text", "Morning Bob! Is the 1.4 release still on for today?"),
        (2, "bob", "text", "Yes, CI is green on main. I'm tagging it after lunch."),
        (3, "alice", "me", "does a little dance"),
        (
            4,
            "bob",
            "text",
            "Could you look over the changelog first? https://example.com/chatd/pull/42",
        ),
        (5, "alice", "text", "On it, and I'll write the release notes too."),
    ]
    for user in (alice, bob):
        expect(user.messages()).to_have_count(len(expected))
        assert user.log() == expected, user.name
    expect(bob.testid("message", seq="3")).to_have_text(
        re.compile(r"^\* alice does a little dance")
    )
    link = bob.testid("message", seq="4").locator("a")
    expect(link).to_have_attribute("href", "https://example.com/chatd/pull/42")

    # A second room: bob writes there while alice looks at lobby, so hers shows unread.
    for user in (alice, bob):
        user.testid("join-input").fill("release")
        user.testid("join-submit").click()
        expect(user.testid("conv-title")).to_have_text("# release")
    alice.testid("room-item", room="lobby").click()
    expect(alice.testid("conv-title")).to_have_text("# lobby")
    bob.say("Checklist for 1.4: changelog, version bump, tag, announce.")
    badge = alice.testid("room-item", room="release").locator('[data-testid="unread-count"]')
    expect(badge).to_have_text("1")

    # A direct message there and back.
    alice.online("bob").click()
    expect(alice.testid("conv-title")).to_have_text("@ bob")
    alice.say("Can you check the migration notes before you tag?")
    thread = bob.testid("dm-item", peer="alice")
    expect(thread.locator('[data-testid="unread-count"]')).to_have_text("1")
    thread.click()
    expect(bob.testid("conv-title")).to_have_text("@ alice")
    expect(bob.messages().last).to_contain_text("Can you check the migration notes")
    expect(bob.messages().last.locator(".msg-from")).to_have_text("alice")
    bob.say("Sure, on it.")
    expect(alice.messages().last).to_contain_text("Sure, on it.")
    expect(alice.messages().last.locator(".msg-from")).to_have_text("bob")
    expect(alice.messages()).to_have_count(2)
    expect(bob.messages()).to_have_count(2)
    for user in (alice, bob):
        user.testid("room-item", room="lobby").click()
        expect(user.testid("conv-title")).to_have_text("# lobby")
        expect(user.messages()).to_have_count(len(expected))

    # The README's screenshot: mid-conversation, both online, bob typing.
    bob.testid("composer").fill("Changelog looks good, one typo in")
    expect(alice.testid("typing-indicator")).to_have_text("bob is typing…")
    expect(alice.testid("seen-by")).to_have_text("Seen by bob")
    shot = screenshot_path(tmp_path, SCREENSHOT)
    alice.page.screenshot(path=shot)
    assert png_size(shot) == (DESKTOP["width"], DESKTOP["height"])
    bob.testid("composer").fill("")
    expect(alice.testid("typing-indicator")).to_have_text("")

    # The phone layout: the message box stays on screen, the sidebar slides in and out.
    bob.page.set_viewport_size(PHONE)
    expect(bob.testid("composer")).to_be_in_viewport()
    expect(bob.testid("sidebar-toggle")).to_be_visible()
    expect(bob.testid("sidebar")).to_be_hidden()
    expect(bob.messages().last).to_be_in_viewport()
    phone_shot = screenshot_path(tmp_path, PHONE_SCREENSHOT)
    bob.page.screenshot(path=phone_shot)
    assert png_size(phone_shot) == (PHONE["width"], PHONE["height"])
    bob.testid("sidebar-toggle").click()
    expect(bob.online("alice")).to_be_visible()
    bob.page.keyboard.press("Escape")
    expect(bob.testid("sidebar")).to_be_hidden()
    bob.page.set_viewport_size(DESKTOP)

    # bob goes offline. Chromium's offline emulation refuses new connections but leaves
    # an open WebSocket alone, so the page closes it too (through the test hook), and the
    # UI then retries with backoff against the "offline" network until it is back.
    session = bob.state("state.session")
    bob.context.set_offline(True)
    assert bob.page.evaluate("() => navigator.onLine") is False
    bob.page.evaluate("() => window.chatd.state.conn.ws?.close(4000, 'test: network down')")
    bob.wait_state("state.conn.status === 'open'", False)
    expect(bob.testid("offline-banner")).to_be_visible()
    expect(bob.testid("offline-banner")).to_contain_text("You are offline")
    expect(bob.testid("conn-state")).not_to_have_attribute("data-state", "open")
    # The server noticed: alice sees him go offline.
    expect(alice.online("bob")).to_have_count(0)

    # alice writes three messages while he is away; bob writes one, which waits.
    before = len(expected)
    missed = [
        "Release notes are up for review.",
        "Also bumped the version in pyproject.toml.",
        "Ping me when you are back.",
    ]
    for text in missed:
        alice.say(text)
        expected.append((len(expected) + 1, "alice", "text", text))
    expect(alice.messages()).to_have_count(len(expected))
    expect(alice.testid("pending-message")).to_have_count(0)  # all acknowledged
    offline_text = "Back in a minute, my train is in a tunnel."
    bob.say(offline_text)
    expected.append((len(expected) + 1, "bob", "text", offline_text))
    pending = bob.testid("pending-message")
    expect(pending).to_have_count(1)
    expect(pending).to_have_attribute("data-status", "queued")
    expect(pending).to_contain_text(offline_text)
    expect(bob.testid("offline-banner")).to_contain_text("1 message will be sent then")
    assert len(bob.log()) == before, "bob received messages while offline"

    # Back online: the banner goes, the session is resumed, nothing is missing or doubled.
    bob.context.set_offline(False)
    expect(bob.testid("offline-banner")).to_be_hidden()
    expect(bob.testid("conn-state")).to_have_attribute("data-state", "open")
    assert bob.state("state.session") == session, "the session was not resumed"
    expect(bob.testid("pending-message")).to_have_count(0)
    expect(alice.online("bob")).to_be_visible()
    for user in (alice, bob):
        expect(user.messages()).to_have_count(len(expected))
        # every seq from 1 up, once each, in order, with the right sender and text
        assert user.log() == expected, user.name
    # bob's message, resent after the reconnect, was stored (and delivered) once
    assert stored_messages(chat, "lobby") == expected
    # the other room came through the reconnect too
    bob.testid("room-item", room="release").click()
    expect(bob.messages()).to_have_count(1)
    expect(bob.messages()).to_contain_text("Checklist for 1.4")
    bob.testid("room-item", room="lobby").click()

    # A message written as HTML is shown as text: no element made of it, no script run.
    alice.say(XSS)
    for user in (alice, bob):
        message = user.testid("message", seq=str(len(expected) + 1))
        expect(message.locator(".msg-text")).to_have_text(XSS)
        assert "&lt;img src=x onerror=alert(1)&gt;" in message.locator(".msg-text").inner_html()
        assert user.testid("message-list").locator("img").count() == 0
        assert user.page.evaluate("() => document.images.length") == 0

    # Nothing went wrong in either page meanwhile (this also gives an onerror time to fire).
    for user in (alice, bob):
        expect(user.testid("error-line")).to_have_count(0)
        user.no_problems()
    elapsed = time.monotonic() - started
    assert elapsed < TEST_BUDGET, f"the scenario took {elapsed:.1f} s"


# --- logins: chatd --auth required, in a process of its own -------------------------------------


@dataclass
class ChatdProcess:
    """``python -m chatd`` serving on 127.0.0.1 from a process of its own."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def add_account(directory: Path, name: str, password: str) -> None:
    """``python -m chatd user add NAME``, the password on stdin (one line: not a TTY)."""
    subprocess.run(
        [sys.executable, "-m", "chatd", "user", "add", name, "--db", str(directory / "chat.db")],
        input=f"{password}\n",
        text=True,
        check=True,
        capture_output=True,
        cwd=directory,
        timeout=SERVER_START_TIMEOUT,
    )


@contextmanager
def chatd_process(directory: Path, *options: str) -> Iterator[ChatdProcess]:
    """Run ``python -m chatd`` on a free port (``--port 0``, read back from its log) with
    its database, secret and log in ``directory``; stopped by its PID afterwards.
    """
    log = directory / "chatd.log"
    command = [sys.executable, "-m", "chatd", "--host", "127.0.0.1", "--port", "0"]
    command += ["--db", str(directory / "chat.db"), *options]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=directory, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield ChatdProcess(_listening_port(process, log), process, log)
    except BaseException:
        print(f"--- {log} ---\n{log.read_text(errors='replace')}")  # shown with the failure
        raise
    finally:
        _stop(process)


def _listening_port(process: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if match := re.search(r"listening on http://127\.0\.0\.1:(\d+)/", text):
            return int(match.group(1))
        if process.poll() is not None:
            raise AssertionError(f"chatd exited with {process.returncode}:\n{text}")
        time.sleep(0.05)
    raise AssertionError(f"chatd did not listen within {SERVER_START_TIMEOUT} s:\n{text}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's PID (it shuts down cleanly), SIGKILL if it does not."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(SERVER_START_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(SERVER_START_TIMEOUT)


def me_status(user: User, server: ChatdProcess) -> int:
    """The status of GET /api/me with the cookies of ``user``'s browser context."""
    return user.context.request.get(server.url("/api/me")).status


def log_in(user: User, password: str) -> None:
    """Fill in the login form and press Enter."""
    user.testid("login-username").fill(user.name)
    user.testid("login-password").fill(password)
    user.testid("login-password").press("Enter")


def expect_chat(user: User) -> None:
    """The chat is shown and connected as ``user``; the login form is gone."""
    expect(user.testid("login-form")).to_be_hidden()
    expect(user.testid("conn-state")).to_have_attribute("data-state", "open")
    expect(user.testid("me-name")).to_have_text(user.name)
    expect(user.testid("conv-title")).to_have_text("# lobby")
    expect(user.testid("logout")).to_be_visible()


def expect_login_form(user: User) -> None:
    """The login form is shown, and the page holds no WebSocket."""
    expect(user.testid("login-form")).to_be_visible()
    expect(user.testid("composer")).to_be_hidden()
    expect(user.testid("name-form")).to_be_hidden()
    user.wait_state("state.conn.ws === null", True)


def test_login_required(new_user: Callable[[str, str], User], tmp_path: Path) -> None:
    started = time.monotonic()
    add_account(tmp_path, "alice", PASSWORD)
    with chatd_process(tmp_path, "--auth", "required") as server:
        alice = new_user("alice", server.url())

        # The login form, and no WebSocket: nothing is tried before a login.
        expect_login_form(alice)
        assert alice.websockets == []
        expect(alice.testid("login-username")).to_be_focused()
        username = alice.page.get_by_label("User name")
        password = alice.page.get_by_label("Password")
        expect(username).to_have_attribute("autocomplete", "username")
        expect(password).to_have_attribute("autocomplete", "current-password")
        expect(password).to_have_attribute("type", "password")
        expect(alice.testid("login-error")).to_have_attribute("role", "alert")
        expect(alice.testid("register-toggle")).to_be_hidden()  # registration is off
        shot = tmp_path / "login-desktop.png"
        alice.page.screenshot(path=shot)
        assert png_size(shot) == (DESKTOP["width"], DESKTOP["height"])
        alice.page.set_viewport_size(PHONE)
        expect(alice.testid("login-submit")).to_be_in_viewport()
        alice.page.screenshot(path=tmp_path / "login-phone.png")
        alice.page.set_viewport_size(DESKTOP)

        # A wrong password: the error, the name kept, still no WebSocket.
        log_in(alice, "not the password")
        expect(alice.testid("login-error")).to_have_text(
            re.compile("wrong user name or password", re.IGNORECASE)
        )
        expect(username).to_have_value("alice")
        expect(password).to_have_value("")
        expect(password).to_be_focused()
        expect_login_form(alice)
        assert alice.websockets == []

        # The right one: the chat, over a WebSocket that asks for no name (the cookie
        # says who she is), and the token out of the page's reach.
        log_in(alice, PASSWORD)
        expect_chat(alice)
        expect(alice.testid("login-error")).to_have_text("")
        assert alice.websockets == [f"ws://127.0.0.1:{server.port}/ws"]
        (cookie,) = [c for c in alice.context.cookies() if c["name"] == "chatd_token"]
        assert cookie["httpOnly"]
        assert "chatd_token" not in alice.page.evaluate("() => document.cookie")
        text = "Logged in with a password this time."
        alice.say(text)
        expect(alice.testid("message", seq="1")).to_contain_text(text)
        expect(alice.testid("message", seq="1").locator(".msg-from")).to_have_text("alice")

        # A reload: still logged in by the cookie, straight to the chat.
        alice.page.reload()
        expect_chat(alice)
        expect(alice.testid("message", seq="1")).to_contain_text(text)
        expect(alice.testid("login-form")).to_be_hidden()

        # The login ends while she types (here the cookie goes, and the connection drops):
        # the reconnect is refused, /api/me says 401, and the form comes back with a
        # notice, the draft kept. Logging in again resumes the same session.
        draft = "Half a thought, not sent yet"
        alice.testid("composer").fill(draft)
        session = alice.state("state.session")
        alice.context.clear_cookies()
        alice.page.evaluate("() => window.chatd.state.conn.ws.close(4000, 'test: drop')")
        expect_login_form(alice)
        expect(alice.testid("login-notice")).to_contain_text("expired")
        expect(username).to_have_value("alice")
        expect(password).to_be_focused()
        expect(alice.testid("offline-banner")).to_be_hidden()
        password.fill(PASSWORD)
        password.press("Enter")
        expect_chat(alice)
        expect(alice.testid("composer")).to_have_value(draft)
        assert alice.state("state.session") == session, "the session was not resumed"
        alice.testid("composer").fill("")

        # Log out: the form again, the chat forgotten, and the server agrees.
        alice.testid("logout").click()
        expect_login_form(alice)
        assert alice.api_calls[-1] == "POST /api/auth/logout"
        expect(alice.testid("login-notice")).to_contain_text("logged out")
        expect(username).to_have_value("")
        expect(username).to_be_focused()
        expect(alice.testid("message-list")).to_be_empty()
        assert alice.state("state.rooms.size") == 0
        assert [c for c in alice.context.cookies() if c["name"] == "chatd_token"] == []
        assert me_status(alice, server) == 401
        alice.no_problems()

        # Another browser, without the cookie: the form. Five wrong passwords from this
        # address (alice's one above still counts: her logins took back only their own
        # attempts), and the next attempt is told how long to wait.
        mallory = new_user("alice", server.url())
        expect_login_form(mallory)
        assert me_status(mallory, server) == 401
        for _ in range(4):
            log_in(mallory, "guess")
            expect(mallory.testid("login-password")).to_have_value("")
            expect(mallory.testid("login-error")).to_contain_text("Wrong user name or password")
        log_in(mallory, "one more guess")
        expect(mallory.testid("login-error")).to_have_text(
            re.compile(r"^Too many failed attempts\. Try again in \d+ seconds?\.$")
        )
        assert mallory.websockets == []
        mallory.no_problems()
    elapsed = time.monotonic() - started
    assert elapsed < TEST_BUDGET, f"the scenario took {elapsed:.1f} s"


TOKEN_TTL = 4
"""Seconds a login lasts in ``test_expired_login_comes_back_to_the_form``."""


def test_expired_login_comes_back_to_the_form(
    new_user: Callable[[str, str], User], tmp_path: Path
) -> None:
    """The server closes the socket with 4401 when the token expires: the form comes back,
    with the draft and the unsent message kept for the same user's next login.
    """
    add_account(tmp_path, "alice", PASSWORD)
    options = ("--auth", "required", "--token-ttl", str(TOKEN_TTL))
    with chatd_process(tmp_path, *options) as server:
        alice = new_user("alice", server.url())
        expect_login_form(alice)
        log_in(alice, PASSWORD)
        expect_chat(alice)
        session = alice.state("state.session")
        alice.testid("composer").fill("Typed just before the login ran out")
        calls = len(alice.api_calls)
        expect(alice.testid("login-form")).to_be_visible(timeout=(TOKEN_TTL + 5) * 1000)
        expect(alice.testid("login-notice")).to_contain_text("expired")
        alice.wait_state("state.conn.ws === null", True)
        # 4401 says it all (whatever the page's clock thinks): /api/me was not asked.
        assert alice.api_calls[calls:] == []
        expect(alice.testid("login-password")).to_be_focused()

        # The next login lasts TOKEN_TTL seconds too: the checks below take far less.
        alice.testid("login-password").fill(PASSWORD)
        alice.testid("login-submit").click()
        expect_chat(alice)
        expect(alice.testid("composer")).to_have_value("Typed just before the login ran out")
        assert alice.state("state.session") == session
        alice.no_problems()


def test_page_over_https_uses_wss(new_user: Callable[[str, str], User], chat: RunningChat) -> None:
    """Served over https (here by routing https://chatd.test/ to the test server), the
    page opens its WebSocket with wss:// on its own host.
    """
    user = new_user("erin", "about:blank")

    def forward(route: Route) -> None:
        url = route.request.url.replace("https://chatd.test", f"http://127.0.0.1:{chat.port}")
        route.fulfill(response=route.fetch(url=url))

    user.page.route("https://chatd.test/**", forward)
    user.page.goto("https://chatd.test/")
    user.testid("name-input").fill("erin")
    user.testid("name-submit").click()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not user.websockets and time.monotonic() < deadline:
        user.page.wait_for_timeout(50)
    # (a ws:// socket from an https page is blocked as mixed content: none is opened)
    assert user.websockets, "no WebSocket was opened"
    assert user.websockets[0].startswith("wss://chatd.test/ws?"), user.websockets


def test_registration(new_user: Callable[[str, str], User], tmp_path: Path) -> None:
    """With ``--registration`` the form offers to create an account, and checks the
    server's rules before it asks (each attempt counts against the login throttle).
    """
    add_account(tmp_path, "alice", PASSWORD)
    with chatd_process(tmp_path, "--auth", "required", "--registration") as server:
        carol = new_user("carol", server.url())
        expect_login_form(carol)
        password = carol.testid("login-password")
        carol.testid("register-toggle").click()
        expect(carol.testid("login-submit")).to_have_text("Create the account")
        expect(password).to_have_attribute("autocomplete", "new-password")
        expect(carol.testid("login-username")).to_be_focused()

        log_in(carol, "short")  # refused by the page: the server is not asked
        expect(carol.testid("login-error")).to_have_text("A password is 8 to 1024 characters.")
        assert "POST /api/auth/register" not in carol.api_calls
        carol.testid("login-username").fill("alice")
        password.fill(PASSWORD)
        password.press("Enter")
        expect(carol.testid("login-error")).to_have_text("That user name is taken: choose another.")
        expect(carol.testid("login-username")).to_be_focused()

        log_in(carol, "a password of her own")
        expect_chat(carol)
        assert carol.api_calls.count("POST /api/auth/register") == 2
        carol.page.reload()  # the account's cookie logs her in
        expect_chat(carol)
        carol.no_problems()
