"""chatd as a systemd service, end to end: readiness, reload and stop notifications on a
real notify socket, SIGHUP keeping every connection, SIGTERM telling clients and closing
them with 1001, the watchdog, and socket activation with the sockets passed in.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as websockets_connect

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 10.0


class Notifications:
    """A notify socket bound by the test, as systemd binds one for a Type=notify unit."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(TIMEOUT)
        self.path = path

    def next(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def until(self, key: str) -> dict[str, str]:
        for _ in range(100):
            message = self.next()
            if key in message:
                return message
        raise AssertionError(f"no {key}")


@pytest.fixture
def notifications(tmp_path: Path) -> Iterator[Notifications]:
    box = Notifications(tmp_path / "notify")
    try:
        yield box
    finally:
        box.sock.close()


def start(
    tmp_path: Path, notify: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatd",
            "--port",
            "0",
            "--db",
            str(tmp_path / "chat.sqlite3"),
            *argv,
        ],
        cwd=REPO_ROOT,
        env={
            "PATH": os.environ.get("PATH", "/usr/bin"),
            "NOTIFY_SOCKET": str(notify),
            **(env or {}),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    assert process.stderr is not None
    return process.stderr.read()


def expect_welcome(port: int, process: subprocess.Popen[str], *, open_timeout: float) -> None:
    """Connect to chatd on ``port`` until it answers with ``welcome`` (retried while the
    process lives, for at most ``TIMEOUT`` seconds).
    """
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            with websockets_connect(
                f"ws://127.0.0.1:{port}/ws?name=a", open_timeout=open_timeout
            ) as ws:
                assert json.loads(ws.recv(TIMEOUT))["type"] == "welcome"
            return
        except (OSError, TimeoutError):
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.1)


def port_of(status: str) -> int:
    return int(status.rsplit(":", 1)[1].strip("/"))


def test_ready_reload_and_stop(tmp_path: Path, notifications: Notifications) -> None:
    process = start(tmp_path, notifications.path, "--rate-limit", "10")
    try:
        ready = notifications.until("READY")
        assert ready["READY"] == "1"
        port = port_of(ready["STATUS"])
        with websockets_connect(f"ws://127.0.0.1:{port}/ws?name=alice", open_timeout=TIMEOUT) as ws:
            assert json.loads(ws.recv(TIMEOUT))["type"] == "welcome"
            # SIGHUP: RELOADING=1 with the monotonic time, then READY=1 again; the
            # connection stays open and the new rate limit applies to new connections.
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            process.send_signal(signal.SIGHUP)
            reloading = notifications.until("RELOADING")
            assert before <= int(reloading["MONOTONIC_USEC"]) <= before + 10_000_000
            assert notifications.until("READY")["STATUS"] == "reloaded"
            ws.send(json.dumps({"type": "ping", "id": "after-reload"}))
            for _ in range(20):
                if json.loads(ws.recv(TIMEOUT)).get("id") == "after-reload":
                    break
            else:
                raise AssertionError("no pong after the reload")
            # SIGTERM: STOPPING=1; the client hears why, then gets 1001.
            process.send_signal(signal.SIGTERM)
            assert notifications.until("STOPPING")["STOPPING"] == "1"
            system = None
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(50):
                    message = json.loads(ws.recv(TIMEOUT))
                    if message["type"] == "system":
                        system = message
            assert system is not None and system["event"] == "shutdown"
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert process.wait(TIMEOUT) == 0
    finally:
        log = stop(process)
    assert "Traceback" not in log


def test_watchdog_pings_from_the_loop(tmp_path: Path, notifications: Notifications) -> None:
    process = start(tmp_path, notifications.path, env={"WATCHDOG_USEC": "200000"})
    try:
        notifications.until("READY")
        pings = sum(1 for _ in range(3) if notifications.until("WATCHDOG")["WATCHDOG"] == "1")
        assert pings == 3
    finally:
        stop(process)


def test_socket_activation_with_sockets_passed_in(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    # The child puts the socket on fd 3 and names itself in LISTEN_PID, as systemd does.
    code = (
        "import os, sys, runpy\n"
        f"os.dup2({listener.fileno()}, 3)\n"
        "os.environ['LISTEN_PID'] = str(os.getpid())\n"
        "os.environ['LISTEN_FDS'] = '1'\n"
        "os.environ['LISTEN_FDNAMES'] = 'http'\n"
        f"sys.argv = ['chatd', '--db', {str(tmp_path / 'chat.sqlite3')!r}]\n"
        "runpy.run_module('chatd', run_name='__main__')\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        pass_fds=(listener.fileno(),),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    listener.close()
    try:
        expect_welcome(port, process, open_timeout=2)
    finally:
        log = stop(process)
    assert "socket activation" in log
    assert "Traceback" not in log


def test_socket_activation_with_systemd_socket_activate(tmp_path: Path) -> None:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-socket-activate is missing (.ci/run installs systemd)")
        pytest.skip("systemd-socket-activate is not installed (Debian package systemd)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            tool,
            "-l",
            f"127.0.0.1:{port}",
            "--fdname=http",
            f"--setenv=PYTHONPATH={REPO_ROOT}",
            sys.executable,
            "-m",
            "chatd",
            "--db",
            str(tmp_path / "chat.sqlite3"),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The first connection starts chatd, which inherits the listening socket.
        expect_welcome(port, process, open_timeout=5)
    finally:
        log = stop(process)
    assert "Traceback" not in log


def test_the_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing (.ci/run installs systemd)")
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    units = REPO_ROOT / "contrib" / "systemd"
    chatd = Path(sys.executable).parent / "chatd"
    assert chatd.exists(), "the chatd console script (pip install) is missing"
    # verify checks that ExecStart exists: point it at this checkout's console script.
    service = (units / "chatd.service").read_text()
    assert "ExecStart=/usr/local/bin/chatd serve" in service
    (tmp_path / "chatd.service").write_text(service.replace("/usr/local/bin/chatd", str(chatd)))
    (tmp_path / "chatd.socket").write_text((units / "chatd.socket").read_text())
    done = subprocess.run(
        [
            tool,
            "verify",
            "--man=no",
            str(tmp_path / "chatd.service"),
            str(tmp_path / "chatd.socket"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.strip() == ""
    for hardening in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert hardening in service
    assert "SystemCallFilter=@system-service" in service
    assert "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX" in service
    assert "Type=notify" in service


def test_sighup_loads_a_new_certificate_and_keeps_tls_connections(
    tmp_path: Path, notifications: Notifications
) -> None:
    from tls import client_context  # noqa: PLC0415
    from tls.localca import issue_leaf  # noqa: PLC0415

    files = issue_leaf(tmp_path / "tls", ["127.0.0.1"])
    context = client_context(files.cafile)
    process = start(
        tmp_path,
        notifications.path,
        "--certfile",
        str(files.certfile),
        "--keyfile",
        str(files.keyfile),
    )

    def serial(ws: Any) -> int:
        der = ws.socket.getpeercert(binary_form=True)
        return int(x509.load_der_x509_certificate(der).serial_number)

    try:
        port = port_of(notifications.until("READY")["STATUS"])
        url = f"wss://127.0.0.1:{port}/ws?name=alice"
        with websockets_connect(url, ssl=context, open_timeout=TIMEOUT) as old:
            assert json.loads(old.recv(TIMEOUT))["type"] == "welcome"
            first = serial(old)
            issue_leaf(tmp_path / "tls", ["127.0.0.1"])  # a new key and certificate
            process.send_signal(signal.SIGHUP)
            notifications.until("RELOADING")
            assert notifications.until("READY")["STATUS"] == "reloaded"
            with websockets_connect(
                f"wss://127.0.0.1:{port}/ws?name=bob", ssl=context, open_timeout=TIMEOUT
            ) as new:
                assert json.loads(new.recv(TIMEOUT))["type"] == "welcome"
                assert serial(new) != first
            # The connection made before the reload is still up, on its old certificate.
            old.send(json.dumps({"type": "ping", "id": "still"}))
            for _ in range(20):
                if json.loads(old.recv(TIMEOUT)).get("id") == "still":
                    break
            else:
                raise AssertionError("the old connection did not answer")
            assert serial(old) == first
    finally:
        log = stop(process)
    assert "Traceback" not in log
