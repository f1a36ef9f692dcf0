"""Timers on a heap, for the single-threaded runtime.

The event loop asks ``TimerHeap.timeout()`` how long it may sleep in ``select`` and calls
``run_due()`` after each wake-up. Cancelling is O(1): the entry is marked and skipped
when it reaches the top, the way ``asyncio`` handles ``TimerHandle.cancel``. A heap that
fills with cancelled entries is compacted, so memory stays bounded by the live timers.
A callback that raises is logged and does not stop the others (nor the loop).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable

__all__ = ["Timer", "TimerHeap"]

logger = logging.getLogger("rfc6455.timers")


class Timer:
    """A scheduled callback; ``cancel()`` it when it is no longer wanted."""

    __slots__ = ("_heap", "callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None], heap: TimerHeap) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False
        self._heap: TimerHeap | None = heap

    def cancel(self) -> None:
        """Stop the callback from running; harmless if it already ran."""
        if not self.cancelled:
            self.cancelled = True
            if self._heap is not None:  # still in the heap: count it for compaction
                self._heap._cancelled += 1

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else f"at {self.deadline:.3f}"
        return f"<Timer {getattr(self.callback, '__qualname__', self.callback)} {state}>"


class TimerHeap:
    """A min-heap of ``Timer`` by deadline, on the monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._counter = itertools.count()
        self._cancelled = 0

    def __len__(self) -> int:
        return len(self._heap) - self._cancelled

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` after ``delay`` seconds (from the loop, never earlier)."""
        timer = Timer(self.clock() + delay, callback, self)
        heapq.heappush(self._heap, (timer.deadline, next(self._counter), timer))
        if self._cancelled > 64 and self._cancelled > len(self._heap) // 2:
            self._compact()
        return timer

    def timeout(self, maximum: float | None = None) -> float | None:
        """Seconds until the next live timer (0 if one is due), capped at ``maximum``."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        if not heap:
            return maximum
        delay = max(0.0, heap[0][0] - self.clock())
        return delay if maximum is None else min(delay, maximum)

    def run_due(self) -> int:
        """Run every timer whose deadline has passed; return how many ran.

        The due timers are taken off the heap first, then run (as ``asyncio`` does): a
        callback that schedules a zero-delay timer gets it run by the next call, so one
        call cannot spin forever on a clock that has not moved.
        """
        heap = self._heap
        now = self.clock()
        due: list[Timer] = []
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            if timer.cancelled:
                self._cancelled -= 1
            else:
                timer._heap = None  # off the heap: a cancel() no longer counts there
                due.append(timer)
        ran = 0
        for timer in due:
            if timer.cancelled:
                continue  # cancelled by a callback that ran before it
            timer.cancelled = True  # it ran: a later cancel() is harmless
            ran += 1
            try:
                timer.callback()
            except Exception:
                logger.exception("timer callback %r failed", timer.callback)
        return ran

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if not entry[2].cancelled]
        heapq.heapify(self._heap)
        self._cancelled = 0
