"""A WebSocket load generator that is not itself the bottleneck, and a comparison runner.

Seven commands::

    python -m bench.load echo --url ws://127.0.0.1:P/ --clients N --in-flight K \\
        --size 32 --duration S
    python -m bench.load idle --url ws://127.0.0.1:P/ --connections 10000 --hold S
    python -m bench.load churn --url wss://127.0.0.1:P/ --concurrency 32 --duration S
    python -m bench.load chat --url ws://127.0.0.1:P/ws --clients N --senders 5 \\
        (--rate R | --in-flight K) [--wait-joined]
    python -m bench.load chat --url ws://127.0.0.1:P1/ws --url ws://127.0.0.1:P2/ws ...
    python -m bench.load cluster --nodes 1,2,3 --clients 300 [--rate 20 --in-flight 200]
    python -m bench.load compare [--quick] [--suite echo|broadcast|chat]
    python -m bench.load calibration-server --port P

``echo`` keeps K messages in flight on each of N connections and reports echo round
trips per second after a warm-up. ``idle`` opens N connections, holds them, and reports
how much the server's resident memory (VmRSS) grew per connection. ``churn`` opens,
upgrades and closes connections back to back (over TLS for ``wss://``) and reports
handshakes per second. ``chat`` joins N clients to one chat room, publishes from a few
of them at a fixed rate (or as fast as K undelivered messages allow), and reports
deliveries per second and send-to-receive latency; given several URLs (the nodes of a
cluster) it spreads the clients, and the senders, round-robin over them. ``cluster``
starts one chatd node on the local bus, then Redis with 1, 2, 3 nodes
(``bench/cluster.py``), and runs ``chat`` over each, at a fixed rate and at full speed.
``compare`` starts our servers (the echo server, a broadcast server on rfc6455, chatd)
and the peers in ``bench/peers/`` on free ports, runs the scenarios round-robin over
several rounds, prints medians and ratios, and writes every repetition to
``bench/results/`` (``python -m bench`` runs it beside the frame suite, into one file).
``calibration-server`` is a bare broadcast loop that measures the generator's ceiling.

How the generator stays cheap: one ``selectors`` loop over raw non-blocking sockets,
a handshake request built once, and one masked frame built once (a fixed masking key:
the servers cannot tell) and sent as a pre-built run of K frames. Echoed frames are
counted by walking their headers and skipping payloads; no message object, no callback
per frame. Each recv answers every frame it completed with one ``send``. Chat
deliveries are counted the same way, reading only each message's send timestamp (one
``find``, one ``int``). The JSON reports the generator's own CPU per round trip (per
delivery) beside the server's, to show which of the two was the bottleneck.

Only 127.0.0.1 may be targeted; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import errno
import hashlib
import http.client
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import selectors
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.cluster import ClusterError, Node, RedisServer, redis_server_path
from rfc6455.codes import Opcode
from rfc6455.frames import encode_frame
from tls.localca import issue_leaf

__all__ = [
    "BROADCAST_IMPLEMENTATIONS",
    "CHAT_IMPLEMENTATIONS",
    "FULL",
    "IMPLEMENTATIONS",
    "QUICK",
    "SUITES",
    "ChurnResult",
    "ClusterSettings",
    "CompareSettings",
    "EchoResult",
    "IdleResult",
    "Implementation",
    "LoadError",
    "Scenario",
    "ServerProcess",
    "Target",
    "close_connections",
    "compare",
    "format_table",
    "main",
    "measure_cluster",
    "open_connections",
    "parse_target",
    "run_chat",
    "run_echo",
    "run_idle",
    "running_cluster",
    "scan_frames",
    "scenarios_for",
    "summarize",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"

#: The only host the tool connects to.
ALLOWED_HOST = "127.0.0.1"
#: A fixed masking key for every client frame: masking is there to defeat caching
#: proxies, and on loopback a constant key costs the servers exactly what a random one does.
MASK = bytes.fromhex("37fa213d")
#: A fixed Sec-WebSocket-Key (section 4.1's example) and the answer it must get.
HANDSHAKE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
EXPECTED_ACCEPT = base64.b64encode(
    hashlib.sha1((HANDSHAKE_KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
)
#: Bytes per recv: enough for every echo one connection can have in flight.
RECV_SIZE = 256 * 1024
#: The most handshakes in progress at once when opening many connections: below every
#: server's listen backlog, so that no SYN is dropped and retried a second later.
HANDSHAKE_CONCURRENCY = 200
#: Give up opening connections when no handshake completed for this long (seconds).
STALL_TIMEOUT = 5.0
#: The largest response head accepted during the handshake.
MAX_RESPONSE_HEAD = 16 * 1024
#: Close frame with code 1000, masked: sent to end every connection politely.
CLOSE_FRAME = encode_frame(Opcode.CLOSE, (1000).to_bytes(2, "big"), mask=MASK)


class LoadError(Exception):
    """The load could not be generated or measured (a refused handshake, a dead server)."""


# --- targets and limits ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where the load goes: always 127.0.0.1."""

    host: str
    port: int
    path: str
    tls: bool = False

    @property
    def url(self) -> str:
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://{self.host}:{self.port}{self.path}"


def parse_target(url: str, *, allow_tls: bool = False) -> Target:
    """Parse a ``ws://127.0.0.1:PORT/path`` URL (``wss://`` too when ``allow_tls``: only
    the churn mode speaks TLS); refuse any other host or scheme.
    """
    parts = urlsplit(url)
    schemes = ("ws", "wss") if allow_tls else ("ws",)
    if parts.scheme not in schemes:
        supported = " and ".join(f"{scheme}://" for scheme in schemes)
        raise LoadError(f"only {supported} URLs are supported here, not {url!r}")
    if parts.hostname != ALLOWED_HOST:
        raise LoadError(f"only {ALLOWED_HOST} may be targeted, not {parts.hostname!r}")
    if parts.port is None:
        raise LoadError(f"the URL needs a port: {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(ALLOWED_HOST, parts.port, path, parts.scheme == "wss")


def raise_nofile_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE towards ``needed`` descriptors; return the soft limit in force.

    The soft limit goes up to the hard limit freely; past it only with privileges
    (CAP_SYS_RESOURCE), which is tried and given up quietly.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if needed > hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- the server process, seen from /proc --------------------------------------------------


def read_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and VmHWM of process ``pid`` in KiB, from /proc/PID/status."""
    wanted = ("VmRSS", "RssAnon", "VmHWM")
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in wanted:
                values[name] = int(rest.split()[0])
    return values


def read_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid``, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_machine_busy_seconds() -> float:
    """CPU time every process on the machine spent in user and system mode (all CPUs),
    from /proc/stat; interrupts are left out, as process times leave them out.
    """
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    user, nice, system = int(fields[1]), int(fields[2]), int(fields[3])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def find_listener_pid(port: int) -> int | None:
    """The PID of the process listening on TCP ``port`` on 127.0.0.1, if it can be seen.

    Looks the listening socket's inode up in /proc/net/tcp, then finds the process that
    holds it among /proc/*/fd (our own processes, or any as root).
    """
    inodes: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/net/tcp") as table:
        next(table, None)
        for line in table:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in inodes:
                        return int(entry.name)
    return None


# --- the wire ------------------------------------------------------------------------------


def build_request(target: Target, path: str | None = None) -> bytes:
    """The opening handshake, built once for every connection (no extensions offered);
    ``path`` replaces the target's (chat clients each have their own ``?name=``).
    """
    return (
        f"GET {path or target.path} HTTP/1.1\r\n"
        f"Host: {target.host}:{target.port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {HANDSHAKE_KEY}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode("ascii")


def build_message(size: int, binary: bool) -> tuple[bytes, bytes]:
    """The masked frame a client sends and the unmasked frame the echo must be."""
    payload = (b"chat load generator " * (size // 20 + 1))[:size]
    opcode = Opcode.BINARY if binary else Opcode.TEXT
    return encode_frame(opcode, payload, mask=MASK), encode_frame(opcode, payload)


def scan_frames(data: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
    """Walk the server frames in ``data`` without decoding them; hot path.

    Returns the number of complete final data frames (messages, for unfragmented
    echoes), the offset where the first incomplete frame starts, and the control frames
    met on the way as (opcode, payload). Payloads of data frames are skipped by length.
    """
    size = len(data)
    position = 0
    messages = 0
    controls: list[tuple[int, bytes]] = []
    while size - position >= 2:
        first = data[position]
        length = data[position + 1]
        if length & 0x80:
            raise LoadError("the server sent a masked frame (section 5.1 forbids it)")
        if length < 126:
            header = 2
        elif length == 126:
            if size - position < 4:
                break
            header = 4
            length = (data[position + 2] << 8) | data[position + 3]
        else:
            if size - position < 10:
                break
            header = 10
            length = int.from_bytes(data[position + 2 : position + 10], "big")
        end = position + header + length
        if end > size:
            break
        if first & 0x08:
            controls.append((first & 0x0F, data[position + header : end]))
        elif first & 0x80:
            messages += 1
        position = end
    return messages, position, controls


def _pong_frame(payload: bytes) -> bytes:
    return encode_frame(Opcode.PONG, payload, mask=MASK)


# --- opening and closing many connections ------------------------------------------------


class _Handshake:
    """One connection on its way to OPEN: connect, send the request, read the 101."""

    __slots__ = ("received", "sock", "unsent")

    def __init__(self, sock: socket.socket, request: bytes) -> None:
        self.sock = sock
        self.unsent = request
        self.received = b""

    def on_writable(self) -> str | None:
        """Send the request once connected; return an error, or None."""
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            return f"connect: {os.strerror(error)}"
        try:
            sent = self.sock.send(self.unsent)
        except BlockingIOError:
            return None
        except OSError as failure:
            return f"send: {failure.strerror or failure}"
        self.unsent = self.unsent[sent:]
        return None

    def on_readable(self) -> tuple[bool, str | None]:
        """Read the response; return (complete, error)."""
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return False, None
        except OSError as failure:
            return False, f"recv: {failure.strerror or failure}"
        if not data:
            return False, "closed by the server during the handshake"
        self.received += data
        head_end = self.received.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self.received) > MAX_RESPONSE_HEAD:
                return False, "response head too large"
            return False, None
        head = self.received[:head_end]
        status = head.split(b"\r\n", 1)[0]
        if not status.startswith(b"HTTP/1.1 101"):
            return False, f"handshake refused: {status.decode('latin-1')}"
        if EXPECTED_ACCEPT not in head:
            return False, "wrong Sec-WebSocket-Accept"
        self.received = self.received[head_end + 4 :]
        return True, None


@dataclass(slots=True)
class OpenedConnections:
    """What ``open_connections`` achieved: open sockets (with any bytes that came right
    after the 101 response) and the reasons for the ones that failed.
    """

    sockets: list[tuple[socket.socket, bytes]]
    errors: Counter[str]
    seconds: float


def open_connections(
    target: Target,
    count: int,
    *,
    timeout: float,
    concurrency: int = HANDSHAKE_CONCURRENCY,
    paths: Sequence[str] | None = None,
) -> OpenedConnections:
    """Open ``count`` WebSocket connections, ``concurrency`` handshakes at a time.

    Connection ``i`` asks for ``paths[i]`` when ``paths`` is given (``count`` of them),
    else for the target's path; the sockets come back in the order they opened.
    Stops starting new ones at the first local resource error (out of descriptors or
    ports), and gives up on the rest after ``timeout`` seconds, or after
    ``STALL_TIMEOUT`` seconds without a single handshake completing (a server out of
    descriptors stops accepting).
    """
    started_at = time.monotonic()
    deadline = started_at + timeout
    if paths is not None and len(paths) != count:
        raise LoadError(f"{len(paths)} paths for {count} connections")
    request = build_request(target)
    address = (target.host, target.port)
    opened: list[tuple[socket.socket, bytes]] = []
    errors: Counter[str] = Counter()
    selector = selectors.DefaultSelector()
    started = 0
    in_progress = 0
    can_start = True
    stalled = False

    last_progress = started_at

    def finish(handshake: _Handshake, error: str | None) -> None:
        nonlocal in_progress, last_progress
        selector.unregister(handshake.sock)
        in_progress -= 1
        if error is None:
            opened.append((handshake.sock, handshake.received))
            last_progress = time.monotonic()
        else:
            errors[error] += 1
            handshake.sock.close()

    try:
        while (can_start and started < count) or in_progress:
            while can_start and started < count and in_progress < concurrency:
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                except OSError as failure:
                    errors[f"socket: {failure.strerror or failure} (load tool)"] += 1
                    can_start = False
                    break
                started += 1
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                result = sock.connect_ex(address)
                if result not in (0, errno.EINPROGRESS):
                    errors[f"connect: {os.strerror(result)}"] += 1
                    sock.close()
                    if result in (errno.EADDRNOTAVAIL, errno.EMFILE, errno.ENFILE, errno.ENOBUFS):
                        can_start = False
                    continue
                own_request = (
                    request if paths is None else build_request(target, paths[started - 1])
                )
                selector.register(sock, selectors.EVENT_WRITE, _Handshake(sock, own_request))
                in_progress += 1
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                break
            if now - last_progress > STALL_TIMEOUT:
                stalled = True
                break
            for key, events in selector.select(min(remaining, 0.5)):
                handshake: _Handshake = key.data
                if events & selectors.EVENT_WRITE:
                    error = handshake.on_writable()
                    if error is not None:
                        finish(handshake, error)
                    elif not handshake.unsent:
                        selector.modify(handshake.sock, selectors.EVENT_READ, handshake)
                    continue
                complete, error = handshake.on_readable()
                if complete or error is not None:
                    finish(handshake, error)
        reason = (
            f"no handshake completed for {STALL_TIMEOUT:.0f} s (server out of descriptors?)"
            if stalled
            else "no handshake within the time limit"
        )
        for key in list(selector.get_map().values()):
            finish(key.data, reason)
    finally:
        selector.close()
    if started < count and can_start:
        errors["not started: gave up"] += count - started
    return OpenedConnections(opened, errors, time.monotonic() - started_at)


def close_connections(sockets: Sequence[socket.socket], timeout: float = 5.0) -> dict[str, int]:
    """Close politely: send a close frame, read until the server's EOF, then close.

    Whatever has not ended within ``timeout`` seconds is reset. Returns how many ended
    which way.
    """
    selector = selectors.DefaultSelector()
    outcome = {"closed": 0, "reset": 0}
    try:
        for sock in sockets:
            try:
                sock.send(CLOSE_FRAME)
                selector.register(sock, selectors.EVENT_READ)
            except OSError:
                _reset(sock)
                outcome["reset"] += 1
        deadline = time.monotonic() + timeout
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(min(remaining, 0.5)):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(sock)
                    sock.close()
                    outcome["closed"] += 1
        for key in list(selector.get_map().values()):
            sock = key.fileobj  # type: ignore[assignment]
            selector.unregister(sock)
            _reset(sock)
            outcome["reset"] += 1
    finally:
        selector.close()
    return outcome


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0): no TIME_WAIT, nothing more to wait for."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --- echo mode -----------------------------------------------------------------------------


@dataclass(slots=True)
class EchoResult:
    """Round trips measured by ``run_echo``."""

    url: str
    clients: int
    in_flight: int
    size: int
    binary: bool
    warmup_s: float
    measured_s: float
    round_trips: int
    round_trips_per_s: float
    #: Little's law: messages in flight divided by the rate.
    mean_latency_us: float
    #: The generator's CPU time per round trip, and its share of one core.
    load_cpu_us_per_round_trip: float
    load_cpu_percent: float
    #: The server's share of one core while measured (None when its PID is unknown).
    server_cpu_percent: float | None
    #: round_trips_per_s / server CPU share: round trips per second of server CPU.
    round_trips_per_server_cpu_s: float | None
    #: CPU used by every other process meanwhile, in percent of one core: what else ran
    #: on the machine (noise), as far as /proc/stat can tell.
    other_cpu_percent: float | None
    server_pid: int | None
    connect_s: float


class _EchoClient:
    """``SelectorKey.data`` of one echo connection."""

    __slots__ = ("echoes", "outgoing", "rest", "sock", "verified")

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock = sock
        self.rest = rest  # the start of a frame not complete yet
        self.outgoing = b""  # what the kernel did not take
        self.echoes = 0
        self.verified = False


def run_echo(
    url: str,
    *,
    clients: int = 1,
    in_flight: int = 1,
    size: int = 32,
    duration: float = 5.0,
    warmup: float = 1.0,
    binary: bool = False,
    server_pid: int | None = None,
) -> EchoResult:
    """Keep ``in_flight`` messages of ``size`` bytes in flight on each of ``clients``
    connections for ``warmup + duration`` seconds; count round trips after the warm-up.
    """
    if clients < 1 or in_flight < 1 or size < 0 or duration <= 0 or warmup < 0:
        raise LoadError("clients and in-flight must be positive, duration above zero")
    target = parse_target(url)
    if server_pid is None:
        server_pid = find_listener_pid(target.port)
    raise_nofile_limit(clients + 64)
    opened = open_connections(target, clients, timeout=max(10.0, clients / 100))
    if len(opened.sockets) < clients:
        close_connections([sock for sock, _ in opened.sockets], timeout=1.0)
        raise LoadError(f"opened {len(opened.sockets)} of {clients}: {dict(opened.errors)}")
    client_frame, echo_frame = build_message(size, binary)
    connections = [_EchoClient(sock, rest) for sock, rest in opened.sockets]
    try:
        counts = _echo_loop(
            connections,
            client_frame=client_frame,
            echo_frame=echo_frame,
            in_flight=in_flight,
            warmup=warmup,
            duration=duration,
            server_pid=server_pid,
        )
    finally:
        close_connections([connection.sock for connection in connections], timeout=2.0)
    round_trips, measured, load_cpu, server_cpu, machine_cpu = counts
    other_cpu = None
    if server_cpu is not None:
        other_cpu = max(0.0, machine_cpu - load_cpu - server_cpu)
    rate = round_trips / measured if measured > 0 else 0.0
    return EchoResult(
        url=target.url,
        clients=clients,
        in_flight=in_flight,
        size=size,
        binary=binary,
        warmup_s=warmup,
        measured_s=round(measured, 3),
        round_trips=round_trips,
        round_trips_per_s=round(rate, 1),
        mean_latency_us=round(clients * in_flight / rate * 1e6, 1) if rate else 0.0,
        load_cpu_us_per_round_trip=round(load_cpu / round_trips * 1e6, 2) if round_trips else 0.0,
        load_cpu_percent=round(100 * load_cpu / measured, 1),
        server_cpu_percent=None if server_cpu is None else round(100 * server_cpu / measured, 1),
        round_trips_per_server_cpu_s=round(round_trips / server_cpu) if server_cpu else None,
        other_cpu_percent=None if other_cpu is None else round(100 * other_cpu / measured, 1),
        server_pid=server_pid,
        connect_s=round(opened.seconds, 3),
    )


def _echo_loop(
    connections: list[_EchoClient],
    *,
    client_frame: bytes,
    echo_frame: bytes,
    in_flight: int,
    warmup: float,
    duration: float,
    server_pid: int | None,
) -> tuple[int, float, float, float | None, float]:
    """The measuring loop; returns (round trips, seconds, our CPU, the server's CPU,
    the whole machine's CPU).
    """
    selector = selectors.DefaultSelector()
    # A recv completes at most in_flight echoes: answer them with one pre-built burst.
    bursts = [client_frame * count for count in range(in_flight + 1)]
    for client in connections:
        selector.register(client.sock, selectors.EVENT_READ, client)
        _echo_send(client, bursts[in_flight], selector)
    echo_length = len(echo_frame)
    total = 0
    # Every echo is the same frame, so the bytes consumed must be echo_length per echo:
    # a cheap check, per recv, that nothing else was counted as an echo.
    consumed = 0
    control_bytes = 0
    counted_from = 0
    measuring = False
    started_at = time.monotonic()
    measure_from = started_at + warmup
    measure_start = measure_from
    cpu_start = 0.0
    server_cpu_start = 0.0
    machine_cpu_start = 0.0
    end = measure_from + duration
    read, write = selectors.EVENT_READ, selectors.EVENT_WRITE
    try:
        while True:
            now = time.monotonic()
            if not measuring and now >= measure_from:
                measuring = True
                counted_from = total
                measure_start = now
                cpu_start = time.process_time()
                machine_cpu_start = read_machine_busy_seconds()
                if server_pid is not None:
                    server_cpu_start = read_cpu_seconds(server_pid)
            if now >= end:
                break
            for key, events in selector.select(min(end - now, 0.25)):
                connection: _EchoClient = key.data
                if events & write:
                    _echo_send(connection, b"", selector)
                if not events & read:
                    continue
                try:
                    data = connection.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError as failure:
                    raise LoadError(f"recv failed: {failure}") from failure
                if not data:
                    raise LoadError("the server closed a connection during the run")
                if connection.rest:
                    data = connection.rest + data
                messages, position, controls = scan_frames(data)
                connection.rest = data[position:] if position < len(data) else b""
                consumed += position
                if controls:
                    control_bytes += _answer_controls(connection.sock, controls)
                if not messages:
                    continue
                if not connection.verified:
                    if data[:echo_length] != echo_frame:
                        raise LoadError(f"the echo differs from the message: {data[:80]!r}")
                    connection.verified = True
                connection.echoes += messages
                total += messages
                burst = bursts[messages] if messages <= in_flight else client_frame * messages
                _echo_send(connection, burst, selector)
        finished = time.monotonic()
        load_cpu = time.process_time() - cpu_start
        machine_cpu = read_machine_busy_seconds() - machine_cpu_start
        if consumed - control_bytes != total * echo_length:
            raise LoadError(
                f"{consumed - control_bytes} bytes of data frames for {total} echoes of "
                f"{echo_length} bytes: the server did not echo frame for frame"
            )
        server_cpu = None
        if server_pid is not None:
            server_cpu = read_cpu_seconds(server_pid) - server_cpu_start
    finally:
        selector.close()
    return total - counted_from, finished - measure_start, load_cpu, server_cpu, machine_cpu


def _echo_send(connection: _EchoClient, data: bytes, selector: selectors.BaseSelector) -> None:
    """Send now; keep what the kernel did not take and wait for EVENT_WRITE for it."""
    had_outgoing = bool(connection.outgoing)
    if had_outgoing:
        connection.outgoing += data
        data = connection.outgoing
    if data:
        try:
            sent = connection.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as failure:
            raise LoadError(f"send failed: {failure}") from failure
        connection.outgoing = data[sent:]
    if bool(connection.outgoing) != had_outgoing:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if connection.outgoing else 0)
        selector.modify(connection.sock, events, connection)


def _answer_controls(sock: socket.socket, controls: list[tuple[int, bytes]]) -> int:
    """Answer pings, fail on a close; return the bytes the control frames took."""
    size = 0
    for opcode, payload in controls:
        if opcode == Opcode.PING:
            sock.send(_pong_frame(payload))
        elif opcode == Opcode.CLOSE:
            raise LoadError(f"the server closed the connection: {payload!r}")
        size += 2 + len(payload)  # control payloads are at most 125 bytes: 2-byte header
    return size


# --- idle mode -----------------------------------------------------------------------------


@dataclass(slots=True)
class IdleResult:
    """Server memory measured by ``run_idle``."""

    url: str
    requested: int
    opened: int
    open_s: float
    hold_s: float
    errors: dict[str, int]
    nofile_limit: int
    server_pid: int | None
    #: Server memory with one connection open, after all were open, after the hold (KiB).
    rss_before_kib: int | None = None
    rss_opened_kib: int | None = None
    rss_after_kib: int | None = None
    rss_anon_before_kib: int | None = None
    rss_anon_after_kib: int | None = None
    #: (VmRSS after the hold - VmRSS before) / opened; the same for RssAnon (heap only).
    kib_per_connection: float | None = None
    rss_anon_kib_per_connection: float | None = None
    #: Connections the server closed during the hold.
    dropped: int = 0
    closing: dict[str, int] = field(default_factory=dict)


def run_idle(
    url: str,
    *,
    connections: int = 10_000,
    hold: float = 2.0,
    server_pid: int | None = None,
    timeout: float | None = None,
) -> IdleResult:
    """Open ``connections`` idle connections, hold them ``hold`` seconds (answering
    pings), and measure the server's VmRSS growth per connection.

    The baseline is taken with one connection already open, so one-time costs (lazy
    imports, first-use caches) are not counted per connection.
    """
    if connections < 1 or hold < 0:
        raise LoadError("connections must be positive and hold not negative")
    target = parse_target(url)
    if server_pid is None:
        server_pid = find_listener_pid(target.port)
    limit = raise_nofile_limit(connections + 64)
    first = open_connections(target, 1, timeout=10.0)
    if not first.sockets:
        raise LoadError(f"cannot open a connection: {dict(first.errors)}")
    time.sleep(0.2)
    result = IdleResult(
        url=target.url,
        requested=connections,
        opened=0,
        open_s=0.0,
        hold_s=hold,
        errors={},
        nofile_limit=limit,
        server_pid=server_pid,
    )
    if server_pid is not None:
        before = read_memory_kib(server_pid)
        result.rss_before_kib = before["VmRSS"]
        result.rss_anon_before_kib = before.get("RssAnon")
    opened = open_connections(target, connections, timeout=timeout or max(30.0, connections / 200))
    sockets = [sock for sock, _ in opened.sockets]
    result.opened = len(sockets)
    result.open_s = round(opened.seconds, 3)
    result.errors = dict(opened.errors)
    try:
        if server_pid is not None:
            result.rss_opened_kib = read_memory_kib(server_pid)["VmRSS"]
        result.dropped = _hold(sockets, hold)
        if server_pid is not None:
            after = read_memory_kib(server_pid)
            result.rss_after_kib = after["VmRSS"]
            result.rss_anon_after_kib = after.get("RssAnon")
            if result.opened and result.rss_before_kib is not None:
                growth = result.rss_after_kib - result.rss_before_kib
                result.kib_per_connection = round(growth / result.opened, 2)
                if result.rss_anon_after_kib and result.rss_anon_before_kib:
                    anon_growth = result.rss_anon_after_kib - result.rss_anon_before_kib
                    result.rss_anon_kib_per_connection = round(anon_growth / result.opened, 2)
    finally:
        result.closing = close_connections([*sockets, first.sockets[0][0]], timeout=10.0)
    return result


def _hold(sockets: list[socket.socket], seconds: float) -> int:
    """Keep the connections open for ``seconds``, answering pings; return how many the
    server closed meanwhile.
    """
    selector = selectors.DefaultSelector()
    dropped = 0
    try:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ, [b""])
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(min(remaining, 0.5)):
                sock = key.fileobj  # type: ignore[assignment]
                rest: list[bytes] = key.data
                try:
                    data = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(sock)
                    dropped += 1
                    continue
                data = rest[0] + data
                _, position, controls = scan_frames(data)
                rest[0] = data[position:]
                for opcode, payload in controls:
                    if opcode == Opcode.PING:
                        with contextlib.suppress(OSError):
                            sock.send(_pong_frame(payload))
    finally:
        selector.close()
    return dropped


# --- churn mode: whole connections per second ------------------------------------------------

#: After the server's close frame, how long to wait for it to end TCP (as section 7.1.1
#: asks of a server) before resetting the connection ourselves.
CHURN_EOF_WAIT = 0.2


@dataclass(slots=True)
class ChurnResult:
    """Connection lifecycles measured by ``run_churn``."""

    url: str
    tls: bool
    concurrency: int
    warmup_s: float
    measured_s: float
    #: Opening handshakes completed (101 with the right accept key) while measured.
    handshakes: int
    handshakes_per_s: float
    #: Of the connections ended while measured: the server ended TCP after the close
    #: handshake, or we reset it after CHURN_EOF_WAIT.
    server_closed: int
    reset_by_client: int
    errors: dict[str, int]
    load_cpu_us_per_handshake: float
    load_cpu_percent: float
    server_cpu_percent: float | None
    #: handshakes_per_s / server CPU share: handshakes per second of server CPU.
    handshakes_per_server_cpu_s: float | None
    other_cpu_percent: float | None
    server_pid: int | None


class _Lifecycle:
    """One connection of the churn: connect, TLS, upgrade, close, then the next."""

    __slots__ = ("closing_since", "received", "sock", "stage", "unsent")

    def __init__(self, sock: socket.socket, request: bytes) -> None:
        self.sock = sock
        self.stage = "connect"  # connect, tls, request, response, closing
        self.unsent = request
        self.received = b""
        self.closing_since = 0.0


def run_churn(
    url: str,
    *,
    concurrency: int = 32,
    duration: float = 3.0,
    warmup: float = 0.5,
    server_pid: int | None = None,
) -> ChurnResult:
    """Open, upgrade and close connections back to back, ``concurrency`` at a time, for
    ``warmup + duration`` seconds; count opening handshakes completed after the warm-up.

    Each lifecycle is whole: TCP connect, the TLS handshake for ``wss://`` (no session
    resumption: every one is a full handshake), the upgrade, a close frame answered by
    the server's, then the server's end of TCP. A server that keeps TCP open longer than
    CHURN_EOF_WAIT is reset, so that no TIME_WAIT builds up on the generator's ports.
    The generator does not verify the certificate: the server's cost is what is measured.
    """
    if concurrency < 1 or duration <= 0 or warmup < 0:
        raise LoadError("concurrency must be positive, duration above zero")
    target = parse_target(url, allow_tls=True)
    if server_pid is None:
        server_pid = find_listener_pid(target.port)
    raise_nofile_limit(concurrency + 64)
    context: ssl.SSLContext | None = None
    if target.tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    request = build_request(target)
    address = (target.host, target.port)
    selector = selectors.DefaultSelector()
    errors: Counter[str] = Counter()
    counted = {"handshakes": 0, "server_closed": 0, "reset": 0}
    measuring = False
    lingering: list[_Lifecycle] = []

    def start() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        result = sock.connect_ex(address)
        if result not in (0, errno.EINPROGRESS):
            sock.close()
            raise LoadError(f"connect: {os.strerror(result)}")
        selector.register(sock, selectors.EVENT_WRITE, _Lifecycle(sock, request))

    def end(cycle: _Lifecycle, how: str | None) -> None:
        """End one lifecycle (``how``: an error, or None when the server ended TCP) and
        start the next.
        """
        cycle.stage = "done"
        selector.unregister(cycle.sock)
        if how is None:
            if measuring:
                counted["server_closed"] += 1
            cycle.sock.close()
        else:
            errors[how] += 1
            _reset(cycle.sock)
        start()

    def advance(cycle: _Lifecycle) -> None:
        """Move one lifecycle on as far as its socket allows."""
        sock = cycle.sock
        if cycle.stage == "connect":
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                end(cycle, f"connect: {os.strerror(error)}")
                return
            if context is not None:
                selector.unregister(sock)
                sock = context.wrap_socket(sock, do_handshake_on_connect=False)
                cycle.sock = sock
                selector.register(sock, selectors.EVENT_WRITE, cycle)
                cycle.stage = "tls"
            else:
                cycle.stage = "request"
        if cycle.stage == "tls":
            tls_sock: ssl.SSLSocket = sock  # type: ignore[assignment]
            try:
                tls_sock.do_handshake()
            except ssl.SSLWantReadError:
                selector.modify(sock, selectors.EVENT_READ, cycle)
                return
            except ssl.SSLWantWriteError:
                selector.modify(sock, selectors.EVENT_WRITE, cycle)
                return
            except (ssl.SSLError, OSError) as failure:
                end(cycle, f"tls: {failure}")
                return
            cycle.stage = "request"
        if cycle.stage == "request":
            try:
                sent = sock.send(cycle.unsent)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                selector.modify(sock, selectors.EVENT_WRITE, cycle)
                return
            except OSError as failure:
                end(cycle, f"send: {failure.strerror or failure}")
                return
            cycle.unsent = cycle.unsent[sent:]
            if cycle.unsent:
                selector.modify(sock, selectors.EVENT_WRITE, cycle)
                return
            cycle.stage = "response"
            selector.modify(sock, selectors.EVENT_READ, cycle)
            return
        try:
            data = sock.recv(RECV_SIZE)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            data = b""
        except OSError as failure:
            end(cycle, f"recv: {failure.strerror or failure}")
            return
        if cycle.stage == "response":
            if not data:
                end(cycle, "closed by the server during the handshake")
                return
            cycle.received += data
            head_end = cycle.received.find(b"\r\n\r\n")
            if head_end < 0:
                if len(cycle.received) > MAX_RESPONSE_HEAD:
                    end(cycle, "response head too large")
                return
            head = cycle.received[:head_end]
            if not head.startswith(b"HTTP/1.1 101") or EXPECTED_ACCEPT not in head:
                status = head.split(b"\r\n", 1)[0].decode("latin-1")
                end(cycle, f"handshake refused: {status}")
                return
            if measuring:
                counted["handshakes"] += 1
            cycle.received = cycle.received[head_end + 4 :]
            try:
                sock.send(CLOSE_FRAME)
            except (OSError, ssl.SSLError) as failure:
                end(cycle, f"send close: {failure}")
                return
            cycle.stage = "closing"
            cycle.closing_since = time.monotonic()
            data = b""
            if not cycle.received:
                return
            data, cycle.received = cycle.received, b""
            if not _has_close_frame(data):
                return
            lingering.append(cycle)
            return
        # closing: wait for the server's close frame, then for its end of TCP.
        if not data:
            end(cycle, None)
            return
        cycle.received += data
        if _has_close_frame(cycle.received) and cycle not in lingering:
            cycle.closing_since = time.monotonic()
            lingering.append(cycle)

    started_at = time.monotonic()
    measure_from = started_at + warmup
    deadline = measure_from + duration
    load_start = server_start = machine_start = 0.0
    try:
        for _ in range(concurrency):
            start()
        while True:
            now = time.monotonic()
            if not measuring and now >= measure_from:
                measuring = True
                measure_from = now
                load_start = time.process_time()
                machine_start = read_machine_busy_seconds()
                if server_pid is not None:
                    server_start = read_cpu_seconds(server_pid)
            if now >= deadline:
                break
            for key, _ in selector.select(0.05):
                advance(key.data)
            if lingering:
                # A server that answered the close but keeps TCP open: reset it after a
                # short wait, so that the next lifecycle can start.
                now = time.monotonic()
                keep = []
                for cycle in lingering:
                    if cycle.stage == "done":
                        continue  # the server ended TCP meanwhile
                    if now - cycle.closing_since >= CHURN_EOF_WAIT:
                        cycle.stage = "done"
                        selector.unregister(cycle.sock)
                        _reset(cycle.sock)
                        if measuring:
                            counted["reset"] += 1
                        start()
                    else:
                        keep.append(cycle)
                lingering[:] = keep
        measured = time.monotonic() - measure_from
        load_cpu = time.process_time() - load_start
        machine_cpu = read_machine_busy_seconds() - machine_start
        server_cpu = None
        if server_pid is not None:
            server_cpu = read_cpu_seconds(server_pid) - server_start
    finally:
        for key in list(selector.get_map().values()):
            _reset(key.fileobj)  # type: ignore[arg-type]
        selector.close()
    handshakes = counted["handshakes"]
    if handshakes == 0:
        raise LoadError(f"no handshake completed: {dict(errors)}")
    other_cpu = None
    if server_cpu is not None:
        other_cpu = max(0.0, machine_cpu - load_cpu - server_cpu)
    return ChurnResult(
        url=target.url,
        tls=target.tls,
        concurrency=concurrency,
        warmup_s=warmup,
        measured_s=round(measured, 3),
        handshakes=handshakes,
        handshakes_per_s=round(handshakes / measured, 1),
        server_closed=counted["server_closed"],
        reset_by_client=counted["reset"],
        errors=dict(errors),
        load_cpu_us_per_handshake=round(load_cpu / handshakes * 1e6, 1),
        load_cpu_percent=round(100 * load_cpu / measured, 1),
        server_cpu_percent=None if server_cpu is None else round(100 * server_cpu / measured, 1),
        handshakes_per_server_cpu_s=round(handshakes / server_cpu) if server_cpu else None,
        other_cpu_percent=None if other_cpu is None else round(100 * other_cpu / measured, 1),
        server_pid=server_pid,
    )


def _has_close_frame(data: bytes) -> bool:
    """Whether the server frames in ``data`` include a close frame."""
    with contextlib.suppress(LoadError):
        _, _, controls = scan_frames(data)
        return any(opcode == Opcode.CLOSE for opcode, _ in controls)
    return False


# --- chat mode: broadcast deliveries and latency ----------------------------------------------

#: The room every chat client publishes to: chatd puts every session in it.
CHAT_ROOM = "lobby"
#: How the payload of a room message broadcast starts: chatd and the peer both write
#: ``"type"`` first, in compact JSON. Other frames (welcome, presence, ack) are skipped.
MESSAGE_PREFIX = b'{"type":"message"'
#: chatd's answer to a join; a client counts as joined once it has one.
JOINED_PREFIX = b'{"type":"joined"'
#: What precedes the send timestamp (``time.perf_counter_ns``) in a message's text.
STAMP_MARKER = b'"text":"t='
#: The timestamp's width in digits, zero-padded: one slice reads it, no search for its end.
STAMP_DIGITS = 20
#: The largest share of deliveries that may be missing at the end before the run fails.
#: (None may be missing: every broadcast goes to every member, the sender included.)
MAX_LOST = 0
#: After the last message is published, how long to wait for its deliveries (seconds).
DRAIN_TIMEOUT = 10.0
#: A client is settled when no frame arrived for this long after all had joined (seconds).
SETTLE_QUIET = 0.3


@dataclass(slots=True)
class ChatResult:
    """Broadcast deliveries measured by ``run_chat``."""

    #: The first endpoint; ``urls`` has every one (clients spread round-robin over them).
    url: str
    urls: list[str]
    clients: int
    senders: int
    #: Messages per second published (all senders together); None: as fast as the
    #: in-flight bound lets them out.
    rate: float | None
    #: The most messages whose deliveries are not all in yet (max-rate mode only).
    in_flight: int | None
    #: The clients whose latencies were recorded (all, or an even sample).
    latency_clients: int
    warmup_s: float
    measured_s: float
    #: Messages published while measured, and per second.
    published: int
    published_per_s: float
    #: Room messages received by all clients together while measured, and per second.
    deliveries: int
    deliveries_per_s: float
    #: Send-to-receive latency of the deliveries measured, in milliseconds.
    latency_samples: int
    latency_p50_ms: float | None
    latency_p90_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    #: Deliveries missing after the drain: published x clients - received, whole run.
    lost: int
    #: The whole run (warm-up and drain included): messages published, room messages
    #: received by all clients, and the fewest and most one client received (each must
    #: equal ``published_total``: every message reaches every member exactly once).
    published_total: int
    deliveries_total: int
    received_per_client_min: int
    received_per_client_max: int
    #: How late the last scheduled message left the generator (fixed-rate mode), ms:
    #: large values mean the generator could not keep the schedule.
    send_lag_max_ms: float | None
    load_cpu_us_per_delivery: float
    load_cpu_percent: float
    #: CPU of the server's processes together (several: chatd nodes and Redis), in
    #: percent of one core; ``server_cpu_percents`` has each, in ``server_pids`` order.
    server_cpu_percent: float | None
    #: deliveries_per_s / server CPU share: deliveries per second of server CPU.
    deliveries_per_server_cpu_s: float | None
    other_cpu_percent: float | None
    #: The first of ``server_pids``.
    server_pid: int | None
    server_pids: list[int]
    server_cpu_percents: list[float] | None
    connect_s: float
    settle_s: float


def scan_chat_frames(
    data: bytes, arrival_ns: int, latencies: array[int] | None
) -> tuple[int, int, int, list[tuple[int, bytes]]]:
    """Walk the server frames in ``data``; hot path (the generator's cost per delivery).

    Returns the number of room messages (final text frames whose payload starts with
    ``MESSAGE_PREFIX``), the number of ``joined`` frames, the offset where the first
    incomplete frame starts, and the control frames met as (opcode, payload). For each
    room message, when ``latencies`` is given, ``arrival_ns`` minus the timestamp after
    ``STAMP_MARKER`` is appended to it: one ``find``, one slice and one ``int``, no JSON.
    """
    size = len(data)
    position = 0
    messages = 0
    joined = 0
    controls: list[tuple[int, bytes]] = []
    startswith = data.startswith
    find = data.find
    append = latencies.append if latencies is not None else None
    skip = len(STAMP_MARKER)
    while size - position >= 2:
        first = data[position]
        length = data[position + 1]
        if length < 126:
            start = position + 2
        elif length == 126:
            if size - position < 4:
                break
            start = position + 4
            length = (data[position + 2] << 8) | data[position + 3]
        elif length == 127:
            if size - position < 10:
                break
            start = position + 10
            length = int.from_bytes(data[position + 2 : start], "big")
        else:
            raise LoadError("the server sent a masked frame (section 5.1 forbids it)")
        end = start + length
        if end > size:
            break
        if first == 0x81:  # FIN + text: chat servers send each message in one frame
            if startswith(MESSAGE_PREFIX, start):
                messages += 1
                if append is not None:
                    marker = find(STAMP_MARKER, start, end) + skip
                    if marker >= skip:
                        append(arrival_ns - int(data[marker : marker + STAMP_DIGITS]))
            elif startswith(JOINED_PREFIX, start):
                joined += 1
        elif first & 0x08:
            controls.append((first & 0x0F, data[start:end]))
        position = end
    return messages, joined, position, controls


def chat_message(number: int, stamp_ns: int, run: str = "", room: str = CHAT_ROOM) -> bytes:
    """The masked frame of one published message: its text is ``t=<stamp_ns>``
    (``STAMP_DIGITS`` wide), its id ``<run>-<number>`` (unique per run: chatd
    acknowledges a reused id without broadcasting it again, as the protocol wants).
    """
    payload = b'{"type":"message","room":"%s","text":"t=%020d","id":"%s-%d"}' % (
        room.encode(),
        stamp_ns,
        run.encode(),
        number,
    )
    return encode_frame(Opcode.TEXT, payload, mask=MASK)


def _percentile(ordered: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, math.ceil(len(ordered) * fraction))
    return ordered[min(len(ordered), rank) - 1]


class _ChatClient:
    """``SelectorKey.data`` of one chat connection."""

    __slots__ = ("joined", "outgoing", "received", "rest", "sampled", "sock")

    def __init__(self, sock: socket.socket, rest: bytes, *, sampled: bool = True) -> None:
        self.sock = sock
        self.rest = rest  # the start of a frame not complete yet (or bytes after the 101)
        self.outgoing = b""  # what the kernel did not take
        self.received = 0  # room messages
        self.joined = False
        self.sampled = sampled  # its latencies are recorded


class _ChatLoop:
    """The generator's selectors loop over every chat connection."""

    def __init__(self, clients: list[_ChatClient]) -> None:
        self.clients = clients
        self.selector = selectors.DefaultSelector()
        for client in clients:
            self.selector.register(client.sock, selectors.EVENT_READ, client)
        self.received = 0  # room messages, every client together
        self.joined = 0
        self.last_frame = time.monotonic()
        # What came in the same segments as the 101 (chatd's welcome, joined) is here.
        for client in clients:
            if client.rest:
                rest, client.rest = client.rest, b""
                self.scan(client, rest, None)

    def close(self) -> None:
        self.selector.close()

    def poll(self, timeout: float, latencies: array[int] | None) -> None:
        """Wait up to ``timeout`` seconds; read and scan whatever arrived."""
        scan = self.scan
        for key, events in self.selector.select(timeout):
            client: _ChatClient = key.data
            if events & selectors.EVENT_WRITE:
                self.send(client, b"")
            if not events & selectors.EVENT_READ:
                continue
            try:
                data = client.sock.recv(RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError as failure:
                raise LoadError(f"recv failed: {failure}") from failure
            if not data:
                raise LoadError("the server closed a connection during the run")
            scan(client, data, latencies if client.sampled else None)

    def scan(self, client: _ChatClient, data: bytes, latencies: array[int] | None) -> None:
        """Count the frames ``data`` completes on ``client``; answer its pings."""
        arrival = time.perf_counter_ns()
        if client.rest:
            data = client.rest + data
        messages, joined, position, controls = scan_chat_frames(data, arrival, latencies)
        client.rest = data[position:] if position < len(data) else b""
        if controls:
            _answer_controls(client.sock, controls)
        if messages:
            client.received += messages
            self.received += messages
        if joined and not client.joined:
            client.joined = True
            self.joined += 1
        if position:
            self.last_frame = time.monotonic()

    def send(self, client: _ChatClient, data: bytes) -> None:
        """Send now; keep what the kernel did not take and wait for EVENT_WRITE for it."""
        had_outgoing = bool(client.outgoing)
        if had_outgoing:
            data = client.outgoing + data
        if data:
            try:
                sent = client.sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as failure:
                raise LoadError(f"send failed: {failure}") from failure
            client.outgoing = data[sent:]
        if bool(client.outgoing) != had_outgoing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outgoing else 0)
            self.selector.modify(client.sock, events, client)


def run_chat(
    url: str | Sequence[str],
    *,
    clients: int = 100,
    senders: int = 5,
    rate: float | None = 20.0,
    in_flight: int = 10,
    duration: float = 3.0,
    warmup: float = 1.0,
    wait_joined: bool = False,
    latency_clients: int | None = None,
    server_pid: int | Sequence[int] | None = None,
) -> ChatResult:
    """Join ``clients`` connections to one room and publish into it from ``senders`` of
    them; count the room messages every client receives and their latency.

    ``url`` is the chat endpoint (``ws://127.0.0.1:P/ws``), or several: the endpoints of
    the nodes of one cluster, client ``i`` connecting to the ``i % len(url)``-th, so that
    clients and senders alike are spread round-robin over the nodes. Client ``i``
    connects with ``?name=u<i>``. With ``wait_joined`` (chatd) a client is ready when its
    ``joined`` arrived; otherwise when connected. Once every client is ready and the
    presence traffic has died down, the senders publish, round-robin, ``rate`` messages
    per second in all, or with ``rate`` None as fast as the bound of ``in_flight``
    messages not yet delivered to everyone allows. Deliveries and latencies are counted
    for ``duration`` seconds after ``warmup``; then publishing stops and every delivery
    must arrive.

    Latency is recorded on every client, or with ``latency_clients`` on that many,
    spread evenly (every k-th connection): reading the timestamps costs the generator
    more than counting the frames, and at the highest rates that matters.

    ``server_pid``: the server's process, or every process that serves the load (each
    node, and Redis), for their CPU use; by default the process listening on each URL's
    port.
    """
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise LoadError("no URL to connect to")
    if clients < 1 or not 1 <= senders <= clients or duration <= 0 or warmup < 0:
        raise LoadError("clients and senders (at most clients) must be positive, duration too")
    if rate is not None and rate <= 0:
        raise LoadError("the rate must be positive (or None: as fast as in-flight allows)")
    if rate is None and in_flight < 1:
        raise LoadError("in-flight must be positive")
    targets = [parse_target(each) for each in urls]
    if server_pid is None:
        found = (find_listener_pid(target.port) for target in targets)
        server_pids = list(dict.fromkeys(pid for pid in found if pid is not None))
    elif isinstance(server_pid, int):
        server_pids = [server_pid]
    else:
        server_pids = list(server_pid)
    raise_nofile_limit(clients + 64)
    opened, connect_s = _open_spread(targets, clients)
    every = max(1, clients // latency_clients) if latency_clients else 1
    connections = [
        _ChatClient(sock, rest, sampled=index % every == 0)
        for index, (sock, rest) in enumerate(opened)
    ]
    loop = _ChatLoop(connections)
    try:
        settle_s = _settle(loop, wait_joined, timeout=30.0 + clients / 20)
        result = _publish(
            loop,
            senders=connections[:senders],
            rate=rate,
            in_flight=in_flight,
            warmup=warmup,
            duration=duration,
            server_pids=server_pids,
        )
    finally:
        loop.close()
        close_connections([connection.sock for connection in connections], timeout=2.0)
    result.update(
        url=targets[0].url,
        urls=[target.url for target in targets],
        clients=clients,
        senders=senders,
        rate=rate,
        in_flight=None if rate is not None else in_flight,
        latency_clients=sum(connection.sampled for connection in connections),
        warmup_s=warmup,
        server_pid=server_pids[0] if server_pids else None,
        server_pids=server_pids,
        connect_s=round(connect_s, 3),
        settle_s=round(settle_s, 3),
    )
    return ChatResult(**result)


def _open_spread(
    targets: Sequence[Target], clients: int
) -> tuple[list[tuple[socket.socket, bytes]], float]:
    """Open ``clients`` chat connections, client ``i`` to ``targets[i % len(targets)]``
    as ``u<i>``; return them in that order (round-robin over the targets) and the time it
    took. Raises ``LoadError`` (with every socket closed) if any could not be opened.
    """
    started = time.monotonic()
    per_target: list[list[tuple[socket.socket, bytes]]] = []
    failure: str | None = None
    for number, target in enumerate(targets):
        indexes = range(number, clients, len(targets))
        separator = "&" if "?" in target.path else "?"
        paths = [f"{target.path}{separator}name=u{index}" for index in indexes]
        opened = open_connections(
            target, len(paths), timeout=max(10.0, len(paths) / 50), paths=paths
        )
        per_target.append(opened.sockets)
        if len(opened.sockets) < len(paths):
            failure = (
                f"opened {len(opened.sockets)} of {len(paths)} to {target.url}:"
                f" {dict(opened.errors)}"
            )
            break
    if failure is not None:
        close_connections([sock for each in per_target for sock, _ in each], timeout=1.0)
        raise LoadError(failure)
    spread = [per_target[index % len(targets)][index // len(targets)] for index in range(clients)]
    return spread, time.monotonic() - started


def _settle(loop: _ChatLoop, wait_joined: bool, *, timeout: float) -> float:
    """Read until every client joined (if asked) and nothing arrived for SETTLE_QUIET."""
    started = time.monotonic()
    deadline = started + timeout
    count = len(loop.clients)
    while True:
        now = time.monotonic()
        ready = not wait_joined or loop.joined == count
        if ready and now - loop.last_frame >= SETTLE_QUIET:
            return now - started
        if now >= deadline:
            raise LoadError(
                f"not settled in {timeout:.0f}s: {loop.joined} of {count} clients joined"
            )
        loop.poll(min(deadline - now, SETTLE_QUIET), None)


def _publish(
    loop: _ChatLoop,
    *,
    senders: list[_ChatClient],
    rate: float | None,
    in_flight: int,
    warmup: float,
    duration: float,
    server_pids: Sequence[int],
) -> dict[str, Any]:
    """Publish for ``warmup + duration``, measure the second part, then drain."""
    members = len(loop.clients)
    run_id = os.urandom(4).hex()
    latencies: array[int] = array("q")
    published = 0
    published_from = 0
    received_from = 0
    measuring = False
    send_lag = 0.0
    started = time.perf_counter()
    measure_from = started + warmup
    measure_start = measure_from
    end = measure_from + duration
    cpu_start = machine_cpu_start = 0.0
    servers_cpu_start: list[float] = []
    interval = 1.0 / rate if rate is not None else 0.0
    while True:
        now = time.perf_counter()
        if not measuring and now >= measure_from:
            measuring = True
            measure_start = now
            published_from = published
            received_from = loop.received
            cpu_start = time.process_time()
            machine_cpu_start = read_machine_busy_seconds()
            servers_cpu_start = [read_cpu_seconds(pid) for pid in server_pids]
        if now >= end:
            break
        # Publish what is due: by the clock at a fixed rate, else up to the bound.
        if rate is not None:
            due = min(int((now - started) * rate) + 1, int((end - started) * rate) + 1)
            batch = due - published
            if batch > 0:
                send_lag = max(send_lag, now - (started + published * interval))
        else:
            batch = in_flight - (published * members - loop.received + members - 1) // members
        if batch > 0:
            frames: dict[int, list[bytes]] = {}
            for number in range(published, published + batch):
                frames.setdefault(number % len(senders), []).append(
                    chat_message(number, time.perf_counter_ns(), run_id)
                )
            published += batch
            for index, burst in frames.items():
                loop.send(senders[index], b"".join(burst))
        # Until the next message is due; at most 0.25 s, so the clock is checked.
        wait = started + published * interval - time.perf_counter() if rate is not None else 0.25
        loop.poll(max(0.0, min(wait, end - now, 0.25)), latencies if measuring else None)
    finished = time.perf_counter()
    received = loop.received - received_from
    sent = published - published_from
    load_cpu = time.process_time() - cpu_start
    machine_cpu = read_machine_busy_seconds() - machine_cpu_start
    servers_cpu = [
        read_cpu_seconds(pid) - before
        for pid, before in zip(server_pids, servers_cpu_start, strict=True)
    ]
    server_cpu = sum(servers_cpu) if servers_cpu else None
    # Every published message must reach every member: wait for the last ones.
    expected = published * members
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while loop.received < expected and time.monotonic() < deadline:
        loop.poll(0.1, None)
    lost = expected - loop.received
    if lost > MAX_LOST:
        raise LoadError(
            f"{lost} of {expected} deliveries missing {DRAIN_TIMEOUT:.0f}s after the last"
            " message was published"
        )
    fewest = min(client.received for client in loop.clients)
    most = max(client.received for client in loop.clients)
    if most > published:
        # The total can look right while one client got a message twice and another
        # missed it: each client must have each message exactly once.
        raise LoadError(f"a client received {most} room messages, {published} were published")
    measured = finished - measure_start
    other_cpu = None
    if server_cpu is not None:
        other_cpu = max(0.0, machine_cpu - load_cpu - server_cpu)
    ordered = sorted(latencies)
    del latencies

    def milliseconds(fraction: float) -> float | None:
        return round(_percentile(ordered, fraction) / 1e6, 2) if ordered else None

    rate_measured = received / measured if measured > 0 else 0.0
    return {
        "measured_s": round(measured, 3),
        "published": sent,
        "published_per_s": round(sent / measured, 1) if measured > 0 else 0.0,
        "deliveries": received,
        "deliveries_per_s": round(rate_measured, 1),
        "latency_samples": len(ordered),
        "latency_p50_ms": milliseconds(0.50),
        "latency_p90_ms": milliseconds(0.90),
        "latency_p99_ms": milliseconds(0.99),
        "latency_max_ms": round(ordered[-1] / 1e6, 2) if ordered else None,
        "lost": lost,
        "published_total": published,
        "deliveries_total": loop.received,
        "received_per_client_min": fewest,
        "received_per_client_max": most,
        "send_lag_max_ms": round(send_lag * 1e3, 2) if rate is not None else None,
        "load_cpu_us_per_delivery": round(load_cpu / received * 1e6, 2) if received else 0.0,
        "load_cpu_percent": round(100 * load_cpu / measured, 1),
        "server_cpu_percent": None if server_cpu is None else round(100 * server_cpu / measured, 1),
        "server_cpu_percents": [round(100 * each / measured, 1) for each in servers_cpu]
        if servers_cpu
        else None,
        "deliveries_per_server_cpu_s": round(received / server_cpu) if server_cpu else None,
        "other_cpu_percent": None if other_cpu is None else round(100 * other_cpu / measured, 1),
    }


# --- calibration: a broadcast server that does nothing else ----------------------------------


class _CalibrationPeer:
    """One connection of the calibration server."""

    __slots__ = ("buffer", "name", "open", "outgoing", "pending", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.name = "guest"
        self.open = False
        self.pending: list[bytes] = []  # frames queued this tick
        self.outgoing = b""  # what the kernel did not take


def serve_calibration(port: int, *, max_seconds: float = 3600.0) -> None:
    """Serve the chat broadcast of ``bench.peers.websockets_broadcast`` with as little
    work as Python allows, to measure how many deliveries the generator can consume.

    One selectors loop; a client's ``message`` is decoded with ``json.loads`` and its
    broadcast frame encoded once, queued on every connection and sent with one ``send``
    per connection per tick. No validation beyond what the generator needs, no pings,
    no limits: a calibration tool, never a server. Stops on SIGTERM or SIGINT, or after
    ``max_seconds``.
    """
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    raise_nofile_limit(65_536)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((ALLOWED_HOST, port))
    listener.listen(1024)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    members: set[_CalibrationPeer] = set()
    dirty: list[_CalibrationPeer] = []
    seq = 0
    print("ready", flush=True)
    deadline = time.monotonic() + max_seconds

    def drop(peer: _CalibrationPeer) -> None:
        members.discard(peer)
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(peer.sock)
        peer.sock.close()

    def write(peer: _CalibrationPeer, data: bytes) -> None:
        if peer.outgoing:
            peer.outgoing += data
            return
        try:
            sent = peer.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            drop(peer)
            return
        if sent < len(data):
            peer.outgoing = data[sent:]
            selector.modify(peer.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, peer)

    def on_frames(peer: _CalibrationPeer) -> None:
        nonlocal seq
        data = peer.buffer
        position = 0
        while len(data) - position >= 6:
            opcode = data[position] & 0x0F
            length = data[position + 1] & 0x7F
            start = position + 2
            if length == 126:
                length = int.from_bytes(data[start : start + 2], "big")
                start += 2
            elif length == 127:
                length = int.from_bytes(data[start : start + 8], "big")
                start += 8
            end = start + 4 + length
            if end > len(data):
                break
            key = data[start : start + 4]
            masked = data[start + 4 : end]
            payload = (
                int.from_bytes(masked, "big")
                ^ int.from_bytes((key * (length // 4 + 1))[:length], "big")
            ).to_bytes(length, "big")
            position = end
            if opcode == Opcode.TEXT:
                message = json.loads(payload)
                if message.get("type") != "message":
                    continue
                seq += 1
                wire = {
                    "type": "message",
                    "room": message.get("room"),
                    "seq": seq,
                    "ts": time.time_ns() // 1_000_000,
                    "from": peer.name,
                    "text": message.get("text"),
                    "kind": "text",
                    "id": message.get("id"),
                }
                frame = encode_frame(Opcode.TEXT, json.dumps(wire, separators=(",", ":")).encode())
                for member in members:
                    if not member.pending:
                        dirty.append(member)
                    member.pending.append(frame)
            elif opcode == Opcode.CLOSE:
                write(peer, encode_frame(Opcode.CLOSE, payload[:2]))
                drop(peer)
                return
            elif opcode == Opcode.PING:
                write(peer, encode_frame(Opcode.PONG, payload))
        peer.buffer = data[position:]

    def on_handshake(peer: _CalibrationPeer) -> None:
        head_end = peer.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = peer.buffer[:head_end].decode("latin-1")
        peer.buffer = peer.buffer[head_end + 4 :]
        key = ""
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-key":
                key = value.strip()
        target = head.split(" ", 2)[1]
        names = [part[5:] for part in urlsplit(target).query.split("&") if part[:5] == "name="]
        peer.name = names[0] if names else "guest"
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        )
        write(
            peer,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n",
        )
        peer.open = True
        members.add(peer)

    try:
        while not stop and time.monotonic() < deadline:
            for selector_key, events in selector.select(0.5):
                peer = selector_key.data
                if peer is None:
                    for _ in range(64):
                        try:
                            sock, _ = listener.accept()
                        except BlockingIOError:
                            break
                        sock.setblocking(False)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        selector.register(sock, selectors.EVENT_READ, _CalibrationPeer(sock))
                    continue
                if events & selectors.EVENT_WRITE and peer.outgoing:
                    data, peer.outgoing = peer.outgoing, b""
                    write(peer, data)
                    if not peer.outgoing and peer in members:
                        selector.modify(peer.sock, selectors.EVENT_READ, peer)
                if not events & selectors.EVENT_READ:
                    continue
                try:
                    data = peer.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    drop(peer)
                    continue
                peer.buffer += data
                if not peer.open:
                    on_handshake(peer)
                if peer.open:
                    on_frames(peer)
            for peer in dirty:
                frames, peer.pending = peer.pending, []
                if peer in members:
                    write(peer, b"".join(frames))
            dirty.clear()
    finally:
        for peer in list(members):
            drop(peer)
        selector.close()
        listener.close()


# --- compare: our server beside the peers ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Implementation:
    """A server to compare: how to start it (the port is appended) and where its
    WebSocket endpoint is.
    """

    name: str
    command: tuple[str, ...]
    needs: str | None  # the module it needs, if any
    #: The endpoint's path: the readiness probe and the load connect there.
    path: str = "/"
    #: Started with ``--db FILE``, a fresh SQLite file in a temporary directory.
    database: bool = False
    #: Extra arguments for the load command (chatd: wait for each client's ``joined``).
    load_arguments: tuple[str, ...] = ()
    #: Measured unless ``--impl`` names others; False for calibration tools.
    default: bool = True


#: The echo suite: our echo server beside echo servers on other libraries.
IMPLEMENTATIONS = (
    Implementation(
        "rfc6455",
        ("-m", "rfc6455.echo", "--no-deflate", "--log-level", "WARNING", "--port"),
        None,
    ),
    Implementation("websockets", ("-m", "bench.peers.websockets_echo", "--port"), "websockets"),
    Implementation("aiohttp", ("-m", "bench.peers.aiohttp_echo", "--port"), "aiohttp"),
    Implementation("picows", ("-m", "bench.peers.picows_echo", "--port"), "picows"),
)
OURS = "rfc6455"
#: The broadcast peers: one room, every message numbered and sent to every client in
#: chatd's wire format (bench/peers/*_broadcast.py). Both the broadcast and the chat
#: suites measure them.
_BROADCAST_PEERS = tuple(
    Implementation(name, ("-m", f"bench.peers.{name}_broadcast", "--port"), name, path="/ws")
    for name in ("websockets", "aiohttp", "picows")
)
#: The bare broadcast loop that measures the generator's ceiling (``--impl calibration``).
_CALIBRATION = Implementation(
    "calibration",
    ("-m", "bench.load", "calibration-server", "--port"),
    None,
    path="/ws",
    default=False,
)
#: The broadcast suite: the same minimal broadcast server on each library, ours included.
BROADCAST_IMPLEMENTATIONS = (
    Implementation(
        "rfc6455",
        ("-m", "bench.peers.rfc6455_broadcast", "--port"),
        None,
        path="/ws",
    ),
    *_BROADCAST_PEERS,
    _CALIBRATION,
)
#: The chat suite: chatd, a whole chat server (parsing, validation, SQLite, acks), beside
#: the minimal broadcast servers.
CHAT_IMPLEMENTATIONS = (
    Implementation(
        "chatd",
        # Unlimited: the load is 1,000 clients from one address, publishing as fast as
        # they can (a benchmark, not an abuse chatd should stop).
        (
            "-m",
            "chatd",
            "--log-level",
            "WARNING",
            "--rate-limit",
            "0",
            "--max-connections-per-ip",
            "0",
            "--port",
        ),
        None,
        path="/ws",
        database=True,
        load_arguments=("--wait-joined",),
    ),
    *_BROADCAST_PEERS,
    _CALIBRATION,
)
CHAT_OURS = "chatd"
#: Suite name -> (its implementations, the one whose ratios to the others are reported).
SUITES: dict[str, tuple[tuple[Implementation, ...], str]] = {
    "echo": (IMPLEMENTATIONS, OURS),
    "broadcast": (BROADCAST_IMPLEMENTATIONS, OURS),
    "chat": (CHAT_IMPLEMENTATIONS, CHAT_OURS),
}
#: An echo measurement during which other processes used more than this share of one
#: core (percent) is repeated, up to NOISY_RETRIES times; the noisy one is kept in the
#: JSON but left out of the medians.
NOISE_LIMIT = 25.0
NOISY_RETRIES = 1
#: At most this many repeats in one compare run, to bound its time on a busy machine.
NOISY_RETRY_BUDGET = 10


@dataclass(frozen=True, slots=True)
class Scenario:
    """One measurement: its name, its load command and the figure it reports."""

    name: str
    label: str
    kind: str  # "echo", "idle", "churn" or "chat"
    arguments: tuple[str, ...]
    metric: str
    unit: str
    higher_is_better: bool
    #: Targets as {peer: ratio of ours to the peer}: at least (or at most) that.
    targets: dict[str, float]
    #: Further figures of the result, reported without targets: (metric, unit).
    secondary: tuple[tuple[str, str], ...] = ()
    #: A target for our own figure: at least (or at most) this value.
    limit: float | None = None
    suite: str = "echo"
    #: Served over TLS (``wss://``): the servers get a certificate from ``tls``.
    tls: bool = False


@dataclass(frozen=True, slots=True)
class CompareSettings:
    """How long and how often ``compare`` measures."""

    rounds: int
    duration: float
    warmup: float
    idle_connections: int
    hold: float
    #: Only the scenarios of the quick subset (``make bench-quick``).
    quick: bool = False
    #: Connection churn: handshakes in progress at once, and seconds measured.
    churn_concurrency: int = 32
    churn_duration: float = 2.0
    #: The broadcast and chat suites: rounds, measured seconds and warm-up of every run
    #: (each also costs about 1.5 s to start a server, join the clients and close them).
    chat_rounds: int = 3
    chat_duration: float = 3.0
    chat_warmup: float = 0.5
    #: Receivers in the room: one scenario pair per count (broadcast suite; the chat
    #: suite measures the largest only).
    chat_clients: tuple[int, ...] = (100, 1_000)
    #: Publishing clients, the fixed total rate (messages/s) of the latency scenarios,
    #: and the messages in flight of the throughput scenarios: 20 keeps chatd's core
    #: busy at 100 clients (10 leaves it a third idle: the loop waits for the round
    #: trip), and each client's queue at 20 frames (about 3 KB).
    chat_senders: int = 5
    chat_rate: float = 20.0
    chat_in_flight: int = 20
    #: Receivers whose latency the throughput scenarios record, at most (and at most a
    #: quarter of them); every one at a fixed rate. Reading a timestamp costs the
    #: generator more than counting the frame, and it must keep up with the server.
    chat_latency_clients: int = 100


FULL = CompareSettings(rounds=5, duration=2.0, warmup=0.5, idle_connections=10_000, hold=2.0)
QUICK = CompareSettings(
    rounds=1,
    duration=1.0,
    warmup=0.3,
    idle_connections=1_000,
    hold=0.5,
    quick=True,
    churn_duration=1.0,
    chat_rounds=1,
    chat_duration=1.5,
    chat_warmup=0.3,
    chat_clients=(1_000,),
)
#: chatd's latency bound: p99 under 100 ms with 1,000 clients at 20 msg/s.
CHAT_P99_LIMIT_MS = 100.0
#: chatd's throughput target: at least twice the deliveries/s of the websockets peer.
CHAT_DELIVERIES_TARGET = {"websockets": 2.0}
#: Our broadcast server's target at 1,000 receivers: at least picows' deliveries/s.
BROADCAST_DELIVERIES_TARGET = {"picows": 1.0}
#: Scenarios of the quick subset.
QUICK_SCENARIOS = frozenset(
    {"echo-1x16", "echo-100x16", "idle", "churn-ws", "broadcast-max", "chat-max"}
)


def scenarios_for(settings: CompareSettings, suite: str = "echo") -> list[Scenario]:
    """The scenarios of ``suite`` (only the quick subset's with ``settings.quick``).

    echo: round trips with 1 and 100 clients, 32 B and 1 KiB, one or 16 in flight; idle
    memory; connection churn over ws:// and wss://. broadcast and chat: per receiver
    count, a fixed rate (latency) and as fast as the in-flight bound allows (throughput).
    """
    if suite == "echo":
        scenarios = _echo_scenarios(settings)
    else:
        scenarios = _broadcast_scenarios(settings, suite)
    if settings.quick:
        scenarios = [s for s in scenarios if _quick_name(s) in QUICK_SCENARIOS]
    return scenarios


def _quick_name(scenario: Scenario) -> str:
    """The scenario's name without its size: ``broadcast-1000-max`` -> ``broadcast-max``."""
    parts = scenario.name.split("-")
    if scenario.kind in {"idle", "chat"}:
        return "-".join(part for part in parts if not part[:1].isdigit())
    return scenario.name


def _echo_scenarios(settings: CompareSettings) -> list[Scenario]:
    timing = ("--duration", str(settings.duration), "--warmup", str(settings.warmup))
    # Round trips per second of server CPU: how much work each server does per echo,
    # which noise from other processes on the machine moves much less than the rate.
    echo_secondary = (("round_trips_per_server_cpu_s", "rt/server CPU-s"),)
    scenarios = []
    for name, clients, in_flight, size in (
        ("echo-1x1", 1, 1, 32),
        ("echo-1x16", 1, 16, 32),
        ("echo-1x16-1k", 1, 16, 1024),
        ("echo-100x16", 100, 16, 32),
        ("echo-100x16-1k", 100, 16, 1024),
    ):
        client_word = "client" if clients == 1 else "clients"
        scenarios.append(
            Scenario(
                name,
                f"echo, {clients} {client_word}, {_size_label(size)}, {in_flight} in flight each",
                "echo",
                (
                    "--clients",
                    str(clients),
                    "--in-flight",
                    str(in_flight),
                    "--size",
                    str(size),
                    *timing,
                ),
                "round_trips_per_s",
                "round trips/s",
                True,
                {"aiohttp": 1.0} if name == "echo-100x16" else {},
                echo_secondary,
            )
        )
    scenarios.append(
        Scenario(
            f"idle-{settings.idle_connections}",
            f"idle, {settings.idle_connections:,} connections",
            "idle",
            ("--connections", str(settings.idle_connections), "--hold", str(settings.hold)),
            "kib_per_connection",
            "KiB/connection",
            False,
            {"websockets": 0.8},
        )
    )
    churn = (
        "--concurrency",
        str(settings.churn_concurrency),
        "--duration",
        str(settings.churn_duration),
        "--warmup",
        str(settings.warmup),
    )
    for tls in (False, True):
        scheme = "wss" if tls else "ws"
        scenarios.append(
            Scenario(
                f"churn-{scheme}",
                f"connection churn over {scheme}://, {settings.churn_concurrency} at a time",
                "churn",
                churn,
                "handshakes_per_s",
                "handshakes/s",
                True,
                {},
                (("handshakes_per_server_cpu_s", "handshakes/server CPU-s"),),
                tls=tls,
            )
        )
    return scenarios


def _size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 and size % 1024 == 0 else f"{size} B"


def _broadcast_scenarios(settings: CompareSettings, suite: str) -> list[Scenario]:
    timing = ("--duration", str(settings.chat_duration), "--warmup", str(settings.chat_warmup))
    largest = max(settings.chat_clients)
    counts = settings.chat_clients if suite == "broadcast" else (largest,)
    scenarios = []
    for clients in counts:
        common = ("--clients", str(clients), "--senders", str(settings.chat_senders), *timing)
        rate = f"{settings.chat_rate:g}"
        if suite == "chat":
            limit = CHAT_P99_LIMIT_MS if clients == largest else None
            targets = CHAT_DELIVERIES_TARGET if clients == largest else {}
        else:
            limit = None
            targets = BROADCAST_DELIVERIES_TARGET if clients == largest else {}
        scenarios.append(
            Scenario(
                f"{suite}-{clients}x{rate}mps",
                f"{suite}, {clients:,} clients, {rate} messages/s published",
                "chat",
                (*common, "--rate", rate),
                "latency_p99_ms",
                "ms p99",
                False,
                {},
                (("latency_p50_ms", "ms p50"), ("deliveries_per_s", "deliveries/s")),
                limit=limit,
                suite=suite,
            )
        )
        scenarios.append(
            Scenario(
                f"{suite}-{clients}-max",
                f"{suite}, {clients:,} clients, {settings.chat_in_flight} messages in flight",
                "chat",
                (
                    *common,
                    "--in-flight",
                    str(settings.chat_in_flight),
                    "--latency-clients",
                    str(min(settings.chat_latency_clients, max(1, clients // 4))),
                ),
                "deliveries_per_s",
                "deliveries/s",
                True,
                targets,
                (
                    ("deliveries_per_server_cpu_s", "deliveries/server CPU-s"),
                    ("latency_p50_ms", "ms p50"),
                    ("latency_p99_ms", "ms p99"),
                ),
                suite=suite,
            )
        )
    return scenarios


def _cpu_plan() -> tuple[set[int] | None, set[int] | None]:
    """CPUs for the server and for the load generator: one each when there are two."""
    with contextlib.suppress(AttributeError, OSError):
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:
            return {cpus[0]}, {cpus[1]}
    return None, None


def _child_setup(cpus: set[int] | None, nofile: int) -> Callable[[], None]:
    """A ``preexec_fn``: raise RLIMIT_NOFILE and pin the child to ``cpus``."""

    def setup() -> None:
        raise_nofile_limit(nofile)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    return setup


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((ALLOWED_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """One echo server subprocess on a free port; stopped by its PID."""

    def __init__(
        self,
        implementation: Implementation,
        cpus: set[int] | None,
        nofile: int,
        *,
        certificate: tuple[Path, Path] | None = None,
    ) -> None:
        self.implementation = implementation
        self.port = _free_port()
        scheme = "ws" if certificate is None else "wss"
        self.url = f"{scheme}://{ALLOWED_HOST}:{self.port}{implementation.path}"
        self.probe_url = f"ws://{ALLOWED_HOST}:{self.port}{implementation.path}"
        # Both live as long as the server; closed in stop().
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        self.database: tempfile.TemporaryDirectory[str] | None = None
        command = [sys.executable, *implementation.command, str(self.port)]
        if certificate is not None:
            certfile, keyfile = certificate
            command += ["--certfile", str(certfile), "--keyfile", str(keyfile)]
        if implementation.database:
            self.database = tempfile.TemporaryDirectory(prefix="bench-chatd-")
            command += ["--db", str(Path(self.database.name) / "chatd.sqlite3")]
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=_child_setup(cpus, nofile),  # noqa: PLW1509 - no threads here
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Wait until a WebSocket handshake succeeds (a TLS server: until it listens)."""
        target = parse_target(self.probe_url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LoadError(f"{self.implementation.name} exited: {self.output()}")
            if self.url.startswith("wss:"):
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection((target.host, target.port), timeout=2.0),
                ):
                    return
            else:
                opened = open_connections(target, 1, timeout=2.0)
                if opened.sockets:
                    close_connections([opened.sockets[0][0]], timeout=2.0)
                    return
            time.sleep(0.05)
        raise LoadError(f"{self.implementation.name} not ready in {timeout}s: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-2000:].decode(errors="replace")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds, both to this PID only."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()
        if self.database is not None:
            self.database.cleanup()


def _run_load(
    kind: str,
    url: str,
    *,
    arguments: Sequence[str],
    server_pid: int,
    cpus: set[int] | None,
    nofile: int,
    timeout: float,
) -> dict[str, Any]:
    """Run one measurement in its own process (pinned to its own CPU); return its JSON."""
    command = [
        sys.executable,
        "-m",
        "bench.load",
        kind,
        "--url",
        url,
        *arguments,
        "--server-pid",
        str(server_pid),
        "--json",
    ]
    completed = subprocess.run(
        command,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_child_setup(cpus, nofile),
        check=False,
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise LoadError(f"load exited with {completed.returncode}: {completed.stderr[-1000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def environment() -> dict[str, Any]:
    """Machine, Python and library versions, for the JSON report."""
    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
                break
    versions: dict[str, str | None] = {}
    for package in ("websockets", "aiohttp", "chatd"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    speedups: dict[str, bool] = {
        "websockets.speedups": importlib.util.find_spec("websockets.speedups") is not None,
    }
    with contextlib.suppress(ImportError):
        # Which of aiohttp's optional C extensions this installation uses.
        parser = importlib.import_module("aiohttp.http_parser").HttpRequestParser
        reader = importlib.import_module("aiohttp._websocket.reader").WebSocketReader
        speedups["aiohttp C HTTP parser"] = parser.__module__.endswith("_http_parser")
        speedups["aiohttp C WebSocket reader"] = reader.__module__.endswith("_c")
    git = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        status = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        git = {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    return {
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model,
            "cpus": os.cpu_count(),
            "memory_mib": memory_kib // 1024,
            "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE),
        },
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "versions": versions,
        "speedups": speedups,
        "git": git,
    }


def compare(
    settings: CompareSettings,
    *,
    suites: Sequence[str] = tuple(SUITES),
    implementations: Sequence[str] | None = None,
    output: Path | None = None,
    log: Callable[[str], None] = print,
    save: bool = True,
) -> dict[str, Any]:
    """Measure every scenario of ``suites`` for every implementation, round-robin;
    print and save (unless ``save`` is false: ``python -m bench`` saves everything in
    one file).
    """
    plans: list[tuple[str, list[Implementation], list[Scenario]]] = []
    for suite in suites:
        catalog, _ = SUITES[suite]
        chosen = [
            implementation
            for implementation in catalog
            if (
                implementation.default
                if implementations is None
                else implementation.name in implementations
            )
        ]
        skipped = [
            implementation.name
            for implementation in chosen
            if implementation.needs and importlib.util.find_spec(implementation.needs) is None
        ]
        for name in skipped:
            log(f"skipping {name} ({suite}): the library is not installed")
        chosen = [implementation for implementation in chosen if implementation.name not in skipped]
        if chosen:
            plans.append((suite, chosen, scenarios_for(settings, suite)))
    server_cpus, load_cpus = _cpu_plan()
    nofile = max(settings.idle_connections, *settings.chat_clients) + 1024
    raise_nofile_limit(nofile)
    repetitions: list[dict[str, Any]] = []
    started_at = time.time()
    shared_servers: dict[str, ServerProcess] = {}
    retries_left = NOISY_RETRY_BUDGET
    certificates = tempfile.TemporaryDirectory(prefix="bench-tls-")
    certificate: tuple[Path, Path] | None = None
    if any(scenario.tls for _, _, scenarios in plans for scenario in scenarios):
        # A certificate from the local CA of the ``tls`` package (not mkcert: nothing
        # is installed in a trust store for a benchmark).
        files = issue_leaf(certificates.name, [ALLOWED_HOST])
        certificate = (files.certfile, files.keyfile)
    try:
        for suite, chosen, scenarios in plans:
            if suite == "echo":
                # Echo scenarios reuse one server per implementation; the others start fresh.
                for implementation in chosen:
                    shared_servers[implementation.name] = ServerProcess(
                        implementation, server_cpus, nofile
                    )
                for server in shared_servers.values():
                    server.wait_ready()
            rounds = settings.rounds if suite == "echo" else settings.chat_rounds
            for round_number in range(rounds):
                # Rotate the order every round so that drift hits every implementation alike.
                shift = round_number % max(1, len(chosen))
                order = chosen[shift:] + chosen[:shift]
                for scenario in scenarios:
                    for implementation in order:
                        for attempt in range(1 + NOISY_RETRIES):
                            repetition = _measure(
                                scenario,
                                implementation,
                                shared_servers=shared_servers,
                                settings=settings,
                                server_cpus=server_cpus,
                                load_cpus=load_cpus,
                                nofile=nofile,
                                certificate=certificate,
                            )
                            repetition["round"] = round_number + 1
                            repetition["attempt"] = attempt + 1
                            repetitions.append(repetition)
                            log(
                                f"{suite} {round_number + 1}/{rounds} "
                                + _describe(repetition, scenario)
                            )
                            other = repetition.get("result", {}).get("other_cpu_percent")
                            if (
                                other is None
                                or other <= NOISE_LIMIT
                                or attempt == NOISY_RETRIES
                                or retries_left == 0
                            ):
                                break
                            # Another process took CPU meanwhile: measure again, keep both.
                            repetition["discarded"] = f"other processes used {other}% CPU"
                            retries_left -= 1
            for server in shared_servers.values():
                server.stop()
            shared_servers.clear()
    finally:
        for server in shared_servers.values():
            server.stop()
        certificates.cleanup()
    summary: dict[str, Any] = {}
    tables = []
    for suite, chosen, scenarios in plans:
        names = [implementation.name for implementation in chosen]
        ours = SUITES[suite][1]
        suite_summary = summarize(scenarios, names, repetitions, ours=ours)
        summary.update(suite_summary)
        tables.append(format_table(scenarios, names, suite_summary, ours=ours))
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_at)),
        "wall_s": round(time.time() - started_at, 1),
        **environment(),
        "settings": dataclasses.asdict(settings),
        "suites": [suite for suite, _, _ in plans],
        "cpu_pinning": {
            "server": sorted(server_cpus) if server_cpus else None,
            "load": sorted(load_cpus) if load_cpus else None,
        },
        "scenarios": [
            dataclasses.asdict(scenario) for _, _, scenarios in plans for scenario in scenarios
        ],
        "summary": summary,
        "repetitions": repetitions,
    }
    for table in tables:
        log("")
        log(table)
    if not save:
        return report
    if output is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started_at))
        output = RESULTS_DIR / f"load-{stamp}.json"
    output.write_text(json.dumps(report, indent=2) + "\n")
    log(f"\nwrote {output} ({report['wall_s']:.0f} s)")
    return report


def _measure(
    scenario: Scenario,
    implementation: Implementation,
    *,
    shared_servers: dict[str, ServerProcess],
    settings: CompareSettings,
    server_cpus: set[int] | None,
    load_cpus: set[int] | None,
    nofile: int,
    certificate: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """One repetition. Idle runs get a fresh server, so that its baseline is clean; chat
    runs too, so that each starts with an empty room (and chatd with an empty database);
    churn runs too (over TLS when the scenario says so).
    """
    repetition: dict[str, Any] = {"scenario": scenario.name, "impl": implementation.name}
    fresh: ServerProcess | None = None
    try:
        if scenario.kind in {"idle", "chat", "churn"}:
            fresh = ServerProcess(
                implementation,
                server_cpus,
                nofile,
                certificate=certificate if scenario.tls else None,
            )
            fresh.wait_ready()
            server = fresh
        else:
            server = shared_servers[implementation.name]
        if scenario.kind == "idle":
            timeout = 120.0 + settings.idle_connections / 100 + settings.hold
        elif scenario.kind == "chat":
            timeout = 120.0 + max(settings.chat_clients) / 20 + settings.chat_duration
        elif scenario.kind == "churn":
            timeout = 60.0 + settings.churn_duration + settings.warmup
        else:
            timeout = 60.0 + settings.duration + settings.warmup
        arguments = scenario.arguments
        if scenario.kind == "chat":
            arguments += implementation.load_arguments
        result = _run_load(
            scenario.kind,
            server.url,
            arguments=arguments,
            server_pid=server.pid,
            cpus=load_cpus,
            nofile=nofile,
            timeout=timeout,
        )
        repetition["result"] = result
        repetition["value"] = result.get(scenario.metric)
    except (LoadError, subprocess.SubprocessError, OSError, ValueError) as error:
        repetition["error"] = str(error)
        repetition["value"] = None
    finally:
        if fresh is not None:
            fresh.stop()
    return repetition


def _describe(repetition: dict[str, Any], scenario: Scenario) -> str:
    where = f"round {repetition['round']} {scenario.name:<16} {repetition['impl']:<11}"
    if repetition["value"] is None:
        return f"{where} failed: {repetition.get('error')}"
    result = repetition["result"]
    if scenario.kind == "chat":
        return (
            f"{where} {result['deliveries_per_s']:>10,.0f} deliveries/s  "
            f"p50 {result['latency_p50_ms']} ms  p99 {result['latency_p99_ms']} ms  "
            f"published {result['published_per_s']}/s  "
            f"server CPU {result['server_cpu_percent']}%  "
            f"load CPU {result['load_cpu_percent']}% "
            f"({result['load_cpu_us_per_delivery']} us/delivery)  "
            f"other CPU {result['other_cpu_percent']}%"
        )
    if scenario.kind == "churn":
        return (
            f"{where} {result['handshakes_per_s']:>10,.0f} handshakes/s  "
            f"server CPU {result['server_cpu_percent']}%  "
            f"load CPU {result['load_cpu_percent']}% "
            f"({result['load_cpu_us_per_handshake']} us/handshake)  "
            f"server closed {result['server_closed']}, reset {result['reset_by_client']}"
        )
    if scenario.kind == "echo":
        return (
            f"{where} {result['round_trips_per_s']:>10,.0f} rt/s  "
            f"server CPU {result['server_cpu_percent']}%  "
            f"load CPU {result['load_cpu_percent']}% "
            f"({result['load_cpu_us_per_round_trip']} us/rt)  "
            f"other CPU {result['other_cpu_percent']}%"
        )
    return (
        f"{where} {result['kib_per_connection']:>8.2f} KiB/conn  "
        f"{result['opened']:,} open in {result['open_s']}s  "
        f"VmRSS {result['rss_before_kib']:,} -> {result['rss_after_kib']:,} KiB"
    )


@dataclass(frozen=True, slots=True)
class Figure:
    """One row of the summary: a metric of a scenario, with its targets if it has any."""

    key: str
    scenario: str
    metric: str
    unit: str
    higher_is_better: bool
    targets: dict[str, float]
    limit: float | None = None


def figures_for(scenarios: Sequence[Scenario]) -> list[Figure]:
    """The summary rows: each scenario's metric, then its secondary metrics."""
    figures = []
    for scenario in scenarios:
        figures.append(
            Figure(
                scenario.name,
                scenario.name,
                scenario.metric,
                scenario.unit,
                scenario.higher_is_better,
                scenario.targets,
                scenario.limit,
            )
        )
        for metric, unit in scenario.secondary:
            key = f"{scenario.name} {metric}"
            figures.append(Figure(key, scenario.name, metric, unit, scenario.higher_is_better, {}))
    return figures


def summarize(
    scenarios: Sequence[Scenario],
    names: Sequence[str],
    repetitions: Sequence[dict[str, Any]],
    *,
    ours: str = OURS,
) -> dict[str, Any]:
    """Medians per figure and implementation, and the ratio of ``ours`` to each peer."""
    summary: dict[str, Any] = {}
    for figure in figures_for(scenarios):
        medians: dict[str, float | None] = {}
        lows: dict[str, float | None] = {}
        highs: dict[str, float | None] = {}
        noise: dict[str, float | None] = {}
        counted: dict[str, int] = {}
        for name in names:
            results = [
                repetition["result"]
                for repetition in repetitions
                if repetition["scenario"] == figure.scenario
                and repetition["impl"] == name
                and "discarded" not in repetition
                and repetition.get("result", {}).get(figure.metric) is not None
            ]
            values = [result[figure.metric] for result in results]
            counted[name] = len(values)
            medians[name] = statistics.median(values) if values else None
            lows[name] = min(values) if values else None
            highs[name] = max(values) if values else None
            others = [
                result["other_cpu_percent"]
                for result in results
                if result.get("other_cpu_percent") is not None
            ]
            noise[name] = statistics.median(others) if others else None
        ratios: dict[str, float | None] = {}
        verdicts: dict[str, bool | None] = {}
        our_value = medians.get(ours)
        for name in names:
            if name == ours:
                continue
            theirs = medians.get(name)
            ratio = our_value / theirs if our_value is not None and theirs else None
            ratios[name] = None if ratio is None else round(ratio, 3)
            target = figure.targets.get(name)
            if target is None or ratio is None:
                verdicts[name] = None
            elif figure.higher_is_better:
                verdicts[name] = ratio >= target
            else:
                verdicts[name] = ratio <= target
        limit_met = None
        if figure.limit is not None and our_value is not None:
            limit_met = (
                our_value >= figure.limit if figure.higher_is_better else our_value <= figure.limit
            )
        summary[figure.key] = {
            "unit": figure.unit,
            "ours": ours,
            "medians": medians,
            "mins": lows,
            "maxs": highs,
            "ratios": ratios,
            "targets": figure.targets,
            "met": verdicts,
            "limit": figure.limit,
            "limit_met": limit_met,
            "counted": counted,
            "median_other_cpu_percent": noise,
        }
    return summary


def format_table(
    scenarios: Sequence[Scenario],
    names: Sequence[str],
    summary: dict[str, Any],
    *,
    ours: str = OURS,
) -> str:
    """A plain-text table of medians and ratios (ours / peer) with the targets."""
    peers = [name for name in names if name != ours]
    header = ["figure", "unit", *names, *(f"{ours}/{peer}" for peer in peers)]
    rows = [header]
    for figure in figures_for(scenarios):
        entry = summary[figure.key]
        row = [figure.key, figure.unit]
        for name in names:
            value = entry["medians"].get(name)
            if value is None:
                row.append("-")
            else:
                cell = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
                if name == ours and entry.get("limit") is not None:
                    sign = ">=" if figure.higher_is_better else "<="
                    verdict = "ok" if entry["limit_met"] else "MISS"
                    cell += f" ({sign}{entry['limit']:g}: {verdict})"
                row.append(cell)
        for peer in peers:
            ratio = entry["ratios"].get(peer)
            target = figure.targets.get(peer)
            cell = "-" if ratio is None else f"{ratio:.2f}x"
            if target is not None and ratio is not None:
                sign = ">=" if figure.higher_is_better else "<="
                verdict = "ok" if entry["met"][peer] else "MISS"
                cell += f" ({sign}{target}: {verdict})"
            row.append(cell)
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


# --- cluster: chatd nodes sharing one Redis ---------------------------------------------------

#: chatd's flags on every node of a capacity run: no limits (every client comes from one
#: address and publishes as fast as it may: a benchmark, not abuse), warnings only.
CLUSTER_NODE_ARGUMENTS = (
    "--log-level",
    "WARNING",
    "--rate-limit",
    "0",
    "--max-connections-per-ip",
    "0",
)
#: The two measurements of every setup: at a fixed total rate (latency), and as fast as
#: the in-flight bound allows (throughput).
CLUSTER_MODES = ("rate", "max")


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """What ``python -m bench.load cluster`` measures: for each node count, Redis and
    that many chatd nodes (plus one node on the local bus, the baseline), each mode on a
    fresh cluster.
    """

    #: Node counts on Redis.
    nodes: tuple[int, ...] = (1, 2, 3)
    #: Also one node with ``--bus local`` (no Redis), measured first.
    baseline: bool = True
    clients: int = 300
    senders: int = 6
    #: Messages/s in all, for the latency measurement.
    rate: float = 20.0
    #: Messages not yet delivered to every client, for the throughput measurement: enough
    #: to keep every process busy (fewer, and the bus's round trips bound the rate).
    in_flight: int = 200
    duration: float = 3.0
    warmup: float = 1.0
    rounds: int = 1
    #: Redis's ``appendfsync``: ``always`` (what an acknowledgement surviving a power
    #: loss needs) or ``everysec``.
    appendfsync: str = "always"
    #: Before each run, wait up to this many seconds for the rest of the machine to be
    #: quiet (other processes under NOISE_LIMIT percent of one core): for shared machines.
    quiet_wait: float = 0.0
    #: Repeat a run during which other processes used more than NOISE_LIMIT percent.
    noise_retries: int = NOISY_RETRIES

    def setups(self) -> list[int | None]:
        """The setups in the order measured: None for the local bus, else a node count."""
        return ([None] if self.baseline else []) + list(self.nodes)


def wait_for_quiet(longest: float, *, window: float = 1.0) -> float:
    """Wait until the machine's processes used under ``NOISE_LIMIT`` percent of one core
    during ``window`` seconds, for at most ``longest`` seconds; return how long it took
    (``longest`` or more: it never became quiet).
    """
    started = time.monotonic()
    while True:
        before = read_machine_busy_seconds()
        time.sleep(window)
        busy = 100 * (read_machine_busy_seconds() - before) / window
        waited = time.monotonic() - started
        if busy <= NOISE_LIMIT or waited >= longest:
            return waited


def setup_name(nodes: int | None) -> str:
    """``local`` for one node on the local bus, else ``redis-N``."""
    return "local" if nodes is None else f"redis-{nodes}"


@contextlib.contextmanager
def running_cluster(
    nodes: int | None, directory: Path, *, appendfsync: str = "always"
) -> Iterator[tuple[list[Node], RedisServer | None]]:
    """Start ``nodes`` chatd nodes on a fresh ``redis-server`` (None: one node with
    ``--bus local`` and no Redis) in ``directory``, wait until every node is ready, and
    stop them all (nodes first, then Redis) by their PIDs when done.
    """
    redis: RedisServer | None = None
    started: list[Node] = []
    try:
        if nodes is None:
            started.append(Node("local", "local", directory / "local", *CLUSTER_NODE_ARGUMENTS))
        else:
            redis = RedisServer(directory / "redis", appendfsync=appendfsync)
            for number in range(nodes):
                name = f"node{number + 1}"
                started.append(Node(name, redis.url, directory / name, *CLUSTER_NODE_ARGUMENTS))
        for node in started:
            node.wait_ready()
        yield started, redis
    finally:
        for node in started:
            node.stop()
        if redis is not None:
            redis.stop()


def _node_status(node: Node) -> dict[str, Any]:
    """What a node says of itself after a run: messages in its replica, nodes it knows."""
    try:
        status, body = node.get("/api/status")
    except (OSError, http.client.HTTPException) as error:
        return {"error": str(error)}
    if status != 200 or not isinstance(body, dict):
        return {"error": f"HTTP {status}"}
    bus = body.get("bus", {})
    return {
        "stored_messages": body.get("stored_messages"),
        "nodes": body.get("nodes"),
        "bus_up": bus.get("up"),
        "bus_received": bus.get("received"),
        "bus_reconnects": bus.get("reconnects"),
    }


def measure_cluster_run(
    nodes: int | None, mode: str, settings: ClusterSettings, directory: Path
) -> dict[str, Any]:
    """One measurement (``mode`` ``rate`` or ``max``) on a fresh cluster: the chat load
    spread round-robin over the nodes, then what each node holds. Failures are recorded
    in ``error``, not raised.
    """
    run: dict[str, Any] = {
        "setup": setup_name(nodes),
        "bus": "local" if nodes is None else "redis",
        "nodes": 1 if nodes is None else nodes,
        "mode": mode,
    }
    try:
        with running_cluster(nodes, directory, appendfsync=settings.appendfsync) as (
            started,
            redis,
        ):
            pids = [node.process.pid for node in started if node.process is not None]
            if redis is not None and redis.process is not None:
                pids.append(redis.process.pid)
            result = run_chat(
                [node.url() for node in started],
                clients=settings.clients,
                senders=settings.senders,
                rate=settings.rate if mode == "rate" else None,
                in_flight=settings.in_flight,
                duration=settings.duration,
                warmup=settings.warmup,
                wait_joined=True,
                # As compare does: every delivery timed at the fixed rate; at full speed a
                # quarter of the clients (at most 100), to keep the generator's cost down.
                latency_clients=None if mode == "rate" else min(100, max(1, settings.clients // 4)),
                server_pid=pids,
            )
            run["result"] = dataclasses.asdict(result)
            run["node_status"] = [_node_status(node) for node in started]
    except (LoadError, ClusterError, OSError, subprocess.SubprocessError) as error:
        run["error"] = str(error)
    return run


def _median(runs: Sequence[dict[str, Any]], metric: str) -> float | None:
    values = [run["result"][metric] for run in runs if run["result"].get(metric) is not None]
    return statistics.median(values) if values else None


def summarize_cluster(
    settings: ClusterSettings, runs: Sequence[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per setup: medians over the rounds of each mode's figures."""
    summary: dict[str, dict[str, Any]] = {}
    for nodes in settings.setups():
        name = setup_name(nodes)
        entry: dict[str, Any] = {"nodes": 1 if nodes is None else nodes}
        for mode in CLUSTER_MODES:
            tried = [
                run
                for run in runs
                if run["setup"] == name and run["mode"] == mode and "discarded" not in run
            ]
            done = [run for run in tried if "result" in run]
            entry[mode] = {
                "counted": len(done),
                "failed": len(tried) - len(done),
                **{
                    metric: _median(done, metric)
                    for metric in (
                        "deliveries_per_s",
                        "published_per_s",
                        "latency_p50_ms",
                        "latency_p99_ms",
                        "server_cpu_percent",
                        "load_cpu_percent",
                        "other_cpu_percent",
                    )
                },
            }
        summary[name] = entry
    return summary


def format_cluster_table(settings: ClusterSettings, summary: dict[str, dict[str, Any]]) -> str:
    """The summary as a Markdown table (as ``docs/scaling.md`` shows it)."""

    def cell(value: float | None, digits: int = 1) -> str:
        if value is None:
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"

    rate = f"{settings.rate:g} msg/s"
    rows = [
        [
            "setup",
            f"{rate}: deliveries/s",
            f"{rate}: p50 ms",
            f"{rate}: p99 ms",
            f"max ({settings.in_flight} in flight): deliveries/s",
            "max: msg/s",
            "max: p50 ms",
            "max: p99 ms",
            "max: server CPU %",
            "max: generator CPU %",
        ]
    ]
    for name, entry in summary.items():
        fixed, top = entry["rate"], entry["max"]
        rows.append(
            [
                name,
                cell(fixed["deliveries_per_s"]),
                cell(fixed["latency_p50_ms"]),
                cell(fixed["latency_p99_ms"]),
                cell(top["deliveries_per_s"]),
                cell(top["published_per_s"]),
                cell(top["latency_p50_ms"]),
                cell(top["latency_p99_ms"]),
                cell(top["server_cpu_percent"], 0),
                cell(top["load_cpu_percent"], 0),
            ]
        )
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + " --- |" * len(rows[0]))
    return "\n".join(lines)


def measure_cluster(
    settings: ClusterSettings,
    *,
    output: Path | None = None,
    log: Callable[[str], None] = print,
    save: bool = True,
) -> dict[str, Any]:
    """Measure every setup of ``settings`` in both modes, ``rounds`` times (setups in a
    rotated order each round); print a table and write the report to ``bench/results/``
    (unless ``save`` is false). ``report["failed"]`` counts the runs that failed.
    """
    if redis_server_path() is None and settings.nodes:
        raise LoadError("redis-server is not installed (Debian: apt-get install redis-server)")
    setups = settings.setups()
    if not setups or settings.rounds < 1:
        raise LoadError("nothing to measure: give node counts (or the baseline) and rounds")
    raise_nofile_limit(settings.clients + 1024)
    started_at = time.time()
    runs: list[dict[str, Any]] = []
    retries_left = NOISY_RETRY_BUDGET
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as scratch:
        for round_number in range(settings.rounds):
            shift = round_number % len(setups)
            for nodes in setups[shift:] + setups[:shift]:
                for mode in CLUSTER_MODES:
                    for attempt in range(1 + settings.noise_retries):
                        directory = Path(scratch) / (
                            f"{round_number}-{setup_name(nodes)}-{mode}-{attempt}"
                        )
                        waited = wait_for_quiet(settings.quiet_wait) if settings.quiet_wait else 0
                        run = measure_cluster_run(nodes, mode, settings, directory)
                        run["round"] = round_number + 1
                        run["attempt"] = attempt + 1
                        run["quiet_wait_s"] = round(waited, 1)
                        runs.append(run)
                        log(f"{round_number + 1}/{settings.rounds} " + _describe_cluster_run(run))
                        other = run.get("result", {}).get("other_cpu_percent")
                        if (
                            other is None
                            or other <= NOISE_LIMIT
                            or attempt == settings.noise_retries
                            or retries_left == 0
                        ):
                            break
                        # Another process took CPU meanwhile: measure again, keep both.
                        run["discarded"] = f"other processes used {other}% CPU"
                        retries_left -= 1
    summary = summarize_cluster(settings, runs)
    table = format_cluster_table(settings, summary)
    report = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_at)),
        "wall_s": round(time.time() - started_at, 1),
        **environment(),
        "redis_server": _redis_version(),
        "settings": dataclasses.asdict(settings),
        "node_arguments": list(CLUSTER_NODE_ARGUMENTS),
        "summary": summary,
        "failed": sum(1 for run in runs if "error" in run),
        "runs": runs,
    }
    log("")
    log(table)
    if save:
        if output is None:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started_at))
            output = RESULTS_DIR / f"cluster-{stamp}.json"
        output.write_text(json.dumps(report, indent=2) + "\n")
        log(f"\nwrote {output} ({report['wall_s']:.0f} s)")
    return report


def _describe_cluster_run(run: dict[str, Any]) -> str:
    where = f"{run['setup']:<8} {run['mode']:<4}"
    if "error" in run:
        return f"{where} failed: {run['error']}"
    result = run["result"]
    cpus = result["server_cpu_percents"] or []
    return (
        f"{where} {result['deliveries_per_s']:>10,.0f} deliveries/s  "
        f"{result['published_per_s']:>7,.1f} msg/s  "
        f"p50 {result['latency_p50_ms']} ms  p99 {result['latency_p99_ms']} ms  "
        f"server CPU {result['server_cpu_percent']}% ({' + '.join(f'{c:g}' for c in cpus)})  "
        f"load CPU {result['load_cpu_percent']}%  other {result['other_cpu_percent']}%"
    )


def _redis_version() -> str | None:
    path = redis_server_path()
    if path is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        completed = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        return completed.stdout.strip() or None
    return None


# --- command line ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    echo = commands.add_parser("echo", help="echo round trips per second")
    echo.add_argument("--url", required=True)
    echo.add_argument("--clients", type=int, default=1)
    echo.add_argument("--in-flight", type=int, default=1)
    echo.add_argument("--size", type=int, default=32)
    echo.add_argument("--duration", type=float, default=5.0)
    echo.add_argument("--warmup", type=float, default=1.0)
    echo.add_argument("--binary", action="store_true", help="binary messages (default text)")
    echo.add_argument(
        "--server-pid", type=int, help="for CPU use (found from the port if not given)"
    )
    echo.add_argument("--json", action="store_true", help="print the result as one JSON line")

    idle = commands.add_parser("idle", help="server memory per idle connection")
    idle.add_argument("--url", required=True)
    idle.add_argument("--connections", type=int, default=10_000)
    idle.add_argument("--hold", type=float, default=2.0)
    idle.add_argument("--server-pid", type=int, help="for VmRSS (found from the port if not given)")
    idle.add_argument("--json", action="store_true", help="print the result as one JSON line")

    chat = commands.add_parser("chat", help="broadcast deliveries/s and latency in one room")
    chat.add_argument(
        "--url",
        required=True,
        action="append",
        help="the chat endpoint, ws://127.0.0.1:P/ws; repeat it for the nodes of a cluster"
        " (clients and senders spread round-robin)",
    )
    chat.add_argument("--clients", type=int, default=100)
    chat.add_argument("--senders", type=int, default=5)
    chat.add_argument(
        "--rate", type=float, help="messages/s published in all (default: as fast as in-flight)"
    )
    chat.add_argument("--in-flight", type=int, default=10, help="messages, without --rate")
    chat.add_argument("--duration", type=float, default=3.0)
    chat.add_argument("--warmup", type=float, default=1.0)
    chat.add_argument(
        "--wait-joined", action="store_true", help="a client is ready at its joined (chatd)"
    )
    chat.add_argument(
        "--latency-clients", type=int, help="record latency on this many clients (default all)"
    )
    chat.add_argument(
        "--server-pid",
        type=int,
        action="append",
        help="for CPU use, repeatable: every node, and Redis (found from the ports if not given)",
    )
    chat.add_argument("--json", action="store_true", help="print the result as one JSON line")

    cluster = commands.add_parser(
        "cluster", help="chat capacity of 1..N chatd nodes on one Redis, and the local bus"
    )
    cluster.add_argument(
        "--nodes", default="1,2,3", help="node counts on Redis, comma-separated (default 1,2,3)"
    )
    cluster.add_argument(
        "--no-baseline", action="store_true", help="skip the single node on the local bus"
    )
    cluster.add_argument("--clients", type=int, default=300)
    cluster.add_argument("--senders", type=int, default=6)
    cluster.add_argument("--rate", type=float, default=20.0, help="messages/s in all (latency)")
    cluster.add_argument(
        "--in-flight", type=int, default=200, help="undelivered messages (throughput)"
    )
    cluster.add_argument("--duration", type=float, default=3.0)
    cluster.add_argument("--warmup", type=float, default=1.0)
    cluster.add_argument("--rounds", type=int, default=1, help="medians over this many")
    cluster.add_argument("--appendfsync", choices=("always", "everysec"), default="always")
    cluster.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="seconds to wait, before each run, for other processes to go quiet (shared hosts)",
    )
    cluster.add_argument("--output", type=Path, help="JSON file (default bench/results/)")

    churn = commands.add_parser("churn", help="whole connections (handshake to close) per second")
    churn.add_argument("--url", required=True, help="ws:// or wss:// on 127.0.0.1")
    churn.add_argument("--concurrency", type=int, default=32)
    churn.add_argument("--duration", type=float, default=3.0)
    churn.add_argument("--warmup", type=float, default=0.5)
    churn.add_argument(
        "--server-pid", type=int, help="for CPU use (found from the port if not given)"
    )
    churn.add_argument("--json", action="store_true", help="print the result as one JSON line")

    calibration = commands.add_parser(
        "calibration-server", help="a bare broadcast loop, to measure the generator's ceiling"
    )
    calibration.add_argument("--port", type=int, required=True)
    calibration.add_argument("--max-seconds", type=float, default=3600.0)

    compare_parser = commands.add_parser("compare", help="ours beside the peers, round-robin")
    compare_parser.add_argument("--quick", action="store_true", help="one short round, 1,000 idle")
    compare_parser.add_argument(
        "--suite", action="append", choices=list(SUITES), help="repeatable (default: all)"
    )
    compare_parser.add_argument("--rounds", type=int, help="rounds of every suite")
    compare_parser.add_argument("--duration", type=float, help="seconds measured, every suite")
    compare_parser.add_argument("--connections", type=int, help="idle connections")
    compare_parser.add_argument(
        "--clients", type=int, action="append", help="chat clients (repeatable)"
    )
    names = sorted({i.name for catalog, _ in SUITES.values() for i in catalog})
    compare_parser.add_argument("--impl", action="append", choices=names, help="repeatable")
    compare_parser.add_argument("--output", type=Path, help="JSON file (default bench/results/)")

    args = parser.parse_args(argv)
    try:
        if args.command == "echo":
            result: Any = run_echo(
                args.url,
                clients=args.clients,
                in_flight=args.in_flight,
                size=args.size,
                duration=args.duration,
                warmup=args.warmup,
                binary=args.binary,
                server_pid=args.server_pid,
            )
        elif args.command == "idle":
            result = run_idle(
                args.url, connections=args.connections, hold=args.hold, server_pid=args.server_pid
            )
        elif args.command == "chat":
            result = run_chat(
                args.url,
                clients=args.clients,
                senders=args.senders,
                rate=args.rate,
                in_flight=args.in_flight,
                duration=args.duration,
                warmup=args.warmup,
                wait_joined=args.wait_joined,
                latency_clients=args.latency_clients,
                server_pid=args.server_pid,
            )
        elif args.command == "churn":
            result = run_churn(
                args.url,
                concurrency=args.concurrency,
                duration=args.duration,
                warmup=args.warmup,
                server_pid=args.server_pid,
            )
        elif args.command == "cluster":
            try:
                counts = tuple(int(part) for part in args.nodes.split(",") if part.strip())
            except ValueError:
                raise LoadError(f"--nodes takes counts like 1,2,3, not {args.nodes!r}") from None
            report = measure_cluster(
                ClusterSettings(
                    nodes=counts,
                    baseline=not args.no_baseline,
                    clients=args.clients,
                    senders=args.senders,
                    rate=args.rate,
                    in_flight=args.in_flight,
                    duration=args.duration,
                    warmup=args.warmup,
                    rounds=args.rounds,
                    appendfsync=args.appendfsync,
                    quiet_wait=args.quiet_wait,
                ),
                output=args.output,
            )
            return 1 if report["failed"] else 0
        elif args.command == "calibration-server":
            serve_calibration(args.port, max_seconds=args.max_seconds)
            return 0
        else:
            settings = QUICK if args.quick else FULL
            settings = dataclasses.replace(
                settings,
                rounds=args.rounds or settings.rounds,
                chat_rounds=args.rounds or settings.chat_rounds,
                duration=args.duration or settings.duration,
                chat_duration=args.duration or settings.chat_duration,
                idle_connections=args.connections or settings.idle_connections,
                chat_clients=tuple(args.clients or settings.chat_clients),
            )
            compare(
                settings,
                suites=args.suite or tuple(SUITES),
                implementations=args.impl,
                output=args.output,
            )
            return 0
    except LoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
    else:
        for name, value in dataclasses.asdict(result).items():
            print(f"{name:>28}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
