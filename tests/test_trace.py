"""Tests for rfc6455.trace: byte literals in, exact lines out; the proxy as real processes.

The examples of RFC 6455 section 5.7 are decoded to exact lines; broken input is explained
with the library's own error messages; the proxy runs in front of ``python -m
rfc6455.echo`` and must forward the echo unchanged while it prints the frames as JSON.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rfc6455.client import Client
from rfc6455.codes import Opcode
from rfc6455.frames import encode_frame
from rfc6455.trace import (
    TracedFrame,
    TracedHandshake,
    TracedProblem,
    TraceProxy,
    TraceRecord,
    TraceStream,
    decode,
    format_frame,
    format_record,
    main,
    to_json,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 10.0
MASK = b"\x37\xfa\x21\x3d"  # the masking key of the RFC 6455 section 5.7 examples


def lines_of(data: bytes, sender: str | None = None, payload_limit: int = 64) -> list[str]:
    """Every line the tracer prints for ``data``, without colours."""
    return [
        line
        for record in decode(data, sender, payload_limit)
        for line in format_record(record, color=False)
    ]


def only_frame(data: bytes, sender: str | None = None) -> TracedFrame:
    (record,) = decode(data, sender)
    assert isinstance(record, TracedFrame)
    return record


# --- section 5.7 examples -------------------------------------------------------------------


def test_unmasked_text_frame() -> None:
    assert lines_of(bytes.fromhex("81 05 48 65 6c 6c 6f")) == [
        "frame at byte 0: TEXT (0x1)",
        "  FIN      1 (final fragment)",
        "  RSV1-3   0 0 0",
        "  opcode   0x1 TEXT",
        "  MASK     0 (not masked)",
        "  length   5 (7-bit)",
        "  payload  'Hello' (text)",
    ]


def test_masked_text_frame_from_a_client() -> None:
    assert lines_of(bytes.fromhex("81 85 37 fa 21 3d 7f 9f 4d 51 58"), "client") == [
        "[client → server] frame at byte 0: TEXT (0x1)",
        "  FIN      1 (final fragment)",
        "  RSV1-3   0 0 0",
        "  opcode   0x1 TEXT",
        "  MASK     1 (masked)",
        "  length   5 (7-bit)",
        "  mask key 37 fa 21 3d",
        "  payload  'Hello' (text)",
    ]


def test_fragmented_text_message() -> None:
    lines = lines_of(bytes.fromhex("01 03 48 65 6c 80 02 6c 6f"))
    assert lines == [
        "frame at byte 0: TEXT (0x1)",
        "  FIN      0 (more follow)",
        "  RSV1-3   0 0 0",
        "  opcode   0x1 TEXT",
        "  MASK     0 (not masked)",
        "  length   3 (7-bit)",
        "  payload  'Hel' (text)",
        "frame at byte 5: CONTINUATION (0x0)",
        "  FIN      1 (final fragment)",
        "  RSV1-3   0 0 0",
        "  opcode   0x0 CONTINUATION",
        "  MASK     0 (not masked)",
        "  length   2 (7-bit)",
        "  payload  'lo' (text)",
    ]


def test_ping_and_masked_pong() -> None:
    ping, pong = decode(bytes.fromhex("89 05 48 65 6c 6c 6f 8a 85 37 fa 21 3d 7f 9f 4d 51 58"))
    assert isinstance(ping, TracedFrame) and isinstance(pong, TracedFrame)
    assert (ping.opcode_name, ping.payload, ping.masked) == ("PING", b"Hello", False)
    assert (pong.opcode_name, pong.payload, pong.mask_key) == ("PONG", b"Hello", MASK)
    assert format_frame(pong)[0] == "frame at byte 7: PONG (0xA)"


def test_256_bytes_use_the_16_bit_length() -> None:
    data = bytes.fromhex("82 7e 01 00") + bytes(256)
    frame = only_frame(data, "server")
    assert (frame.length, frame.length_encoding) == (256, "16-bit extended")
    assert format_frame(frame)[5:] == [
        "  length   256 (16-bit extended)",
        "  payload  " + " ".join(["00"] * 64) + " (hex; 192 more bytes not shown)",
    ]


def test_64_kib_use_the_64_bit_length() -> None:
    data = bytes.fromhex("82 7f 00 00 00 00 00 01 00 00") + bytes(65536)
    frame = only_frame(data, "server")
    assert (frame.length, frame.length_encoding, frame.truncated) == (
        65536,
        "64-bit extended",
        True,
    )
    assert len(frame.payload) == 64
    assert format_frame(frame)[5] == "  length   65536 (64-bit extended)"


# --- close frames, truncation, JSON ---------------------------------------------------------


def test_close_frame_shows_code_and_reason() -> None:
    data = encode_frame(Opcode.CLOSE, b"\x03\xe9going away", mask=MASK)
    assert lines_of(data, "client")[-3:] == [
        "  mask key 37 fa 21 3d",
        "  code     1001 GOING_AWAY",
        "  reason   'going away'",
    ]


def test_close_frame_with_a_code_that_may_not_be_sent() -> None:
    frame = only_frame(bytes.fromhex("88 02 03 ed"))
    assert frame.close == (1005, "")
    assert frame.problems == ("close code 1005 may not be sent (section 7.4)",)


def test_long_text_is_truncated_with_a_note() -> None:
    data = encode_frame(Opcode.TEXT, ("é" * 10 + "x" * 10).encode())  # 30 bytes
    assert lines_of(data, payload_limit=5)[-1] == (
        "  payload  'éé' (text; 25 more bytes not shown)"  # the cut é is held back
    )


def test_json_output_parses() -> None:
    data = bytes.fromhex("81 85 37 fa 21 3d 7f 9f 4d 51 58") + bytes.fromhex("88 02 03 e8")
    text, close = (json.loads(to_json(record)) for record in decode(data))
    assert text == {
        "type": "frame",
        "direction": None,
        "connection": None,
        "offset": 0,
        "fin": True,
        "rsv1": False,
        "rsv2": False,
        "rsv3": False,
        "opcode": 1,
        "opcode_name": "TEXT",
        "masked": True,
        "length": 5,
        "length_encoding": "7-bit",
        "mask_key": "37fa213d",
        "payload_text": "Hello",
        "truncated": False,
        "close_code": None,
        "close_reason": None,
        "problems": [],
    }
    assert (close["close_code"], close["close_reason"], close["payload_hex"]) == (1000, "", "03e8")


def test_colours_only_when_asked() -> None:
    frame = only_frame(bytes.fromhex("81 05 48 65 6c 6c 6f"))
    assert "\x1b[" in format_frame(frame, color=True)[0]
    assert not any("\x1b[" in line for line in format_frame(frame))


# --- handshakes -----------------------------------------------------------------------------

REQUEST = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


def test_handshake_request_and_response_with_matching_accept() -> None:
    request, response, frame = decode(REQUEST + RESPONSE + bytes.fromhex("81 00"))
    assert isinstance(request, TracedHandshake) and isinstance(response, TracedHandshake)
    assert isinstance(frame, TracedFrame)
    assert format_record(request)[:3] == [
        "HTTP head at byte 0: GET /chat HTTP/1.1",
        "  Host: server.example.com",
        "      the server's host and port; required in every HTTP/1.1 request (4.1)",
    ]
    assert "  Origin: http://example.com" in format_record(request)
    assert format_record(response)[-3:] == [
        "  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        "      base64(SHA-1(key + GUID)): the server understood the key (4.2.2)",
        "  Sec-WebSocket-Accept matches the key",
    ]


def test_handshake_with_a_wrong_accept() -> None:
    wrong = RESPONSE.replace(b"s3pP", b"AAAA")
    _, response = decode(REQUEST + wrong)
    assert isinstance(response, TracedHandshake)
    assert response.notes == (
        "Sec-WebSocket-Accept does NOT match the key (expected s3pPLMBiTxaQ9kYGzzhZRbK+xOo=)",
    )


def test_invalid_http_head_is_explained() -> None:
    (problem,) = decode(b"GET /chat HTTP/2.0\r\nHost: x\r\n\r\n")
    assert isinstance(problem, TracedProblem)
    assert problem.message.startswith("invalid HTTP head: ")


# --- invalid frames -------------------------------------------------------------------------


def test_reserved_opcode_is_explained_and_the_walk_goes_on() -> None:
    lines = lines_of(bytes.fromhex("83 00 81 02 68 69"))
    assert lines[0] == "frame at byte 0: RESERVED (0x3)"
    assert lines[6] == "  problem: reserved opcode 0x3 (a receiver closes with 1002 PROTOCOL_ERROR)"
    assert lines[7] == "frame at byte 2: TEXT (0x1)"


def test_role_rules_come_from_the_frame_parser() -> None:
    unmasked = only_frame(bytes.fromhex("81 05 48 65 6c 6c 6f"), "client")
    assert unmasked.problems == (
        "unmasked frame from a client (a receiver closes with 1002 PROTOCOL_ERROR)",
    )
    reserved_bits = only_frame(bytes.fromhex("c1 00"))
    assert reserved_bits.problems == (
        "reserved bits set without a negotiated extension "
        "(a receiver closes with 1002 PROTOCOL_ERROR)",
    )


def test_tls_is_recognised_and_not_decoded() -> None:
    # The first bytes of a TLS 1.2/1.3 ClientHello record: content type 22, version 3.1.
    hello = bytes.fromhex("16 03 01 00 f4 01 00 00 f0 03 03") + bytes(range(64))
    stream = TraceStream("client")
    (problem,) = stream.feed(hello[:1]) + stream.feed(hello[1:])
    assert isinstance(problem, TracedProblem)
    assert problem.offset == 0
    assert problem.message.startswith("this is TLS (a handshake record)")
    assert stream.feed(b"more encrypted bytes") == []
    assert stream.finish() == []


def test_truncated_frames_are_explained() -> None:
    assert lines_of(bytes.fromhex("81 05 48 65"))[-3:] == [
        "  length   5 (7-bit)",
        "  payload  'He' (text; 3 more bytes not shown)",
        "problem at byte 4: truncated frame: 3 payload bytes missing",
    ]
    assert lines_of(bytes.fromhex("81 05 48 65 6c 6c"))[-2] == (
        "  payload  'Hell' (text; 1 more byte not shown)"
    )
    assert lines_of(bytes.fromhex("81 7e 01"))[-1] == (
        "problem at byte 0: truncated frame header: only 3 bytes at the end"
    )


def test_command_line_decode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--decode", "81 05 48 65 6c 6c 6f", "--json", "--server"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["direction"], record["payload_text"]) == ("server → client", "Hello")
    assert main(["--decode", (REQUEST + RESPONSE).hex(), "--json"]) == 0
    request, response = map(json.loads, capsys.readouterr().out.splitlines())
    assert (request["type"], request["start_line"]) == ("handshake", "GET /chat HTTP/1.1")
    assert response["notes"] == ["Sec-WebSocket-Accept matches the key"]
    assert main(["--decode", "81 00"]) == 0  # stdout is not a terminal: no colours
    assert "\x1b[" not in capsys.readouterr().out


def test_command_line_refuses_bad_hex_and_remote_hosts() -> None:
    with pytest.raises(SystemExit):
        main(["--decode", "zz"])
    with pytest.raises(SystemExit):
        main(["--listen", "0.0.0.0:0", "--upstream", "127.0.0.1:1"])


# --- the proxy, end to end ------------------------------------------------------------------


def start(*arguments: str) -> subprocess.Popen[str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")])
    )
    return subprocess.Popen(
        [sys.executable, "-m", *arguments],
        cwd=REPO_ROOT,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_port(process: subprocess.Popen[str], pattern: str) -> int:
    """Read stderr until a line matches ``pattern``; return the port it captures."""
    assert process.stderr is not None
    while True:
        line = process.stderr.readline()
        assert line, f"the process ended: {process.poll()}"
        if match := re.search(pattern, line):
            return int(match[1])


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(TIMEOUT)


def test_proxy_forwards_the_echo_and_traces_it(
    processes: list[subprocess.Popen[str]],
) -> None:
    echo = start("rfc6455.echo", "--port", "0", "--no-deflate")
    processes.append(echo)
    echo_port = wait_for_port(echo, r"listening on ws://127\.0\.0\.1:(\d+)/")
    proxy = start(
        "rfc6455.trace", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{echo_port}", "--json"
    )
    processes.append(proxy)
    proxy_port = wait_for_port(proxy, r"tracing on 127\.0\.0\.1:(\d+) ")

    with Client.connect(f"ws://127.0.0.1:{proxy_port}/", timeout=TIMEOUT) as client:
        client.send_text("hello through the tracer")
        assert client.recv() == "hello through the tracer"
        client.send_binary(b"\x00\x01")
        assert client.recv() == b"\x00\x01"

    os.kill(proxy.pid, signal.SIGTERM)
    out, _ = proxy.communicate(timeout=TIMEOUT)
    assert proxy.returncode == 0
    records = [json.loads(line) for line in out.splitlines()]
    handshakes = [r for r in records if r["type"] == "handshake"]
    assert [r["direction"] for r in handshakes] == ["client → server", "server → client"]
    assert handshakes[1]["notes"] == ["Sec-WebSocket-Accept matches the key"]
    frames = [r for r in records if r["type"] == "frame"]
    sent, echoed = frames[0], frames[1]
    assert (sent["direction"], sent["masked"], sent["payload_text"]) == (
        "client → server",
        True,
        "hello through the tracer",
    )
    assert len(sent["mask_key"]) == 8
    assert (echoed["direction"], echoed["masked"], echoed["payload_text"], echoed["mask_key"]) == (
        "server → client",
        False,
        "hello through the tracer",
        None,
    )
    assert {r["connection"] for r in records} == {1}
    assert all(not r.get("problems") for r in frames)
    assert [f["opcode_name"] for f in frames[-2:]] == ["CLOSE", "CLOSE"]

    os.kill(echo.pid, signal.SIGTERM)
    echo.wait(TIMEOUT)


def start_proxy(upstream_port: int, *arguments: str) -> tuple[subprocess.Popen[str], int]:
    proxy = start(
        "rfc6455.trace",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        f"127.0.0.1:{upstream_port}",
        *arguments,
    )
    return proxy, wait_for_port(proxy, r"tracing on 127\.0\.0\.1:(\d+) ")


def test_proxy_serves_many_connections_and_large_frames(
    processes: list[subprocess.Popen[str]],
) -> None:
    echo = start("rfc6455.echo", "--port", "0", "--no-deflate")
    processes.append(echo)
    echo_port = wait_for_port(echo, r"listening on ws://127\.0\.0\.1:(\d+)/")
    proxy, proxy_port = start_proxy(echo_port, "--json")
    processes.append(proxy)

    big = os.urandom(1 << 20)  # far over the tracer's buffers: it must skip, not store
    clients = [Client.connect(f"ws://127.0.0.1:{proxy_port}/", timeout=TIMEOUT) for _ in range(3)]
    for number, client in enumerate(clients):
        client.send_binary(big)
        client.send_text(f"client {number}")
    for number, client in enumerate(clients):
        assert client.recv() == big
        assert client.recv() == f"client {number}"
        client.close()

    os.kill(proxy.pid, signal.SIGINT)
    out, _ = proxy.communicate(timeout=TIMEOUT)
    assert proxy.returncode == 0
    frames = [json.loads(line) for line in out.splitlines()]
    frames = [r for r in frames if r["type"] == "frame"]
    assert {r["connection"] for r in frames} == {1, 2, 3}
    large = [r for r in frames if r["length"] == len(big)]
    assert len(large) == 6  # sent and echoed on each connection
    assert all(r["truncated"] and r["length_encoding"] == "64-bit extended" for r in large)
    assert all(len(r["payload_hex"]) == 2 * 64 for r in large)
    os.kill(echo.pid, signal.SIGTERM)
    echo.wait(TIMEOUT)


def test_proxy_reports_an_upstream_that_refuses(
    processes: list[subprocess.Popen[str]],
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as unused:
        closed_port = unused.getsockname()[1]
    proxy, proxy_port = start_proxy(closed_port)
    processes.append(proxy)
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert sock.recv(100) == b""  # the proxy hangs up on the client too
    os.kill(proxy.pid, signal.SIGTERM)
    out, _ = proxy.communicate(timeout=TIMEOUT)
    assert f"[#1] problem: cannot connect to the upstream 127.0.0.1:{closed_port}: " in out


def test_proxy_in_process_sees_both_directions(
    processes: list[subprocess.Popen[str]],
) -> None:
    echo = start("rfc6455.echo", "--port", "0", "--no-deflate")
    processes.append(echo)
    echo_port = wait_for_port(echo, r"listening on ws://127\.0\.0\.1:(\d+)/")
    records: list[TraceRecord] = []
    proxy = TraceProxy(("127.0.0.1", 0), ("127.0.0.1", echo_port), records.append)
    thread = threading.Thread(target=proxy.serve_forever)
    thread.start()
    try:
        url = f"ws://127.0.0.1:{proxy.address[1]}/"
        with Client.connect(url, timeout=TIMEOUT) as client:
            client.ping(b"are you there")
            client.send_text("ping and text")
            assert client.recv() == "ping and text"
    finally:
        proxy.request_stop()
        thread.join(TIMEOUT)
    frames = [r for r in records if isinstance(r, TracedFrame)]
    sent = [f.opcode_name for f in frames if f.direction == "client → server"]
    received = [f.opcode_name for f in frames if f.direction == "server → client"]
    assert sent == ["PING", "TEXT", "CLOSE"]
    assert received == ["PONG", "TEXT", "CLOSE"]
    assert frames[0].payload == b"are you there"
    os.kill(echo.pid, signal.SIGTERM)
    echo.wait(TIMEOUT)
