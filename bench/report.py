"""Turn one benchmark results file into ``docs/benchmarks.md`` and its PNG charts.

    python -m bench.report [RESULTS_JSON] [--output docs/benchmarks.md] [--charts docs/benchmarks]

The input is what ``python -m bench`` (``make bench``) writes: machine, versions, and a
``frames`` and a ``servers`` section, each with its settings, every repetition and the
medians. Without an argument the newest ``bench/results/bench-*.json`` is used; a bare
``bench/results/load-*.json`` from ``python -m bench.load compare`` works too.

The page holds tables of medians with their min-max spread and the ratios of ours to
each peer, the targets met and missed, and charts linked by relative path. Everything is
optional in the input: a quick run, a part not run, a library not installed, or an
older file without min-max degrade to fewer rows, a dash or no chart, never an error.
Charts are drawn with a fixed size, dpi and no software tag, so that a rerun on the same
file writes the same bytes and git sees no change.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: before pyplot is imported

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

__all__ = [
    "DEFAULT_CHARTS",
    "DEFAULT_OUTPUT",
    "RESULTS_DIR",
    "Measured",
    "build_charts",
    "format_measured",
    "format_number",
    "format_ratio",
    "load_results",
    "main",
    "newest_results",
    "render_markdown",
    "write_report",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "benchmarks.md"
DEFAULT_CHARTS = REPO_ROOT / "docs" / "benchmarks"

#: Chart resolution; with the fixed figure sizes below, every PNG has a fixed pixel size.
DPI = 110
#: Ours stands out in every chart; peers keep one color each across charts.
OURS_COLOR = "#e4572e"
PEER_COLOR = "#8d99ae"
IMPL_COLORS = {
    "websockets": "#1f77b4",
    "websockets-py": "#6baed6",
    "wsproto": "#2ca02c",
    "aiohttp": "#9467bd",
    "picows": "#8c564b",
    "calibration": "#7f7f7f",
}
FALLBACK_COLORS = ("#17becf", "#bcbd22", "#e377c2", "#7f7f7f")
#: The implementation whose ratios a server suite reports, for files that do not say.
SUITE_OURS = {"echo": "rfc6455", "broadcast": "rfc6455", "chat": "chatd"}
FRAMES_OURS = "rfc6455"
#: What each server suite puts side by side.
SUITE_DESCRIPTIONS = {
    "echo": (
        "Our echo server (`python -m rfc6455.echo`, permessage-deflate off) beside echo "
        "servers written on each peer library (`bench/peers/`): round trips, memory per "
        "idle connection and connection churn."
    ),
    "broadcast": (
        "The same minimal broadcast server (one room, every message sent to every "
        "client) written on each library, ours included: deliveries per second and "
        "send-to-receive latency."
    ),
    "chat": (
        "chatd, a whole chat server (parsing, validation, SQLite, acknowledgements), "
        "beside the minimal broadcast servers of the broadcast suite: what the rest of "
        "the daemon costs on top of the protocol."
    ),
}
#: Frame cases larger than this are reported in MB/s of payload, smaller in messages/s.
MESSAGE_RATE_MAX_SIZE = 1024
LATENCY_PERCENTILES = ("p50", "p90", "p99")
PNG_METADATA: dict[str, Any] = {"Software": None}
#: Inches: a chart of one or two panels still has room for a legend of six names.
PANELS_MIN_WIDTH = 8.0
DASH = "—"
#: Between the min and the max of a range, as typeset.
EN_DASH = "\N{EN DASH}"


# --- numbers -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    """A median with its spread over the rounds; ``median`` is None when not measured."""

    median: float | None
    low: float | None = None
    high: float | None = None


_SUFFIXES = ((1e9, " G"), (1e6, " M"), (1e3, " k"))


def _scale(value: float, suffixes: bool) -> tuple[float, str]:
    if suffixes:
        for factor, suffix in _SUFFIXES:
            if abs(value) >= factor:
                return factor, suffix
    return 1.0, ""


def _decimals(scaled: float) -> int:
    """Decimals that show three significant digits (none from 100 on, two at most)."""
    if scaled == 0 or not math.isfinite(scaled):
        return 2
    return max(0, min(2, 2 - math.floor(math.log10(abs(scaled)))))


def format_number(value: float | None, *, suffixes: bool = True) -> str:
    """Three significant digits with a k/M/G suffix: ``1.22 M``, ``812 k``, ``7.37``."""
    if value is None:
        return DASH
    factor, suffix = _scale(value, suffixes)
    scaled = value / factor
    return f"{scaled:,.{_decimals(scaled)}f}{suffix}"


def format_measured(measured: Measured, *, suffixes: bool = True) -> str:
    """The median and its min-max in the median's scale: ``1.22 M (1.19-1.25)`` (with an
    en dash).
    """
    if measured.median is None:
        return DASH
    factor, suffix = _scale(measured.median, suffixes)
    decimals = _decimals(measured.median / factor)
    # Without a suffix, thousands get separators: 25,742 MB/s.
    pattern = f",.{decimals}f"
    median = f"{measured.median / factor:{pattern}}"
    if measured.low is None or measured.high is None:
        return median + suffix
    low = f"{measured.low / factor:{pattern}}"
    high = f"{measured.high / factor:{pattern}}"
    if low == high == median:
        return median + suffix
    return f"{median}{suffix} ({low}{EN_DASH}{high})"


def format_ratio(ratio: float | None) -> str:
    """Ours divided by a peer: ``3.28x``."""
    if ratio is None:
        return DASH
    decimals = 2 if ratio < 10 else 1 if ratio < 100 else 0
    return f"{ratio:.{decimals}f}x"


def _format_target(target: float, higher_is_better: bool) -> str:
    return f"{'≥' if higher_is_better else '≤'} {target:g}x"


def _verdict(met: bool | None) -> str:
    return {True: "✅", False: "❌", None: ""}[met]


def _ratio_cell(
    ratio: float | None, target: float | None, met: bool | None, higher_is_better: bool
) -> str:
    cell = format_ratio(ratio)
    if target is None:
        return cell
    if met is None:
        return f"{cell} (target {_format_target(target, higher_is_better)})"
    return f"{cell} {_verdict(met)} {_format_target(target, higher_is_better)}"


def _size_label(size: int) -> str:
    for factor, unit in ((1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def _median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> list[str]:
    """A markdown table; ``align`` gives one of l/r per column (default: first l, rest r)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if side == "r" else "---" for side in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _ordered(names: Iterable[str], ours: str) -> list[str]:
    """Ours first, then the others in the order they were met."""
    unique = list(dict.fromkeys(names))
    return ([ours] if ours in unique else []) + [name for name in unique if name != ours]


# --- the frames section ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameGroup:
    """One table of frame cases: decode whole, decode in reads, fragmented, encode..."""

    key: str
    title: str
    description: str


FRAME_GROUPS = (
    FrameGroup(
        "decode",
        "Decode, whole buffer",
        "Masked client frames, the whole stream handed to the parser in one buffer.",
    ),
    FrameGroup(
        "decode-reads",
        "Decode, in reads",
        "The same streams fed in fixed-size reads, as a socket delivers them: frames "
        "straddle the reads.",
    ),
    FrameGroup(
        "fragmented",
        "Fragmented messages",
        "Large messages sent as many frames and reassembled into one message.",
    ),
    FrameGroup("encode", "Encode", "Messages turned into unmasked server frames."),
    FrameGroup(
        "deflate", "permessage-deflate", "Compressed messages (RFC 7692) of chat-sized JSON."
    ),
    FrameGroup("other", "Other cases", ""),
)


def _frame_group(case: Mapping[str, Any]) -> str:
    operation = str(case.get("operation", ""))
    if case.get("deflate") or operation.startswith("deflate"):
        return "deflate"
    if case.get("fragment"):
        return "fragmented"
    if operation == "decode":
        return "decode-reads" if case.get("reads") else "decode"
    if operation == "encode":
        return "encode"
    return "other"


def _uses_message_rate(case: Mapping[str, Any]) -> bool:
    return int(case.get("size") or 0) <= MESSAGE_RATE_MAX_SIZE


def _frame_measured(frames: Mapping[str, Any], case: Mapping[str, Any], impl: str) -> Measured:
    """Throughput of ``impl`` on ``case``: messages/s for small messages, MB/s above.

    The min-max of throughput come from the max-min of the timings, scaled by the work of
    one timed operation, so that they stay in the same unit whatever that operation is.
    """
    entry = frames.get("summary", {}).get(case.get("key"), {}).get("impls", {}).get(impl)
    if not entry:
        return Measured(None)
    by_messages = _uses_message_rate(case)
    rate = entry.get("messages_per_s" if by_messages else "bytes_per_s")
    if rate is None:
        return Measured(None)
    unit = 1.0 if by_messages else 1e6
    median_s, min_s, max_s = (entry.get(key) for key in ("median_s", "min_s", "max_s"))
    low = high = None
    if median_s and min_s and max_s:
        work = rate * median_s
        low, high = work / max_s / unit, work / min_s / unit
    return Measured(rate / unit, low, high)


def _frame_mb_per_s(frames: Mapping[str, Any], case: Mapping[str, Any], impl: str) -> Measured:
    """Payload MB/s of ``impl`` on ``case``, whatever the size (for the charts)."""
    entry = frames.get("summary", {}).get(case.get("key"), {}).get("impls", {}).get(impl)
    if not entry or entry.get("bytes_per_s") is None:
        return Measured(None)
    rate = float(entry["bytes_per_s"])
    median_s, min_s, max_s = (entry.get(key) for key in ("median_s", "min_s", "max_s"))
    if median_s and min_s and max_s:
        return Measured(rate / 1e6, rate * median_s / max_s / 1e6, rate * median_s / min_s / 1e6)
    return Measured(rate / 1e6)


def _frame_ratio(frames: Mapping[str, Any], case: Mapping[str, Any], peer: str) -> float | None:
    """Ours / peer by messages/s, as the results give it or from the medians."""
    summary = frames.get("summary", {}).get(case.get("key"), {})
    ratio = summary.get("ratios", {}).get(peer)
    if ratio is not None:
        return float(ratio)
    impls = summary.get("impls", {})
    ours = (impls.get(_frames_ours(frames)) or {}).get("messages_per_s")
    theirs = (impls.get(peer) or {}).get("messages_per_s")
    return ours / theirs if ours is not None and theirs else None


def _frames_ours(frames: Mapping[str, Any]) -> str:
    return str(frames.get("ours") or FRAMES_OURS)


def _frame_impls(frames: Mapping[str, Any]) -> list[str]:
    names: list[str] = list(frames.get("implementations", {}))
    for case in frames.get("cases", []):
        names += case.get("impls", [])
        names += case.get("skipped", {})
    return _ordered(names, _frames_ours(frames))


def _frames_markdown(frames: Mapping[str, Any], charts: Mapping[str, str]) -> list[str]:
    ours = _frames_ours(frames)
    impls = _frame_impls(frames)
    peers = [name for name in impls if name != ours]
    implementations = frames.get("implementations", {})
    settings = frames.get("settings", {})
    lines = ["## Frames: the codec alone", ""]
    timing = []
    if settings.get("rounds"):
        timing.append(f"{settings['rounds']} rounds")
    if settings.get("min_time_s"):
        timing.append(f"each case timed for at least {settings['min_time_s']:g} s per round")
    lines += [
        f"Encoding and decoding frames in memory, no sockets: {ours} beside the frame "
        "code of the other libraries, all driven by one timer"
        + (f" ({', '.join(timing)})" if timing else "")
        + ". Messages of up to "
        + f"{_size_label(MESSAGE_RATE_MAX_SIZE)} are counted in messages/s, larger ones "
        "in MB/s of payload (10⁶ bytes). Each cell is the median over the rounds with the "
        "slowest and fastest round in brackets; `÷ peer` columns give the ratio of "
        f"{ours}'s median to the peer's (above 1: {ours} is faster).",
        "",
    ]
    labelled = [
        f"{name}: {implementations[name]['label']}"
        for name in impls
        if implementations.get(name, {}).get("label") not in (None, "", name)
    ]
    if labelled:
        lines += ["Implementations: " + "; ".join(labelled) + ".", ""]
    for key, caption in (
        ("frames-decode", "Decode throughput by message size"),
        ("frames-encode", "Encode throughput by message size"),
        ("frames-ratio", f"{ours} ÷ peer by message size"),
    ):
        if key in charts:
            lines += [f"![{caption}]({charts[key]})", ""]
    cases = frames.get("cases", [])
    for group in FRAME_GROUPS:
        chosen = [case for case in cases if _frame_group(case) == group.key]
        if not chosen:
            continue
        title = group.title
        if group.key == "decode-reads" and chosen[0].get("reads"):
            title = f"Decode, {_size_label(int(chosen[0]['reads']))} reads"
        lines += [f"### {title}", ""]
        if group.description:
            lines += [group.description, ""]
        header = ["case", "unit", *impls, *(f"÷ {peer}" for peer in peers)]
        rows = []
        for case in chosen:
            summary = frames.get("summary", {}).get(case.get("key"), {})
            targets = summary.get("targets", {})
            met = summary.get("met", {})
            row = [
                str(case.get("label") or case.get("key")),
                "msg/s" if _uses_message_rate(case) else "MB/s",
            ]
            row += [
                format_measured(
                    _frame_measured(frames, case, name), suffixes=_uses_message_rate(case)
                )
                for name in impls
            ]
            row += [
                _ratio_cell(
                    _frame_ratio(frames, case, peer), targets.get(peer), met.get(peer), True
                )
                for peer in peers
            ]
            rows.append(row)
        lines += [*_table(header, rows, "ll" + "r" * (len(header) - 2)), ""]
        lines += _frame_notes(frames, chosen, impls)
    return lines


def _frame_notes(
    frames: Mapping[str, Any], cases: Sequence[Mapping[str, Any]], impls: Sequence[str]
) -> list[str]:
    """Why cells are empty (grouped by implementation and reason), and the cases' notes."""
    implementations = frames.get("implementations", {})
    reasons: dict[tuple[str, str], list[str]] = {}
    for case in cases:
        label = str(case.get("label") or case.get("key"))
        skipped = case.get("skipped", {})
        for name in impls:
            if _frame_measured(frames, case, name).median is not None:
                continue
            about = implementations.get(name, {})
            reason = skipped.get(name) or (
                about.get("reason") if about.get("available") is False else None
            )
            reasons.setdefault((name, reason or "not measured"), []).append(label)
    lines = []
    if reasons:
        lines.append(f"Not measured ({DASH}):")
        lines.append("")
        for (name, reason), labels in reasons.items():
            where = "every case above" if len(labels) == len(cases) else "; ".join(labels)
            lines.append(f"- {name}: {reason} ({where})")
        lines.append("")
    notes: dict[str, list[str]] = {}
    for case in cases:
        if case.get("note"):
            notes.setdefault(str(case["note"]), []).append(str(case.get("label") or case["key"]))
    if notes:
        lines += ["Notes:", ""]
    for note, labels in notes.items():
        where = "every case above" if len(labels) == len(cases) else "; ".join(labels)
        lines.append(f"- {note} ({where}).")
    if notes:
        lines.append("")
    return lines


def _frame_series(
    frames: Mapping[str, Any], operation: str, opcode: str, reads: bool
) -> list[Mapping[str, Any]]:
    """Cases of one line chart: one operation and opcode, whole or in reads, by size."""
    chosen = [
        case
        for case in frames.get("cases", [])
        if case.get("operation") == operation
        and case.get("opcode") == opcode
        and not case.get("deflate")
        and not case.get("fragment")
        and bool(case.get("reads")) == reads
        and case.get("size")
    ]
    return sorted(chosen, key=lambda case: int(case["size"]))


# --- the servers section -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One figure of a server scenario: its main metric or one of its secondary ones."""

    key: str
    scenario: Mapping[str, Any]
    metric: str
    unit: str
    secondary: bool
    entry: Mapping[str, Any]

    @property
    def higher_is_better(self) -> bool:
        """The scenario says for its main figure; a secondary one is judged by its kind
        (the files give secondary figures their scenario's direction, which a latency
        beside a throughput would get wrong).
        """
        if not self.secondary:
            return bool(self.scenario.get("higher_is_better", True))
        return not _lower_is_better(self.metric)

    @property
    def description(self) -> str:
        """The row's first cell: the scenario's label, or what a secondary figure is."""
        if not self.secondary:
            return str(self.scenario.get("label") or self.scenario.get("name"))
        return _metric_words(self.metric)

    def measured(self, impl: str) -> Measured:
        """The median and min-max of ``impl`` (no min-max in files older than them)."""
        median = self.entry.get("medians", {}).get(impl)
        low = self.entry.get("mins", {}).get(impl)
        high = self.entry.get("maxs", {}).get(impl)
        return Measured(median, low, high)


@dataclass(frozen=True, slots=True)
class Suite:
    """One server suite: its name, ours, the implementations and the figures measured."""

    name: str
    ours: str
    impls: list[str]
    scenarios: list[Mapping[str, Any]]
    rows: list[Row]


def _lower_is_better(metric: str) -> bool:
    return metric.startswith("latency_") or metric.endswith(("_ms", "kib_per_connection"))


def _metric_words(metric: str) -> str:
    """``latency_p50_ms`` -> ``latency p50``; ``round_trips_per_server_cpu_s`` -> ``round
    trips per second of server CPU``.
    """
    words = metric.removesuffix("_ms").removesuffix("_s").replace("_", " ")
    words = words.replace("per server cpu", "per second of server CPU")
    return words.replace(" per", " per second") if metric.endswith("_per_s") else words


def _scenario_suite(scenario: Mapping[str, Any]) -> str:
    return str(scenario.get("suite") or ("chat" if scenario.get("kind") == "chat" else "echo"))


def _suites(servers: Mapping[str, Any]) -> list[Suite]:
    """The server suites in the order they ran, each with its rows in scenario order."""
    scenarios = servers.get("scenarios", [])
    summary = servers.get("summary", {})
    names = list(servers.get("suites") or [])
    names += [_scenario_suite(scenario) for scenario in scenarios]
    suites = []
    for name in dict.fromkeys(names):
        chosen = [scenario for scenario in scenarios if _scenario_suite(scenario) == name]
        rows = []
        for scenario in chosen:
            figures = [(scenario["name"], scenario.get("metric", ""), scenario.get("unit"), False)]
            for metric, unit in scenario.get("secondary") or ():
                figures.append((f"{scenario['name']} {metric}", metric, unit, True))
            for key, metric, unit, secondary in figures:
                if key in summary:
                    entry = summary[key]
                    unit = str(entry.get("unit") or unit or metric)
                    rows.append(Row(key, scenario, metric, unit, secondary, entry))
        if not rows:
            continue
        ours = next(
            (str(row.entry["ours"]) for row in rows if row.entry.get("ours")),
            SUITE_OURS.get(name, "rfc6455"),
        )
        impls = _ordered((impl for row in rows for impl in row.entry.get("medians", {})), ours)
        suites.append(Suite(name, ours, impls, chosen, rows))
    return suites


def _usable(repetition: Mapping[str, Any]) -> bool:
    return (
        "discarded" not in repetition
        and "error" not in repetition
        and isinstance(repetition.get("result"), dict)
    )


def _is_fixed_rate(scenario: Mapping[str, Any], repetitions: Sequence[Mapping[str, Any]]) -> bool:
    """A chat-kind scenario publishing at a set rate: its figure is latency."""
    if scenario.get("kind") != "chat":
        return False
    if "--rate" in (scenario.get("arguments") or ()):
        return True
    return any(
        repetition.get("scenario") == scenario.get("name")
        and _usable(repetition)
        and repetition["result"].get("rate") is not None
        for repetition in repetitions
    )


def _latencies(
    servers: Mapping[str, Any], scenario: Mapping[str, Any], impls: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Median p50/p90/p99 latency (ms) per implementation over the counted repetitions."""
    repetitions = servers.get("repetitions", [])
    latencies: dict[str, dict[str, float]] = {}
    for impl in impls:
        results = [
            repetition["result"]
            for repetition in repetitions
            if repetition.get("scenario") == scenario.get("name")
            and repetition.get("impl") == impl
            and _usable(repetition)
        ]
        figures = {}
        for percentile in LATENCY_PERCENTILES:
            values = [
                float(result[f"latency_{percentile}_ms"])
                for result in results
                if result.get(f"latency_{percentile}_ms") is not None
            ]
            median = _median(values)
            if median is not None:
                figures[percentile] = median
        if figures:
            latencies[impl] = figures
    return latencies


def _fixed_rate_scenarios(servers: Mapping[str, Any]) -> list[tuple[Suite, Mapping[str, Any]]]:
    repetitions = servers.get("repetitions", [])
    return [
        (suite, scenario)
        for suite in _suites(servers)
        for scenario in suite.scenarios
        if _is_fixed_rate(scenario, repetitions) and _latencies(servers, scenario, suite.impls)
    ]


def _servers_markdown(servers: Mapping[str, Any], charts: Mapping[str, str]) -> list[str]:
    lines = ["## Servers: over loopback sockets", ""]
    settings = servers.get("settings", {})
    suites = {suite.name for suite in _suites(servers)}
    how = []
    if "echo" in suites and settings.get("rounds"):
        how.append(
            "the echo suite runs "
            + _rounds(settings["rounds"], settings.get("duration"), settings.get("warmup"))
        )
    fanout = sorted(suites & {"broadcast", "chat"})
    if fanout and settings.get("chat_rounds"):
        rounds = _rounds(
            settings["chat_rounds"], settings.get("chat_duration"), settings.get("chat_warmup")
        )
        how.append(
            f"the {' and '.join(fanout)} suite{'s' if len(fanout) > 1 else ''} {rounds}, "
            "each on a freshly started server"
        )
    lines += [
        "Each server runs as its own process; the load generator (`bench/load.py`, one "
        "`selectors` loop over raw sockets) drives it over 127.0.0.1"
        + (f": {'; '.join(how)}" if how else "")
        + ". Cells are medians over the rounds with the lowest and highest in brackets; "
        "`÷ peer` columns give ours divided by the peer, so above 1 is better where more "
        "is better and below 1 is better for figures marked ↓ (memory, latency). A "
        "repetition during which other processes took CPU is measured once more, and the "
        "noisy one left out of the medians.",
        "",
    ]
    for suite in _suites(servers):
        lines += _suite_markdown(servers, suite, charts)
    fixed = _fixed_rate_scenarios(servers)
    if fixed and "latency" in charts:
        lines += [
            "### Latency at a fixed rate",
            "",
            "Send-to-receive latency of every delivery in the scenarios that publish at a "
            "fixed rate: the median over the rounds of each round's p50, p90 and p99.",
            "",
            f"![Latency percentiles at a fixed publishing rate]({charts['latency']})",
            "",
        ]
    return lines


def _rounds(rounds: int, duration: float | None, warmup: float | None) -> str:
    """``5 rounds of 2 s after a 0.5 s warm-up``, with what the settings say."""
    phrase = f"{rounds} round{'s' if rounds != 1 else ''}"
    if duration:
        phrase += f" of {duration:g} s"
    if warmup:
        phrase += f" after a {warmup:g} s warm-up"
    return phrase


def _suite_markdown(
    servers: Mapping[str, Any], suite: Suite, charts: Mapping[str, str]
) -> list[str]:
    peers = [name for name in suite.impls if name != suite.ours]
    lines = [f"### The {suite.name} suite (ours: {suite.ours})", ""]
    if suite.name in SUITE_DESCRIPTIONS:
        lines += [SUITE_DESCRIPTIONS[suite.name], ""]
    has_limits = any(row.entry.get("limit") is not None for row in suite.rows)
    header = ["scenario", "unit", *suite.impls, *(f"÷ {peer}" for peer in peers)]
    if has_limits:
        header.append("limit")
    rows = []
    for row in suite.rows:
        cells = [f"↳ {row.description}" if row.secondary else f"**{row.description}**"]
        cells.append(row.unit + ("" if row.higher_is_better else " ↓"))
        cells += [format_measured(row.measured(impl)) for impl in suite.impls]
        targets = row.entry.get("targets") or {}
        met = row.entry.get("met") or {}
        cells += [
            _ratio_cell(
                _server_ratio(row, suite.ours, peer),
                targets.get(peer),
                met.get(peer),
                row.higher_is_better,
            )
            for peer in peers
        ]
        if has_limits:
            cells.append(_limit_cell(row))
        rows.append(cells)
    lines += [*_table(header, rows, "ll" + "r" * (len(header) - 2)), ""]
    lines += _suite_notes(servers, suite)
    key = f"servers-{suite.name}"
    if key in charts:
        lines += [f"![The {suite.name} suite: medians with min-max]({charts[key]})", ""]
    return lines


def _server_ratio(row: Row, ours: str, peer: str) -> float | None:
    ratio = (row.entry.get("ratios") or {}).get(peer)
    if ratio is not None:
        return float(ratio)
    mine, theirs = row.measured(ours).median, row.measured(peer).median
    return mine / theirs if mine is not None and theirs else None


def _limit_cell(row: Row) -> str:
    limit = row.entry.get("limit")
    if limit is None:
        return ""
    sign = "≥" if row.higher_is_better else "≤"
    return f"{sign} {format_number(limit)} {_verdict(row.entry.get('limit_met'))}".rstrip()


def _suite_notes(servers: Mapping[str, Any], suite: Suite) -> list[str]:
    """Empty cells, failed and discarded repetitions: what a reader needs to trust a cell."""
    names = {scenario.get("name") for scenario in suite.scenarios}
    repetitions = [
        repetition
        for repetition in servers.get("repetitions", [])
        if repetition.get("scenario") in names
    ]
    lines = []
    missing: dict[str, list[str]] = {}
    for row in suite.rows:
        if row.secondary:
            continue
        for impl in suite.impls:
            if row.measured(impl).median is None:
                missing.setdefault(impl, []).append(row.key)
    for impl, keys in missing.items():
        lines.append(f"- {DASH}: no counted repetition of {impl} in {', '.join(keys)}.")
    failures: dict[tuple[str, str], str] = {}
    for repetition in repetitions:
        if "error" in repetition:
            where = (str(repetition.get("impl")), str(repetition.get("scenario")))
            failures.setdefault(where, str(repetition["error"]))
    for (impl, scenario), error in failures.items():
        first_line = error.strip().splitlines()[0] if error.strip() else "failed"
        lines.append(f"- {impl} failed on {scenario}: {first_line}")
    lines += _bottleneck_notes(suite, repetitions)
    discarded = sum(1 for repetition in repetitions if "discarded" in repetition)
    if discarded:
        lines.append(
            f"- {discarded} repetition{'s were' if discarded > 1 else ' was'} measured again "
            "because other processes took CPU meanwhile."
        )
    return [*lines, ""] if lines else []


#: A load generator this busy (percent of its core), beside a server less busy than
#: SERVER_BUSY, set the pace, not the server.
GENERATOR_BOUND = 95.0
SERVER_BUSY = 90.0


def _bottleneck_notes(suite: Suite, repetitions: Sequence[Mapping[str, Any]]) -> list[str]:
    """Where the load generator's core was saturated: the rate there is the generator's
    ceiling, and the per-server-CPU figure is the one that still compares the servers.
    """
    lines = []
    for scenario in suite.scenarios:
        name = scenario.get("name")
        bound = []
        for impl in suite.impls:
            counted = [
                repetition["result"]
                for repetition in repetitions
                if repetition.get("scenario") == name
                and repetition.get("impl") == impl
                and _usable(repetition)
            ]
            busy = _median(
                float(result["load_cpu_percent"])
                for result in counted
                if result.get("load_cpu_percent") is not None
            )
            server = _median(
                float(result["server_cpu_percent"])
                for result in counted
                if result.get("server_cpu_percent") is not None
            )
            if busy is not None and busy >= GENERATOR_BOUND and (server or 0) < SERVER_BUSY:
                bound.append(f"{impl} (generator {busy:.0f} %, server {server or 0:.0f} %)")
        if bound:
            lines.append(
                f"- {name}: the load generator's core was saturated while the server's was "
                f"not, with {', '.join(bound)}; there the generator set the pace, and the "
                "figure per server CPU-second is the one that compares the servers."
            )
    return lines


def _reading_markdown(results: Mapping[str, Any]) -> list[str]:
    """How to read the page: what is compiled code, and where a server's speed comes from."""
    if not results.get("frames") and not results.get("servers"):
        return []
    return [
        "## Reading these figures",
        "",
        "- rfc6455 and wsproto are pure Python; websockets masks in C (its pure-Python "
        "masking is the `websockets-py` column), aiohttp reads frames in C (Cython) and picows "
        "is Cython throughout. In the codec tables the like-for-like comparison is with "
        "`websockets-py` and `wsproto`; against compiled codecs rfc6455 is behind on large "
        "payloads, where the work is a loop over bytes.",
        "- A server's throughput depends more on its design than on its codec: rfc6455's "
        "server runs one `selectors` loop, coalesces everything one loop tick queued for a "
        "connection into one `send`, and encodes a broadcast frame once for every recipient. "
        "Where the peers make one system call per frame per client, that outweighs their "
        "compiled codecs.",
        "- Latency at a fixed rate measures the round trip through the kernel more than any "
        "library: every server there is mostly idle.",
        "",
    ]


# --- targets -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One promise the benchmarks check: a ratio to a peer, or a bound on our own figure."""

    part: str
    figure: str
    ours: str
    peer: str | None
    wanted: str
    measured: str
    met: bool | None


def _targets(results: Mapping[str, Any]) -> list[Target]:
    targets = []
    frames = results.get("frames") or {}
    ours = _frames_ours(frames)
    for case in frames.get("cases", []):
        summary = frames.get("summary", {}).get(case.get("key"), {})
        for peer, target in (summary.get("targets") or {}).items():
            targets.append(
                Target(
                    "frames",
                    str(case.get("label") or case.get("key")),
                    ours,
                    peer,
                    _format_target(target, True),
                    format_ratio(_frame_ratio(frames, case, peer)),
                    (summary.get("met") or {}).get(peer),
                )
            )
    servers = results.get("servers") or {}
    for suite in _suites(servers):
        for row in suite.rows:
            label = str(row.scenario.get("label") or row.scenario.get("name"))
            if row.secondary:
                label += f", {row.unit}"
            for peer, target in (row.entry.get("targets") or {}).items():
                targets.append(
                    Target(
                        suite.name,
                        label,
                        suite.ours,
                        peer,
                        _format_target(target, row.higher_is_better),
                        format_ratio(_server_ratio(row, suite.ours, peer)),
                        (row.entry.get("met") or {}).get(peer),
                    )
                )
            if row.entry.get("limit") is not None:
                sign = "≥" if row.higher_is_better else "≤"
                targets.append(
                    Target(
                        suite.name,
                        label,
                        suite.ours,
                        None,
                        f"{sign} {format_number(row.entry['limit'])} {row.unit}",
                        f"{format_number(row.measured(suite.ours).median)} {row.unit}",
                        row.entry.get("limit_met"),
                    )
                )
    return targets


def _targets_markdown(results: Mapping[str, Any]) -> list[str]:
    targets = _targets(results)
    if not targets:
        return []
    met = sum(1 for target in targets if target.met)
    verdicts = {True: "✅ met", False: "❌ missed", None: f"{DASH} not measured"}
    rows = [
        [
            target.part,
            target.figure,
            f"{target.ours} ÷ {target.peer}" if target.peer else target.ours,
            target.wanted,
            target.measured,
            verdicts[target.met],
        ]
        for target in targets
    ]
    return [
        "## Targets",
        "",
        f"{met} of {len(targets)} targets met. A ratio target compares medians (ours ÷ "
        "peer); a limit bounds our own median.",
        "",
        *_table(["part", "figure", "compared", "target", "measured", "verdict"], rows, "llllrl"),
        "",
    ]


# --- the page ----------------------------------------------------------------------------


def _is_quick(results: Mapping[str, Any]) -> bool:
    return bool(
        results.get("quick")
        or (results.get("frames") or {}).get("settings", {}).get("quick")
        or (results.get("servers") or {}).get("settings", {}).get("quick")
    )


def _pinning(servers: Mapping[str, Any]) -> str:
    pinning = servers.get("cpu_pinning")
    if not pinning:
        return ""
    server, load = pinning.get("server"), pinning.get("load")
    if not server or not load:
        return (
            " Nothing was pinned to a CPU (fewer than two were available), so the servers "
            "and the load generator shared the cores."
        )

    def cpus(numbers: Sequence[int]) -> str:
        word = "CPU" if len(numbers) == 1 else "CPUs"
        return f"{word} {', '.join(str(number) for number in numbers)}"

    return (
        f" Servers run pinned to {cpus(server)} and the load generator (and the frame "
        f"benchmarks) to {cpus(load)}, so that neither steals the other's core."
    )


def _header_markdown(results: Mapping[str, Any], charts: Mapping[str, str]) -> list[str]:
    servers = results.get("servers") or {}
    lines = [
        "# Benchmarks",
        "",
        "How fast the pure-Python `rfc6455` library and `chatd` are beside the WebSocket "
        "libraries Python programs usually pick (websockets, wsproto, aiohttp, picows): "
        "the frame codec alone, in memory, and whole servers driven over loopback by a "
        "load generator. Within each suite the implementations are interleaved round by "
        "round, in an order rotated every round, so that drift on the machine hits them "
        "all alike; every figure is the median over the rounds, shown with the min and max."
        + _pinning(servers),
        "",
        "Regenerate this page with `make bench` (about 20-25 minutes; one JSON file in "
        "`bench/results/`) then `make bench-report`; `make bench-quick` measures a "
        "two-minute subset. All figures come from one machine, described below, and are "
        "only comparable with each other, within this run.",
        "",
    ]
    if _is_quick(results):
        lines += [
            "> **This page comes from a quick run** (`make bench-quick`): a subset of the "
            "cases, each measured briefly. It shows that everything runs and roughly where "
            "it stands; the figures are not ones to quote.",
            "",
        ]
    if "headline" in charts:
        lines += [f"![Ours ÷ each peer on the key figures]({charts['headline']})", ""]
    return lines


def _machine_markdown(results: Mapping[str, Any]) -> list[str]:
    machine = results.get("machine") or {}
    python = results.get("python") or {}
    git = results.get("git") or {}
    memory = machine.get("memory_mib")
    commit = str(git.get("commit") or "")[:12] or DASH
    if git.get("dirty"):
        commit += " (with uncommitted changes)"
    nofile = machine.get("nofile_limit")
    rows = [
        ["CPU", machine.get("cpu") or DASH],
        ["cores", machine.get("cpus") or DASH],
        ["memory", f"{memory / 1024:.1f} GiB" if memory else DASH],
        ["platform", machine.get("platform") or DASH],
        [
            "Python",
            " ".join(str(python[key]) for key in ("implementation", "version") if python.get(key))
            or DASH,
        ],
        ["open files limit", f"{nofile[0]:,} (hard {nofile[1]:,})" if nofile else DASH],
        ["git commit", f"`{commit}`" if git.get("commit") else commit],
        ["date", _date(results.get("created"))],
        ["wall time", _duration(results.get("wall_s"))],
    ]
    lines = ["## The machine", "", *_table(["", ""], rows, "ll"), ""]
    versions = results.get("versions") or {}
    if versions:
        lines += [
            *_table(
                ["library", "version"],
                [[name, version or "not installed"] for name, version in versions.items()],
                "ll",
            ),
            "",
        ]
    speedups = results.get("speedups") or {}
    if speedups:
        lines += [
            "C extensions in use: "
            + "; ".join(f"{name}: {'yes' if used else 'no'}" for name, used in speedups.items())
            + ".",
            "",
        ]
    return lines


def _date(created: str | None) -> str:
    """``2026-11-25T23:40:00+0000`` -> ``2026-11-25 23:40 +0000``."""
    if not created:
        return DASH
    day, _, rest = created.partition("T")
    clock, offset = rest[:5], rest[8:]
    return f"{day} {clock} {offset}".strip()


def render_markdown(results: Mapping[str, Any], chart_paths: Mapping[str, str]) -> str:
    """The page for ``results``; ``chart_paths`` maps chart names (``frames-decode``) to the
    link written in the page (``benchmarks/frames-decode.png``); charts absent from it are
    not mentioned.
    """
    lines = _header_markdown(results, chart_paths)
    lines += _machine_markdown(results)
    if results.get("frames"):
        lines += _frames_markdown(results["frames"], chart_paths)
    if results.get("servers"):
        lines += _servers_markdown(results["servers"], chart_paths)
    lines += _targets_markdown(results)
    lines += _reading_markdown(results)
    if not results.get("frames") and not results.get("servers"):
        lines += ["Nothing was measured in this run.", ""]
    return "\n".join(lines).rstrip() + "\n"


# --- charts ------------------------------------------------------------------------------


def _tick(value: float, _position: object = None) -> str:
    """Axis labels: ``0.5``, ``20``, ``400 k``, ``1.2 M`` (no padding zeros)."""
    factor, suffix = _scale(value, True)
    return f"{value / factor:.3g}{suffix}"


def _color(name: str, ours: str) -> str:
    if name == ours:
        return OURS_COLOR
    if name in IMPL_COLORS:
        return IMPL_COLORS[name]
    return FALLBACK_COLORS[sum(map(ord, name)) % len(FALLBACK_COLORS)]


def _size_axis(axes: Axes, sizes: Sequence[int]) -> None:
    axes.set_xscale("log", base=2)
    axes.set_xticks(list(sizes))
    axes.set_xticklabels([_size_label(size) for size in sizes], rotation=30, ha="right")
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("message size")


def _plain_log_axis(axes: Axes) -> None:
    """Log y with tick labels people read (0.5, 10, 1k) rather than powers of ten."""
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(FuncFormatter(_tick))
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.grid(True, which="major", alpha=0.3)
    axes.grid(True, which="minor", axis="y", alpha=0.1)


def _throughput_panel(
    axes: Axes, frames: Mapping[str, Any], cases: Sequence[Mapping[str, Any]], title: str
) -> list[str]:
    """MB/s against size, one line per implementation; returns the names drawn."""
    ours = _frames_ours(frames)
    drawn = []
    for name in _frame_impls(frames):
        points = [(int(case["size"]), _frame_mb_per_s(frames, case, name)) for case in cases]
        points = [(size, measured) for size, measured in points if measured.median is not None]
        if not points:
            continue
        sizes = [size for size, _ in points]
        medians = [float(measured.median or 0) for _, measured in points]
        axes.plot(
            sizes,
            medians,
            marker="o",
            markersize=4,
            linewidth=2.6 if name == ours else 1.5,
            color=_color(name, ours),
            label=name,
            zorder=3 if name == ours else 2,
        )
        if all(measured.low is not None for _, measured in points):
            axes.fill_between(
                sizes,
                [float(measured.low or 0) for _, measured in points],
                [float(measured.high or 0) for _, measured in points],
                color=_color(name, ours),
                alpha=0.15,
                linewidth=0,
            )
        drawn.append(name)
    _size_axis(axes, sorted({int(case["size"]) for case in cases}))
    _plain_log_axis(axes)
    axes.set_ylabel("MB/s of payload (log)")
    axes.set_title(title, fontsize=11)
    return drawn


def _figure(width: float, height: float) -> Figure:
    return plt.figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _legend_below(figure: Figure, names: Sequence[str], ours: str) -> None:
    handles = [
        Line2D([], [], color=_color(name, ours), linewidth=2.6 if name == ours else 1.5)
        for name in names
    ]
    figure.legend(
        handles, list(names), loc="outside lower center", ncols=min(len(names), 6), frameon=False
    )


def _frames_chart(
    frames: Mapping[str, Any], operation: str, panels: Sequence[tuple[str, bool]]
) -> Figure | None:
    """Throughput by size for ``operation``, one panel per (opcode, fed in reads)."""
    chosen = []
    for opcode, reads in panels:
        cases = _frame_series(frames, operation, opcode, reads)
        if not cases:
            continue
        title = opcode
        if operation == "decode":
            feed = f"{_size_label(int(cases[0]['reads']))} reads" if reads else "whole buffer"
            title = f"{opcode}, {feed}"
        chosen.append((cases, title))
    if not chosen:
        return None
    figure = _figure(max(PANELS_MIN_WIDTH, 5.2 * len(chosen)), 4.6)
    axes_list = figure.subplots(1, len(chosen), squeeze=False)[0]
    drawn: list[str] = []
    for axes, (cases, title) in zip(axes_list, chosen, strict=True):
        drawn += _throughput_panel(axes, frames, cases, title)
    figure.suptitle(f"Frame {operation} throughput (median; band: min to max)", fontsize=12)
    _legend_below(figure, _ordered(drawn, _frames_ours(frames)), _frames_ours(frames))
    return figure


def _frames_ratio_chart(frames: Mapping[str, Any]) -> Figure | None:
    """Ours ÷ each peer by size, for decoding and encoding text messages."""
    ours = _frames_ours(frames)
    peers = [name for name in _frame_impls(frames) if name != ours]
    panels = [
        (cases, title)
        for operation, title in (
            ("decode", "decode, text, whole buffer"),
            ("encode", "encode, text"),
        )
        if (cases := _frame_series(frames, operation, "text", False))
    ]
    if not panels or not peers:
        return None
    figure = _figure(max(PANELS_MIN_WIDTH, 5.2 * len(panels)), 4.6)
    axes_list = figure.subplots(1, len(panels), squeeze=False)[0]
    drawn: list[str] = []
    for axes, (cases, title) in zip(axes_list, panels, strict=True):
        ratios: list[float] = []
        for peer in peers:
            points = [(int(case["size"]), _frame_ratio(frames, case, peer)) for case in cases]
            kept = [(size, ratio) for size, ratio in points if ratio]
            if not kept:
                continue
            axes.plot(
                [size for size, _ in kept],
                [ratio for _, ratio in kept],
                marker="o",
                markersize=4,
                linewidth=1.5,
                color=_color(peer, ours),
                label=peer,
            )
            drawn.append(peer)
            ratios += [ratio for _, ratio in kept]
        axes.axhline(1.0, color="black", linewidth=1, linestyle="--")
        _size_axis(axes, sorted({int(case["size"]) for case in cases}))
        axes.grid(True, axis="x", alpha=0.3)
        if ratios:
            _ratio_axis(axes, min(*ratios, 1.0) / 1.3, max(*ratios, 1.0) * 1.3)
        axes.set_ylabel(f"{ours} ÷ peer, messages/s (log)")
        axes.set_title(title, fontsize=11)
    if not drawn:
        plt.close(figure)
        return None
    figure.suptitle(f"How many times faster {ours} is, by message size (above 1: faster)")
    _legend_below(figure, list(dict.fromkeys(drawn)), ours)
    return figure


def _suite_chart(suite: Suite) -> Figure | None:
    """One panel per scenario: a bar per implementation, min-max as error bars."""
    rows = [
        row
        for row in suite.rows
        if not row.secondary and any(row.measured(impl).median is not None for impl in suite.impls)
    ]
    if not rows:
        return None
    columns = min(4, len(rows))
    lines = math.ceil(len(rows) / columns)
    figure = _figure(max(6.0, 3.3 * columns), 3.3 * lines + 0.4)
    axes_grid = figure.subplots(lines, columns, squeeze=False)
    for index, axes in enumerate(axes_grid.flat):
        if index >= len(rows):
            axes.set_axis_off()
            continue
        _scenario_bars(axes, rows[index], suite)
    figure.suptitle(
        f"The {suite.name} suite: medians, min to max as error bars ({suite.ours} highlighted)",
        fontsize=12,
    )
    return figure


def _scenario_bars(axes: Axes, row: Row, suite: Suite) -> None:
    positions = list(range(len(suite.impls)))
    measured = [row.measured(impl) for impl in suite.impls]
    heights = [m.median or 0.0 for m in measured]
    below = [
        (m.median - m.low) if m.median is not None and m.low is not None else 0.0 for m in measured
    ]
    above = [
        (m.high - m.median) if m.median is not None and m.high is not None else 0.0
        for m in measured
    ]
    colors = [OURS_COLOR if impl == suite.ours else PEER_COLOR for impl in suite.impls]
    axes.bar(
        positions,
        heights,
        color=colors,
        yerr=[below, above],
        capsize=3,
        error_kw={"elinewidth": 1, "ecolor": "#333333"},
        zorder=2,
    )
    top = max((h + a for h, a in zip(heights, above, strict=True)), default=0.0) or 1.0
    for position, m, height, extra in zip(positions, measured, heights, above, strict=True):
        text = format_number(m.median) if m.median is not None else "n/a"
        axes.text(
            position,
            height + extra + top * 0.02,
            text,
            ha="center",
            va="bottom",
            fontsize=8,
            fontweight="bold" if suite.impls[position] == suite.ours else "normal",
        )
    axes.set_ylim(0, top * 1.18)
    axes.set_xticks(positions)
    axes.set_xticklabels(suite.impls, rotation=20, ha="right", fontsize=9)
    for label, impl in zip(axes.get_xticklabels(), suite.impls, strict=True):
        if impl == suite.ours:
            label.set_fontweight("bold")
    axes.yaxis.set_major_formatter(FuncFormatter(_tick))
    axes.grid(True, axis="y", alpha=0.3, zorder=0)
    better = "higher is better" if row.higher_is_better else "lower is better"
    axes.set_ylabel(f"{row.unit} ({better})", fontsize=9)
    title = str(row.scenario.get("label") or row.scenario.get("name"))
    axes.set_title(textwrap.fill(title, 34), fontsize=9.5)


def _latency_chart(servers: Mapping[str, Any]) -> Figure | None:
    """Grouped p50/p90/p99 bars per implementation, a panel per fixed-rate scenario."""
    fixed = _fixed_rate_scenarios(servers)
    if not fixed:
        return None
    columns = min(2, len(fixed))
    lines = math.ceil(len(fixed) / columns)
    figure = _figure(5.6 * columns, 3.6 * lines + 0.6)
    axes_grid = figure.subplots(lines, columns, squeeze=False)
    shades = {"p50": 0.35, "p90": 0.65, "p99": 1.0}
    width = 0.26
    for index, axes in enumerate(axes_grid.flat):
        if index >= len(fixed):
            axes.set_axis_off()
            continue
        suite, scenario = fixed[index]
        latencies = _latencies(servers, scenario, suite.impls)
        impls = [impl for impl in suite.impls if impl in latencies]
        top = max(value for figures in latencies.values() for value in figures.values()) or 1.0
        for offset, percentile in enumerate(LATENCY_PERCENTILES):
            for position, impl in enumerate(impls):
                value = latencies[impl].get(percentile)
                if value is None:
                    continue
                x = position + (offset - 1) * width
                base = OURS_COLOR if impl == suite.ours else PEER_COLOR
                axes.bar(x, value, width, color=base, alpha=shades[percentile], zorder=2)
                axes.text(
                    x,
                    value + top * 0.015,
                    format_number(value),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        axes.set_xticks(range(len(impls)))
        axes.set_xticklabels(impls, fontsize=9)
        for label, impl in zip(axes.get_xticklabels(), impls, strict=True):
            if impl == suite.ours:
                label.set_fontweight("bold")
        axes.set_ylim(0, top * 1.15)
        axes.set_ylabel("latency, ms (lower is better)", fontsize=9)
        axes.grid(True, axis="y", alpha=0.3, zorder=0)
        title = str(scenario.get("label") or scenario.get("name"))
        axes.set_title(textwrap.fill(title, 48), fontsize=10)
    handles = [
        Patch(facecolor="#555555", alpha=shade, label=percentile)
        for percentile, shade in shades.items()
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    figure.suptitle("Send-to-receive latency at a fixed publishing rate (medians of rounds)")
    return figure


@dataclass(frozen=True, slots=True)
class Headline:
    """One key figure of the headline chart: ours ÷ each peer."""

    label: str
    ours: str
    ratios: dict[str, float]


def _headlines(results: Mapping[str, Any]) -> list[Headline]:
    """Up to four figures, those of them the run measured: small and large decode, echo
    with 100 clients, broadcast to the most clients.
    """
    headlines = []
    frames = results.get("frames") or {}
    ours = _frames_ours(frames)
    peers = [name for name in _frame_impls(frames) if name != ours]
    for size, label in ((16, "decode 16 B messages"), (1 << 20, "decode 1 MiB messages")):
        for opcode in ("text", "binary"):
            series = _frame_series(frames, "decode", opcode, False)
            case = next((case for case in series if case["size"] == size), None)
            if case is None:
                continue
            ratios = {peer: ratio for peer in peers if (ratio := _frame_ratio(frames, case, peer))}
            if ratios:
                headlines.append(Headline(f"{label} ({opcode})", ours, ratios))
                break
    suites = _suites(results.get("servers") or {})
    for suite in suites:
        for row in suite.rows:
            if row.key == "echo-100x16":
                headlines.append(_server_headline(row, suite, "echo, 100 clients, 16 in flight"))
    for wanted in ("broadcast", "chat"):
        candidates = [
            (_clients(row.scenario), row, suite)
            for suite in suites
            if suite.name == wanted
            for row in suite.rows
            if not row.secondary and row.key.endswith("-max") and row.higher_is_better
        ]
        if candidates:
            clients, row, suite = max(candidates, key=lambda candidate: candidate[0])
            label = f"{wanted} to {clients:,} clients" if clients else wanted
            headlines.append(_server_headline(row, suite, label))
            break
    return [headline for headline in headlines if headline.ratios]


def _server_headline(row: Row, suite: Suite, label: str) -> Headline:
    ratios = {}
    for peer in suite.impls:
        if peer != suite.ours and (ratio := _server_ratio(row, suite.ours, peer)):
            ratios[peer] = ratio
    return Headline(
        label if suite.ours == FRAMES_OURS else f"{label} ({suite.ours})", suite.ours, ratios
    )


def _clients(scenario: Mapping[str, Any]) -> int:
    arguments = list(scenario.get("arguments") or ())
    if "--clients" in arguments[:-1]:
        try:
            return int(arguments[arguments.index("--clients") + 1])
        except ValueError:
            return 0
    return 0


def _headline_chart(results: Mapping[str, Any]) -> Figure | None:
    """Ours ÷ each peer on the key figures: a group of columns per figure, rising from the
    line at 1.0 on a log axis (up where ours is faster, down where it is slower).
    """
    headlines = _headlines(results)
    if not headlines:
        return None
    peers = _ordered((peer for headline in headlines for peer in headline.ratios), "")
    # Each figure's columns are centred on its label, however many peers it has.
    width = 0.82 / max(len(headline.ratios) for headline in headlines)
    figure = _figure(max(PANELS_MIN_WIDTH, 2.3 * len(headlines)), 4.2)
    axes = figure.subplots()
    ratios = [ratio for headline in headlines for ratio in headline.ratios.values()]
    for group, headline in enumerate(headlines):
        present = [peer for peer in peers if peer in headline.ratios]
        for index, peer in enumerate(present):
            ratio = headline.ratios[peer]
            x = group + (index - (len(present) - 1) / 2) * width
            axes.bar(x, ratio - 1.0, width * 0.88, bottom=1.0, color=_color(peer, ""), zorder=2)
            axes.text(
                x,
                ratio * (1.03 if ratio >= 1 else 1 / 1.03),
                format_ratio(ratio),
                ha="center",
                va="bottom" if ratio >= 1 else "top",
                fontsize=7,
            )
    low, high = min(*ratios, 1.0) / 1.5, max(*ratios, 1.0) * 1.5
    _ratio_axis(axes, low, high)
    axes.axhline(1.0, color="black", linewidth=1.2, zorder=3)
    axes.set_xticks(range(len(headlines)))
    axes.set_xticklabels([textwrap.fill(headline.label, 24) for headline in headlines], fontsize=9)
    ours = headlines[0].ours
    axes.set_ylabel(f"{ours} ÷ peer (log)")
    axes.set_title(f"{ours} beside each peer: above 1, {ours} is faster", fontsize=11)
    handles = [Patch(facecolor=_color(peer, ""), label=peer) for peer in peers]
    figure.legend(
        handles=handles, loc="outside lower center", ncols=min(len(peers), 6), frameon=False
    )
    return figure


def _ratio_axis(axes: Axes, low: float, high: float) -> None:
    """A log y axis from ``low`` to ``high`` with ticks at 1, 2 and 5 times powers of ten
    (``0.5x``, ``1x``, ``2x``): the default log ticks leave a narrow range unlabelled.
    """
    axes.set_yscale("log")
    axes.set_ylim(low, high)
    ticks = [
        step * 10.0**power
        for power in range(-3, 4)
        for step in (1, 2, 5)
        if low <= step * 10.0**power <= high
    ]
    axes.set_yticks(ticks)
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.grid(True, axis="y", alpha=0.3, zorder=0)


def build_charts(results: Mapping[str, Any]) -> dict[str, Figure]:
    """Every chart the results can fill, by name (the PNG's stem); the caller closes them."""
    builders: list[tuple[str, Callable[[], Figure | None]]] = [
        ("headline", lambda: _headline_chart(results))
    ]
    frames = results.get("frames") or {}
    if frames:
        builders += [
            (
                "frames-decode",
                lambda: _frames_chart(frames, "decode", [("text", False), ("binary", True)]),
            ),
            (
                "frames-encode",
                lambda: _frames_chart(frames, "encode", [("text", False), ("binary", False)]),
            ),
            ("frames-ratio", lambda: _frames_ratio_chart(frames)),
        ]
    servers = results.get("servers") or {}
    for suite in _suites(servers):
        builders.append((f"servers-{suite.name}", functools.partial(_suite_chart, suite)))
    if servers:
        builders.append(("latency", lambda: _latency_chart(servers)))
    charts = {}
    for name, build in builders:
        figure = build()
        if figure is not None:
            charts[name] = figure
    return charts


# --- files -------------------------------------------------------------------------------


def write_report(results: dict[str, Any], output: Path, charts: Path) -> list[Path]:
    """Write the charts into ``charts`` and the page to ``output``, linking the charts by
    their path relative to the page; return every file written.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    charts.mkdir(parents=True, exist_ok=True)
    written = []
    links = {}
    for name, figure in build_charts(results).items():
        path = charts / f"{name}.png"
        try:
            figure.savefig(path, dpi=DPI, metadata=PNG_METADATA)
        finally:
            plt.close(figure)
        written.append(path)
        links[name] = Path(os.path.relpath(path, output.parent)).as_posix()
    output.write_text(render_markdown(results, links), encoding="utf-8")
    return [output, *written]


def newest_results(directory: Path = RESULTS_DIR) -> Path:
    """The newest ``bench-*.json`` (the names sort by their timestamp)."""
    found = sorted(directory.glob("bench-*.json"))
    if not found:
        raise FileNotFoundError(f"no bench-*.json in {directory}: run `make bench` first")
    return found[-1]


def load_results(path: Path) -> dict[str, Any]:
    """Read a results file; a bare ``load-*.json`` (``bench.load compare``) becomes the
    ``servers`` section of a results document, its environment moved to the top level.
    """
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if "servers" in data or "scenarios" not in data:
        return data
    top = ("created", "wall_s", "machine", "python", "versions", "speedups", "git", "quick")
    results = {key: data.pop(key) for key in top if key in data}
    results["servers"] = data
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.report", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument(
        "results", nargs="?", type=Path, help="results JSON (default: the newest bench-*.json)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown page")
    parser.add_argument("--charts", type=Path, default=DEFAULT_CHARTS, help="PNG directory")
    args = parser.parse_args(argv)
    try:
        source = args.results or newest_results()
        results = load_results(source)
    except (OSError, ValueError) as error:
        print(f"bench.report: {error}", file=sys.stderr)
        return 2
    for path in write_report(results, args.output, args.charts):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
