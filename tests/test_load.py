"""Smoke test of bench/load.py against our echo server and chatd on 127.0.0.1.

It checks that the load generator works — round trips happen, memory is read, every
broadcast is delivered and timed — and never how fast anything is: timing belongs in
bench/, not in a pass/fail test.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.load import (
    CHAT_IMPLEMENTATIONS,
    CHAT_OURS,
    FULL,
    IMPLEMENTATIONS,
    OURS,
    QUICK,
    REPO_ROOT,
    SUITES,
    LoadError,
    ServerProcess,
    chat_message,
    compare,
    parse_target,
    run_chat,
    run_churn,
    run_echo,
    run_idle,
    scan_chat_frames,
    scan_frames,
    scenarios_for,
    summarize,
)
from rfc6455.codes import Opcode
from rfc6455.frames import encode_frame
from tls.localca import issue_leaf


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


# --- chat mode ---------------------------------------------------------------------------------


def _chat_server(name: str) -> Iterator[ServerProcess]:
    implementation = next(i for i in CHAT_IMPLEMENTATIONS if i.name == name)
    server = ServerProcess(implementation, cpus=None, nofile=4096)
    try:
        server.wait_ready(timeout=20.0)
        yield server
    finally:
        server.stop()


@pytest.fixture
def chatd_server() -> Iterator[ServerProcess]:
    """``python -m chatd`` on a free port with a fresh database, stopped by its PID."""
    yield from _chat_server(CHAT_OURS)


def test_chat_mode_at_a_fixed_rate(chatd_server: ServerProcess) -> None:
    result = run_chat(
        chatd_server.url,
        clients=20,
        senders=2,
        rate=40.0,
        duration=0.5,
        warmup=0.2,
        wait_joined=True,
        server_pid=chatd_server.pid,
    )
    assert result.lost == 0
    assert result.published > 0
    # Every message reaches every client, the sender included (give or take the window's
    # edges: a delivery counts when it arrives within it).
    assert result.deliveries == pytest.approx(result.published * 20, abs=40)
    assert result.latency_samples == result.deliveries
    assert result.latency_p50_ms is not None
    assert result.latency_p99_ms is not None
    assert 0 < result.latency_p50_ms <= result.latency_p99_ms <= result.latency_max_ms  # type: ignore[operator]
    assert result.server_cpu_percent is not None


def test_chat_mode_as_fast_as_in_flight_allows(chatd_server: ServerProcess) -> None:
    result = run_chat(
        chatd_server.url,
        clients=10,
        senders=2,
        rate=None,
        in_flight=4,
        duration=0.5,
        warmup=0.1,
        wait_joined=True,
        latency_clients=5,
    )
    assert result.lost == 0
    assert result.in_flight == 4
    assert result.latency_clients == 5
    assert result.deliveries > 0
    assert 0 < result.latency_samples < result.deliveries


@pytest.fixture
def broadcast_peer() -> Iterator[ServerProcess]:
    """``bench.peers.websockets_broadcast`` on a free port, stopped by its PID."""
    if importlib.util.find_spec("websockets") is None:
        pytest.skip("websockets is not installed")
    yield from _chat_server("websockets")


def test_chat_mode_against_the_websockets_peer(broadcast_peer: ServerProcess) -> None:
    result = run_chat(broadcast_peer.url, clients=5, senders=1, rate=50.0, duration=0.3, warmup=0)
    assert result.lost == 0
    assert result.deliveries > 0


def test_scan_chat_frames_counts_messages_and_reads_stamps() -> None:
    def server_frame(payload: bytes, opcode: Opcode = Opcode.TEXT) -> bytes:
        return encode_frame(opcode, payload)

    message = server_frame(
        b'{"type":"message","room":"lobby","seq":1,"ts":1,"from":"u0",'
        b'"text":"t=00000000000000001000","kind":"text","id":"r-1"}'
    )
    joined = server_frame(b'{"type":"joined","room":"lobby","members":[],"messages":[]}')
    presence = server_frame(b'{"type":"presence","event":"online","user":"u1"}')
    ping = server_frame(b"hi", Opcode.PING)
    data = joined + presence + message + ping + message + message[:-5]
    latencies: array[int] = array("q")
    messages, joins, position, controls = scan_chat_frames(data, 5000, latencies)
    assert (messages, joins) == (2, 1)
    assert list(latencies) == [4000, 4000]
    assert controls == [(Opcode.PING, b"hi")]
    assert position == len(data) - len(message) + 5
    assert scan_chat_frames(data, 5000, None)[0] == 2


def test_chat_message_is_a_masked_text_frame() -> None:
    frame = chat_message(7, 123, "run")
    assert frame[0] == 0x81 and frame[1] & 0x80  # FIN + text, masked


def test_chat_mode_refuses_more_senders_than_clients() -> None:
    with pytest.raises(LoadError):
        run_chat("ws://127.0.0.1:9/ws", clients=1, senders=2)


# --- churn mode ----------------------------------------------------------------------------------


def test_parse_target_accepts_wss_only_where_allowed() -> None:
    target = parse_target("wss://127.0.0.1:9001/", allow_tls=True)
    assert target.tls
    assert target.url == "wss://127.0.0.1:9001/"
    with pytest.raises(LoadError):
        parse_target("wss://localhost:9001/", allow_tls=True)


def test_churn_mode_counts_whole_lifecycles(echo_server: ServerProcess) -> None:
    result = run_churn(
        echo_server.url, concurrency=4, duration=0.5, warmup=0.1, server_pid=echo_server.pid
    )
    assert not result.tls
    assert result.errors == {}
    assert result.handshakes > 0
    # Our server ends TCP after the close handshake (section 7.1.1): nothing is reset.
    assert result.server_closed > 0
    assert result.reset_by_client == 0
    assert result.handshakes_per_server_cpu_s is not None


def test_churn_mode_over_tls(tmp_path: Path) -> None:
    files = issue_leaf(tmp_path, ["127.0.0.1"])
    ours = next(implementation for implementation in IMPLEMENTATIONS if implementation.name == OURS)
    server = ServerProcess(
        ours, cpus=None, nofile=4096, certificate=(files.certfile, files.keyfile)
    )
    try:
        server.wait_ready(timeout=20.0)
        assert server.url.startswith("wss://")
        result = run_churn(server.url, concurrency=2, duration=0.5, warmup=0.1)
    finally:
        server.stop()
    assert result.tls
    assert result.errors == {}
    assert result.handshakes > 0
    assert result.server_pid == server.pid


# --- compare: the plan and the summary -----------------------------------------------------------


def test_scenarios_carry_the_issue_targets() -> None:
    by_name = {
        scenario.name: scenario for suite in SUITES for scenario in scenarios_for(FULL, suite)
    }
    assert by_name["echo-100x16"].targets == {"aiohttp": 1.0}
    assert by_name["idle-10000"].targets == {"websockets": 0.8}
    assert by_name["broadcast-1000-max"].targets == {"picows": 1.0}
    assert by_name["chat-1000-max"].targets == {"websockets": 2.0}
    assert by_name["chat-1000x20mps"].limit == 100.0
    assert by_name["churn-wss"].tls and not by_name["churn-ws"].tls
    assert {"echo-1x16-1k", "echo-100x16-1k", "broadcast-100-max"} <= set(by_name)
    quick = {scenario.name for suite in SUITES for scenario in scenarios_for(QUICK, suite)}
    assert quick == {
        "echo-1x16",
        "echo-100x16",
        "idle-1000",
        "churn-ws",
        "broadcast-1000-max",
        "chat-1000-max",
    }


def test_summary_has_medians_extremes_and_ratios() -> None:
    scenario = next(s for s in scenarios_for(FULL, "echo") if s.name == "echo-100x16")
    repetitions = [
        {"scenario": "echo-100x16", "impl": impl, "result": {"round_trips_per_s": value}}
        for impl, value in (
            ("rfc6455", 300.0),
            ("rfc6455", 100.0),
            ("rfc6455", 200.0),
            ("aiohttp", 100.0),
            ("aiohttp", 50.0),
        )
    ]
    repetitions.append(
        {
            "scenario": "echo-100x16",
            "impl": "aiohttp",
            "result": {"round_trips_per_s": 1e9},
            "discarded": "other processes used 90% CPU",
        }
    )
    entry = summarize([scenario], ["rfc6455", "aiohttp"], repetitions)["echo-100x16"]
    assert entry["ours"] == "rfc6455"
    assert entry["medians"] == {"rfc6455": 200.0, "aiohttp": 75.0}
    assert entry["mins"] == {"rfc6455": 100.0, "aiohttp": 50.0}
    assert entry["maxs"] == {"rfc6455": 300.0, "aiohttp": 100.0}
    assert entry["ratios"] == {"aiohttp": 2.667}
    assert entry["met"] == {"aiohttp": True}


def test_compare_runs_every_kind_of_scenario(tmp_path: Path) -> None:
    # One tiny round of the echo suite for our server only: echo, idle and churn over
    # ws:// and wss://, each in its own process, stopped by its PID.
    settings = dataclasses.replace(
        QUICK,
        quick=False,
        rounds=1,
        duration=0.2,
        warmup=0.1,
        idle_connections=20,
        hold=0.1,
        churn_duration=0.2,
    )
    lines: list[str] = []
    report = compare(
        settings, suites=["echo"], implementations=[OURS], log=lines.append, save=False
    )
    names = [scenario["name"] for scenario in report["scenarios"]]
    assert "churn-wss" in names and "idle-20" in names
    values = {repetition["scenario"]: repetition["value"] for repetition in report["repetitions"]}
    assert set(values) == set(names)
    # Idle memory of 20 connections may round to 0 KiB (pages the server already had);
    # every rate must be positive.
    assert all(
        value is not None and (value > 0 or (name.startswith("idle") and value == 0))
        for name, value in values.items()
    ), lines
    assert any(line.startswith("echo 1/1 ") for line in lines)
