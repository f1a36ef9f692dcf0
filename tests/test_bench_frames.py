"""Tests for bench/frames.py: every adapter reads and writes every kind of case exactly, and
``run_frames`` returns the schema that the report generator reads.

Tiny inputs only: the point is correctness of the adapters and of the bookkeeping, not
speed. A peer library that is missing is skipped with its reason, except on CI
(``CI=true``), where every peer must be installed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from typing import Any

import pytest

from bench import frames
from rfc6455 import Connection, DeflateOptions, Opcode, PerMessageDeflate, Role, State
from rfc6455.frames import FrameParser, encode_frame

# A read size that cuts headers and payloads alike; sizes in each length encoding (7-bit,
# 16-bit, 64-bit); fragments that split a message into several frames.
DECODE_CASES = [
    frames.decode_case("text", 2, reads=None, messages=3),
    frames.decode_case("binary", 200, reads=7, messages=3),
    frames.decode_case("text", 70_000, reads=4096, messages=2),
    frames.decode_case("text", 1000, reads=64, fragment=100, messages=2),
    frames.decode_case("binary", 1000, reads=None, fragment=300, messages=2),
    frames.deflate_case("deflate-decode", messages=5),
]
ENCODE_CASES = [
    frames.encode_case("text", 2, messages=3),
    frames.encode_case("binary", 200, messages=2),
    frames.encode_case("text", 70_000, messages=2),
    frames.deflate_case("deflate-encode", messages=5),
]
#: What an adapter may refuse, by design.
UNSUPPORTED = {
    ("picows", "deflate-decode"),
    ("picows", "deflate-encode"),
    ("websockets-py", "encode"),
    ("websockets-py", "deflate-encode"),
}
MAX = frames.MAX_MESSAGE_SIZE


@pytest.fixture(scope="module")
def adapters() -> Iterator[dict[str, frames.Adapter]]:
    loaded = frames.load_adapters()
    yield loaded
    for adapter in loaded.values():
        adapter.close()


def require(adapter: frames.Adapter) -> None:
    """Skip, loudly, when a peer is not installed; on CI that is a failure."""
    if adapter.available:
        return
    message = f"{adapter.name} is not available: {adapter.reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def operation_or_none(
    adapter: frames.Adapter, case: frames.FrameCase, workload: frames.Workload
) -> frames.Operation | None:
    try:
        operation = adapter.operation(case, workload)
    except frames.Unsupported:
        assert (adapter.name, case.operation) in UNSUPPORTED
        return None
    assert (adapter.name, case.operation) not in UNSUPPORTED
    return operation


def client_stream(payloads: list[bytes], opcode: Opcode, fragment: int | None) -> bytes:
    client = Connection(Role.CLIENT, state=State.OPEN, fragment_size=fragment)
    return b"".join(client.send_message(opcode, payload) for payload in payloads)


def parse_server_frames(data: bytes, *, deflate: bool) -> list[Any]:
    parser = FrameParser(require_mask=False, max_data_payload=MAX, allowed_rsv=0x40)
    parser.feed(data)
    parsed = []
    while (frame := parser.next_frame()) is not None:
        parsed.append(frame)
    assert parser.buffered == 0
    assert all(frame.fin and frame.rsv1 is deflate for frame in parsed)
    return parsed


# --- the cases ---------------------------------------------------------------------------------


def test_case_keys_are_unique_and_name_the_quick_and_target_cases() -> None:
    keys = [case.key for case in frames.CASES]
    assert len(keys) == len(set(keys)) == 46
    assert set(frames.QUICK_CASES) <= set(keys)
    assert set(frames.TARGETS) <= set(keys)
    assert {"decode-text-16-whole", "decode-binary-1048576-64KiB"} <= set(keys)
    assert {"decode-text-1048576-frag16384", "encode-text-16", "deflate-decode-chat"} <= set(keys)


def test_small_messages_come_many_to_an_op() -> None:
    for case in frames.CASES:
        assert case.bytes >= frames.OP_PAYLOAD_TARGET or case.messages == 1
        if not case.deflate:
            assert case.bytes == case.messages * case.size
    fragmented = next(case for case in frames.CASES if case.fragment)
    assert (fragmented.messages, fragmented.frames, fragmented.reads) == (1, 64, 65536)


def test_chat_messages_are_seeded_json_of_100_to_300_bytes() -> None:
    messages = frames.chat_messages(200)
    assert messages == frames.chat_messages(200)
    assert all(100 <= len(message.encode()) <= 300 for message in messages)
    decoded = [json.loads(message) for message in messages]
    assert all(message["type"] == "message" and message["text"] for message in decoded)
    assert len({message["text"] for message in decoded}) == 200


def test_workload_streams_hold_the_payloads_cut_at_the_read_size() -> None:
    case = frames.decode_case("binary", 200, reads=7, messages=3)
    workload = frames.build_workload(case)
    assert all(len(chunk) == 7 for chunk in workload.chunks[:-1])
    server = Connection(Role.SERVER, state=State.OPEN)
    events = server.receive_data(b"".join(workload.chunks))
    assert [event.data for event in events] == list(workload.payloads)  # type: ignore[union-attr]
    assert frames.build_workload(case) == workload  # seeded: the same every run


# --- adapters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", frames.IMPLEMENTATIONS)
@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda case: case.key)
def test_decoders_return_the_original_messages(
    adapters: dict[str, frames.Adapter], name: str, case: frames.FrameCase
) -> None:
    adapter = adapters[name]
    require(adapter)
    workload = frames.build_workload(case)
    operation = operation_or_none(adapter, case, workload)
    if operation is None:
        return
    with adapter.patched():
        # The connection is reused by every op: the second must be as exact as the first.
        results = [operation(), operation()]
    expected = list(workload.messages)
    assert len(expected) == case.messages
    for messages in results:
        if case.opcode == "text":
            assert all(type(message) is str for message in messages)
            assert messages == expected
        else:
            assert [bytes(message) for message in messages] == expected
        frames.verify(case, workload, messages)


@pytest.mark.parametrize("name", frames.IMPLEMENTATIONS)
def test_decoders_join_utf8_split_across_fragments_and_reads(
    adapters: dict[str, frames.Adapter], name: str
) -> None:
    adapter = adapters[name]
    require(adapter)
    texts = ["héllo wörld ✓ " * 20, "€" * 50]
    stream = client_stream([text.encode() for text in texts], Opcode.TEXT, fragment=7)
    chunks = tuple(stream[i : i + 5] for i in range(0, len(stream), 5))
    case = frames.decode_case("text", 300, reads=5, fragment=7, messages=2)
    workload = frames.Workload(tuple(t.encode() for t in texts), tuple(texts), chunks)
    operation = adapter.operation(case, workload)
    with adapter.patched():
        assert operation() == texts


@pytest.mark.parametrize("name", frames.IMPLEMENTATIONS)
@pytest.mark.parametrize("case", ENCODE_CASES, ids=lambda case: case.key)
def test_encoders_write_frames_that_decode_to_the_payloads(
    adapters: dict[str, frames.Adapter], name: str, case: frames.FrameCase
) -> None:
    adapter = adapters[name]
    require(adapter)
    workload = frames.build_workload(case)
    operation = operation_or_none(adapter, case, workload)
    if operation is None:
        return
    with adapter.patched():
        results = [operation(), operation()]
    opcode = Opcode.TEXT if case.opcode == "text" else Opcode.BINARY
    for written in results:
        data = b"".join(bytes(chunk) for chunk in written)
        parsed = parse_server_frames(data, deflate=case.deflate)
        assert [frame.opcode for frame in parsed] == [opcode] * case.messages
        if case.deflate:
            # Context takeover: the second op's frames need the first op's window.
            continue
        assert [bytes(frame.payload) for frame in parsed] == list(workload.payloads)
        frames.verify(case, workload, written)
    if case.deflate:
        client = Connection(
            Role.CLIENT,
            state=State.OPEN,
            extension=PerMessageDeflate(
                is_server=False,
                local_no_context_takeover=False,
                remote_no_context_takeover=False,
                local_max_window_bits=15,
                remote_max_window_bits=15,
                options=DeflateOptions(),
                max_message_size=MAX,
            ),
        )
        for written in results:
            events = client.receive_data(b"".join(bytes(chunk) for chunk in written))
            assert [event.data for event in events] == list(workload.messages)  # type: ignore[union-attr]


def test_websockets_py_swaps_the_masking_only_while_patched(
    adapters: dict[str, frames.Adapter],
) -> None:
    adapter = adapters["websockets-py"]
    require(adapter)
    websockets_frames = adapter.frames  # type: ignore[attr-defined]
    original = websockets_frames.apply_mask
    with pytest.raises(RuntimeError), adapter.patched():
        assert websockets_frames.apply_mask is adapter.utils.apply_mask  # type: ignore[attr-defined]
        raise RuntimeError("a failure inside the measurement")
    assert websockets_frames.apply_mask is original


def test_a_missing_library_is_unavailable_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise ImportError("No module named 'picows'")

    monkeypatch.setattr(frames.PicowsAdapter, "load", lambda self: fail())
    adapter = frames.load_adapters(["picows", "not-a-frame-impl"])["picows"]
    assert adapter.describe() == {
        "label": "picows",
        "version": None,
        "available": False,
        "reason": "not importable: No module named 'picows'",
    }


# --- verification ------------------------------------------------------------------------------


def test_verify_rejects_wrong_missing_or_mistyped_messages() -> None:
    case = frames.decode_case("text", 16, reads=None, messages=2)
    workload = frames.build_workload(case)
    good = [str(message) for message in workload.messages]
    frames.verify(case, workload, good)
    for bad in (good[:1], [good[0], good[1][:-1] + "x"], [message.encode() for message in good]):
        with pytest.raises(frames.VerificationError):
            frames.verify(case, workload, bad)


def test_verify_rejects_frames_that_do_not_decode_to_the_payloads() -> None:
    case = frames.encode_case("binary", 16, messages=2)
    workload = frames.build_workload(case)
    written = [encode_frame(Opcode.BINARY, payload) for payload in workload.payloads]
    frames.verify(case, workload, written)
    corrupted = [written[0], written[1][:-1] + bytes([written[1][-1] ^ 1])]
    for bad in (written[:1], corrupted, [written[0], written[1][:-1]]):
        with pytest.raises(frames.VerificationError):
            frames.verify(case, workload, bad)
    wrong_opcode = [encode_frame(Opcode.TEXT, payload) for payload in workload.payloads]
    with pytest.raises(frames.VerificationError):
        frames.verify(case, workload, wrong_opcode)


# --- run_frames --------------------------------------------------------------------------------

RUN_CASES = ["encode-binary-1024", "decode-binary-65536-64KiB", "decode-text-16-whole"]


@pytest.fixture(scope="module")
def run_result() -> dict[str, Any]:
    lines: list[str] = []
    settings = frames.FrameSettings(rounds=2, min_time_s=0.001)
    result = frames.run_frames(settings, cases=RUN_CASES, progress=lines.append)
    result["_progress"] = lines
    return result


def test_run_frames_returns_the_schema(run_result: dict[str, Any]) -> None:
    result = dict(run_result)
    result.pop("_progress")
    json.dumps(result)  # JSON-able as it is
    assert set(result) == {"settings", "ours", "implementations", "cases", "repetitions", "summary"}
    assert result["settings"] == {"rounds": 2, "min_time_s": 0.001, "quick": False}
    assert result["ours"] == "rfc6455"
    assert list(result["implementations"]) == list(frames.IMPLEMENTATIONS)
    for entry in result["implementations"].values():
        assert set(entry) == {"label", "version", "available", "reason"}
        assert (entry["reason"] is None) is entry["available"]
    assert [case["key"] for case in result["cases"]] == RUN_CASES
    case_keys = {
        "key", "label", "operation", "opcode", "size", "messages", "frames", "bytes",
        "reads", "fragment", "deflate", "impls", "skipped", "note",
    }  # fmt: skip
    for case in result["cases"]:
        assert set(case) == case_keys
        assert case["operation"] in {"decode", "encode", "deflate-decode", "deflate-encode"}
        assert case["opcode"] in {"text", "binary"}
        measured_or_skipped = set(case["impls"]) | set(case["skipped"])
        assert measured_or_skipped == set(frames.IMPLEMENTATIONS)
        assert not set(case["impls"]) & set(case["skipped"])
        assert "rfc6455" in case["impls"]
    encode = result["cases"][0]
    assert encode["skipped"].get("websockets-py", "").startswith("server frames are not masked")
    for repetition in result["repetitions"]:
        assert set(repetition) == {"case", "impl", "round", "loops", "seconds", "seconds_per_op"}
        assert repetition["loops"] >= 1 and repetition["round"] in (1, 2)
        assert math.isclose(
            repetition["seconds_per_op"], repetition["seconds"] / repetition["loops"]
        )
        # Loops are calibrated once to last min_time_s; a later round may run a little
        # faster (warm caches), so only the sign is certain.
        assert repetition["seconds"] > 0


def test_run_frames_summary_is_consistent_with_the_repetitions(
    run_result: dict[str, Any],
) -> None:
    cases = {case["key"]: case for case in run_result["cases"]}
    for key, summary in run_result["summary"].items():
        case = cases[key]
        assert set(summary) == {"impls", "ratios", "targets", "met"}
        assert list(summary["impls"]) == case["impls"]
        for name, entry in summary["impls"].items():
            per_op = [
                repetition["seconds_per_op"]
                for repetition in run_result["repetitions"]
                if repetition["case"] == key and repetition["impl"] == name
            ]
            assert entry["counted"] == len(per_op) == 2
            assert entry["min_s"] == min(per_op) <= entry["median_s"] <= entry["max_s"]
            assert math.isclose(entry["messages_per_s"], case["messages"] / entry["median_s"])
            assert math.isclose(entry["bytes_per_s"], case["bytes"] / entry["median_s"])
        ours = summary["impls"]["rfc6455"]
        assert set(summary["ratios"]) == set(summary["impls"]) - {"rfc6455"}
        for peer, ratio in summary["ratios"].items():
            peer_entry = summary["impls"][peer]
            assert math.isclose(ratio, ours["messages_per_s"] / peer_entry["messages_per_s"])
            assert math.isclose(ratio, peer_entry["median_s"] / ours["median_s"])
    targeted = run_result["summary"]["decode-text-16-whole"]
    assert targeted["targets"] == {"websockets": 2.5}
    if "websockets" in targeted["ratios"]:
        assert targeted["met"] == {"websockets": targeted["ratios"]["websockets"] >= 2.5}
    assert run_result["summary"]["encode-binary-1024"]["targets"] == {}


def test_run_frames_rotates_the_order_every_round(run_result: dict[str, Any]) -> None:
    for key in RUN_CASES:
        impls = run_result["summary"][key]["impls"]
        orders = [
            [r["impl"] for r in run_result["repetitions"] if r["case"] == key and r["round"] == n]
            for n in (1, 2)
        ]
        names = [name for name in frames.IMPLEMENTATIONS if name in impls]
        assert orders[0] == names
        rotated = frames.IMPLEMENTATIONS[1:] + frames.IMPLEMENTATIONS[:1]
        assert orders[1] == [name for name in rotated if name in impls]


def test_run_frames_reports_progress_and_a_table(run_result: dict[str, Any]) -> None:
    lines = run_result["_progress"]
    measured = [line for line in lines if line.startswith("frames round ")]
    assert len(measured) == len(run_result["repetitions"])
    assert measured[0].startswith("frames round 1/2  encode-binary-1024  rfc6455  ")
    assert measured[0].endswith("MB/s")
    table = frames.format_frames_table(run_result)
    for key in RUN_CASES:
        assert key in table
    assert "ours (rfc6455) / peer" in table
    assert "(target 2.5: " in table


def test_run_frames_keeps_unavailable_implementations_in_the_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(self: frames.Adapter) -> None:
        raise ImportError("No module named 'aiohttp'")

    monkeypatch.setattr(frames.AiohttpAdapter, "load", fail)
    settings = frames.FrameSettings(rounds=1, min_time_s=0.001)
    result = frames.run_frames(
        settings,
        implementations=["rfc6455", "aiohttp"],
        cases=["encode-binary-16384"],
        progress=lambda line: None,
    )
    assert result["implementations"]["aiohttp"]["available"] is False
    assert result["cases"][0]["impls"] == ["rfc6455"]
    assert result["cases"][0]["skipped"] == {"aiohttp": "not importable: No module named 'aiohttp'"}
    assert result["summary"]["encode-binary-16384"]["ratios"] == {}


def test_run_frames_refuses_unknown_cases() -> None:
    with pytest.raises(ValueError, match="no-such-case"):
        frames.run_frames(frames.QUICK, cases=["no-such-case"], progress=lambda line: None)
