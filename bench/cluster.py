"""A chatd cluster on loopback: one ``redis-server`` and N chatd nodes, as processes.

Used by the scale-out tests (tests/test_cluster.py) and the capacity measurements
(``python -m bench.load cluster``). Every process is started here and stopped here by its
own PID; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["HOST", "ClusterError", "Node", "RedisServer", "free_port", "redis_server_path"]

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ClusterError(Exception):
    """A process did not start, or did not become ready in time."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def redis_server_path() -> str | None:
    """Where ``redis-server`` is (Debian's package puts it in /usr/bin), if anywhere."""
    return shutil.which("redis-server") or next(
        (
            str(p)
            for p in (Path("/usr/bin/redis-server"), Path("/usr/sbin/redis-server"))
            if p.exists()
        ),
        None,
    )


def _stop(process: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class RedisServer:
    """``redis-server`` on a free loopback port, persisting every write (``appendfsync
    always``) in ``directory``, so that a restart keeps what it acknowledged.

    ``appendfsync="everysec"`` syncs the append-only file once a second instead (what a
    capacity measurement may compare against: a crash of the machine may then lose the
    last second of acknowledged writes).
    """

    def __init__(
        self, directory: Path, port: int | None = None, *, appendfsync: str = "always"
    ) -> None:
        path = redis_server_path()
        if path is None:
            raise ClusterError(
                "redis-server is not installed (Debian: apt-get install redis-server)"
            )
        self.path = path
        self.directory = directory
        if appendfsync not in {"always", "everysec", "no"}:
            raise ClusterError(f"appendfsync is always, everysec or no, not {appendfsync!r}")
        self.appendfsync = appendfsync
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        log: IO[bytes] = (self.directory / "redis.log").open("ab")
        with log:
            self.process = subprocess.Popen(
                [
                    self.path,
                    "--port", str(self.port),
                    "--bind", HOST,
                    "--save", "",
                    "--appendonly", "yes",
                    "--appendfsync", self.appendfsync,
                    "--dir", str(self.directory),
                    "--daemonize", "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClusterError(f"redis-server exited: {self.log()}")
            with contextlib.suppress(OSError):
                if self.command("PING") == "+PONG":
                    return
            time.sleep(0.05)
        raise ClusterError(f"redis-server not ready in {timeout}s: {self.log()}")

    def command(self, *words: str, timeout: float = 5.0) -> str:
        """One inline command; the first line of the reply (enough for PING, DBSIZE)."""
        with socket.create_connection((HOST, self.port), timeout=timeout) as sock:
            sock.sendall((" ".join(words) + "\r\n").encode())
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.decode().strip()

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Redis finishes its append-only file and exits."""
        if self.process is not None:
            _stop(self.process, signal.SIGTERM, timeout)

    def kill(self) -> None:
        if self.process is not None:
            _stop(self.process, signal.SIGKILL, 5.0)

    def restart(self) -> None:
        self.stop()
        self.start()


class Node:
    """One chatd process on a free port, on the bus ``bus`` (a Redis URL, or ``local``)."""

    def __init__(
        self, name: str, bus: str, directory: Path, *extra: str, port: int | None = None
    ) -> None:
        self.name = name
        self.bus = bus
        self.directory = directory
        self.extra = extra
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    def start(self) -> None:
        log = self.log_path.open("ab")
        with log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "chatd",
                    "--host", HOST,
                    "--port", str(self.port),
                    "--db", str(self.directory / f"{self.name}.sqlite3"),
                    "--bus", self.bus,
                    "--node-id", self.name,
                    "--secret", "cluster-test-secret-of-at-least-32-characters",
                    *self.extra,
                ],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def url(self, query: str = "") -> str:
        return f"ws://{HOST}:{self.port}/ws" + (f"?{query}" if query else "")

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        """GET ``path``: the status and the JSON body (None if not JSON)."""
        connection = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, None

    def text(self, path: str, timeout: float = 5.0) -> str:
        """GET ``path``: the body as text (``/metrics``)."""
        connection = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            connection.request("GET", path)
            return connection.getresponse().read().decode()
        finally:
            connection.close()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until ``/ready`` answers 200 (listening, and connected to Redis)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ClusterError(f"node {self.name} exited: {self.log()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.get("/ready", timeout=1.0)[0] == 200:
                    return
            time.sleep(0.05)
        raise ClusterError(f"node {self.name} not ready in {timeout}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is not None:
            _stop(self.process, signal.SIGTERM, timeout)

    def kill(self) -> None:
        if self.process is not None:
            _stop(self.process, signal.SIGKILL, 5.0)
