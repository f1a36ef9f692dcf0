"""chatd.limits: token bucket, message gate, connection limiter, room quota, Limits.

Time is a ``FakeClock`` moved by hand, so every test is exact and instant. Steps are
binary fractions (0.25 s, 0.5 s) so the refill arithmetic has no rounding to hide behind.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from chatd import protocol
from chatd.limits import (
    ConnectionLimiter,
    Limits,
    MessageGate,
    RoomQuota,
    TokenBucket,
    Verdict,
    ip_group,
)


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def takes(bucket: TokenBucket, attempts: int) -> int:
    """How many of ``attempts`` single takes succeed right now."""
    return sum(bucket.take() for _ in range(attempts))


# --- TokenBucket ---------------------------------------------------------------------------


def test_bucket_starts_full_and_refuses_after_burst() -> None:
    bucket = TokenBucket(10, 20, clock=FakeClock())
    assert [bucket.take() for _ in range(21)] == [True] * 20 + [False]


def test_bucket_refills_at_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4, 20, clock=clock)
    assert takes(bucket, 20) == 20
    clock.advance(0.25)  # 4/s x 0.25 s = exactly one token
    assert takes(bucket, 5) == 1
    clock.advance(1.0)
    assert takes(bucket, 10) == 4


def test_bucket_refill_is_continuous() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2, 1, clock=clock)
    assert bucket.take()
    for _ in range(3):  # three quarters of a token in three steps: still not one
        clock.advance(0.125)
        assert not bucket.take()
    clock.advance(0.125)  # the fractions add up
    assert bucket.take()


def test_bucket_never_holds_more_than_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, 5, clock=clock)
    clock.advance(3600)
    assert takes(bucket, 50) == 5


def test_bucket_refusal_costs_nothing() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1, 1, clock=clock)
    assert bucket.take()
    clock.advance(0.5)
    assert not bucket.take()
    clock.advance(0.5)  # the refused take above did not spend the half token
    assert bucket.take()


def test_bucket_cost() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1, 4, clock=clock)
    assert not bucket.take(5)  # more than burst: never
    assert bucket.take(3)
    assert not bucket.take(2)
    assert bucket.take(1)
    with pytest.raises(ValueError, match=r"^cost"):
        bucket.take(-1)


def test_bucket_ignores_a_clock_that_steps_back() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1, 1, clock=clock)
    clock.advance(-10)  # a step back neither drains the tokens it has...
    assert bucket.take()
    clock.advance(-10)  # ...nor refills them
    assert not bucket.take()
    clock.advance(20.5)  # half a second past the latest time seen: half a token
    assert not bucket.take()
    clock.advance(0.5)
    assert bucket.take()


@pytest.mark.parametrize("rate", [0, -1])
def test_bucket_unlimited_when_rate_not_positive(rate: float) -> None:
    bucket = TokenBucket(rate, 0, clock=FakeClock())
    assert takes(bucket, 10_000) == 10_000


def test_bucket_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match=r"^burst"):
        TokenBucket(10, 0)
    with pytest.raises(ValueError, match=r"^rate"):
        TokenBucket(float("nan"), 1)


# --- MessageGate ---------------------------------------------------------------------------


def test_gate_pass_refuse_close_with_defaults() -> None:
    clock = FakeClock()
    gate = MessageGate(10, 20, clock=clock)  # strikes=10, window=10.0
    verdicts = [gate.check() for _ in range(31)]
    assert verdicts == [Verdict.PASS] * 20 + [Verdict.REFUSE] * 10 + [Verdict.CLOSE]


def test_gate_close_is_final() -> None:
    clock = FakeClock()
    gate = MessageGate(10, 1, strikes=0, clock=clock)
    assert gate.check() is Verdict.PASS
    assert gate.check() is Verdict.CLOSE  # strikes=0: the first refusal closes
    clock.advance(60)  # the bucket is full again, but the decision stands
    assert gate.check() is Verdict.CLOSE


def test_gate_passes_again_after_waiting() -> None:
    clock = FakeClock()
    gate = MessageGate(2, 1, strikes=5, clock=clock)
    assert gate.check() is Verdict.PASS
    assert gate.check() is Verdict.REFUSE
    clock.advance(0.5)
    assert gate.check() is Verdict.PASS


def test_gate_forgets_strikes_outside_the_window() -> None:
    clock = FakeClock()
    # One token per 20 s, so the bucket stays empty across the 10 s window.
    gate = MessageGate(0.05, 1, strikes=2, window=10.0, clock=clock)
    assert gate.check() is Verdict.PASS
    assert [gate.check(), gate.check()] == [Verdict.REFUSE] * 2  # strikes at t=0
    clock.advance(10.5)
    # Remembered, the t=0 strikes would make this third one close.
    assert [gate.check(), gate.check()] == [Verdict.REFUSE] * 2
    assert gate.check() is Verdict.CLOSE  # three strikes at t=10.5


def test_gate_counts_strikes_at_the_window_edge() -> None:
    clock = FakeClock()
    gate = MessageGate(0.05, 1, strikes=2, window=10.0, clock=clock)
    assert gate.check() is Verdict.PASS
    assert gate.check() is Verdict.REFUSE
    clock.advance(5)
    assert gate.check() is Verdict.REFUSE
    clock.advance(5)  # exactly window seconds after the first strike: still within
    assert gate.check() is Verdict.CLOSE


def test_gate_unlimited_never_refuses() -> None:
    gate = MessageGate(0, 20, strikes=0, clock=FakeClock())
    assert {gate.check() for _ in range(1000)} == {Verdict.PASS}


def test_gate_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match=r"^strikes"):
        MessageGate(10, 20, strikes=-1)
    with pytest.raises(ValueError, match=r"^window"):
        MessageGate(10, 20, window=0)
    assert MessageGate(10, 20, strikes=3).strikes == 3


# --- ip_group and ConnectionLimiter --------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "group"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("::FFFF:c000:0207", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::1", "::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("/run/chatd.sock", "/run/chatd.sock"),
    ],
)
def test_ip_group(ip: str, group: str) -> None:
    assert ip_group(ip) == group


def test_limiter_per_ip_refusal() -> None:
    limiter = ConnectionLimiter(max_total=100, max_per_ip=2)
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") == "too_many_from_ip"
    assert limiter.admit("192.0.2.2") is None  # a neighbour has its own count
    assert limiter.count("192.0.2.1") == 2
    assert limiter.total == 3  # the refusal was not counted


def test_limiter_total_refusal_comes_first() -> None:
    limiter = ConnectionLimiter(max_total=2, max_per_ip=1)
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.2") is None
    assert limiter.admit("192.0.2.3") == "server_full"
    assert limiter.admit("192.0.2.1") == "server_full"  # over both caps
    assert limiter.total == 2


def test_limiter_release_frees_a_slot_and_drops_empty_entries() -> None:
    limiter = ConnectionLimiter(max_total=2, max_per_ip=0)
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.2") == "server_full"
    limiter.release("192.0.2.1")
    assert limiter.count("192.0.2.1") == 1
    assert limiter.admit("192.0.2.2") is None
    assert len(limiter._counts) == 2
    limiter.release("192.0.2.1")
    limiter.release("192.0.2.2")
    assert limiter.total == 0
    assert limiter._counts == {}


def test_limiter_memory_follows_live_connections() -> None:
    limiter = ConnectionLimiter(max_total=0, max_per_ip=0)
    for n in range(1000):
        ip = f"10.0.{n // 256}.{n % 256}"
        assert limiter.admit(ip) is None
        limiter.release(ip)
    assert limiter._counts == {}
    assert limiter.total == 0


def test_limiter_release_without_admit_is_an_error() -> None:
    limiter = ConnectionLimiter(max_total=0, max_per_ip=0)
    with pytest.raises(ValueError, match=re.escape("192.0.2.1")):
        limiter.release("192.0.2.1")
    assert limiter.total == 0
    assert limiter._counts == {}


def test_limiter_groups_ipv6_by_64() -> None:
    limiter = ConnectionLimiter(max_total=0, max_per_ip=2)
    assert limiter.admit("2001:db8:0:1::1") is None
    assert limiter.admit("2001:db8:0:1::2") is None
    assert limiter.admit("2001:db8:0:1:dead:beef:0:3") == "too_many_from_ip"
    assert limiter.admit("2001:db8:0:2::1") is None  # the next /64 is someone else
    assert limiter.count("2001:db8:0:1::ffff") == 2
    assert len(limiter._counts) == 2
    limiter.release("2001:db8:0:1::9")  # any address of the /64 releases its slot
    assert limiter.count("2001:db8:0:1::1") == 1


def test_limiter_counts_ipv4_mapped_as_ipv4() -> None:
    limiter = ConnectionLimiter(max_total=0, max_per_ip=2)
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("::ffff:192.0.2.1") is None
    assert limiter.admit("192.0.2.1") == "too_many_from_ip"
    assert limiter.count("192.0.2.1") == 2
    limiter.release("::ffff:192.0.2.1")
    limiter.release("192.0.2.1")
    assert limiter._counts == {}


def test_limiter_zero_is_unlimited() -> None:
    limiter = ConnectionLimiter(max_total=0, max_per_ip=0)
    assert all(limiter.admit("192.0.2.1") is None for _ in range(10_000))
    assert limiter.total == 10_000


def test_limiter_refuses_negative_caps() -> None:
    with pytest.raises(ValueError, match=r"^max_total"):
        ConnectionLimiter(-1, 0)
    with pytest.raises(ValueError, match=r"^max_per_ip"):
        ConnectionLimiter(0, -1)


# --- RoomQuota -----------------------------------------------------------------------------


def test_room_quota() -> None:
    quota = RoomQuota(2)
    assert [quota.allows(n) for n in range(4)] == [True, True, False, False]
    assert RoomQuota(0).allows(10**6)
    with pytest.raises(ValueError, match=r"^max_rooms"):
        RoomQuota(-1)


# --- Limits --------------------------------------------------------------------------------


def test_limits_defaults_match_the_design() -> None:
    limits = Limits()
    limits.validate()
    assert (limits.message_rate, limits.message_burst) == (10.0, 20)
    assert limits.max_name == protocol.MAX_NAME
    # 4,000 characters of UTF-8 (up to 4 bytes each) fit, with room for the JSON around them.
    assert limits.max_message_bytes >= 4 * protocol.MAX_TEXT + 256


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("message_rate", -1.0),
        ("message_rate", float("nan")),
        ("message_rate", float("inf")),
        ("message_burst", 0),
        ("message_burst", 2.5),
        ("rate_strikes", -1),
        ("strike_window", 0.0),
        ("strike_window", -10.0),
        ("max_connections", -1),
        ("max_connections_per_ip", -5),
        ("max_connections_per_ip", True),
        ("max_rooms_per_connection", -1),
        ("max_message_bytes", 0),
        ("max_name", 0),
        ("max_name", "50"),
    ],
)
def test_limits_validate_names_the_field(field: str, value: Any) -> None:
    limits = dataclasses.replace(Limits(), **{field: value})
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        limits.validate()


def test_limits_zero_means_unlimited_where_documented() -> None:
    Limits(
        message_rate=0,
        rate_strikes=0,
        max_connections=0,
        max_connections_per_ip=0,
        max_rooms_per_connection=0,
    ).validate()


def test_limits_is_frozen() -> None:
    limits = Limits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_name = 10  # type: ignore[misc]
