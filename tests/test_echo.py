"""Tests for rfc6455.echo: the command line, run as a real process.

``python -m rfc6455.echo --port 0`` logs the port it got; the tests talk to it with the
``websockets`` library and plain HTTP, then stop it with a signal and check it exits 0.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

TIMEOUT = 5.0
"""Seconds any single wait may take before the test fails."""

REPO_ROOT = Path(__file__).resolve().parents[1]


class EchoProcess:
    """``python -m rfc6455.echo`` in a subprocess, its log read by a thread."""

    def __init__(self, *arguments: str) -> None:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")])
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rfc6455.echo", "--port", "0", *arguments],
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
        """Return the first log line matching ``pattern`` within TIMEOUT."""
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no log line matching {pattern!r}: {self.log}") from None
            if not line:
                raise AssertionError(f"the echo server ended: {self.log}")
            if match := re.search(pattern, line):
                return match

    def listening(self) -> tuple[str, int]:
        match = self.wait_for(r"listening on (wss?)://127\.0\.0\.1:(\d+)/")
        return match[1], int(match[2])

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.process.wait(TIMEOUT)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(TIMEOUT)


@pytest.fixture
def echo() -> Iterator[type[EchoProcess]]:
    processes: list[EchoProcess] = []

    class Tracked(EchoProcess):
        def __init__(self, *arguments: str) -> None:
            super().__init__(*arguments)
            processes.append(self)

    yield Tracked
    for process in processes:
        process.kill()


def test_echo_serves_websockets_and_http_and_stops_on_sigterm(
    echo: type[EchoProcess],
) -> None:
    server = echo()
    scheme, port = server.listening()
    assert scheme == "ws"
    url = f"ws://127.0.0.1:{port}/"
    with connect(url, open_timeout=TIMEOUT, proxy=None, max_size=None) as ws:
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        for message in ("hello ☃", b"\x00\x01binary", "compressible " * 1000, b""):
            ws.send(message)
            assert ws.recv(timeout=TIMEOUT) == message
        big = os.urandom(4 << 20)  # above the library default, within the echo's 16 MiB
        ws.send(big)
        assert ws.recv(timeout=TIMEOUT) == big

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=TIMEOUT) as reply:
            assert reply.status == 200
            assert b"echo server" in reply.read()
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=TIMEOUT)
        assert missing.value.code == 404
        missing.value.close()

        # SIGTERM with a client connected: it gets 1001, and the process exits 0.
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1001
    assert server.process.wait(TIMEOUT) == 0
    server.wait_for("echo server stopped")


def test_echo_stops_on_sigint(echo: type[EchoProcess]) -> None:
    server = echo("--log-level", "debug")
    server.listening()
    assert server.stop(signal.SIGINT) == 0
    assert not any("Traceback" in line for line in server.log)


def test_echo_without_deflate(echo: type[EchoProcess]) -> None:
    server = echo("--no-deflate")
    _, port = server.listening()
    with connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT, proxy=None) as ws:
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("plain")
        assert ws.recv(timeout=TIMEOUT) == "plain"
    assert server.stop() == 0


def test_echo_refuses_messages_over_its_limit(echo: type[EchoProcess]) -> None:
    server = echo("--max-message-size", "1000")
    _, port = server.listening()
    with connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT, proxy=None) as ws:
        ws.send("x" * 1000)
        assert ws.recv(timeout=TIMEOUT) == "x" * 1000
        ws.send(os.urandom(1001))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=TIMEOUT)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
    assert server.stop() == 0


def test_echo_over_tls(echo: type[EchoProcess], tmp_path: Path) -> None:
    certfile, keyfile = make_certificate(tmp_path)
    server = echo("--certfile", str(certfile), "--keyfile", str(keyfile))
    scheme, port = server.listening()
    assert scheme == "wss"
    context = ssl.create_default_context(cafile=str(certfile))
    with connect(f"wss://127.0.0.1:{port}/", ssl=context, open_timeout=TIMEOUT, proxy=None) as ws:
        ws.send("secret")
        assert ws.recv(timeout=TIMEOUT) == "secret"
    assert server.stop() == 0


def run_echo(*arguments: str, optimize: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the echo server's command line to completion (for its error paths)."""
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    flags = ["-OO"] if optimize else []
    return subprocess.run(
        [sys.executable, *flags, "-m", "rfc6455.echo", *arguments],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_echo_reports_a_port_it_cannot_listen_on() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_echo("--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_echo_reports_a_certificate_it_cannot_load(tmp_path: Path) -> None:
    result = run_echo("--port", "0", "--certfile", str(tmp_path / "missing.pem"))
    assert result.returncode == 1
    assert "cannot load the certificate" in result.stderr
    assert "Traceback" not in result.stderr


def test_echo_refuses_a_key_without_a_certificate(tmp_path: Path) -> None:
    # Serving ws:// when the operator meant wss:// would be a silent downgrade.
    result = run_echo("--port", "0", "--keyfile", str(tmp_path / "key.pem"))
    assert result.returncode == 2
    assert "--keyfile needs --certfile" in result.stderr


def test_echo_refuses_an_unknown_log_level() -> None:
    result = run_echo("--port", "0", "--log-level", "chatty")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def test_echo_help_works_without_docstrings() -> None:
    result = run_echo("--help", optimize=True)  # python -OO strips __doc__
    assert result.returncode == 0
    assert "every text and binary message comes back unchanged" in result.stdout


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, in PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rfc6455 echo test")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile
