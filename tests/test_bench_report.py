"""bench/report.py: the page and charts made from a results file.

The results here are synthetic, with round numbers, so that every formatted median and
ratio the page should show can be written down in the test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from bench.report import (
    Measured,
    format_measured,
    format_number,
    format_ratio,
    main,
    render_markdown,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EN_DASH = "\N{EN DASH}"
ENCODER_REASON = "wsproto builds frames only inside a connection"


def dashed(text: str) -> str:
    """``~`` becomes the en dash the page puts between a min and a max."""
    return text.replace("~", EN_DASH)


def environment() -> dict[str, Any]:
    return {
        "created": "2026-11-25T23:40:00+0000",
        "wall_s": 1500.2,
        "machine": {
            "platform": "Linux-6.1-x86_64",
            "cpu": "Test CPU 3000",
            "cpus": 2,
            "memory_mib": 8192,
            "nofile_limit": [20000, 20000],
        },
        "python": {"version": "3.11.7", "implementation": "CPython", "executable": "python"},
        "versions": {"websockets": "17.4", "wsproto": "1.3.2", "picows": None, "chatd": "0.1.0"},
        "speedups": {"websockets.speedups": True},
        "git": {"commit": "0123456789abcdef0123", "dirty": True},
    }


def frame_entry(messages: int, messages_per_s: float, spread: float = 0.0) -> dict[str, Any]:
    """A summary entry for ``messages_per_s``, its fastest and slowest rounds ``spread``
    (a fraction) away.
    """
    size = 16
    return {
        "median_s": messages / messages_per_s,
        "min_s": messages / (messages_per_s * (1 + spread)),
        "max_s": messages / (messages_per_s * (1 - spread)),
        "messages_per_s": messages_per_s,
        "bytes_per_s": messages_per_s * size,
        "counted": 5,
    }


def big_entry(messages: int, size: int, mb_per_s: float) -> dict[str, Any]:
    bytes_per_s = mb_per_s * 1e6
    seconds = messages * size / bytes_per_s
    return {
        "median_s": seconds,
        "min_s": seconds * 0.95,
        "max_s": seconds * 1.05,
        "messages_per_s": bytes_per_s / size,
        "bytes_per_s": bytes_per_s,
        "counted": 5,
    }


def case(
    key: str, operation: str, opcode: str, size: int, messages: int, **extra: Any
) -> dict[str, Any]:
    return {
        "key": key,
        "label": key.replace("-", ", "),
        "operation": operation,
        "opcode": opcode,
        "size": size,
        "messages": messages,
        "frames": messages,
        "bytes": size * messages,
        "reads": None,
        "fragment": None,
        "deflate": False,
        "impls": ["rfc6455", "websockets", "wsproto"],
        "skipped": {},
        "note": None,
        **extra,
    }


def frames_section() -> dict[str, Any]:
    mib = 1 << 20
    cases = [
        case("decode-text-16-whole", "decode", "text", 16, 16384),
        case("decode-text-1048576-whole", "decode", "text", mib, 16),
        case("decode-binary-16-reads", "decode", "binary", 16, 16384, reads=65536),
        case(
            "encode-text-16",
            "encode",
            "text",
            16,
            16384,
            impls=["rfc6455", "websockets"],
            skipped={"wsproto": ENCODER_REASON},
        ),
    ]
    summary = {
        "decode-text-16-whole": {
            "impls": {
                "rfc6455": frame_entry(16384, 2_000_000, 0.05),
                "websockets": frame_entry(16384, 500_000),
                "wsproto": frame_entry(16384, 1_000_000),
            },
            "ratios": {"websockets": 4.0, "wsproto": 2.0},
            "targets": {"websockets": 1.5, "wsproto": 3.0},
            "met": {"websockets": True, "wsproto": False},
        },
        "decode-text-1048576-whole": {
            "impls": {
                "rfc6455": big_entry(16, mib, 800.0),
                "websockets": big_entry(16, mib, 400.0),
                "wsproto": big_entry(16, mib, 200.0),
            },
            "ratios": {"websockets": 2.0, "wsproto": 4.0},
            "targets": {},
            "met": {"websockets": None, "wsproto": None},
        },
        "decode-binary-16-reads": {
            "impls": {
                "rfc6455": frame_entry(16384, 1_500_000),
                "websockets": frame_entry(16384, 450_000),
                "wsproto": frame_entry(16384, 900_000),
            },
            "ratios": {"websockets": 3.333, "wsproto": 1.667},
            "targets": {},
            "met": {},
        },
        "encode-text-16": {
            "impls": {
                "rfc6455": frame_entry(16384, 3_000_000),
                "websockets": frame_entry(16384, 1_000_000),
            },
            "ratios": {"websockets": 3.0},
            "targets": {},
            "met": {},
        },
    }
    implementations = {
        "rfc6455": {"label": "rfc6455 0.1.0", "version": "0.1.0", "available": True},
        "websockets": {"label": "websockets 17.4 (C masking)", "version": "17.4"},
        "wsproto": {"label": "wsproto 1.3.2", "version": "1.3.2", "available": True},
    }
    return {
        "settings": {"rounds": 5, "min_time_s": 0.2, "quick": False},
        "ours": "rfc6455",
        "implementations": implementations,
        "cases": cases,
        "repetitions": [],
        "summary": summary,
    }


def figure(
    medians: Mapping[str, float | None],
    *,
    unit: str,
    ours: str,
    targets: dict[str, float] | None = None,
    met: dict[str, bool | None] | None = None,
    limit: float | None = None,
    limit_met: bool | None = None,
    spread: float | None = None,
) -> dict[str, Any]:
    """A server summary entry; with ``spread``, the new files' min and max."""
    mine = medians[ours]
    assert mine is not None
    ratios = {
        name: round(mine / value, 3) for name, value in medians.items() if name != ours and value
    }
    entry: dict[str, Any] = {
        "unit": unit,
        "medians": dict(medians),
        "ratios": ratios,
        "targets": targets or {},
        "met": met or dict.fromkeys(ratios),
        "limit": limit,
        "limit_met": limit_met,
        "counted": dict.fromkeys(medians, 3),
    }
    if spread is not None:
        entry["ours"] = ours
        entry["mins"] = {k: None if v is None else v * (1 - spread) for k, v in medians.items()}
        entry["maxs"] = {k: None if v is None else v * (1 + spread) for k, v in medians.items()}
    return entry


def scenario(
    name: str, suite: str, kind: str, metric: str, unit: str, **extra: Any
) -> dict[str, Any]:
    return {
        "suite": suite,
        "name": name,
        "label": name.replace("-", " "),
        "kind": kind,
        "arguments": [],
        "metric": metric,
        "unit": unit,
        "higher_is_better": True,
        "targets": {},
        "secondary": [],
        "limit": None,
        **extra,
    }


def latency_repetitions(name: str, latencies: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Three rounds per implementation; p50/p90/p99 are the given p99 / 4, / 2, / 1."""
    repetitions: list[dict[str, Any]] = []
    for impl, p99s in latencies.items():
        for number, p99 in enumerate(p99s, start=1):
            result = {
                "rate": 20.0,
                "deliveries_per_s": 20000.0,
                "latency_p50_ms": p99 / 4,
                "latency_p90_ms": p99 / 2,
                "latency_p99_ms": p99,
                "latency_max_ms": p99 * 1.2,
            }
            repetitions.append(
                {"scenario": name, "impl": impl, "result": result, "value": p99, "round": number}
            )
    # A noisy repetition: kept in the file, never in a median.
    repetitions.append(
        {
            "scenario": name,
            "impl": "chatd",
            "result": {**repetitions[0]["result"], "latency_p99_ms": 900.0},
            "value": 900.0,
            "round": 1,
            "discarded": "other processes used 80% CPU",
        }
    )
    return repetitions


def servers_section() -> dict[str, Any]:
    scenarios = [
        scenario(
            "echo-100x16",
            "echo",
            "echo",
            "round_trips_per_s",
            "round trips/s",
            targets={"websockets": 1.5, "aiohttp": 1.0},
            secondary=[["round_trips_per_server_cpu_s", "rt/server CPU-s"]],
        ),
        scenario(
            "chat-1000x20mps",
            "chat",
            "chat",
            "latency_p99_ms",
            "ms p99",
            arguments=["--clients", "1000", "--rate", "20"],
            higher_is_better=False,
            secondary=[["latency_p50_ms", "ms p50"], ["deliveries_per_s", "deliveries/s"]],
            limit=100.0,
        ),
        scenario(
            "chat-1000-max",
            "chat",
            "chat",
            "deliveries_per_s",
            "deliveries/s",
            arguments=["--clients", "1000", "--in-flight", "20"],
            targets={"websockets": 2.0},
        ),
    ]
    echo = {"rfc6455": 400_000.0, "websockets": 100_000.0, "aiohttp": 250_000.0}
    summary = {
        "echo-100x16": figure(
            echo,
            unit="round trips/s",
            ours="rfc6455",
            targets={"websockets": 1.5, "aiohttp": 1.0},
            met={"websockets": True, "aiohttp": True},
            spread=0.025,
        ),
        "echo-100x16 round_trips_per_server_cpu_s": figure(
            echo, unit="rt/server CPU-s", ours="rfc6455", spread=0.0
        ),
        "chat-1000x20mps": figure(
            {"chatd": 8.0, "websockets": 16.0, "picows": None},
            unit="ms p99",
            ours="chatd",
            limit=100.0,
            limit_met=True,
            spread=0.1,
        ),
        "chat-1000x20mps latency_p50_ms": figure(
            {"chatd": 2.0, "websockets": 4.0, "picows": None}, unit="ms p50", ours="chatd"
        ),
        "chat-1000x20mps deliveries_per_s": figure(
            {"chatd": 20_000.0, "websockets": 20_000.0, "picows": None},
            unit="deliveries/s",
            ours="chatd",
        ),
        "chat-1000-max": figure(
            {"chatd": 300_000.0, "websockets": 200_000.0, "picows": None},
            unit="deliveries/s",
            ours="chatd",
            targets={"websockets": 2.0},
            met={"websockets": False},
            spread=0.05,
        ),
    }
    repetitions = latency_repetitions(
        "chat-1000x20mps", {"chatd": [7.0, 8.0, 9.0], "websockets": [15.0, 16.0, 17.0]}
    )
    repetitions.append(
        {
            "scenario": "chat-1000-max",
            "impl": "picows",
            "error": "the server did not answer\ntraceback...",
            "value": None,
            "round": 1,
        }
    )
    return {
        "settings": {"rounds": 5, "duration": 2.0, "warmup": 0.5, "chat_rounds": 3},
        "suites": ["echo", "chat"],
        "cpu_pinning": {"server": [0], "load": [1]},
        "scenarios": scenarios,
        "summary": summary,
        "repetitions": repetitions,
    }


def results() -> dict[str, Any]:
    return {
        "schema": "chatd-bench/1",
        **environment(),
        "quick": False,
        "frames": frames_section(),
        "servers": servers_section(),
    }


def old_load_file() -> dict[str, Any]:
    """The shape of ``bench/results/load-*.json`` before min/max: no mins, maxs or ours."""
    scenarios = [
        scenario(
            "echo-1x1",
            "echo",
            "echo",
            "round_trips_per_s",
            "round trips/s",
            targets={"websockets": 1.5},
        ),
        scenario(
            "chat-100x20mps",
            "chat",
            "chat",
            "latency_p99_ms",
            "ms p99",
            arguments=["--clients", "100", "--rate", "20"],
            higher_is_better=False,
        ),
    ]
    del scenarios[1]["suite"]  # the oldest files: the suite follows from the kind
    summary = {
        "echo-1x1": figure(
            {"rfc6455": 11435.3, "websockets": 10287.1},
            unit="round trips/s",
            ours="rfc6455",
            targets={"websockets": 1.5},
            met={"websockets": False},
        ),
        "chat-100x20mps": figure({"chatd": 2.07, "websockets": 5.64}, unit="ms p99", ours="chatd"),
    }
    return {
        **environment(),
        "settings": {"rounds": 5, "duration": 3.0, "warmup": 1.0, "chat_rounds": 3},
        "suites": ["echo", "chat"],
        "cpu_pinning": {"server": [0], "load": [1]},
        "scenarios": scenarios,
        "summary": summary,
        "repetitions": latency_repetitions("chat-100x20mps", {"chatd": [2.0, 2.07, 2.2]}),
    }


def linked_charts(markdown: str, page: Path) -> list[Path]:
    return [page.parent / link for link in re.findall(r"\]\(([^)]+\.png)\)", markdown)]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > 5 * 1024, path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[Path]]:
    """The report of the synthetic results, written once for the tests below."""
    directory = tmp_path_factory.mktemp("report")
    page = directory / "docs" / "benchmarks.md"
    written = write_report(results(), page, directory / "docs" / "benchmarks")
    return page, page.read_text(encoding="utf-8"), written


def test_machine_table(report: tuple[Path, str, list[Path]]) -> None:
    _, markdown, _ = report
    assert "| CPU | Test CPU 3000 |" in markdown
    assert "| cores | 2 |" in markdown
    assert "| memory | 8.0 GiB |" in markdown
    assert "| Python | CPython 3.11.7 |" in markdown
    assert "`0123456789ab (with uncommitted changes)`" in markdown
    assert "| date | 2026-11-25 23:40 +0000 |" in markdown
    assert "| wall time | 25 min 0 s |" in markdown
    assert "| picows | not installed |" in markdown
    assert "pinned to CPU 0" in markdown
    assert "make bench-report" in markdown
    assert "quick run" not in markdown


def test_frame_medians_ratios_and_targets(report: tuple[Path, str, list[Path]]) -> None:
    _, markdown, _ = report
    row = next(line for line in markdown.splitlines() if line.startswith("| decode, text, 16,"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # case, unit, rfc6455, websockets, wsproto, ÷ websockets, ÷ wsproto
    assert cells[1] == "msg/s"
    assert cells[2] == dashed("2.00 M (1.90~2.10)")
    assert cells[3] == "500 k"
    assert cells[4] == "1.00 M"
    assert cells[5] == "4.00x ✅ ≥ 1.5x"
    assert cells[6] == "2.00x ❌ ≥ 3x"
    big = next(line for line in markdown.splitlines() if line.startswith("| decode, text, 1048576"))
    assert dashed("| MB/s | 800 (762~842) | 400 (381~421) | 200 (190~211) | 2.00x | 4.00x |") in big
    assert "### Decode, 64 KiB reads" in markdown
    assert (
        "| frames | decode, text, 16, whole | rfc6455 ÷ wsproto | ≥ 3x | 2.00x | ❌ missed |"
        in (markdown)
    )


def test_skipped_implementation_is_a_dash_with_its_reason(
    report: tuple[Path, str, list[Path]],
) -> None:
    _, markdown, _ = report
    row = next(line for line in markdown.splitlines() if line.startswith("| encode, text, 16"))
    assert "| 3.00 M | 1.00 M | — | 3.00x | — |" in row
    assert f"- wsproto: {ENCODER_REASON} (every case above)" in markdown


def test_server_tables(report: tuple[Path, str, list[Path]]) -> None:
    _, markdown, _ = report
    assert (
        dashed("| **echo 100x16** | round trips/s | 400 k (390~410) | 100 k (98~102) |") in markdown
    )
    assert "| 4.00x ✅ ≥ 1.5x | 1.60x ✅ ≥ 1x |" in markdown
    # Lower is better: marked, and the limit column shows our bound met.
    assert dashed(
        "| **chat 1000x20mps** | ms p99 ↓ | 8.00 (7.20~8.80) | 16.0 (14.4~17.6) | — |"
    ) in (markdown)
    assert "| ≤ 100 ✅ |" in markdown
    assert "| ↳ deliveries per second | deliveries/s | 20.0 k | 20.0 k | — | 1.00x |" in markdown
    assert "1.50x ❌ ≥ 2x" in markdown
    assert "- picows failed on chat-1000-max: the server did not answer" in markdown
    assert "1 repetition was measured again" in markdown
    assert "4 of 6 targets met" in markdown


def test_every_linked_chart_is_a_png(report: tuple[Path, str, list[Path]]) -> None:
    page, markdown, written = report
    linked = linked_charts(markdown, page)
    names = {path.name for path in linked}
    assert {
        "headline.png",
        "frames-decode.png",
        "frames-encode.png",
        "frames-ratio.png",
        "servers-echo.png",
        "servers-chat.png",
        "latency.png",
    } <= names
    assert "](benchmarks/frames-decode.png)" in markdown
    for path in linked:
        assert_png(path)
    assert set(written) == {page, *linked}


def test_charts_are_reproducible(tmp_path: Path, report: tuple[Path, str, list[Path]]) -> None:
    _, _, written = report
    again = write_report(results(), tmp_path / "benchmarks.md", tmp_path / "benchmarks")
    first = {path.name: path.read_bytes() for path in written}
    assert all(first[path.name] == path.read_bytes() for path in again)


def test_old_load_file_renders(tmp_path: Path) -> None:
    old = old_load_file()
    page = tmp_path / "benchmarks.md"
    markdown = render_markdown({**environment(), "servers": old}, {})
    assert "| **echo 1x1** | round trips/s | 11.4 k | 10.3 k | 1.11x ❌ ≥ 1.5x |" in markdown
    assert "### The chat suite (ours: chatd)" in markdown
    written = write_report({**environment(), "servers": old}, page, tmp_path / "charts")
    for path in linked_charts(page.read_text(encoding="utf-8"), page):
        assert_png(path)
    assert tmp_path / "charts" / "latency.png" in written


def test_cli_reads_a_bare_load_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "load-20261125-205118.json"
    source.write_text(json.dumps({**old_load_file(), "quick": True}), encoding="utf-8")
    page = tmp_path / "out" / "benchmarks.md"
    status = main([str(source), "--output", str(page), "--charts", str(tmp_path / "out" / "c")])
    assert status == 0
    markdown = page.read_text(encoding="utf-8")
    assert "quick run" in markdown
    assert "| CPU | Test CPU 3000 |" in markdown
    assert "](c/servers-echo.png)" in markdown
    assert str(page) in capsys.readouterr().out


def test_cli_reports_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nothing.json"), "--output", str(tmp_path / "x.md")]) == 2
    assert "nothing.json" in capsys.readouterr().err


def test_nothing_measured_still_renders() -> None:
    markdown = render_markdown({"quick": True}, {})
    assert markdown.startswith("# Benchmarks\n")
    assert "Nothing was measured" in markdown
    assert "| CPU | — |" in markdown


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (2_000_000, "2.00 M"),
        (812_345, "812 k"),
        (45_300, "45.3 k"),
        (7.374, "7.37"),
        (0.75, "0.75"),
    ],
)
def test_format_number(value: float, text: str) -> None:
    assert format_number(value) == text


def test_format_measured_and_ratio() -> None:
    assert format_measured(Measured(1.22e6, 1.19e6, 1.25e6)) == dashed("1.22 M (1.19~1.25)")
    assert format_measured(Measured(4.2, 4.2, 4.2)) == "4.20"
    assert format_measured(Measured(None)) == "—"
    assert format_measured(Measured(812.4, 790.0, 830.0), suffixes=False) == dashed("812 (790~830)")
    assert format_measured(Measured(25742.4, 23254.0, 28827.0), suffixes=False) == dashed(
        "25,742 (23,254~28,827)"
    )
    assert format_ratio(3.284) == "3.28x"
    assert format_ratio(12.34) == "12.3x"
    assert format_ratio(None) == "—"
