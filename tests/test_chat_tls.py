"""chatd over TLS end to end: ``python -m chatd --tls`` with a freshly generated local CA,
a client that trusts only that CA, the Secure cookie, and plain HTTP on the TLS port.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect as websockets_connect

from tls import client_context

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 10.0
PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def chatd_tls(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """chatd --tls --auth required on a free port, its CA made in tmp_path (no mkcert)."""
    database = tmp_path / "chat.sqlite3"
    subprocess.run(
        [sys.executable, "-m", "chatd", "user", "add", "alice", "--db", str(database)],
        input=PASSWORD + "\n",
        text=True,
        cwd=REPO_ROOT,
        check=True,
        timeout=60,
    )
    port = free_port()
    env_path = f"/nonexistent:{Path(sys.executable).parent}"  # mkcert out of reach
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatd",
            "--tls",
            "--cert-dir",
            str(tmp_path / "tls"),
            "--auth",
            "required",
            "--port",
            str(port),
            "--db",
            str(database),
        ],
        cwd=REPO_ROOT,
        env={"PATH": env_path},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"chatd --tls did not start: {process.stderr}") from None
                time.sleep(0.05)
        yield port, tmp_path / "tls" / "ca.pem"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    assert process.stderr is not None
    assert "Traceback" not in process.stderr.read()


def test_wss_end_to_end_with_a_fresh_ca(chatd_tls: tuple[int, Path]) -> None:
    port, ca = chatd_tls
    assert ca.exists()
    context = client_context(ca)
    # Login over https: the cookie is Secure because the server speaks TLS.
    login = urllib.request.Request(
        f"https://127.0.0.1:{port}/api/auth/login",
        data=json.dumps({"username": "alice", "password": PASSWORD}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(login, context=context, timeout=TIMEOUT) as reply:
        assert reply.status == 200
        cookie = reply.headers["Set-Cookie"]
    attributes = [part.strip() for part in cookie.split(";")]
    assert "Secure" in attributes and "HttpOnly" in attributes
    token = attributes[0]
    with websockets_connect(
        f"wss://127.0.0.1:{port}/ws",
        ssl=context,
        additional_headers={"Cookie": token},
        open_timeout=TIMEOUT,
    ) as connection:
        welcome = json.loads(connection.recv(TIMEOUT))
        assert (welcome["type"], welcome["user"]) == ("welcome", "alice")
        connection.send(json.dumps({"type": "message", "room": "lobby", "text": "hi", "id": "1"}))
        for _ in range(20):
            message = json.loads(connection.recv(TIMEOUT))
            if message["type"] == "ack":
                assert message["id"] == "1"
                break
        else:
            raise AssertionError("no ack over wss")


def test_a_client_that_does_not_trust_the_ca_is_refused(chatd_tls: tuple[int, Path]) -> None:
    port, _ = chatd_tls
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        websockets_connect(
            f"wss://127.0.0.1:{port}/ws", ssl=ssl.create_default_context(), open_timeout=TIMEOUT
        ),
    ):
        pass


def test_plain_http_on_the_tls_port_gets_a_clear_answer(chatd_tls: tuple[int, Path]) -> None:
    port, _ = chatd_tls
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert data.endswith(b"This port speaks TLS: use https:// or wss://.\n")


def test_chatd_cert_prints_how_to_trust_the_ca(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "chatd", "cert", "--dir", str(tmp_path), "--no-mkcert"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert (tmp_path / "cert.pem").exists() and (tmp_path / "ca.pem").exists()
    assert str((tmp_path / "ca.pem").resolve()) in completed.stdout
