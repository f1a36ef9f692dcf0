"""chatd.systemd against real sockets: notify datagrams, the watchdog on a real event loop,
and socket activation in child processes (by hand, and with systemd-socket-activate).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chatd.systemd import (
    Notifier,
    SystemdError,
    is_tls_name,
    journal_stream,
    listen_fds,
    schedule_watchdog,
    watchdog_interval,
)
from rfc6455.server import Handler, Server

ROOT = Path(__file__).resolve().parent.parent


# --- sd_notify ---------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket playing systemd, and its NOTIFY_SOCKET value."""
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(2.0)
    yield receiver, str(path)
    receiver.close()


@pytest.fixture
def abstract_notify_socket() -> Iterator[tuple[socket.socket, str]]:
    name = "chatd-test-" + secrets.token_hex(8)
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(2.0)
    yield receiver, "@" + name
    receiver.close()


def test_ready_status_stopping_watchdog_datagrams(
    notify_socket: tuple[socket.socket, str],
) -> None:
    receiver, address = notify_socket
    with Notifier.from_environment({"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert receiver.recv(4096) == b"READY=1"
        assert notifier.ready("serving on :8080")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=serving on :8080"
        assert notifier.status("42 connections")
        assert receiver.recv(4096) == b"STATUS=42 connections"
        assert notifier.stopping()
        assert receiver.recv(4096) == b"STOPPING=1"
        assert notifier.stopping("closing 3 connections")
        assert receiver.recv(4096) == b"STOPPING=1\nSTATUS=closing 3 connections"
        assert notifier.watchdog()
        assert receiver.recv(4096) == b"WATCHDOG=1"
        assert notifier.send(STATUS="failed", ERRNO=2)
        assert receiver.recv(4096) == b"STATUS=failed\nERRNO=2"
    assert not notifier.enabled
    assert not notifier.ready()  # closed: a no-op


def test_abstract_socket(abstract_notify_socket: tuple[socket.socket, str]) -> None:
    receiver, address = abstract_notify_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": address})
    assert notifier.address == "\0" + address[1:]
    assert notifier.ready("up")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=up"
    notifier.close()


def test_reloading_carries_monotonic_usec(notify_socket: tuple[socket.socket, str]) -> None:
    receiver, address = notify_socket
    notifier = Notifier(address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receiver.recv(4096).split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after
    assert notifier.reloading("reloading the configuration")
    lines = receiver.recv(4096).split(b"\n")
    assert lines[0] == b"RELOADING=1"
    assert lines[1].startswith(b"MONOTONIC_USEC=")
    assert lines[2] == b"STATUS=reloading the configuration"
    notifier.close()


def test_newlines_in_values_are_replaced(notify_socket: tuple[socket.socket, str]) -> None:
    receiver, address = notify_socket
    notifier = Notifier(address)
    assert notifier.status("one\ntwo\r\nthree\rfour")
    assert receiver.recv(4096) == b"STATUS=one two three four"
    assert notifier.ready("a\nREADY=0")  # cannot smuggle a second assignment
    assert receiver.recv(4096) == b"READY=1\nSTATUS=a READY=0"
    with pytest.raises(ValueError):
        notifier.send(**{"A=B": 1})
    notifier.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert repr(notifier) == "<Notifier disabled>"
    assert not notifier.ready("x")
    assert not notifier.status("x")
    assert not notifier.stopping()
    assert not notifier.reloading()
    assert not notifier.watchdog()
    notifier.close()
    assert not Notifier.from_environment({"NOTIFY_SOCKET": ""}).enabled


def test_unsupported_address_is_a_no_op(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chatd.systemd"):
        notifier = Notifier("vsock:2:1234")
    assert not notifier.enabled
    assert not notifier.ready()
    assert "not a unix socket" in caplog.text


def test_vanished_socket_is_dropped_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    notifier = Notifier(str(path))
    receiver.close()
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="chatd.systemd"):
        for _ in range(5):
            assert not notifier.ready()
            assert not notifier.watchdog()
    records = [r for r in caplog.records if r.name == "chatd.systemd"]
    assert len(records) == 1  # rate-limited
    assert "cannot notify systemd" in records[0].getMessage()
    notifier.close()


def test_full_queue_never_blocks(notify_socket: tuple[socket.socket, str]) -> None:
    """A manager that stops reading fills the socket's queue; sends fail, never wait."""
    receiver, address = notify_socket
    notifier = Notifier(address)
    started = time.monotonic()
    results = [notifier.watchdog() for _ in range(2000)]
    assert time.monotonic() - started < 2.0
    assert results[0]
    assert not all(results)
    assert receiver.recv(4096) == b"WATCHDOG=1"
    notifier.close()


# --- the watchdog ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "4242"}, 0.0005),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_PID": "4242"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ, pid=4242) == expected


def test_watchdog_interval_defaults_to_our_pid() -> None:
    environ = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(environ) == 1.0


@pytest.mark.parametrize(
    "environ",
    [
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": ""},
        {"WATCHDOG_USEC": "1.5"},
        {"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "me"},
    ],
)
def test_watchdog_interval_refuses_bad_values(environ: dict[str, str]) -> None:
    with pytest.raises(SystemdError, match="WATCHDOG_"):
        watchdog_interval(environ, pid=4242)


def test_schedule_watchdog_pings_from_the_loop(notify_socket: tuple[socket.socket, str]) -> None:
    receiver, address = notify_socket
    receiver.setblocking(False)
    notifier = Notifier(address)
    server = Server(Handler())
    try:
        schedule_watchdog(server, notifier, 0.05)
        pings: list[bytes] = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and len(pings) < 4:
            server.run_once(0.02)
            while True:
                try:
                    pings.append(receiver.recv(4096))
                except BlockingIOError:
                    break
    finally:
        server.close()
        notifier.close()
    assert len(pings) >= 4
    assert set(pings) == {b"WATCHDOG=1"}


def test_schedule_watchdog_refuses_a_bad_interval() -> None:
    server = Server(Handler())
    try:
        with pytest.raises(ValueError):
            schedule_watchdog(server, Notifier(None), 0)
    finally:
        server.close()


# --- socket activation ------------------------------------------------------------------

#: Runs in a child: moves the inherited descriptors (argv: fd numbers) to 3, 4, …, sets
#: the LISTEN_* variables (LISTEN_PID to its own pid, which only the child knows), calls
#: listen_fds() and prints the result as JSON; then accepts one connection per socket
#: and answers with the socket's name.
ACTIVATION_CHILD = textwrap.dedent(
    """
    import fcntl, json, os, socket, sys
    sys.path.insert(0, {root!r})
    from chatd.systemd import SystemdError, listen_fds

    fds = [int(arg) for arg in sys.argv[1:]]
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
    for fd in fds:
        os.close(fd)
    for target, fd in enumerate(moved, start=3):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.update({environ!r})
    os.environ["LISTEN_PID"] = str(os.getpid())
    try:
        activated = listen_fds()
    except SystemdError as error:
        print(json.dumps({{"error": str(error)}}), flush=True)
        sys.exit(0)
    print(json.dumps({{
        "sockets": [
            {{
                "name": item.name,
                "fd": item.fd,
                "fileno": item.sock.fileno(),
                "family": item.family.name,
                "address": list(item.address),
                "inheritable": os.get_inheritable(item.fd),
            }}
            for item in activated
        ],
        "environ": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    }}), flush=True)
    for item in activated:
        item.sock.settimeout(5)
        connection, _ = item.sock.accept()
        connection.sendall(item.name.encode())
        connection.close()
    """
)


@contextlib.contextmanager
def activation_child(
    fds: list[int], environ: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """Run the child with ``fds`` as its fds 3, 4, …; yield it with its report."""
    code = ACTIVATION_CHILD.format(root=str(ROOT), environ=environ)
    with subprocess.Popen(
        [sys.executable, "-c", code, *map(str, fds)],
        pass_fds=fds,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line, "the child printed nothing"
            yield child, json.loads(line)
        finally:
            child.kill()


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def ask_name(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        return client.recv(100)


def test_listen_fds_in_a_child_process() -> None:
    with (
        listening_socket() as http,
        listening_socket() as tls,
        activation_child(
            [http.fileno(), tls.fileno()], {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:tls"}
        ) as (child, report),
    ):
        ports = [http.getsockname()[1], tls.getsockname()[1]]
        assert report["sockets"] == [
            {
                "name": "http",
                "fd": 3,
                "fileno": 3,
                "family": "AF_INET",
                "address": ["127.0.0.1", ports[0]],
                "inheritable": False,
            },
            {
                "name": "tls",
                "fd": 4,
                "fileno": 4,
                "family": "AF_INET",
                "address": ["127.0.0.1", ports[1]],
                "inheritable": False,
            },
        ]
        assert report["environ"] == []  # unset for our own children
        assert ask_name(ports[0]) == b"http"
        assert ask_name(ports[1]) == b"tls"
        assert child.wait(5) == 0


def test_listen_fds_default_names_are_unknown() -> None:
    with (
        listening_socket() as sock,
        activation_child([sock.fileno()], {"LISTEN_FDS": "1"}) as (child, report),
    ):
        assert [item["name"] for item in report["sockets"]] == ["unknown"]
        assert ask_name(sock.getsockname()[1]) == b"unknown"
        assert child.wait(5) == 0


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (socket.SOCK_STREAM, "fd 4 (b) is a socket that is not listening"),
        (socket.SOCK_DGRAM, "fd 4 (b) is a SOCK_DGRAM socket, not SOCK_STREAM"),
    ],
)
def test_listen_fds_refuses_a_socket_that_does_not_listen(
    kind: socket.SocketKind, message: str
) -> None:
    with listening_socket() as good, socket.socket(socket.AF_INET, kind) as bad:
        bad.bind(("127.0.0.1", 0))
        environ = {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
        with activation_child([good.fileno(), bad.fileno()], environ) as (child, report):
            assert child.wait(5) == 0
    assert message in report["error"]


def test_listen_fds_refuses_a_descriptor_that_is_not_a_socket() -> None:
    reader, writer = os.pipe()
    try:
        with activation_child([reader], {"LISTEN_FDS": "1"}) as (child, report):
            assert child.wait(5) == 0
    finally:
        os.close(reader)
        os.close(writer)
    assert "fd 3 (unknown) is not a usable socket" in report["error"]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "two"}, "LISTEN_FDS='two'"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, "LISTEN_FDS='0'"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "-1"}, "LISTEN_FDS='-1'"),
        ({"LISTEN_PID": "4242"}, "LISTEN_FDS=''"),
        ({"LISTEN_PID": "self", "LISTEN_FDS": "1"}, "LISTEN_PID='self'"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http"}, "1 name(s)"),
    ],
)
def test_listen_fds_refuses_malformed_variables(environ: dict[str, str], message: str) -> None:
    """Malformed variables raise SystemdError (before any descriptor is touched), and are
    unset all the same.
    """
    with pytest.raises(SystemdError) as raised:
        listen_fds(environ, pid=4242)
    assert message in str(raised.value)
    assert environ == {}


def test_listen_fds_for_another_process_is_empty() -> None:
    environ = {"LISTEN_PID": "4243", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "PATH": "/"}
    assert listen_fds(environ, pid=4242) == []
    assert environ == {"PATH": "/"}  # unset: not ours, and not our children's either
    environ = {"LISTEN_PID": "4243", "LISTEN_FDS": "2"}
    assert listen_fds(environ, pid=4242, unset=False) == []
    assert environ == {"LISTEN_PID": "4243", "LISTEN_FDS": "2"}
    assert listen_fds({}) == []


def test_listen_fds_with_systemd_socket_activate() -> None:
    """Debian's systemd-socket-activate (package systemd) as the service manager."""
    program = shutil.which("systemd-socket-activate")
    if program is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-socket-activate is missing: install the systemd package")
        pytest.skip("systemd-socket-activate is not installed (Debian package systemd)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from chatd.systemd import listen_fds
        [activated] = listen_fds()
        assert "LISTEN_FDS" not in os.environ
        connection, _ = activated.sock.accept()
        connection.sendall(f"{{activated.name}} fd {{activated.fd}}".encode())
        connection.close()
        """
    )
    with subprocess.Popen(
        [program, "-l", f"127.0.0.1:{port}", "--fdname=http", sys.executable, "-c", code],
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            deadline = time.monotonic() + 5
            while True:
                try:
                    answer = ask_name(port)
                    break
                except ConnectionRefusedError:
                    if time.monotonic() > deadline or child.poll() is not None:
                        raise
                    time.sleep(0.02)
            assert answer == b"http fd 3"
            assert child.wait(5) == 0
        finally:
            child.kill()


def test_is_tls_name() -> None:
    for name in ("tls", "https", "wss", "TLS", "public-tls", "chatd-tls"):
        assert is_tls_name(name), name
    for name in ("http", "ws", "unknown", "tlsx", "tls-public", "stls", ""):
        assert not is_tls_name(name), name


# --- JOURNAL_STREAM ----------------------------------------------------------------------


def test_journal_stream(tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w") as stream:
        status = os.fstat(stream.fileno())
        matching = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        assert journal_stream(matching, fd=stream.fileno())
        other = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino + 1}"}
        assert not journal_stream(other, fd=stream.fileno())
        assert not journal_stream({}, fd=stream.fileno())
        assert not journal_stream({"JOURNAL_STREAM": "garbage"}, fd=stream.fileno())


def test_journal_stream_looks_at_stderr(tmp_path: Path) -> None:
    """In a child whose stderr is a file with that device:inode, the default fd 2 matches."""
    log = tmp_path / "stderr"
    log.touch()
    status = log.stat()
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
        "from chatd.systemd import journal_stream; print(journal_stream())"
    )
    environ = {**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
    with open(log, "w") as stderr:
        redirected = subprocess.run(
            [sys.executable, "-c", code],
            stderr=stderr,
            stdout=subprocess.PIPE,
            env=environ,
            text=True,
            check=True,
        )
    assert redirected.stdout.strip() == "True"
    not_redirected = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True
    )
    assert not_redirected.stdout.strip() == "False"
