"""Every benchmark in one sitting: ``python -m bench`` (``make bench``).

Runs the frame-codec suite (``bench/frames.py``: our codec beside websockets, wsproto,
aiohttp's reader and picows, one timer for all) and then the server suites
(``bench/load.py compare``: echo, idle memory, connection churn, broadcast fan-out and
chatd, beside servers built on the same libraries in ``bench/peers/``). Within each
suite the implementations are interleaved round by round, in an order rotated every
round, so that drift on the machine hits all of them alike. Everything lands in one
JSON file, ``bench/results/bench-YYYYmmdd-HHMMSS.json`` (machine, Python and library
versions, settings, every repetition and the medians), which ``python -m bench.report``
turns into ``docs/benchmarks.md``.

``--quick`` (``make bench-quick``) measures a subset in about two minutes: enough to see
that everything runs and roughly where it stands, not figures to publish.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import frames, load

SCHEMA = "chatd-bench/1"
#: Libraries whose versions the results name (None when not installed).
LIBRARIES = ("chatd", "websockets", "wsproto", "aiohttp", "picows", "matplotlib")


def environment() -> dict[str, Any]:
    """The machine, Python, library versions and which C extensions are in use."""
    described = load.environment()
    versions: dict[str, str | None] = {}
    for package in LIBRARIES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    described["versions"] = versions
    # picows is Cython through and through: there is no pure-Python fallback to report.
    described["speedups"]["picows (Cython)"] = versions["picows"] is not None
    return described


def run(
    *,
    quick: bool,
    parts: Sequence[str],
    suites: Sequence[str],
    rounds: int | None,
    implementations: Sequence[str] | None,
) -> dict[str, Any]:
    """Measure ``parts`` (frames, servers) and return the whole results document."""
    started_at = time.time()
    clock = time.monotonic()

    def progress(line: str) -> None:
        elapsed = int(time.monotonic() - clock)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {line}", flush=True)

    results: dict[str, Any] = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_at)),
        "quick": quick,
        **environment(),
    }
    if "frames" in parts:
        settings = frames.QUICK if quick else frames.FULL
        if rounds:
            settings = dataclasses.replace(settings, rounds=rounds)
        progress(f"frames: {settings.rounds} rounds, every implementation in every round")
        with _pinned_to_load_cpu():
            results["frames"] = frames.run_frames(
                settings, implementations=implementations, progress=progress
            )
        progress("\n" + frames.format_frames_table(results["frames"]))
    if "servers" in parts:
        compare_settings = load.QUICK if quick else load.FULL
        if rounds:
            compare_settings = dataclasses.replace(
                compare_settings, rounds=rounds, chat_rounds=rounds
            )
        progress(f"servers: suites {', '.join(suites)}")
        servers = load.compare(
            compare_settings,
            suites=suites,
            implementations=implementations,
            log=progress,
            save=False,
        )
        for key in ("created", "wall_s", "machine", "python", "versions", "speedups", "git"):
            servers.pop(key, None)
        results["servers"] = servers
    results["wall_s"] = round(time.time() - started_at, 1)
    return results


@contextlib.contextmanager
def _pinned_to_load_cpu() -> Any:
    """Run the frame suite on the CPU the load generator uses (the second, when there
    are two), as the server suites do, so that both parts see the same core.
    """
    _, load_cpus = load._cpu_plan()
    before = None
    with contextlib.suppress(AttributeError, OSError):
        before = os.sched_getaffinity(0)
        if load_cpus:
            os.sched_setaffinity(0, load_cpus)
    try:
        yield
    finally:
        if before is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, before)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a two-minute subset")
    parser.add_argument(
        "--only", choices=["frames", "servers"], help="one part only (default: both)"
    )
    parser.add_argument(
        "--suite",
        action="append",
        choices=list(load.SUITES),
        help="server suites (repeatable; default: all)",
    )
    parser.add_argument("--impl", action="append", help="implementations (repeatable)")
    parser.add_argument("--rounds", type=int, help="rounds of every suite")
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/)")
    args = parser.parse_args(argv)
    parts = [args.only] if args.only else ["frames", "servers"]
    try:
        results = run(
            quick=args.quick,
            parts=parts,
            suites=args.suite or tuple(load.SUITES),
            rounds=args.rounds,
            implementations=args.impl,
        )
    except load.LoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    output = args.output
    if output is None:
        load.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        output = load.RESULTS_DIR / f"bench-{stamp}.json"
    output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {output} ({results['wall_s']:.0f} s); `make bench-report` charts it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
