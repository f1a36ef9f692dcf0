"""Smoke test of bench/load.py against our echo server on 127.0.0.1.

It checks that the load generator works — round trips happen, memory is read — and
never how fast anything is: timing belongs in bench/, not in a pass/fail test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bench.load import (
    IMPLEMENTATIONS,
    OURS,
    REPO_ROOT,
    LoadError,
    ServerProcess,
    parse_target,
    run_echo,
    run_idle,
    scan_frames,
)


@pytest.fixture(scope="module")
def echo_server() -> Iterator[ServerProcess]:
    """``python -m rfc6455.echo`` on a free port, stopped by its PID afterwards."""
    ours = next(implementation for implementation in IMPLEMENTATIONS if implementation.name == OURS)
    server = ServerProcess(ours, cpus=None, nofile=4096)
    try:
        server.wait_ready(timeout=20.0)
        yield server
    finally:
        server.stop()


def test_echo_mode_counts_round_trips(echo_server: ServerProcess) -> None:
    result = run_echo(
        echo_server.url,
        clients=2,
        in_flight=4,
        size=32,
        duration=1.0,
        warmup=0.2,
        server_pid=echo_server.pid,
    )
    assert result.clients == 2
    assert result.round_trips > 0
    assert result.round_trips_per_s > 0
    assert result.server_cpu_percent is not None


def test_echo_mode_binary_messages(echo_server: ServerProcess) -> None:
    result = run_echo(echo_server.url, clients=1, in_flight=1, duration=0.3, warmup=0, binary=True)
    assert result.round_trips > 0
    assert result.server_pid == echo_server.pid  # found from the listening port


def test_idle_mode_measures_memory(echo_server: ServerProcess) -> None:
    result = run_idle(echo_server.url, connections=50, hold=0.2, server_pid=echo_server.pid)
    assert result.opened == 50
    assert result.errors == {}
    assert result.dropped == 0
    assert result.rss_before_kib is not None
    assert result.rss_after_kib is not None
    assert result.kib_per_connection is not None
    assert result.closing["closed"] + result.closing["reset"] == 51


def test_command_line_prints_json(echo_server: ServerProcess) -> None:
    command = [
        sys.executable,
        "-m",
        "bench.load",
        "echo",
        "--url",
        echo_server.url,
        "--duration",
        "0.3",
        "--warmup",
        "0",
        "--json",
    ]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    assert json.loads(completed.stdout)["round_trips"] > 0


def test_only_loopback_is_targeted() -> None:
    assert parse_target("ws://127.0.0.1:9001/chat?room=a").path == "/chat?room=a"
    for url in ("ws://localhost:9001/", "ws://10.0.0.1:9001/", "wss://127.0.0.1:9001/"):
        with pytest.raises(LoadError):
            parse_target(url)


def test_scan_frames_skips_payloads_by_length() -> None:
    text = b"\x81\x03abc"
    binary_16bit = b"\x82\x7e\x00\x80" + b"x" * 128
    ping = b"\x89\x02hi"
    fragment = b"\x01\x01a"  # not final: not a message yet
    partial = b"\x81\x05ab"
    data = text + binary_16bit + ping + fragment + partial
    messages, position, controls = scan_frames(data)
    assert messages == 2
    assert controls == [(0x9, b"hi")]
    assert position == len(data) - len(partial)
    with pytest.raises(LoadError):
        scan_frames(b"\x81\x83abcdxyz")  # a masked server frame
