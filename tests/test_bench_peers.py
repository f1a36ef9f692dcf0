"""Tests for bench/peers: every peer server run as a process, as ``bench/load.py`` runs it.

Each peer is started once with ``python -m bench.peers.NAME --port P`` (echo peers once
more with ``--certfile``/``--keyfile``), must print ``ready``, and is stopped by its PID
at the end of the module, where it must exit with status 0. Echo peers must return
every message unchanged over ``ws://`` and ``wss://``, fragmented or not; broadcast
peers must deliver every published message to every client, numbered and serialized
exactly as chatd does, and refuse paths other than ``/ws``.

A peer whose library is not installed (the ``bench`` extra) is skipped with the reason,
except under ``CI=true``, where that fails: CI installs the extra, so a missing library
there is a broken setup, not an optional one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket

import tls
from rfc6455.client import Client
from rfc6455.errors import InvalidHandshake

REPO_ROOT = Path(__file__).resolve().parents[1]

TIMEOUT = 5.0
"""Seconds any single WebSocket operation may take before the test fails."""

READY_TIMEOUT = 20.0
"""Seconds a peer may take to print ``ready`` (imports on a busy machine)."""

STOP_TIMEOUT = 10.0
"""Seconds a peer may take to exit after SIGTERM before it is killed."""

#: Each peer module and the library it needs (None: only this repository).
ECHO_PEERS = {"websockets_echo": "websockets", "aiohttp_echo": "aiohttp", "picows_echo": "picows"}
BROADCAST_PEERS = {
    "websockets_broadcast": "websockets",
    "aiohttp_broadcast": "aiohttp",
    "picows_broadcast": "picows",
    "rfc6455_broadcast": None,
}

#: The keys of a room message, in chatd's order (docs/protocol.md).
MESSAGE_KEYS = ["type", "room", "seq", "ts", "from", "text", "kind", "id"]


def require(library: str | None) -> None:
    """Skip the test when ``library`` is missing; fail instead under ``CI=true``."""
    if library is None or importlib.util.find_spec(library) is not None:
        return
    reason = f"{library} is not installed (pip install -e '.[bench]')"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must test every peer")
    pytest.skip(f"{reason}: its peer is NOT tested")


def free_port() -> int:
    """A port nothing listens on right now (the peer binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PeerProcess:
    """``python -m bench.peers.NAME`` in a subprocess on a free port."""

    def __init__(self, module: str, *arguments: str) -> None:
        self.module = module
        self.port = free_port()
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")])
        )
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"bench.peers.{module}", "--port", str(self.port), *arguments],
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )

    def output(self) -> str:
        """What the peer wrote to stderr, for failure messages."""
        self.log.seek(0)
        return self.log.read()[-2000:].decode(errors="replace")

    def wait_ready(self) -> None:
        """Wait for the ``ready`` line on stdout, at most READY_TIMEOUT seconds."""
        stdout = self.process.stdout
        assert stdout is not None
        received = b""
        deadline = time.monotonic() + READY_TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while b"ready\n" not in received:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.module} not ready: {self.output()}")
                if selector.select(remaining):
                    chunk = os.read(stdout.fileno(), 4096)
                    if not chunk:
                        raise AssertionError(f"{self.module} exited: {self.output()}")
                    received += chunk

    def stop(self) -> int | None:
        """SIGTERM this PID, SIGKILL it after STOP_TIMEOUT; the exit status of SIGTERM,
        None when it had to be killed.
        """
        status: int | None = None
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                status = self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.log.close()
        return status


class Peers:
    """The peers started in this module, each once per scheme, started on first use."""

    def __init__(self, certificates: tls.CertificateFiles) -> None:
        self.certificates = certificates
        self.running: dict[tuple[str, bool], PeerProcess] = {}

    def url(self, module: str, path: str = "/", *, secure: bool = False) -> str:
        """The URL of ``module``'s peer, started now if it is not running yet."""
        key = (module, secure)
        if key not in self.running:
            arguments: tuple[str, ...] = ()
            if secure:
                files = self.certificates
                arguments = ("--certfile", str(files.certfile), "--keyfile", str(files.keyfile))
            peer = PeerProcess(module, *arguments)
            self.running[key] = peer
            peer.wait_ready()
        scheme = "wss" if secure else "ws"
        return f"{scheme}://127.0.0.1:{self.running[key].port}{path}"

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the peers' certificate."""
        return tls.client_context(self.certificates.cafile)

    def connect(self, url: str, *, fragment_size: int | None = None) -> Client:
        """An ``rfc6455.client`` connection to ``url``, with the CA for ``wss://``."""
        context = self.client_context() if url.startswith("wss:") else None
        return Client.connect(
            url, timeout=TIMEOUT, ssl_context=context, fragment_size=fragment_size
        )


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    """Every peer this module started; all stopped by PID at the end, each exiting 0."""
    certificates = tls.ensure_certificates(
        tmp_path_factory.mktemp("peer-tls"), ["127.0.0.1"], prefer_mkcert=False
    )
    started = Peers(certificates)
    statuses: dict[str, int | None] = {}
    try:
        yield started
    finally:
        for (module, secure), peer in started.running.items():
            statuses[f"{module}{'-wss' if secure else ''}"] = peer.stop()
    failed = {name: status for name, status in statuses.items() if status != 0}
    assert not failed, f"peers that did not exit with 0 on SIGTERM (None: killed): {failed}"


# --- echo peers --------------------------------------------------------------------------

ECHO_CASES = [
    pytest.param(module, secure, id=f"{module}-{'wss' if secure else 'ws'}")
    for module in ECHO_PEERS
    for secure in (False, True)
]

#: 100 KiB messages: above every library's single-write fast paths, below every limit.
LARGE_TEXT = "0123456789abcdé☃" * (100 * 1024 // 20)
LARGE_BINARY = os.urandom(100 * 1024)


@pytest.mark.parametrize(("module", "secure"), ECHO_CASES)
def test_echo_peer_returns_every_message(peers: Peers, module: str, secure: bool) -> None:
    require(ECHO_PEERS[module])
    url = peers.url(module, secure=secure)
    with peers.connect(url) as client:
        for message in ("hello", "héllo ☃", "", b"\x00\xff\x80", b"", LARGE_TEXT, LARGE_BINARY):
            client.send(message)
            echoed = client.recv(TIMEOUT)
            assert type(echoed) is type(message)
            assert echoed == message
        client.ping(b"are you there", wait=True)


@pytest.mark.parametrize(("module", "secure"), ECHO_CASES)
def test_echo_peer_reassembles_fragmented_messages(peers: Peers, module: str, secure: bool) -> None:
    require(ECHO_PEERS[module])
    url = peers.url(module, secure=secure)
    # Section 5.4: the 100 KiB messages leave in 4 KiB fragments.
    with peers.connect(url, fragment_size=4096) as client:
        for message in (LARGE_TEXT, LARGE_BINARY):
            client.send(message)
            assert client.recv(TIMEOUT) == message
    # A ping between the fragments is answered at once (section 5.5: control frames
    # may be injected in the middle of a fragmented message).
    sslopt = {"context": peers.client_context()} if secure else None
    ws = websocket.create_connection(url, timeout=TIMEOUT, sslopt=sslopt)
    try:
        abnf = websocket.ABNF
        ws.send_frame(abnf.create_frame(b"frag", abnf.OPCODE_TEXT, fin=0))
        ws.ping(b"in between")
        ws.send_frame(abnf.create_frame("mented ☃".encode(), abnf.OPCODE_CONT, fin=1))
        assert ws.recv_data(control_frame=True) == (abnf.OPCODE_PONG, b"in between")
        assert ws.recv_data() == (abnf.OPCODE_TEXT, "fragmented ☃".encode())
    finally:
        ws.close(timeout=TIMEOUT)


# --- broadcast peers ---------------------------------------------------------------------


@pytest.mark.parametrize("module", BROADCAST_PEERS)
def test_broadcast_peer_delivers_every_message_to_every_client(peers: Peers, module: str) -> None:
    require(BROADCAST_PEERS[module])
    url = peers.url(module, "/ws")
    names = ["alice", "bob", "carol"]
    clients = [peers.connect(f"{url}?name={name}") for name in names]
    try:
        # A round trip on every connection: its membership is settled on the server.
        for client in clients:
            client.ping(b"joined?", wait=True)
        # What is not a room message is ignored: no delivery, no sequence number.
        clients[0].send("not json")
        clients[0].send(json.dumps({"type": "typing", "room": "lobby"}))
        published = {}
        for turn in range(3):
            for sender, name in ((clients[0], "alice"), (clients[1], "bob")):
                message_id = f"{name}-{turn}"
                text = f"t={time.time_ns()} from {name}, turn {turn}: héllo ☃"
                published[message_id] = (name, text)
                sender.send(
                    json.dumps({"type": "message", "room": "lobby", "text": text, "id": message_id})
                )
        orders = []
        for client in clients:
            frames = [client.recv(TIMEOUT) for _ in published]
            assert all(isinstance(frame, str) for frame in frames), "text frames only"
            received = [json.loads(frame) for frame in frames]
            for frame, message in zip(frames, received, strict=True):
                assert list(message) == MESSAGE_KEYS
                # Compact separators, non-ASCII as it is: the bytes chatd would send.
                assert frame == json.dumps(message, separators=(",", ":"), ensure_ascii=False)
                assert (message["from"], message["text"]) == published[message["id"]]
                assert message["type"] == "message"
                assert message["room"] == "lobby"
                assert message["kind"] == "text"
                assert abs(message["ts"] - time.time() * 1000) < 60_000
            assert [message["seq"] for message in received] == list(range(1, len(published) + 1))
            orders.append([message["id"] for message in received])
        assert orders[0] == orders[1] == orders[2], "every client sees one order"
        for name in ("alice", "bob"):  # each sender's messages keep their order
            mine = [message_id for message_id in orders[0] if message_id.startswith(name)]
            assert mine == [f"{name}-{turn}" for turn in range(3)]
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("path", ["/", "/chat?name=alice"])
@pytest.mark.parametrize("module", BROADCAST_PEERS)
def test_broadcast_peer_refuses_other_paths(peers: Peers, module: str, path: str) -> None:
    require(BROADCAST_PEERS[module])
    url = peers.url(module, path)
    with pytest.raises(InvalidHandshake) as refused:
        peers.connect(url)
    assert refused.value.status == 404
