"""Tests for ``python -m rfc6455``: the command-line client, run as a real process.

It talks to ``python -m rfc6455.echo`` (plain and TLS, in a subprocess) and to an
``rfc6455.server.Server`` in a thread of the test process that records the requests it
gets and refuses one path.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from rfc6455.errors import InvalidHandshake
from rfc6455.http import Request
from rfc6455.server import Handler, Server, ServerConfig, ServerConnection
from tls.localca import issue_leaf

TIMEOUT = 10.0
"""Seconds any single process may take before the test fails."""

REPO_ROOT = Path(__file__).resolve().parents[1]


def _environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")])
    )
    return environment


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_echo(*arguments: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start the echo server on a free port; return it once it accepts connections."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rfc6455.echo", "--port", str(port), *arguments],
        cwd=REPO_ROOT,
        env=_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the echo server did not start") from None
            time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def echo_port() -> Iterator[int]:
    process, port = _start_echo()
    try:
        yield port
    finally:
        _stop(process)


def run_cli(arguments: Sequence[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``python -m rfc6455`` with ``stdin`` piped in (so in batch mode)."""
    return subprocess.run(
        [sys.executable, "-m", "rfc6455", *arguments],
        cwd=REPO_ROOT,
        env=_environment(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


# --- the echo server -----------------------------------------------------------------------


def test_messages_ping_and_binary_are_echoed(echo_port: int) -> None:
    result = run_cli(
        [f"ws://127.0.0.1:{echo_port}/", "--wait", "0.5"], "hello\n/ping x\n/binary 00ff\n"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "hello" in lines
    assert "<binary 2 bytes> 00ff" in lines
    assert any(line.startswith("pong x (") and line.endswith(" ms)") for line in lines)
    assert "closed: 1000" in result.stderr


def test_prefix_marks_sent_and_received(echo_port: int) -> None:
    result = run_cli([f"ws://127.0.0.1:{echo_port}/", "--prefix", "--wait", "0.3"], "hi\n//x\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "> hi" in lines
    assert "< hi" in lines
    assert "< /x" in lines  # "//" escapes a leading slash


def test_close_command_closes_with_its_code(echo_port: int) -> None:
    result = run_cli([f"ws://127.0.0.1:{echo_port}/"], "/close 4000 bye\nnot sent\n")
    assert result.returncode == 0, result.stderr
    assert "closed: 4000" in result.stderr
    assert "not sent" not in result.stdout


def test_bad_commands_are_reported_and_the_session_goes_on(echo_port: int) -> None:
    result = run_cli(
        [f"ws://127.0.0.1:{echo_port}/", "--wait", "0.3"],
        "/binary zz\n/close 1005\n/nope\nstill here\n",
    )
    assert result.returncode == 0, result.stderr
    assert "not hex" in result.stderr
    assert "cannot close" in result.stderr
    assert "unknown command /nope" in result.stderr
    assert "still here" in result.stdout.splitlines()


def test_unreachable_server_exits_1() -> None:
    result = run_cli([f"ws://127.0.0.1:{_free_port()}/"])
    assert result.returncode == 1
    assert "cannot connect" in result.stderr


# --- wss:// ----------------------------------------------------------------------------------


@pytest.fixture
def tls_echo(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    files = issue_leaf(tmp_path, ["127.0.0.1"])
    process, port = _start_echo("--certfile", str(files.certfile), "--keyfile", str(files.keyfile))
    try:
        yield port, files.cafile
    finally:
        _stop(process)


def test_wss_with_cafile(tls_echo: tuple[int, Path]) -> None:
    port, cafile = tls_echo
    result = run_cli(
        [f"wss://127.0.0.1:{port}/", "--cafile", str(cafile), "--wait", "0.3"], "secure\n"
    )
    assert result.returncode == 0, result.stderr
    assert "secure" in result.stdout.splitlines()


def test_wss_without_cafile_fails_verification(tls_echo: tuple[int, Path]) -> None:
    port, _ = tls_echo
    result = run_cli([f"wss://127.0.0.1:{port}/"], "secure\n")
    assert result.returncode == 1
    assert "TLS certificate verification failed" in result.stderr
    assert "--cafile" in result.stderr
    assert result.stdout == ""


def test_wss_insecure_warns(tls_echo: tuple[int, Path]) -> None:
    port, _ = tls_echo
    result = run_cli([f"wss://127.0.0.1:{port}/", "--insecure", "--wait", "0.3"], "risky\n")
    assert result.returncode == 0, result.stderr
    assert "WARNING" in result.stderr
    assert "risky" in result.stdout.splitlines()


# --- a server in this process ----------------------------------------------------------------


class RecordingHandler(Handler):
    """Record upgrade requests; refuse ``/refuse`` with 404; close on "bye" with 4001."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.closes: list[int] = []

    def on_connect(
        self, connection: ServerConnection, request: Request
    ) -> Sequence[tuple[str, str]]:
        if request.path == "/refuse":
            raise InvalidHandshake("no such endpoint", 404)
        self.requests.append(request)
        return ()

    def on_close(self, connection: ServerConnection, code: int, reason: str) -> None:
        self.closes.append(code)

    def on_message(self, connection: ServerConnection, message: str | bytes) -> None:
        if message == "bye":
            connection.close(4001, "go away")
        elif message == "leave":
            connection.close(1001, "server leaving")


@pytest.fixture
def recording_server() -> Iterator[tuple[RecordingHandler, int]]:
    handler = RecordingHandler()
    server = Server(handler, ServerConfig(subprotocols=("chat.v2",)))
    server.listen("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, server.addresses[0][1]
    finally:
        server.request_shutdown()
        thread.join(TIMEOUT)


def test_headers_origin_and_subprotocols_reach_the_server(
    recording_server: tuple[RecordingHandler, int],
) -> None:
    handler, port = recording_server
    result = run_cli(
        [
            f"ws://127.0.0.1:{port}/",
            "--header",
            "X-Token: secret",
            "--header",
            "X-Other:two",
            "--subprotocol",
            "chat.v1",
            "--subprotocol",
            "chat.v2",
            "--origin",
            "https://example.test",
            "--wait",
            "0",
        ]
    )
    assert result.returncode == 0, result.stderr
    assert "subprotocol: chat.v2" in result.stderr
    [request] = handler.requests
    assert request.headers.get("X-Token") == "secret"
    assert request.headers.get("X-Other") == "two"
    assert request.headers.get("Origin") == "https://example.test"
    offered = ",".join(request.headers.get_all("Sec-WebSocket-Protocol"))
    assert [name.strip() for name in offered.split(",")] == ["chat.v1", "chat.v2"]


def test_refused_handshake_prints_the_status(
    recording_server: tuple[RecordingHandler, int],
) -> None:
    _, port = recording_server
    result = run_cli([f"ws://127.0.0.1:{port}/refuse"])
    assert result.returncode == 1
    assert "HTTP 404" in result.stderr


@pytest.mark.parametrize(
    ("message", "status", "notice"),
    [("bye", 1, "closed by the server: 4001 go away"), ("leave", 0, "1001 server leaving")],
)
def test_server_close_sets_the_exit_status(
    recording_server: tuple[RecordingHandler, int], message: str, status: int, notice: str
) -> None:
    _, port = recording_server
    result = run_cli([f"ws://127.0.0.1:{port}/", "--wait", "5"], f"{message}\n")
    assert result.returncode == status, result.stderr
    assert notice in result.stderr


def test_bad_header_is_a_usage_error() -> None:
    result = run_cli(["ws://127.0.0.1:1/", "--header", "no colon"])
    assert result.returncode == 2
    assert "--header" in result.stderr


def test_ctrl_c_closes_politely_and_exits_130(
    recording_server: tuple[RecordingHandler, int],
) -> None:
    handler, port = recording_server
    process = subprocess.Popen(
        [sys.executable, "-m", "rfc6455", f"ws://127.0.0.1:{port}/"],
        cwd=REPO_ROOT,
        env=_environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not handler.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        assert handler.requests, "the client never connected"
        time.sleep(0.2)  # past the handshake, into the loop
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr
    deadline = time.monotonic() + TIMEOUT
    while not handler.closes and time.monotonic() < deadline:
        time.sleep(0.05)  # on_close runs on the server's thread
    assert handler.closes == [1000]


def test_interactive_terminal_marks_received_messages(echo_port: int) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "rfc6455", f"ws://127.0.0.1:{echo_port}/", "--wait", "0"],
        cwd=REPO_ROOT,
        env=_environment(),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    output = b""
    try:
        os.write(controller, b"hello\n")
        deadline = time.monotonic() + TIMEOUT
        while b"< hello" not in output and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.1)[0]:
                output += os.read(controller, 4096)
        assert b"< hello" in output
        assert b"/help for commands" in output
        os.write(controller, b"\x04")  # Ctrl-D: end of input
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)


def test_missing_cafile_is_reported(tmp_path: Path) -> None:
    result = run_cli(["wss://127.0.0.1:1/", "--cafile", str(tmp_path / "missing.pem")])
    assert result.returncode == 1
    assert "cannot load the CA file" in result.stderr
