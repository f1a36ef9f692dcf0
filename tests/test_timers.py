"""Tests for rfc6455.timers: a fake clock in, exact deadlines and call orders out."""

from __future__ import annotations

import logging

import pytest

from rfc6455.timers import Timer, TimerHeap


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timers(clock: FakeClock) -> TimerHeap:
    return TimerHeap(clock)


# --- ordering ---------------------------------------------------------------------------


def test_timers_run_in_deadline_order(clock: FakeClock, timers: TimerHeap) -> None:
    calls: list[str] = []
    timers.call_later(3, lambda: calls.append("c"))
    timers.call_later(1, lambda: calls.append("a"))
    timers.call_later(2, lambda: calls.append("b"))
    clock.advance(5)
    assert timers.run_due() == 3
    assert calls == ["a", "b", "c"]
    assert len(timers) == 0


def test_equal_deadlines_run_in_scheduling_order(clock: FakeClock, timers: TimerHeap) -> None:
    calls: list[int] = []
    for number in range(10):
        timers.call_later(1, lambda number=number: calls.append(number))
    clock.advance(1)
    assert timers.run_due() == 10
    assert calls == list(range(10))


def test_only_due_timers_run(clock: FakeClock, timers: TimerHeap) -> None:
    calls: list[str] = []
    timers.call_later(1, lambda: calls.append("soon"))
    timers.call_later(10, lambda: calls.append("later"))
    assert timers.run_due() == 0
    clock.advance(0.999)
    assert timers.run_due() == 0
    clock.advance(0.001)  # exactly at the deadline: due
    assert timers.run_due() == 1
    assert calls == ["soon"]
    assert len(timers) == 1


def test_a_timer_runs_once(clock: FakeClock, timers: TimerHeap) -> None:
    calls: list[str] = []
    timers.call_later(0, lambda: calls.append("x"))
    assert timers.run_due() == 1
    clock.advance(100)
    assert timers.run_due() == 0
    assert calls == ["x"]


def test_deadline_is_clock_plus_delay(clock: FakeClock, timers: TimerHeap) -> None:
    timer = timers.call_later(2.5, lambda: None)
    assert isinstance(timer, Timer)
    assert timer.deadline == 102.5
    assert not timer.cancelled


def test_default_clock_is_monotonic() -> None:
    timers = TimerHeap()
    timer = timers.call_later(60, lambda: None)
    delay = timers.timeout()
    assert delay is not None
    assert 59 < delay <= 60
    timer.cancel()


# --- callbacks that schedule and cancel -----------------------------------------------


def test_a_callback_may_schedule_a_timer_for_the_next_run(
    clock: FakeClock, timers: TimerHeap
) -> None:
    calls: list[int] = []

    def again() -> None:
        calls.append(len(calls))
        if len(calls) < 100:
            timers.call_later(0, again)

    timers.call_later(0, again)
    # A zero-delay timer scheduled by a running callback waits for the next run_due(),
    # as asyncio does: one run cannot spin forever on a clock that does not move.
    assert timers.run_due() == 1
    assert timers.timeout() == 0
    assert timers.run_due() == 1
    assert calls == [0, 1]


def test_a_callback_may_cancel_a_timer_due_in_the_same_run(
    clock: FakeClock, timers: TimerHeap
) -> None:
    calls: list[str] = []
    second: list[Timer] = []

    def first() -> None:
        calls.append("first")
        second[0].cancel()

    timers.call_later(1, first)
    second.append(timers.call_later(1, lambda: calls.append("second")))
    timers.call_later(1, lambda: calls.append("third"))
    clock.advance(1)
    assert timers.run_due() == 2
    assert calls == ["first", "third"]
    assert len(timers) == 0
    assert timers._cancelled == 0


def test_cancelling_a_timer_that_ran_changes_nothing(clock: FakeClock, timers: TimerHeap) -> None:
    timer = timers.call_later(0, lambda: None)
    timers.call_later(5, lambda: None)
    timers.run_due()
    timer.cancel()
    assert len(timers) == 1
    assert timers._cancelled == 0


def test_a_failing_callback_is_logged_and_the_others_still_run(
    clock: FakeClock, timers: TimerHeap, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    timers.call_later(1, broken)
    timers.call_later(1, lambda: calls.append("after"))
    clock.advance(1)
    with caplog.at_level(logging.ERROR, logger="rfc6455.timers"):
        assert timers.run_due() == 2
    assert calls == ["after"]
    assert "boom" in caplog.text
    assert caplog.records[0].exc_info is not None


# --- cancel -----------------------------------------------------------------------------


def test_cancelled_timer_does_not_run(clock: FakeClock, timers: TimerHeap) -> None:
    calls: list[str] = []
    timer = timers.call_later(1, lambda: calls.append("x"))
    timers.call_later(2, lambda: calls.append("y"))
    timer.cancel()
    assert timer.cancelled
    assert len(timers) == 1
    clock.advance(5)
    assert timers.run_due() == 1
    assert calls == ["y"]
    assert len(timers) == 0
    assert timers._cancelled == 0


def test_cancel_twice_counts_once(timers: TimerHeap) -> None:
    timer = timers.call_later(1, lambda: None)
    timers.call_later(2, lambda: None)
    timer.cancel()
    timer.cancel()
    assert len(timers) == 1
    assert timers._cancelled == 1


def test_repr(timers: TimerHeap) -> None:
    def keepalive() -> None:
        pass

    timer = timers.call_later(1, keepalive)
    assert repr(timer) == "<Timer test_repr.<locals>.keepalive at 101.000>"
    timer.cancel()
    assert repr(timer) == "<Timer test_repr.<locals>.keepalive cancelled>"


def test_repr_of_a_callable_without_qualname(timers: TimerHeap) -> None:
    class Callback:
        def __call__(self) -> None:
            pass

        def __repr__(self) -> str:
            return "Callback()"

    timer = timers.call_later(1, Callback())
    assert repr(timer) == "<Timer Callback() at 101.000>"


# --- timeout ----------------------------------------------------------------------------


def test_timeout_without_timers_is_the_maximum(timers: TimerHeap) -> None:
    assert timers.timeout() is None
    assert timers.timeout(1.5) == 1.5


def test_timeout_is_time_to_the_next_deadline(clock: FakeClock, timers: TimerHeap) -> None:
    timers.call_later(3, lambda: None)
    timers.call_later(2, lambda: None)
    assert timers.timeout() == 2
    assert timers.timeout(0.5) == 0.5
    assert timers.timeout(10) == 2
    clock.advance(1.5)
    assert timers.timeout() == 0.5


def test_timeout_is_zero_when_overdue(clock: FakeClock, timers: TimerHeap) -> None:
    timers.call_later(1, lambda: None)
    clock.advance(3)
    assert timers.timeout() == 0
    assert timers.timeout(5) == 0


def test_timeout_skips_cancelled_timers(clock: FakeClock, timers: TimerHeap) -> None:
    first = timers.call_later(1, lambda: None)
    second = timers.call_later(2, lambda: None)
    timers.call_later(4, lambda: None)
    first.cancel()
    second.cancel()
    assert timers.timeout() == 4
    assert timers._cancelled == 0
    assert len(timers._heap) == 1


def test_timeout_when_every_timer_is_cancelled(timers: TimerHeap) -> None:
    timers.call_later(1, lambda: None).cancel()
    assert timers.timeout(7) == 7
    assert timers.timeout() is None
    assert len(timers) == 0


# --- compaction -------------------------------------------------------------------------


def test_cancelled_timers_are_compacted(timers: TimerHeap) -> None:
    # Timers far in the future, cancelled: they never reach the top of the heap, so only
    # compaction can free them (a connection's ping timer, rescheduled on every message).
    live = timers.call_later(1, lambda: None)
    for _ in range(10_000):
        timers.call_later(1000, lambda: None).cancel()
        # Bounded: never more than twice the live timers, plus the slack before compacting.
        assert len(timers._heap) <= 2 * len(timers) + 66
    assert len(timers) == 1
    assert timers._cancelled <= 65
    assert not live.cancelled


def test_compaction_keeps_live_timers_in_order(clock: FakeClock, timers: TimerHeap) -> None:
    calls: list[int] = []
    for number in range(200):
        timer = timers.call_later(number, lambda number=number: calls.append(number))
        if number % 3:
            timer.cancel()
    assert len(timers._heap) < 200  # compacted at least once
    assert len(timers) == 67
    clock.advance(1000)
    assert timers.run_due() == 67
    assert calls == list(range(0, 200, 3))
    assert len(timers._heap) == 0
    assert timers._cancelled == 0


def test_no_compaction_while_few_are_cancelled(timers: TimerHeap) -> None:
    for _ in range(64):
        timers.call_later(5, lambda: None).cancel()
    timers.call_later(5, lambda: None)
    assert len(timers._heap) == 65  # 64 cancelled is below the threshold
    assert len(timers) == 1
