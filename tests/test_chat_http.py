"""Tests for chatd's HTTP side: the UI, static files, health, the JSON API, and
``python -m chatd`` as a real process.

Requests are written byte for byte on a raw socket: HTTP clients normalise paths
(``/static/../x`` becomes ``/x``), and the path traversal tests must reach the server
exactly as an attacker would send them.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_chat import TIMEOUT, RfcChatter, RunningChat

import chatd.__main__
from chatd.app import STATIC_DIR, ChatServer

REPO_ROOT = Path(__file__).resolve().parents[1]

SECRET = "the contents of a file outside the static directory"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        assert self.headers["content-type"] == "application/json"
        return json.loads(self.body)


def request(
    port: int,
    target: str,
    method: str = "GET",
    *,
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    """Send one request exactly as given (``Connection: close``) and read the reply."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, content = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    fields: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        assert name.lower() not in fields, f"repeated header {name}"
        fields[name.lower()] = value.strip()
    if int(status) in (204, 304):  # RFC 9110 section 8.6: no Content-Length, no content
        assert "content-length" not in fields
        assert content == b""
    elif method != "HEAD":
        assert int(fields["content-length"]) == len(content)
    return Reply(int(status), fields, content)


def assert_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status
    error = reply.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["x-content-type-options"] == "nosniff"


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    """A static directory of known files, beside a secret that must stay unreachable."""
    (tmp_path / "secret.txt").write_text(SECRET)
    static = tmp_path / "static"
    (static / "sub").mkdir(parents=True)
    (static / "index.html").write_text("<!doctype html><title>chat</title>")
    (static / "app.js").write_text("console.log('ü');")
    (static / "style.css").write_text("body { color: black }")
    (static / "sub" / "note.txt").write_text("a note")
    (static / "data.bin").write_bytes(b"\x00\x01\x02")
    (static / "link.txt").symlink_to(tmp_path / "secret.txt")
    return static


@pytest.fixture
def chat(tmp_path: Path, static_dir: Path) -> Iterator[RunningChat]:
    with RunningChat(tmp_path / "chat.sqlite3", static_dir=static_dir) as running:
        yield running


# --- the UI and static files --------------------------------------------------------------

UI_HEADERS = ("content-security-policy", "x-content-type-options", "x-frame-options")


@pytest.mark.parametrize("target", ["/", "/index.html"])
def test_the_ui(chat: RunningChat, target: str) -> None:
    reply = request(chat.port, target)
    assert reply.status == 200
    assert reply.body == b"<!doctype html><title>chat</title>"
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    csp = reply.headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["referrer-policy"] == "no-referrer"
    assert reply.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    ("target", "content_type", "body"),
    [
        ("/static/app.js", "text/javascript; charset=utf-8", "console.log('ü');".encode()),
        ("/static/style.css", "text/css; charset=utf-8", b"body { color: black }"),
        ("/static/sub/note.txt", "text/plain; charset=utf-8", b"a note"),
        ("/static/data.bin", "application/octet-stream", b"\x00\x01\x02"),
        ("/static/%61pp.js", "text/javascript; charset=utf-8", "console.log('ü');".encode()),
        ("/static/sub/../app.js", "text/javascript; charset=utf-8", "console.log('ü');".encode()),
    ],
)
def test_static_files(chat: RunningChat, target: str, content_type: str, body: bytes) -> None:
    reply = request(chat.port, target)
    assert reply.status == 200
    assert reply.headers["content-type"] == content_type
    assert reply.body == body
    for name in UI_HEADERS:
        assert name in reply.headers


@pytest.mark.parametrize(
    "target",
    [
        "/static/../../etc/passwd",
        "/static/../secret.txt",
        "/static/%2e%2e%2fsecret.txt",
        "/static/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/static/%2E%2E%2Fsecret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/..%2fsecret.txt",
        "/static/.%2e/secret.txt",
        "/static/sub/../../secret.txt",
        "/static/%252e%252e%252fsecret.txt",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/link.txt",
        "/static/app.js%00.png",
        "/static/%00",
        "/static/..",
        "/static/",
        "/static/sub",
        "/static/missing.js",
        "/static",
    ],
)
def test_no_path_traversal(chat: RunningChat, target: str) -> None:
    reply = request(chat.port, target)
    assert_error(reply, 404, "not_found")
    assert SECRET.encode() not in reply.body
    assert b"root:" not in reply.body


def test_the_real_ui_is_served(tmp_path: Path) -> None:
    if not (STATIC_DIR / "index.html").is_file():  # pragma: no cover - UI not built yet
        pytest.skip("chatd/static/index.html is not there yet")
    with RunningChat(tmp_path / "chat.sqlite3") as chat:
        reply = request(chat.port, "/")
        assert reply.status == 200
        assert reply.body == (STATIC_DIR / "index.html").read_bytes()
        for name in UI_HEADERS:
            assert name in reply.headers
        # Every script and stylesheet the page names is served from /static/.
        for asset in re.findall(rb'(?:src|href)="(/static/[^"]+)"', reply.body):
            assert request(chat.port, asset.decode()).status == 200, asset


# --- health, status and the JSON API --------------------------------------------------------


def test_health(chat: RunningChat) -> None:
    reply = request(chat.port, "/health")
    assert reply.status == 200
    assert reply.json() == {"status": "ok"}
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["x-content-type-options"] == "nosniff"


def test_status(chat: RunningChat) -> None:
    status = request(chat.port, "/api/status").json()
    assert status["uptime"] >= 0
    assert status["connections"] == 0
    assert status["stored_messages"] == 0
    assert status["stored_rooms"] == 1  # lobby

    alice = RfcChatter(chat.url("name=alice&room=dev"))
    bob = RfcChatter(chat.url("name=bob"))
    try:
        for number in range(3):
            alice.say("lobby", f"hi {number}", f"s{number}")
        alice.send(type="dm", to="bob", text="psst", id="dm")
        alice.expect("ack", id="dm")
        status = request(chat.port, "/api/status").json()
        assert status == {
            "uptime": status["uptime"],
            "connections": 2,
            "sessions": 2,
            "users_online": 2,
            "rooms_active": 2,
            "messages_received": 4,
            "stored_messages": 3,
            "stored_dms": 1,
            "stored_rooms": 2,
            "stored_users": 2,
            "bus": {"kind": "local", "node": status["bus"]["node"], "up": True},
            "nodes": 1,
        }
        assert str(os.getpid()) in status["bus"]["node"]  # host name and process id
    finally:
        bob.close()
        alice.close()
    status = request(chat.port, "/api/status").json()
    assert status["connections"] == 0
    assert status["sessions"] == 2  # resumable for a while
    assert status["users_online"] == 0


def test_rooms(chat: RunningChat) -> None:
    assert request(chat.port, "/api/rooms").json() == {
        "rooms": [{"name": "lobby", "last_seq": 0, "messages": 0, "members": 0}]
    }
    alice = RfcChatter(chat.url("name=alice&room=dev"))
    bob = RfcChatter(chat.url("name=bob"))
    try:
        alice.say("dev", "one", "d1")
        alice.say("dev", "two", "d2")
        assert request(chat.port, "/api/rooms").json() == {
            "rooms": [
                {"name": "dev", "last_seq": 2, "messages": 2, "members": 1},
                {"name": "lobby", "last_seq": 0, "messages": 0, "members": 2},
            ]
        }
    finally:
        bob.close()
        alice.close()


@pytest.fixture
def sixty_messages(chat: RunningChat) -> None:
    alice = RfcChatter(chat.url("name=alice"))
    try:
        for number in range(1, 61):
            alice.send(type="message", room="lobby", text=f"m{number}", id=f"m{number}")
        alice.expect("ack", id="m60")
        alice.send(type="message", room="lobby", text="/me waves", id="me")
        alice.expect("ack", id="me")
    finally:
        alice.close()


@pytest.mark.usefixtures("sixty_messages")
@pytest.mark.parametrize(
    ("query", "seqs", "has_more"),
    [
        ("", range(12, 62), True),
        ("?limit=10", range(52, 62), True),
        ("?before=52&limit=10", range(42, 52), True),
        ("?before=11&limit=10", range(1, 11), False),
        ("?before=11&limit=200", range(1, 11), False),
        ("?limit=200", range(1, 62), False),
        ("?before=1", range(0), False),
        ("?before=0", range(0), False),
        ("?before=&limit=", range(12, 62), True),
        ("?before=9999999999", range(12, 62), True),
    ],
)
def test_room_messages(chat: RunningChat, query: str, seqs: range, has_more: bool) -> None:
    reply = request(chat.port, f"/api/rooms/lobby/messages{query}")
    assert reply.status == 200
    page = reply.json()
    assert page["room"] == "lobby"
    assert page["has_more"] is has_more
    assert [m["seq"] for m in page["messages"]] == list(seqs)
    for message in page["messages"]:
        assert set(message) == {"seq", "ts", "from", "text", "kind"}
        assert message["from"] == "alice"
        expected = "waves" if message["seq"] == 61 else f"m{message['seq']}"
        assert message["text"] == expected
        assert message["kind"] == ("me" if message["seq"] == 61 else "text")


def test_room_messages_of_a_room_name_in_percent_escapes(chat: RunningChat) -> None:
    page = request(chat.port, "/api/rooms/l%6Fbby/messages").json()
    assert page == {"room": "lobby", "messages": [], "has_more": False}


@pytest.mark.parametrize(
    ("target", "status", "code"),
    [
        ("/api/rooms/nowhere/messages", 404, "no_such_room"),
        ("/api/rooms/bad%20room/messages", 400, "bad_room"),
        ("/api/rooms/a%2Fb/messages", 400, "bad_room"),
        ("/api/rooms/lobby/messages?limit=0", 400, "bad_request"),
        ("/api/rooms/lobby/messages?limit=201", 400, "bad_request"),
        ("/api/rooms/lobby/messages?limit=ten", 400, "bad_request"),
        ("/api/rooms/lobby/messages?limit=1_0", 400, "bad_request"),
        ("/api/rooms/lobby/messages?limit=%2010", 400, "bad_request"),
        ("/api/rooms/lobby/messages?limit=-5", 400, "bad_request"),
        ("/api/rooms/lobby/messages?before=-1", 400, "bad_request"),
        ("/api/rooms/lobby/messages?before=1.5", 400, "bad_request"),
        ("/api/rooms/lobby/messages?before=" + "9" * 30, 400, "bad_request"),
        ("/nothing/here", 404, "not_found"),
        ("/api", 404, "not_found"),
        ("/api/rooms/lobby", 404, "not_found"),
        ("/api/status/", 404, "not_found"),
    ],
)
def test_api_errors(chat: RunningChat, target: str, status: int, code: str) -> None:
    assert_error(request(chat.port, target), status, code)


def test_a_plain_get_of_the_websocket_endpoint(chat: RunningChat) -> None:
    reply = request(chat.port, "/ws?name=alice")
    assert_error(reply, 426, "upgrade_required")
    assert reply.headers["upgrade"] == "websocket"


# --- methods --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/", "/health", "/api/status", "/api/rooms", "/static/app.js"])
def test_head_has_the_headers_of_get_without_the_body(chat: RunningChat, target: str) -> None:
    get = request(chat.port, target)
    head = request(chat.port, target, "HEAD")
    assert head.status == get.status == 200
    assert head.body == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if target != "/api/status":  # its uptime changes the length
        assert head.headers["content-length"] == get.headers["content-length"]


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/health"),
        ("POST", "/api/rooms/lobby/messages"),
        ("PUT", "/static/app.js"),
        ("DELETE", "/api/rooms"),
        ("PATCH", "/"),
        ("OPTIONS", "/api/status"),
    ],
)
def test_other_methods_are_not_allowed(chat: RunningChat, method: str, target: str) -> None:
    reply = request(chat.port, target, method, body=b'{"text": "hi"}')
    assert_error(reply, 405, "method_not_allowed")
    assert reply.headers["allow"] == "GET, HEAD"


def test_keep_alive_serves_several_requests_on_one_connection(chat: RunningChat) -> None:
    port = chat.port
    one = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    last = f"GET /api/rooms HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall((one + one + last).encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 ") == 3
    assert data.count(b'{"status":"ok"}') == 2
    assert b'"rooms":[' in data


# --- python -m chatd ------------------------------------------------------------------------


class ChatdProcess:
    """``python -m chatd`` in a subprocess, its log read by a thread."""

    def __init__(self, *arguments: str) -> None:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")])
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatd", *arguments],
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            self.lines.put(line)
        self.lines.put("")  # end of the log

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first log line matching ``pattern`` within TIMEOUT."""
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no log line matching {pattern!r}: {self.log}") from None
            if not line:
                raise AssertionError(f"chatd ended: {self.log}")
            if match := re.search(pattern, line):
                return match

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - a failure
            self.process.kill()
            self.process.wait(TIMEOUT)
            raise AssertionError(f"chatd did not stop on {signum}: {self.log}") from None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_python_m_chatd(tmp_path: Path, signum: int) -> None:
    database = tmp_path / "var" / "chat.sqlite3"
    chatd = ChatdProcess("--port", "0", "--db", str(database), "--log-level", "info")
    try:
        match = chatd.wait_for(r"listening on http://127\.0\.0\.1:(\d+)/")
        port = int(match.group(1))
        assert request(port, "/health").json() == {"status": "ok"}
        alice = RfcChatter(f"ws://127.0.0.1:{port}/ws?name=alice")
        assert alice.say("lobby", "hello", "h1")["seq"] == 1
        chatd.wait_for(r"alice connected")
        alice.close()
    finally:
        code = chatd.stop(signum)
    assert code == 0, chatd.log
    assert any("chatd stopped" in line for line in chatd.log)
    assert not any("Traceback" in line for line in chatd.log), chatd.log
    assert database.is_file()


def test_python_m_chatd_refuses_a_file_that_is_no_database(tmp_path: Path) -> None:
    database = tmp_path / "chat.sqlite3"
    database.write_text("not a database")
    chatd = ChatdProcess("--port", "0", "--db", str(database))
    code = chatd.process.wait(TIMEOUT)
    assert code == 1
    chatd.wait_for(r"cannot open the database")
    assert not any("Traceback" in line for line in chatd.log), chatd.log


def test_python_m_chatd_reports_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        chatd = ChatdProcess("--port", str(port), "--db", str(tmp_path / "chat.sqlite3"))
        code = chatd.process.wait(TIMEOUT)
    assert code == 1
    chatd.wait_for(rf"cannot listen on 127\.0\.0\.1:{port}")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """``main()`` in-process sets up the root logger on this test's stderr, which pytest
    closes afterwards: put the root logger back, so that later tests' threads do not log
    to a closed stream.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


@pytest.mark.usefixtures("root_logging")
def test_main_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``main()`` itself (the subprocess tests cannot measure it): it serves until its
    SIGTERM handler runs, then closes the database and returns 0.
    """
    started: list[ChatServer] = []

    class RecordingChatServer(ChatServer):
        def __init__(self, *arguments: Any, **keywords: Any) -> None:
            super().__init__(*arguments, **keywords)
            started.append(self)

    monkeypatch.setattr(chatd.__main__, "ChatServer", RecordingChatServer)
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    health: list[Any] = []

    def drive() -> None:
        deadline = time.monotonic() + TIMEOUT
        try:
            # Listening, and the handlers installed (the log line comes right after).
            while time.monotonic() < deadline and (
                not started or signal.getsignal(signal.SIGTERM) is saved[signal.SIGTERM]
            ):
                time.sleep(0.01)
            port = started[0].server.addresses[0][1]
            health.append(request(port, "/health").json())
            handler = signal.getsignal(signal.SIGTERM)
            assert callable(handler)
            handler(signal.SIGTERM, None)  # what the signal would run
        finally:
            if started:
                started[0].server.request_shutdown()  # never leave main() running

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        code = chatd.__main__.main(["--port", "0", "--db", str(tmp_path / "db" / "chat.sqlite3")])
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    driver.join(TIMEOUT)
    assert code == 0
    assert health == [{"status": "ok"}]
    assert (tmp_path / "db" / "chat.sqlite3").is_file()


@pytest.mark.usefixtures("root_logging")
def test_main_refuses_what_it_cannot_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_database = tmp_path / "text.sqlite3"
    not_a_database.write_text("not a database")
    assert chatd.__main__.main(["--port", "0", "--db", str(not_a_database)]) == 1
    assert "cannot open the database" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        database = str(tmp_path / "chat.sqlite3")
        assert chatd.__main__.main(["--port", str(port), "--db", database]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
