"""Frame codec throughput through pytest-benchmark: the cases and adapters of bench/frames.py.

``python -m bench.frames`` is the main runner (one timer for every library, rounds
interleaved); this module runs the same cases (``frames.CASES``) with the same adapters
through pytest-benchmark, as a second opinion: ``make bench-frames``. Each group is one
case, so its table compares the implementations on the same machine at the same moment;
``extra_info`` carries messages/s and MB/s. Speed is reported here, never asserted; every
adapter's result is checked once (``frames.verify``) before it is timed.

With ``--benchmark-disable`` each case runs once: a quick check that every adapter still
works with the installed libraries.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from bench import frames
from rfc6455 import apply_mask

CASES_BY_KEY = {case.key: case for case in frames.CASES}


@pytest.fixture(scope="module")
def adapters() -> Iterator[dict[str, frames.Adapter]]:
    loaded = frames.load_adapters()
    yield loaded
    for adapter in loaded.values():
        adapter.close()


@functools.lru_cache(maxsize=1)  # the parameters come case by case
def workload(key: str) -> frames.Workload:
    return frames.build_workload(CASES_BY_KEY[key])


@pytest.mark.parametrize(
    ("case", "name"),
    [
        pytest.param(case, name, id=f"{case.key}-{name}")
        for case in frames.CASES
        for name in frames.IMPLEMENTATIONS
    ],
)
def test_frames(
    benchmark: Any, adapters: dict[str, frames.Adapter], case: frames.FrameCase, name: str
) -> None:
    """One case for one implementation (see ``bench/frames.py`` for what each adapter does)."""
    adapter = adapters[name]
    if not adapter.available:
        pytest.skip(f"{name}: {adapter.reason}")
    data = workload(case.key)
    try:
        operation = adapter.operation(case, data)
    except frames.Unsupported as reason:
        pytest.skip(f"{name}: {reason}")
    benchmark.group = case.label
    benchmark.extra_info.update(messages=case.messages, bytes=case.bytes)
    with adapter.patched():
        frames.verify(case, data, operation())
        benchmark(operation)
    mean = benchmark.stats.stats.mean if benchmark.stats else 0
    if mean:
        benchmark.extra_info["messages_per_s"] = round(case.messages / mean)
        benchmark.extra_info["MB_per_s"] = round(case.bytes / mean / 1e6, 1)


# --- masking: the hot path rfc6455/frames.py measures itself against ------------------------

MASK = bytes.fromhex("37fa213d")
MASKERS: dict[str, Any] = {"rfc6455": apply_mask}
try:
    from websockets.speedups import apply_mask as websockets_c_apply_mask
    from websockets.utils import apply_mask as websockets_py_apply_mask
except ImportError:  # pragma: no cover - depends on the installed wheel
    pass
else:
    MASKERS["websockets-py"] = websockets_py_apply_mask
    MASKERS["websockets-c"] = websockets_c_apply_mask


@pytest.mark.parametrize("impl", list(MASKERS))
@pytest.mark.parametrize("size", [16, 1024, 64 * 1024, 1024 * 1024])
def test_unmask(benchmark: Any, impl: str, size: int) -> None:
    """Unmask a payload; C masking is shown for reference only."""
    data = os.urandom(size)
    benchmark.group = f"unmask {size} B"
    result = benchmark(MASKERS[impl], data, MASK)
    assert result[:64] == bytes(byte ^ MASK[i % 4] for i, byte in enumerate(data[:64]))
    assert apply_mask(result, MASK) == data
